"""The Distiller: a frozen teacher, a student, feature taps and a KD method in one module."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from recokd.errors import KDError
from recokd.kd.base import KDMethod
from recokd.kd.ema import unwrap
from recokd.kd.partial import forward_features
from recokd.kd.taps import FeatureTaps


def _first_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution logits of a network output (nnU-Net deep supervision: a list, highest first)."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


class Distiller(nn.Module):
    """Runs student and teacher on the same batch and computes a KD loss.

    Args:
        teacher: frozen on construction (``eval()``, ``requires_grad_(False)``); always run under
            ``torch.no_grad()`` and kept in eval mode by :meth:`train`.
        student: the network being trained; may be wrapped (DDP, ``torch.compile``): taps are
            resolved on the unwrapped module, the forward goes through the wrapper.
        kd_method: a :class:`~recokd.kd.base.KDMethod`.
        student_taps / teacher_taps: dotted module paths of the distilled levels (same order;
            ``teacher_taps`` defaults to ``student_taps``).

    ``forward(x, target)`` returns ``(student_output, kd)`` where ``kd`` is the method's dict
    (``kd["loss"]`` a tensor). The teacher runs only as far as its taps need (encoder only for
    nnU-Net nets), unless the method needs logits (``uses_logits``): then it runs in full.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        kd_method: KDMethod,
        student_taps: Sequence[str],
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__()
        teacher_taps = list(student_taps if teacher_taps is None else teacher_taps)
        if len(teacher_taps) != len(student_taps):
            raise KDError(
                f"{len(student_taps)} student taps but {len(teacher_taps)} teacher taps: one per level each"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.kd_method = kd_method
        self.student_taps = list(student_taps)
        self.teacher_taps = teacher_taps

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def kd_parameters(self) -> Iterator[nn.Parameter]:
        """The KD method's trainable parameters (adapters, context blocks), for the optimiser."""
        return (p for p in self.kd_method.parameters() if p.requires_grad)

    def teacher_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Teacher features at its taps, and its full-resolution logits if the method needs them."""
        with torch.no_grad():
            if self.kd_method.uses_logits:
                with FeatureTaps(self.teacher, self.teacher_taps) as taps:
                    logits = _first_output(self.teacher(x))
                    feats = taps.features() if self.kd_method.uses_features else []
                return feats, logits
            if not self.kd_method.uses_features:
                return [], None
            return forward_features(self.teacher, x, self.teacher_taps), None

    def forward(
        self, x: torch.Tensor, target: torch.Tensor | Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | list[torch.Tensor], dict[str, torch.Tensor | float]]:
        teacher_feats, teacher_logits = self.teacher_outputs(x)
        with FeatureTaps(
            unwrap(self.student), self.student_taps if self.kd_method.uses_features else []
        ) as taps:
            output = self.student(x)
            student_feats = taps.features()
        kd = self.kd_method(
            student_feats,
            teacher_feats,
            target,
            student_logits=_first_output(output) if self.kd_method.uses_logits else None,
            teacher_logits=teacher_logits,
        )
        return output, kd
