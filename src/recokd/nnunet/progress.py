"""An optional tqdm progress bar over the training iterations of our nnU-Net trainers.

nnU-Net itself only logs once per epoch. With ``RECOKD_PROGRESS=1`` in the environment (``recokd
demo`` and ``recokd bench`` set it), :class:`TrainingProgress` shows one bar per training run on
stderr, labelled with ``RECOKD_PROGRESS_DESC``; otherwise it does nothing. Only rank 0 of a DDP
run draws.
"""

from __future__ import annotations

import os
import sys

from recokd.nnunet.layout import PROGRESS_DESC_ENV, PROGRESS_ENV


class TrainingProgress:
    """Mixin for an ``nnUNetTrainer`` subclass: call :meth:`_progress_start` at the end of
    ``on_train_start``, :meth:`_progress_tick` after each ``train_step`` and
    :meth:`_progress_close` in ``on_train_end``."""

    _progress_bar = None

    def _progress_start(self) -> None:
        if os.environ.get(PROGRESS_ENV) != "1" or getattr(self, "local_rank", 0) != 0:
            return
        from tqdm import tqdm

        total = (self.num_epochs - self.current_epoch) * self.num_iterations_per_epoch
        self._progress_bar = tqdm(total=total, desc=os.environ.get(PROGRESS_DESC_ENV, "training"),
                                  unit="it", file=sys.stderr, dynamic_ncols=True)

    def _progress_tick(self) -> None:
        if self._progress_bar is not None:
            self._progress_bar.update(1)

    def _progress_close(self) -> None:
        if self._progress_bar is not None:
            self._progress_bar.close()
            self._progress_bar = None
