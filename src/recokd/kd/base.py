"""The interface every KD method implements, so trainers can treat them alike (:class:`KDMethod`), and
the per-level machinery every multi-level feature method shares (:class:`FeatureKD`: ReCo-KD and the
feature baselines; docs/method.md sections 5 and 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recokd.errors import KDError
from recokd.kd.levels import resolve_levels


class KDMethod(nn.Module):
    """Base class of a knowledge-distillation loss.

    Subclasses set the class attributes that tell a :class:`~recokd.kd.distiller.Distiller` what
    to compute, and implement :meth:`forward`:

    - ``uses_features``: needs intermediate features (student and teacher, one per tapped level).
    - ``uses_logits``: needs the full-resolution logits of both networks (the teacher's decoder
      then has to run, which costs the full teacher forward).
    - ``uses_target``: needs the ground-truth label map.

    ``forward`` returns a dict with ``"loss"`` (a scalar tensor carrying gradients; already
    weighted by the method's own coefficients, *not* by the KD schedule) and any number of
    detached python floats for logging, keyed ``"<component>/<level>"`` or ``"<component>"``.
    Trainable parameters (adapters, context blocks, regressors) are ordinary sub-modules, so
    ``method.parameters()`` is what a trainer adds to its optimizer.
    """

    uses_features: bool = True
    uses_logits: bool = False
    uses_target: bool = True

    def forward(  # noqa: D401 - interface
        self,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        student_logits: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError


class FeatureKD(KDMethod):
    """Base of a KD loss over ``L`` feature levels: ``L = sum_l w_l sum_k coef_k L_{k,l}``.

    Args:
        student_channels: ``C'_l`` per distilled level, highest resolution first.
        teacher_channels: ``C_l`` for the same levels.
        num_classes: ``K`` incl. background (only methods that read the target use it).
        alpha: level-weight exponent: ``w_l ∝ 2**(-3 alpha l)`` normalised to sum 1
            (docs/method.md section 5), for ReCo-KD and every feature baseline alike, so that a
            comparison differs only in the per-level loss; ``alpha=0`` gives equal weights.
        level_weights: explicit per-level weights (used as given; override ``alpha``).

    Subclasses take their own options keyword-only and pass ``**level_options`` (``alpha``,
    ``level_weights``) on; the registry collects the options along the class hierarchy.

    ``forward(student_feats, teacher_feats, target)`` takes ``B x C x D x H x W`` (or 2D
    ``B x C x H x W``) features, one per level, student and teacher with the same batch and
    spatial size. It checks them, runs outside autocast in at least float32 with the teacher
    detached, calls :meth:`level_losses` per level and returns ``{"loss": tensor}`` plus detached
    floats ``"<comp>/<l>"`` per level and ``"<comp>"`` (level-weighted, before the component
    coefficients ``coef``).
    """

    uses_features = True
    uses_logits = False
    uses_target = False

    #: component names and their coefficients in the level loss (set by subclasses)
    coef: dict[str, float]

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        alpha: float = 0.4,
        level_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        student_channels, teacher_channels, weights = resolve_levels(
            student_channels, teacher_channels, num_classes, alpha, level_weights
        )
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.num_classes = int(num_classes)
        self.weights = weights

    @property
    def num_levels(self) -> int:
        return len(self.weights)

    def forward(
        self,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        student_logits: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | float]:
        n = self.num_levels
        if len(student_feats) != n or len(teacher_feats) != n:
            raise KDError(
                f"{type(self).__name__} was built for {n} levels but got {len(student_feats)} student and "
                f"{len(teacher_feats)} teacher features"
            )
        self.check_target(target)
        logs: dict[str, float] = {}
        total: torch.Tensor | None = None
        with torch.autocast(device_type=student_feats[0].device.type, enabled=False):
            for level in range(n):
                s, t = student_feats[level], teacher_feats[level]
                self._check_pair(level, s, t)
                dtype = torch.promote_types(torch.promote_types(s.dtype, t.dtype), torch.float32)
                parts = self.level_losses(level, s.to(dtype), t.detach().to(dtype), target)
                level_loss = sum(self.coef[k] * v for k, v in parts.items())
                weighted = self.weights[level] * level_loss
                total = weighted if total is None else total + weighted
                for k, v in parts.items():
                    value = float(v.detach())
                    logs[f"{k}/{level}"] = value
                    logs[k] = logs.get(k, 0.0) + self.weights[level] * value
        assert total is not None
        return {"loss": total, **logs}

    def check_target(self, target: torch.Tensor | Sequence[torch.Tensor] | None) -> None:
        """Validate the target once per call: present if ``uses_target`` (methods that check its
        values extend this)."""
        if self.uses_target and target is None:
            raise KDError(f"{type(self).__name__} needs the ground-truth target (class masks)")

    def level_losses(
        self,
        level: int,
        s: torch.Tensor,
        t: torch.Tensor,
        target: torch.Tensor | Sequence[torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """The loss components of one level; ``s``/``t`` are ``B x C x *spatial`` in the compute
        dtype, ``t`` detached. Returns ``{component: scalar tensor}`` (keys of ``self.coef``)."""
        raise NotImplementedError

    def _check_pair(self, level: int, s: torch.Tensor, t: torch.Tensor) -> None:
        same_layout = s.dim() == t.dim() and s.shape[0] == t.shape[0] and s.shape[2:] == t.shape[2:]
        if s.dim() not in (4, 5) or not same_layout:
            raise KDError(
                f"level {level}: student feature {tuple(s.shape)} and teacher feature "
                f"{tuple(t.shape)} must share batch and spatial size (B x C x D x H x W or B x C x H x W)"
            )
        if s.shape[1] != self.student_channels[level] or t.shape[1] != self.teacher_channels[level]:
            raise KDError(
                f"level {level}: expected {self.student_channels[level]} student / "
                f"{self.teacher_channels[level]} teacher channels, got {s.shape[1]} / {t.shape[1]}"
            )

    def extra_repr(self) -> str:
        w = ", ".join(f"{x:.3f}" for x in self.weights)
        return f"student={self.student_channels}, teacher={self.teacher_channels}, weights=[{w}]"
