"""Helpers shared by the feature-based baseline KD methods (docs/method.md section 7): pooling to a grid of
cells, option checks, L2 normalisation. Their per-level loop is :class:`recokd.kd.base.FeatureKD`'s."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recokd.errors import KDError

#: clamp of vector norms in cosine similarities / normalisations (as ``F.cosine_similarity``)
EPS = 1e-8

POOL_MODES = ("avg", "max")


def pool_to_grid(feat: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """Adaptive pooling of ``B x C x *spatial`` (2D or 3D) to at most ``grid`` cells per axis.

    Each axis of size ``s`` becomes ``min(grid, s)`` cells (axes are never upsampled); cell ``i``
    of an axis covers ``[floor(i s / g), ceil((i + 1) s / g))`` (``adaptive_*_pool``). Returns the
    cells flattened, ``B x C x n`` with ``n = prod min(grid, s)``, in row-major order.
    """
    if mode not in POOL_MODES:
        raise KDError(f"pool must be one of {POOL_MODES}, got {mode!r}")
    size = tuple(min(int(grid), int(s)) for s in feat.shape[2:])
    if feat.dim() == 5:
        pool = F.adaptive_avg_pool3d if mode == "avg" else F.adaptive_max_pool3d
    elif feat.dim() == 4:
        pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    else:
        raise KDError(f"expected a B x C x D x H x W or B x C x H x W feature, got {tuple(feat.shape)}")
    return pool(feat, size).flatten(2)


def check_grid(grid: int, pool: str) -> None:
    """Raise a clear error for a bad ``grid`` / ``pool`` option."""
    if int(grid) != grid or grid < 1:
        raise KDError(f"grid must be a positive integer (cells per axis), got {grid!r}")
    if pool not in POOL_MODES:
        raise KDError(f"pool must be one of {POOL_MODES}, got {pool!r}")


def l2_normalise(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x / max(||x||_2, EPS)`` along ``dim`` (zero vectors stay zero)."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(EPS)
