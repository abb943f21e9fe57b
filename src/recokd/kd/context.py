"""MS-CA: multi-scale context alignment (docs/method.md section 4).

Two variants:

- ``"gc"`` (default): a global-context block per level and branch, ``R(F) = F + W2 ReLU(GN(W1 ctx))``
  with ``ctx = sum_v softmax_v(w_k . F[:, v]) F[:, v]``; the loss is ``mean (R_S(S~) - R_T(T))**2``.
- ``"affinity"``: voxel-affinity alignment ``||Z_S^T Z_S - Z_T^T Z_T||_F^2 / N^2`` computed through
  ``C x C`` Gram matrices, never the ``N x N`` affinity.
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalContextBlock(nn.Module):
    """Global-context transform of docs/method.md section 4, computed as the additive per-channel term.

    ``R(F) = F + delta(F)`` where ``delta(F) = W2 ReLU(GN(W1 ctx))`` is a ``B x C`` vector broadcast
    over voxels, so :meth:`delta` is all a loss needs (``R`` itself is :meth:`forward`).

    Parameters: ``w_k`` (C -> 1), ``W1`` (C -> C/2), ``GroupNorm(1, C/2)``, ``W2`` (C/2 -> C) with
    zero-initialised weight and bias, so ``R`` starts as the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(1, channels // 2)
        # w_k, a 1x1x1 conv C -> 1; no bias: a constant shift cancels in the softmax over voxels
        self.key = nn.Linear(channels, 1, bias=False)
        self.w1 = nn.Linear(channels, hidden)
        self.norm = nn.GroupNorm(1, hidden)
        self.w2 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.w2.weight)
        nn.init.zeros_(self.w2.bias)

    def context(self, feat: torch.Tensor) -> torch.Tensor:
        """``ctx = sum_v a(v) F[:, v]`` with ``a = softmax_v(w_k . F[:, v])``; ``B x C x N -> B x C``."""
        logits = _project(feat, self.key.weight[0].to(feat.dtype))
        return _pool(feat, _softmax_voxels(logits))

    def transform(self, ctx: torch.Tensor) -> torch.Tensor:
        """``W2 ReLU(GN(W1 ctx))``: ``B x C -> B x C``."""
        h = self.w1(ctx.to(self.w1.weight.dtype))
        h = torch.relu(self.norm(h[:, :, None]))[:, :, 0]
        return self.w2(h).to(ctx.dtype)

    def delta(self, feat: torch.Tensor) -> torch.Tensor:
        """The additive context term ``W2 ReLU(GN(W1 ctx))``: ``B x C x N -> B x C``."""
        return self.transform(self.context(feat))

    def delta_affine(self, feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``delta(W F + b)`` without forming ``W F + b`` (``F``: ``B x C' x N``, ``W``: ``C x C'``).

        The key logits and the context are linear in the feature: ``w_k . (W F + b) = (W^T w_k) . F
        + w_k . b`` and ``sum_v a(v) (W F + b)[:, v] = W (F a) + b`` (the weights ``a`` sum to 1), so
        both are computed on the narrow ``C'``-channel feature.
        """
        k = self.key.weight[0].to(feat.dtype)
        logits = _project(feat, weight.t() @ k) + k @ bias
        ctx = _pool(feat, _softmax_voxels(logits)) @ weight.t() + bias
        return self.transform(ctx)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """``R(F) = F + delta(F)`` for a flattened ``B x C x N`` feature."""
        return feat + self.delta(feat)[:, :, None]


def _project(feat: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``sum_c vector[c] feat[:, c, v]``: ``B x C x N, C -> B x N`` (a batched matmul on the layout as
    it is; an einsum here transposed the whole feature first)."""
    B, C, _ = feat.shape
    return torch.bmm(vector.view(1, 1, C).expand(B, 1, C), feat)[:, 0]


def _softmax_voxels(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over voxels in at least float32, returned in the logits' dtype."""
    return torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).to(logits.dtype)


def _pool(feat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_v weights[:, v] feat[:, :, v]``: ``B x C x N, B x N -> B x C``."""
    return torch.bmm(feat, weights[:, :, None])[:, :, 0]


def gc_alignment_loss(
    sum_diff: torch.Tensor,
    sum_sq_diff: torch.Tensor,
    delta_student: torch.Tensor,
    delta_teacher: torch.Tensor,
    num_voxels: int,
) -> torch.Tensor:
    """``mean_{b,c,v} (R_S(S~) - R_T(T))**2`` from per-channel sums of ``diff = S~ - T``.

    Since ``R(F) = F + delta`` with ``delta`` constant over voxels, the residual is
    ``diff + d`` with ``d = delta_S - delta_T`` (``B x C``), and its mean square is
    ``sum_bc [ sum_v diff^2 + 2 d sum_v diff + N d^2 ] / (B C N)``. ``sum_diff`` and ``sum_sq_diff``
    are ``B x C`` (sums over voxels), so no second ``B x C x N`` tensor is needed.
    """
    B, C = sum_diff.shape
    d = delta_student - delta_teacher
    return (sum_sq_diff + 2 * d * sum_diff + num_voxels * d.square()).sum() / (B * C * num_voxels)


def affinity_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Voxel-affinity alignment ``||A_S - A_T||_F^2 / N^2`` with ``A = Z^T Z`` (docs/method.md section 4).

    ``student`` is ``B x C_s x N``, ``teacher`` ``B x C_t x N`` (channel counts may differ); ``Z``
    is each feature L2-normalised over channels per voxel. Uses the exact identity
    ``||Zs^T Zs - Zt^T Zt||_F^2 = ||Zs Zs^T||^2 - 2 ||Zs Zt^T||^2 + ||Zt Zt^T||^2`` (C x C matrices,
    linear in N). Averaged over the batch. Computed in at least float32.
    """
    dtype = torch.promote_types(student.dtype, torch.float32)
    zs = nn.functional.normalize(student.to(dtype), dim=1, eps=eps)
    zt = nn.functional.normalize(teacher.to(dtype), dim=1, eps=eps)
    N = zs.shape[-1]
    ss = torch.bmm(zs, zs.transpose(1, 2)).square().sum((1, 2))
    st = torch.bmm(zs, zt.transpose(1, 2)).square().sum((1, 2))
    tt = torch.bmm(zt, zt.transpose(1, 2)).square().sum((1, 2))
    return ((ss - 2 * st + tt) / (N * N)).mean()
