"""Random streams of a training run: one seed for the student and the data, nothing else drawing from it.

A comparison "student with KD vs the same student without KD" means something only if the two
runs differ by the KD term alone. nnU-Net draws the student's initial weights from torch's global
generator and the training stream (case sampling, patch positions, augmentation) from numpy's
global generator (and torch's, in some transforms). Loading a teacher builds a network (random
initialisation, then overwritten) and a KD method's adapters are initialised randomly: done on
the global generators, they would shift the student's initialisation and its data stream, so
each family of KD methods would train on its own random stream.

Our trainers therefore

- reseed every global generator (Python ``random``, numpy, torch on every device) from
  ``RECOKD_SEED`` right before nnU-Net builds the student (:class:`SeededInitialization`); and
- build everything else -- the teacher, the KD method -- inside :func:`isolated_rng`, which
  restores the generators' states afterwards (the KD method's own initialisation is then drawn
  from a generator seeded with :func:`kd_module_seed`).

So on the CPU with ``nnUNet_n_proc_DA=0`` (augmentation in the main process) a ``--kd-weight 0``
run of any KD method reproduces the stock-nnU-Net run (``nnUNetTrainerShort``) of the same seed
bit for bit (``tests/nnunet/test_paired_runs.py``). With augmentation workers nnU-Net's
multi-process augmenter is not deterministic, whatever the seed.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

from recokd.errors import UserError
from recokd.nnunet.layout import SEED_ENV

#: environment variable holding the run's seed (read when the trainer is initialised)
#: offset between a run's seed and the seed of its KD method's initialisation
_KD_SEED_OFFSET = 7919


def seed_from_env() -> int | None:
    """The seed in ``RECOKD_SEED`` (an integer >= 0), ``None`` when unset or empty."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return None
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if seed < 0:
        raise UserError(f"environment variable {SEED_ENV} must be an integer >= 0, got {raw!r}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def kd_module_seed(seed: int | None) -> int:
    """Seed of the KD method's own initialisation (adapters, context blocks) in a run of ``seed``."""
    return (0 if seed is None else seed) + _KD_SEED_OFFSET


@contextlib.contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run the block on saved-and-restored global generators (Python, numpy, torch CPU and CUDA).

    Whatever the block draws does not change what is drawn after it. With ``seed`` the block's
    draws start from ``seed_everything(seed)``, so they are reproducible too.
    """
    import numpy as np
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            if seed is not None:
                seed_everything(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededInitialization:
    """Mixin for an ``nnUNetTrainer`` subclass: with ``RECOKD_SEED`` set, seed every global
    generator right before nnU-Net's ``initialize`` builds the network (once per trainer).

    Under DDP every rank gets its own stream (``seed + rank * 100003``): the ranks must sample
    different batches, and the student's initial weights are rank 0's anyway (DDP broadcasts them).
    """

    def initialize(self):
        if not self.was_initialized:
            seed = seed_from_env()
            if seed is not None:
                import torch.distributed as dist

                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
                seed_everything(seed + rank * 100003)
                self.print_to_log_file(f"{SEED_ENV}={seed}: generators seeded before building the network")
        super().initialize()
