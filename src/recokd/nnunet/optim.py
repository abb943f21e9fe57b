"""The optimisers our trainers offer: nnU-Net's default SGD and its ``nnUNetTrainerAdam`` variant.

nnU-Net trains with SGD (momentum 0.99, Nesterov, initial learning rate 1e-2, weight decay 3e-5)
under its poly schedule ``lr = lr0 * (1 - epoch / epochs) ** 0.9``. Its own optimizer variant
``nnUNetTrainerAdam`` (``nnunetv2/training/nnUNetTrainer/variants/optimizer``) swaps in AdamW with
AMSGrad at the same initial rate, weight decay and schedule. We offer exactly these two, by name:

- ``"sgd"``  -> ``torch.optim.SGD(params, lr0, weight_decay, momentum=0.99, nesterov=True)``
- ``"adam"`` -> ``torch.optim.AdamW(params, lr0, weight_decay, amsgrad=True)``

Why a choice at all: on the CPU regime's short schedules, channel-reduced students (t >= 1) barely
move under SGD at nnU-Net's learning rate (liver only after 500 iterations, where the teacher of
the same schedule already segments five classes), while the same students under AdamW learn every
class (``benchmarks/RESULTS.md``, "Choosing the regime"). The per-parameter step size of Adam does
not shrink with the layer width the way SGD's effective step does.

The short trainers read the choice from ``RECOKD_SHORT_OPTIMIZER``, the ReCo-KD trainer from its
settings field ``optimizer``; both default to ``"sgd"`` (nnU-Net's behaviour).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from recokd.errors import UserError

if TYPE_CHECKING:  # torch and nnU-Net only where an optimiser is built: settings import this module
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

#: the optimiser names, nnU-Net's default first
OPTIMIZER_NAMES = ("sgd", "adam")
#: how tables and logs name them
OPTIMIZER_TEXT = {"sgd": "SGD (nnU-Net's default)", "adam": "AdamW (nnU-Net's nnUNetTrainerAdam)"}
#: environment variable of the short trainers' optimiser


def check_optimizer_name(name: object, where: str) -> str:
    """``name`` if it is one of :data:`OPTIMIZER_NAMES`, else :class:`UserError` naming ``where``."""
    if not isinstance(name, str) or name not in OPTIMIZER_NAMES:
        raise UserError(f"{where} must be one of {', '.join(OPTIMIZER_NAMES)}, got {name!r}")
    return name


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    initial_lr: float,
    weight_decay: float,
    num_epochs: int,
) -> tuple[torch.optim.Optimizer, PolyLRScheduler]:
    """nnU-Net's optimiser ``name`` over ``params`` and its poly learning-rate schedule."""
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    name = check_optimizer_name(name, "optimizer")
    params = list(params)
    if name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, initial_lr, weight_decay=weight_decay, momentum=0.99, nesterov=True
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=initial_lr, weight_decay=weight_decay, amsgrad=True)
    return optimizer, PolyLRScheduler(optimizer, initial_lr, num_epochs)
