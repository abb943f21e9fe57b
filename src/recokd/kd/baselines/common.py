"""Shared machinery of the feature-based baseline KD methods (spec section 7).

:class:`FeatureKD` does what every multi-level feature method needs: level bookkeeping, level
weights, input checks, running outside autocast in at least float32, detaching the teacher and
logging. A subclass only implements :meth:`FeatureKD.level_losses` for one level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from recokd.kd.base import KDMethod
from recokd.kd.levels import resolve_levels

#: clamp of vector norms in cosine similarities / normalisations (as ``F.cosine_similarity``)
EPS = 1e-8

POOL_MODES = ("avg", "max")


class FeatureKD(KDMethod):
    """Base of a KD loss over ``L`` feature levels: ``L = sum_l w_l sum_k coef_k L_{k,l}``.

    Args:
        student_channels: ``C'_l`` per distilled level, highest resolution first.
        teacher_channels: ``C_l`` for the same levels.
        num_classes: ``K`` incl. background (only methods that read the target use it).
        alpha: level-weight exponent: ``w_l ∝ 2**(-3 alpha l)`` normalised to sum 1, the same
            aggregation as ReCo-KD (spec section 5) so that the comparison differs only in the
            per-level loss; ``alpha=0`` gives equal weights.
        level_weights: explicit per-level weights (used as given; override ``alpha``).

    ``forward(student_feats, teacher_feats, target)`` takes ``B x C x D x H x W`` (or 2D
    ``B x C x H x W``) features, one per level, student and teacher with the same batch and
    spatial size. Returns ``{"loss": tensor}`` plus detached floats ``"<comp>/<l>"`` per level
    and ``"<comp>"`` (level-weighted, before the component coefficients ``coef``).
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
        name = type(self).__name__
        if len(student_feats) != n or len(teacher_feats) != n:
            raise ValueError(
                f"{name} was built for {n} levels but got {len(student_feats)} student and "
                f"{len(teacher_feats)} teacher features"
            )
        if self.uses_target and target is None:
            raise ValueError(f"{name} needs the ground-truth target (class masks)")
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
        """Validate the target once per call (methods that read it override this)."""

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
            raise ValueError(
                f"level {level}: student feature {tuple(s.shape)} and teacher feature "
                f"{tuple(t.shape)} must share batch and spatial size (B x C x D x H x W or B x C x H x W)"
            )
        if s.shape[1] != self.student_channels[level] or t.shape[1] != self.teacher_channels[level]:
            raise ValueError(
                f"level {level}: expected {self.student_channels[level]} student / "
                f"{self.teacher_channels[level]} teacher channels, got {s.shape[1]} / {t.shape[1]}"
            )

    def extra_repr(self) -> str:
        w = ", ".join(f"{x:.3f}" for x in self.weights)
        return f"student={self.student_channels}, teacher={self.teacher_channels}, weights=[{w}]"


def pool_to_grid(feat: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """Adaptive pooling of ``B x C x *spatial`` (2D or 3D) to at most ``grid`` cells per axis.

    Each axis of size ``s`` becomes ``min(grid, s)`` cells (axes are never upsampled); cell ``i``
    of an axis covers ``[floor(i s / g), ceil((i + 1) s / g))`` (``adaptive_*_pool``). Returns the
    cells flattened, ``B x C x n`` with ``n = prod min(grid, s)``, in row-major order.
    """
    if mode not in POOL_MODES:
        raise ValueError(f"pool must be one of {POOL_MODES}, got {mode!r}")
    size = tuple(min(int(grid), int(s)) for s in feat.shape[2:])
    if feat.dim() == 5:
        pool = F.adaptive_avg_pool3d if mode == "avg" else F.adaptive_max_pool3d
    elif feat.dim() == 4:
        pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    else:
        raise ValueError(f"expected a B x C x D x H x W or B x C x H x W feature, got {tuple(feat.shape)}")
    return pool(feat, size).flatten(2)


def check_grid(grid: int, pool: str) -> None:
    """Raise a clear error for a bad ``grid`` / ``pool`` option."""
    if int(grid) != grid or grid < 1:
        raise ValueError(f"grid must be a positive integer (cells per axis), got {grid!r}")
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")


def l2_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x / max(||x||_2, EPS)`` along ``dim`` (zero vectors stay zero)."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(EPS)
