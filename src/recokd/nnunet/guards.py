"""Stop a training whose loss is not finite, instead of finishing it with a NaN model.

nnU-Net keeps training through NaN losses: with NaN voxels in the training data every step gives
``loss nan``, and the run still ends with "Done." and a ``checkpoint_final.pth`` whose weights are
NaN. :class:`FiniteLossGuard` (a mixin of our trainers) raises :class:`NonFiniteLossError` after
:data:`MAX_NONFINITE_STEPS` non-finite training losses in a row. The error is raised inside the
epoch, so neither ``checkpoint_final.pth`` nor a new ``checkpoint_latest.pth`` is written; earlier
checkpoints (finite, from before the loss broke) are kept.

A single non-finite step is tolerated (mixed precision on CUDA may overflow once; nnU-Net's
GradScaler then skips that update).

:class:`ReadableCheckpoints` turns an unreadable checkpoint (a run killed while writing
``checkpoint_latest.pth``) into a :class:`UserError` naming the file and the ways on.
"""

from __future__ import annotations

import math
import os
from typing import Any

from recokd.errors import UserError

#: consecutive non-finite training losses after which training stops
MAX_NONFINITE_STEPS = 5


class NonFiniteLossError(UserError):
    """The training loss stayed NaN / infinite: training stopped, no final model written."""


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        import numpy as np

        return float(np.asarray(value, dtype=float).mean())


class FiniteLossGuard:
    """Mixin for an ``nnUNetTrainer`` subclass: call :meth:`_check_finite_loss` after each step."""

    _nonfinite_steps = 0

    def _check_finite_loss(self, loss: Any, parts: dict[str, float] | None = None) -> None:
        """Count ``loss`` (a scalar) if it is not finite; raise after :data:`MAX_NONFINITE_STEPS`.

        ``parts``: the loss terms (e.g. ``seg_loss``, ``kd_loss``), to say which one broke.
        """
        if math.isfinite(_as_float(loss)):
            self._nonfinite_steps = 0
            return
        self._nonfinite_steps += 1
        if self._nonfinite_steps < MAX_NONFINITE_STEPS:
            return
        broken = sorted(k for k, v in (parts or {}).items() if not math.isfinite(_as_float(v)))
        data = getattr(self, "preprocessed_dataset_folder", None) or "the preprocessed training data"
        hints = []
        if not parts or "seg_loss" in broken:
            hints.append(f"NaN or infinite voxels in the training images (raw images and {data})")
        if "kd_loss" in broken:
            hints.append("the teacher checkpoint (NaN weights?) and the KD method options")
        hints.append("the learning rate / KD weight (divergence)")
        message = (
            f"training stopped: the loss was not finite for {self._nonfinite_steps} iterations in a row "
            f"(epoch {getattr(self, 'current_epoch', '?')}"
            + (f"; non-finite terms: {', '.join(broken)}" if broken else "")
            + f"). Check {'; '.join(hints)}. No final checkpoint was written."
        )
        log = getattr(self, "print_to_log_file", None)
        if log is not None:
            log(message)
        raise NonFiniteLossError(message)


def read_checkpoint(path: str, device: Any = "cpu") -> dict:
    """``torch.load`` of an nnU-Net checkpoint, with a clear error for a truncated or corrupt file.

    A run killed while ``checkpoint_latest.pth`` was being written leaves a file torch cannot read
    (``PytorchStreamReader failed reading zip archive`` and the like); the message names the file
    and the ways on.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        folder = os.path.dirname(path) or "."
        detail = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {detail}): "
            "it is truncated or corrupt (was the run killed while writing it?). Ways on: continue from "
            f"another checkpoint of {folder} (e.g. copy checkpoint_best.pth over it), or start over with "
            "--overwrite"
        ) from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UserError(f"{path} is not an nnU-Net checkpoint (no 'network_weights'); start over with "
                        "--overwrite")
    return checkpoint


class ReadableCheckpoints:
    """Mixin for an ``nnUNetTrainer`` subclass: :func:`read_checkpoint` for checkpoint files."""

    def load_checkpoint(self, filename_or_checkpoint):
        if isinstance(filename_or_checkpoint, str | os.PathLike):
            # a clear error for a truncated file first; nnU-Net's own load_checkpoint then reads it again,
            # from its path (nnunetv2 2.8 handles no checkpoint dict: it raises UnboundLocalError)
            filename_or_checkpoint = str(filename_or_checkpoint)
            read_checkpoint(filename_or_checkpoint, self.device)
        return super().load_checkpoint(filename_or_checkpoint)
