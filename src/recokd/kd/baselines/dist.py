"""DIST (Huang et al., NeurIPS 2022) on full-resolution segmentation logits (docs/method.md section 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recokd.errors import KDError
from recokd.kd.base import KDMethod
from recokd.kd.baselines.logits import full_resolution_logits

#: lower bound of the product of the two norms in the Pearson correlation: a constant row or
#: column (zero variance) then has correlation 0 instead of NaN
PEARSON_EPS = 1e-8


class DISTKD(KDMethod):
    """DIST, "Knowledge Distillation from A Stronger Teacher": match *relations* of the predictions.

    Every voxel is an instance (docs/method.md section 7). With ``Y = softmax(z / tau)`` over the
    ``K`` classes (``sigmoid(z / tau)`` per channel if ``regions``), flattened from
    ``B x K x D x H x W`` to ``M = B * D * H * W`` voxel rows by ``K`` classes::

        inter = tau^2 * mean_{v=1..M} (1 - rho(Y_S[v, :], Y_T[v, :]))   # over the K classes of a voxel
        intra = tau^2 * mean_{k=1..K} (1 - rho(Y_S[:, k], Y_T[:, k]))   # over all M voxels of the batch
        loss  = beta * inter + gamma * intra

    ``rho(a, b) = <a - mean a, b - mean b> / max(|a - mean a| |b - mean b|, eps)``, ``eps = 1e-8``,
    so a constant row/column has correlation 0, never NaN. (The official code adds ``eps`` to the
    denominator instead; clamping keeps ``rho(a, a) = 1`` exactly, so the loss is 0 when student and
    teacher agree, and differs from it only by ``O(eps / (|a| |b|))``.)

    Defaults ``tau = 1, beta = gamma = 1``: the official segmentation code (hunto/DIST_KD,
    ``segmentation/losses/dist_kd.py`` and ``train_kd.py``, Cityscapes) builds ``DIST()`` with
    ``beta = gamma = 1`` and no temperature (i.e. ``tau = 1``), flattening all pixels of the batch
    into rows exactly as here (the seg code weights the loss by 1 and has no ``tau``). These are
    also the defaults of classification implementations of DIST (e.g. huawei-noah's VanillaKD
    ``losses/dist.py``). The ``tau^2`` factor follows the classification code and is 1 at the
    default ``tau``.

    Args:
        student_channels, teacher_channels: unused (the method reads no features).
        num_classes: ``K >= 2`` (a correlation over one class is undefined).
        tau: softmax temperature, finite and ``> 0`` (ReCo-KD also has a ``tau``: in a combination
            such as ``reco+dist:0.5`` set this one as ``dist.tau``).
        beta: weight of the inter-class (per-voxel) relation, finite and ``>= 0``.
        gamma: weight of the intra-class (per-class, across voxels) relation, finite and ``>= 0``.
        regions: nnU-Net region training (independent sigmoid outputs): ``Y = sigmoid(z / tau)``
            per channel, as the official seg code's ``use_sigmoid`` option; the correlations are
            then taken over these ``K`` region probabilities unchanged.

    ``forward(..., student_logits=B x K x D x H x W, teacher_logits=same)``; a deep-supervision
    list is accepted (its first, full-resolution entry is used). Features and target are ignored;
    the teacher logits are detached. Returns ``{"loss": tensor, "inter": float, "intra": float}``
    (``inter`` and ``intra`` as above, with ``tau^2``, before ``beta`` / ``gamma``). Runs outside
    autocast, in at least float32.
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
        tau: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        regions: bool = False,
    ):
        super().__init__()
        if not (tau > 0 and tau < float("inf")):
            raise KDError(f"tau must be finite and > 0, got {tau}")
        for name, value in (("beta", beta), ("gamma", gamma)):
            if not (value >= 0 and value < float("inf")):
                raise KDError(f"{name} must be finite and >= 0, got {value}")
        if num_classes < 2:
            raise KDError(f"num_classes must be >= 2 (DIST correlates over classes), got {num_classes}")
        self.num_classes = int(num_classes)
        self.tau = float(tau)
        self.beta = float(beta)
        self.gamma = float(gamma)
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
        zs, zt = full_resolution_logits("DISTKD", self.num_classes, student_logits, teacher_logits)
        tau = self.tau
        B, K = zs.shape[:2]
        with torch.autocast(device_type=zs.device.type, enabled=False):
            dtype = torch.promote_types(torch.promote_types(zs.dtype, zt.dtype), torch.float32)
            zs = zs.to(dtype).reshape(B, K, -1) / tau
            zt = zt.detach().to(dtype).reshape(B, K, -1) / tau
            if self.regions:
                ys, yt = torch.sigmoid(zs), torch.sigmoid(zt)
            else:
                ys, yt = torch.softmax(zs, dim=1), torch.softmax(zt, dim=1)
            # B x K x N: inter-class = over dim 1 per (b, v); intra-class = over dims (0, 2) per k
            inter = (1 - _pearson(ys, yt, dims=(1,))).mean()
            intra = (1 - _pearson(ys, yt, dims=(0, 2))).mean()
            inter, intra = tau * tau * inter, tau * tau * intra
        return {
            "loss": self.beta * inter + self.gamma * intra,
            "inter": float(inter.detach()),
            "intra": float(intra.detach()),
        }

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, tau={self.tau}, beta={self.beta}, gamma={self.gamma}, "
            f"regions={self.regions}"
        )


def _pearson(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` over ``dims`` (reduced away), denominator ``>= eps``."""
    a = a - a.mean(dim=dims, keepdim=True)
    b = b - b.mean(dim=dims, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=dims) * torch.linalg.vector_norm(b, dim=dims)
    return (a * b).sum(dim=dims) / norms.clamp_min(PEARSON_EPS)
