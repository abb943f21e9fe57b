"""Relational (pairwise) baselines of docs/method.md section 7: SKD, CIRKD (memory-free), RKD.

All three compare relations among *pooled* voxels: each level is first pooled to at most
``grid`` cells per axis (:func:`~recokd.kd.baselines.common.pool_to_grid`), so the relation
matrices are ``n x n`` with ``n <= grid**3`` (64 by default), never ``N x N`` at full resolution.
Relations are independent of the channel count, so student features are used raw (no adapter,
no parameters), as in the original methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from recokd.errors import KDError
from recokd.kd.base import FeatureKD
from recokd.kd.baselines.common import check_grid, l2_normalise, pool_to_grid


class StructuredKD(FeatureKD):
    """Pair-wise distillation of SKD (Liu et al. 2019), docs/method.md section 7:

    ``z[b] = pool(F)[b]`` L2-normalised per cell (``C x n``), ``A[b] = z[b]^T z[b]`` (``n x n``
    cosine similarities), ``L_l = mean_{b,i,j} (A_S[b,i,j] - A_T[b,i,j])**2``.

    Patch pooling: ``grid`` cells per axis (default 4, i.e. 64 nodes in 3D) with ``pool="max"``
    (the SKD and CIRKD code max-pool patches). Logs ``"skd/<l>"`` and ``"skd"``.
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        grid: int = 4,
        pool: str = "max",
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        check_grid(grid, pool)
        self.grid, self.pool = int(grid), pool
        self.coef = {"skd": 1.0}

    def level_losses(self, level, s, t, target):
        zs = l2_normalise(pool_to_grid(s, self.grid, self.pool), dim=1)
        with torch.no_grad():
            zt = l2_normalise(pool_to_grid(t, self.grid, self.pool), dim=1)
            a_t = zt.transpose(1, 2) @ zt
        a_s = zs.transpose(1, 2) @ zs
        return {"skd": ((a_s - a_t) ** 2).mean()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}, pool={self.pool!r}"


