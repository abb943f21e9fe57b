"""Logit KD (Hinton et al. 2015) on full-resolution segmentation logits (docs/method.md section 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from recokd.errors import KDError
from recokd.kd.base import KDMethod


class LogitKD(KDMethod):
    """``L = T^2 * mean_{b,v} KL(softmax(z_T[b,:,v] / T) || softmax(z_S[b,:,v] / T))``.

    The KL is summed over the ``K`` classes and averaged over all ``B * N`` voxels (spec
    section 7; ``F.kl_div(..., reduction="batchmean")`` over voxels, as the CIRKD benchmark code).

    Args:
        student_channels, teacher_channels: unused (the method reads no features).
        num_classes: ``K``, the number of output channels of both networks.
        temperature: ``T`` (default 2, the spec's value; 4 is also common).
        regions: nnU-Net region training (independent sigmoid outputs): the per-voxel KL is the
            sum over the ``K`` channels of the binary KL between ``sigmoid(z_T/T)`` and
            ``sigmoid(z_S/T)`` instead of the softmax KL.

    ``forward(..., student_logits=B x K x D x H x W, teacher_logits=same)``; a deep-supervision
    list is accepted (its first, full-resolution entry is used). Features and target are ignored.
    Returns ``{"loss": tensor, "kl": float}`` where ``kl`` is the KL before the ``T^2`` factor.
    Runs outside autocast, in at least float32.
    """

    uses_features = False
    uses_logits = True
    uses_target = False

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        temperature: float = 2.0,
        regions: bool = False,
    ):
        super().__init__()
        if temperature <= 0:
            raise KDError(f"temperature must be > 0, got {temperature}")
        if num_classes < 1:
            raise KDError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.regions = bool(regions)

    def forward(
        self,
        student_feats: Sequence[torch.Tensor],
        teacher_feats: Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        student_logits: torch.Tensor | Sequence[torch.Tensor] | None = None,
        teacher_logits: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor | float]:
        zs, zt = full_resolution_logits("LogitKD", self.num_classes, student_logits, teacher_logits)
        T = self.temperature
        with torch.autocast(device_type=zs.device.type, enabled=False):
            dtype = torch.promote_types(torch.promote_types(zs.dtype, zt.dtype), torch.float32)
            zs = zs.to(dtype) / T
            zt = zt.detach().to(dtype) / T
            if self.regions:
                kl = _binary_kl(zt, zs).sum(1).mean()
            else:
                log_t = F.log_softmax(zt, dim=1)
                kl = (log_t.exp() * (log_t - F.log_softmax(zs, dim=1))).sum(1).mean()
        return {"loss": T * T * kl, "kl": float(kl.detach())}

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, T={self.temperature}, regions={self.regions}"


def full_resolution_logits(
    method: str,
    num_classes: int,
    student_logits: torch.Tensor | Sequence[torch.Tensor] | None,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-resolution ``B x K x D x H x W`` logits of student and teacher (a deep-supervision
    list gives its first entry), checked to exist, to have one shape and ``num_classes`` channels;
    KDError naming ``method`` otherwise."""
    if student_logits is None or teacher_logits is None:
        raise KDError(f"{method} needs student_logits and teacher_logits (B x K x D x H x W)")
    zs = student_logits if isinstance(student_logits, torch.Tensor) else student_logits[0]
    zt = teacher_logits if isinstance(teacher_logits, torch.Tensor) else teacher_logits[0]
    if zs.shape != zt.shape or zs.dim() < 3:
        raise KDError(
            f"student logits {tuple(zs.shape)} and teacher logits {tuple(zt.shape)} must have the "
            "same shape B x K x D x H x W"
        )
    if zs.shape[1] != num_classes:
        raise KDError(f"{method} was built for {num_classes} classes, logits have {zs.shape[1]}")
    return zs, zt


def _binary_kl(zt: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Bern(sigmoid(zt)) || Bern(sigmoid(zs)))`` from logits (stable)."""
    lp_t, lq_t = F.logsigmoid(zt), F.logsigmoid(-zt)  # log p, log (1 - p)
    lp_s, lq_s = F.logsigmoid(zs), F.logsigmoid(-zs)
    return lp_t.exp() * (lp_t - lp_s) + lq_t.exp() * (lq_t - lq_s)
