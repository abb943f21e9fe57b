"""MS-CA: multi-scale context alignment (spec section 4).

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
    """Global-context transform of spec section 4, computed as the additive per-channel term.

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
        logits = torch.einsum("bcn,c->bn", feat, self.key.weight[0].to(feat.dtype))
        a = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).to(feat.dtype)
        return torch.einsum("bcn,bn->bc", feat, a)

    def delta(self, feat: torch.Tensor) -> torch.Tensor:
        """The additive context term ``W2 ReLU(GN(W1 ctx))``: ``B x C x N -> B x C``."""
        ctx = self.context(feat)
        h = self.w1(ctx.to(self.w1.weight.dtype))
        h = torch.relu(self.norm(h[:, :, None]))[:, :, 0]
        return self.w2(h).to(feat.dtype)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """``R(F) = F + delta(F)`` for a flattened ``B x C x N`` feature."""
        return feat + self.delta(feat)[:, :, None]


def gc_alignment_loss(
    diff: torch.Tensor,
    delta_student: torch.Tensor,
    delta_teacher: torch.Tensor,
    diff2: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_{b,c,v} (R_S(S~) - R_T(T))**2`` from ``diff = S~ - T`` (``B x C x N``).

    Since ``R(F) = F + delta`` with ``delta`` constant over voxels, the residual is
    ``diff + (delta_S - delta_T)`` and its mean square expands to
    ``sum_bc [ sum_v diff^2 + 2 d_bc sum_v diff + N d_bc^2 ] / (B C N)``: two reductions of
    ``diff`` and no second ``B x C x N`` tensor (``diff2 = diff**2`` is reused when given).
    """
    B, C, N = diff.shape
    d = delta_student - delta_teacher
    s1 = diff.sum(-1)
    s2 = (diff.square() if diff2 is None else diff2).sum(-1)
    return (s2 + 2 * d * s1 + N * d.square()).sum() / (B * C * N)


def affinity_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Voxel-affinity alignment ``||A_S - A_T||_F^2 / N^2`` with ``A = Z^T Z`` (spec section 4).

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
