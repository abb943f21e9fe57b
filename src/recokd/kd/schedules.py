"""KD weight schedules ``lambda(e)`` over epochs (docs/method.md section 5)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from recokd.errors import KDError

SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class KDSchedule:
    """``lambda(epoch)``: a ramp from 0 to ``lambda_max`` over the first ``warmup_fraction`` of
    ``total_epochs``, then constant.

    - ``constant``: ``lambda_max`` from epoch 0.
    - ``linear``:   ``lambda_max * min(1, e / E_w)`` with ``E_w = warmup_fraction * total_epochs``
      (spec default: 0.01, 60% of epochs).
    - ``cosine``:   ``lambda_max * (1 - cos(pi * min(1, e / E_w))) / 2`` (smooth start and end).
    """

    name: str = "linear"
    lambda_max: float = 0.01
    warmup_fraction: float = 0.6
    total_epochs: int = 1000

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise KDError(f"unknown KD schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.lambda_max < 0:
            raise KDError(f"lambda_max must be >= 0, got {self.lambda_max}")
        if not 0 <= self.warmup_fraction <= 1:
            raise KDError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.total_epochs < 1:
            raise KDError(f"total_epochs must be >= 1, got {self.total_epochs}")

    def progress(self, epoch: float) -> float:
        """Fraction of the warm-up done at ``epoch`` (1 when there is no warm-up)."""
        warm = self.warmup_fraction * self.total_epochs
        if warm <= 0:
            return 1.0
        return min(1.0, max(0.0, epoch / warm))

    def __call__(self, epoch: float) -> float:
        if self.name == "constant":
            return self.lambda_max
        p = self.progress(epoch)
        if self.name == "linear":
            return self.lambda_max * p
        return self.lambda_max * 0.5 * (1.0 - math.cos(math.pi * p))


def build_schedule(
    name: str = "linear",
    lambda_max: float = 0.01,
    warmup_fraction: float = 0.6,
    total_epochs: int = 1000,
) -> Callable[[float], float]:
    """A :class:`KDSchedule` (callable ``epoch -> lambda``)."""
    return KDSchedule(name, lambda_max, warmup_fraction, total_epochs)
