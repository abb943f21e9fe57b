"""``nnUNetTrainerShort``: stock nnU-Net training on a short schedule, for tests and demos.

nnU-Net's own short variants (``nnUNetTrainer_1epoch``, ``_5epochs``, ...) only shorten the number
of epochs; every epoch still has 250 training and 50 validation iterations, which takes minutes
per epoch on a CPU even for 32^3 patches. This subclass changes nothing but the schedule, read
from environment variables when the trainer is created (so nnU-Net's re-instantiation by name,
DDP workers and ``--c`` see the same values):

- ``RECOKD_SHORT_EPOCHS`` (default 2)
- ``RECOKD_SHORT_ITERS`` training iterations per epoch (default 10)
- ``RECOKD_SHORT_VAL_ITERS`` validation iterations per epoch (default 2)
- ``RECOKD_SHORT_SAVE_EVERY`` write ``checkpoint_latest.pth`` every N epochs (default nnU-Net's 50),
  so that ``nnUNetv2_train --c`` continues a long run stopped in between
- ``RECOKD_SHORT_OPTIMIZER`` ``sgd`` (default, nnU-Net's) or ``adam`` (nnU-Net's
  ``nnUNetTrainerAdam``: AdamW with AMSGrad), see :mod:`recokd.nnunet.optim`

The network, loss, optimiser (unless ``adam`` is chosen) and checkpoints are exactly
``nnUNetTrainer``'s, so a model trained with it is an ordinary nnU-Net model (a valid ReCo-KD
teacher). With ``RECOKD_SEED`` set, the random generators are seeded right before the network is built
(:class:`recokd.nnunet.seeding.SeededInitialization`), as in ``nnUNetTrainerReCoKD``, so a
no-KD student and KD students of the same seed start from the same weights and data stream.

``nnUNetTrainerShortNoDA`` is the same schedule without data augmentation: nnU-Net's own
``nnUNetTrainerNoDA`` (the validation transforms for training, no mirroring at inference). At the
32^3 phantoms' patch it is not faster per iteration (measured: 25.8 s vs 26.1 s for 30
iterations on 2 CPU cores); it is the learning choice of the CPU regime, where training and
test cases come from one generator (``benchmarks/RESULTS.md``, "Choosing the regime").

nnU-Net finds the classes by name through
``nnUNet_extTrainer=$(python -c "import recokd.nnunet as n; print(n.ext_trainer_dir())")``.
"""

from __future__ import annotations

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

from recokd.errors import UserError
from recokd.nnunet.guards import FiniteLossGuard, ReadableCheckpoints
from recokd.nnunet.layout import (
    SHORT_EPOCHS_ENV,
    SHORT_ITERS_ENV,
    SHORT_OPTIMIZER_ENV,
    SHORT_SAVE_EVERY_ENV,
    SHORT_VAL_ITERS_ENV,
)
from recokd.nnunet.optim import build_optimizer, check_optimizer_name
from recokd.nnunet.progress import TrainingProgress
from recokd.nnunet.seeding import SeededInitialization

#: environment variable -> (trainer attribute, default)
SHORT_SCHEDULE_ENV = {
    SHORT_EPOCHS_ENV: ("num_epochs", 2),
    SHORT_ITERS_ENV: ("num_iterations_per_epoch", 10),
    SHORT_VAL_ITERS_ENV: ("num_val_iterations_per_epoch", 2),
    SHORT_SAVE_EVERY_ENV: ("save_every", 50),
}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"environment variable {name} must be a positive integer, got {raw!r}")
    return value


class nnUNetTrainerShort(
    ReadableCheckpoints, FiniteLossGuard, TrainingProgress, SeededInitialization, nnUNetTrainer
):
    """``nnUNetTrainer`` with epochs / iterations per epoch from ``RECOKD_SHORT_*`` env vars."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's signature
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for env, (attr, default) in SHORT_SCHEDULE_ENV.items():
            setattr(self, attr, _env_int(env, default))
        raw = os.environ.get(SHORT_OPTIMIZER_ENV, "").strip() or "sgd"
        self.optimizer_name = check_optimizer_name(raw, f"environment variable {SHORT_OPTIMIZER_ENV}")

    def configure_optimizers(self):
        """nnU-Net's SGD, or AdamW as its ``nnUNetTrainerAdam`` (``RECOKD_SHORT_OPTIMIZER``), + poly LR."""
        return build_optimizer(
            self.optimizer_name, self.network.parameters(), self.initial_lr, self.weight_decay,
            self.num_epochs,
        )

    def on_train_start(self):
        super().on_train_start()
        self._progress_start()

    def train_step(self, batch: dict) -> dict:
        out = super().train_step(batch)
        self._check_finite_loss(out["loss"])
        self._progress_tick()
        return out

    def on_train_end(self):
        self._progress_close()
        super().on_train_end()


class nnUNetTrainerShortNoDA(nnUNetTrainerShort, nnUNetTrainerNoDA):
    """:class:`nnUNetTrainerShort` without data augmentation (nnU-Net's ``nnUNetTrainerNoDA``)."""