class CrossImageRelationalKD(FeatureKD):
    """Memory-free CIRKD (Yang et al. 2022; its mini-batch pixel-to-pixel term), docs/method.md section 7:

    ``z[b]`` = pooled cells of sample ``b``, L2-normalised (``C x n``); for every ordered pair of
    samples ``(i, j)`` of the batch (``i = j`` included) ``M_ij = z[i]^T z[j] / tau`` (``n x n``),
    ``L_l = 1 / (B**2 n) * sum_{i,j} sum_r KL(softmax(M_ij^T[r]) || softmax(M_ij^S[r]))``
    (row-wise softmax over the cells of sample ``j``; ``batchmean`` over rows, mean over pairs,
    exactly the CIRKD code's ``CriterionMiniBatchCrossImagePair``, without a ``tau**2`` factor).

    ``tau = 0.1`` (spec and CIRKD); ``grid`` 4 cells per axis with ``pool="avg"`` (the CIRKD code
    average-pools when it pools). Raw student features (cosine similarities need no adapter; the
    CIRKD code applies none for this term). With a batch of one only the intra-sample block
    ``(0, 0)`` remains. Logs ``"cirkd/<l>"`` and ``"cirkd"``.
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        temperature: float = 0.1,
        grid: int = 4,
        pool: str = "avg",
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        check_grid(grid, pool)
        if temperature <= 0:
            raise KDError(f"temperature must be > 0, got {temperature}")
        self.grid, self.pool, self.temperature = int(grid), pool, float(temperature)
        self.coef = {"cirkd": 1.0}

    def level_losses(self, level, s, t, target):
        zs = l2_normalise(pool_to_grid(s, self.grid, self.pool), dim=1)
        with torch.no_grad():
            zt = l2_normalise(pool_to_grid(t, self.grid, self.pool), dim=1)
            log_t = F.log_softmax(torch.einsum("icn,jcm->ijnm", zt, zt) / self.temperature, dim=-1)
        log_s = F.log_softmax(torch.einsum("icn,jcm->ijnm", zs, zs) / self.temperature, dim=-1)
        B, _, _, n = log_t.shape
        kl = (log_t.exp() * (log_t - log_s)).sum() / (B * B * n)
        return {"cirkd": kl}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.temperature}, grid={self.grid}, pool={self.pool!r}"


class RelationalKD(FeatureKD):
    """Relational KD (Park et al. 2019), docs/method.md section 7, on pooled voxel embeddings:

    points ``x_i`` = the pooled cells of one sample (``across_batch=False``, default) or of the
    whole batch (``across_batch=True``; with ``grid=1`` that is RKD on global-average embeddings).
    Per point set (``n`` points)::

        d_ij   = ||x_i - x_j||_2,  mu = mean_{i != j} d_ij,  psi_D(i,j) = d_ij / mu
        e_ij   = (x_i - x_j) / ||x_i - x_j||,               psi_A(i,j,k) = <e_ij, e_kj>
        L_dist = mean_{i,j} huber(psi_D^S - psi_D^T),   L_angle = mean_{i,j,k} huber(psi_A^S - psi_A^T)
        L_l    = w_dist L_dist + w_angle L_angle         (w_dist = 25, w_angle = 50, as the paper)

    ``huber`` is smooth L1 with ``beta = 1`` (the paper's). Means run over all ``n**2`` /
    ``n**3`` index tuples (degenerate ones are 0 on both sides), then over point sets. Default:
    per-sample relations among ``grid = 4`` cells per axis, ``pool="avg"``: with nnU-Net's batch
    of 2, two global embeddings have a single distance (always 1 after normalisation) and no
    angle, so the batch-level variant carries almost no signal. The angle term costs ``n**3``:
    keep ``grid`` small (``across_batch`` multiplies ``n`` by ``B``). Distances are computed as
    ``sqrt(max(d**2, 1e-12))`` and exactly 0 for coincident points (finite gradients; max pooling
    of overlapping windows can give coincident cells); sets of fewer than two points give 0.
    Raw student features (relations need no adapter). Logs ``"dist/<l>"``, ``"angle/<l>"`` and
    their level-weighted sums (before ``w_dist`` / ``w_angle``).
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        grid: int = 4,
        pool: str = "avg",
        across_batch: bool = False,
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        check_grid(grid, pool)
        self.grid, self.pool, self.across_batch = int(grid), pool, bool(across_batch)
        if distance_weight == 0 and angle_weight == 0:
            raise KDError("RKD needs distance_weight or angle_weight != 0 (both are 0: nothing to distil)")
        self.coef = {"dist": float(distance_weight), "angle": float(angle_weight)}

    def _points(self, f: torch.Tensor) -> torch.Tensor:
        """``B x C x *spatial`` -> point sets ``G x n x C``."""
        x = pool_to_grid(f, self.grid, self.pool).transpose(1, 2)  # B x n x C
        return x.reshape(1, -1, x.shape[-1]) if self.across_batch else x

    def level_losses(self, level, s, t, target):
        xs = self._points(s)
        with torch.no_grad():
            xt = self._points(t)
            dist_t, angle_t = _relations(xt)
        dist_s, angle_s = _relations(xs)
        out = {}
        if self.coef["dist"] != 0:
            out["dist"] = F.smooth_l1_loss(dist_s, dist_t, beta=1.0)
        if self.coef["angle"] != 0:
            out["angle"] = F.smooth_l1_loss(angle_s, angle_t, beta=1.0)
        return out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, coef={self.coef}, grid={self.grid}, pool={self.pool!r}, "
            f"across_batch={self.across_batch}"
        )


def _relations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RKD's normalised distances ``G x n x n`` and angles ``G x n x n x n`` of point sets ``G x n x C``.

    ``angle[g, j, i, k] = <e_ij, e_kj>`` (vertex ``j``); distances and difference vectors of
    coincident points (the diagonal included) are 0.
    """
    G, n, _ = x.shape
    diff = x[:, None, :, :] - x[:, :, None, :]  # diff[g, j, i] = x_i - x_j
    sq = (diff**2).sum(-1)
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    d = torch.where(off & (sq > 0), sq.clamp_min(1e-12).sqrt(), torch.zeros_like(sq))
    if n >= 2:
        mu = d.sum((1, 2), keepdim=True) / (n * (n - 1))
        d = d / mu.clamp_min(1e-12)
    e = l2_normalise(diff, dim=-1)  # G x n(j) x n(i) x C
    angle = e @ e.transpose(2, 3)  # G x n(j) x n(i) x n(k)
    return d, angle
