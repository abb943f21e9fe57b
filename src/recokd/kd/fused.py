"""Memory-lean, chunked computation of the non-linear MS-SARD statistics (docs/method.md section 3).

MS-SARD and the context loss need, per level, only a few reductions of the adapted student
feature ``S~ = W S + b`` (``B x C x N``) against the teacher feature ``T``:

    R1[b,v] = sum_c a[b,c] (S~[b,c,v] - T[b,c,v])**2      (a = A_ch_T; gives E = A_sp_T * R1)
    R2[b,v] = sum_c |S~[b,c,v]|                            (student spatial attention)
    R3[b,c] = sum_v |S~[b,c,v]|                            (student channel attention)
    R7[b,c] = sum_v (S~[b,c,v] - T[b,c,v])**2              (context loss)

:func:`sard_statistics` computes them chunk by chunk over voxels, so ``S~`` and ``S~ - T`` only
ever exist one cache-sized chunk at a time, and its backward recomputes them the same way
instead of storing them: nothing of size ``B x C x N`` is kept for the backward pass besides
the inputs. The gradient is exact (no algebraic expansion of the squares, so no cancellation).

``compiled=True`` runs the same per-chunk forward and backward formulas through ``torch.compile``
(one compilation per feature shape, up to a minute each on a CPU): the element-wise passes fuse
into a few kernels. On a 2-core CPU the whole loss is no faster than the chunked eager path
(``benchmarks/kd_loss.py``); it is meant for GPUs (not measured here). Requires a working
``torch.compile`` backend (a C++ compiler on CPU, Triton on CUDA).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from recokd.errors import KDError

#: voxels per chunk: 32 channels x 16384 voxels x 4 bytes = 2 MiB per temporary
DEFAULT_CHUNK = 16384


def _adapt(s: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return s
    B, _, n = s.shape
    return torch.baddbmm(bias[None, :, None].expand(B, -1, n), weight.expand(B, -1, -1), s)


def _forward_chunk(s_c, weight, bias, t_c, a_ch):
    """``(R1, R2, R3, R7)`` of one chunk, written plainly (the ``torch.compile`` path)."""
    s_ad = _adapt(s_c, weight, bias)
    mag = s_ad.abs()
    d2 = (s_ad - t_c).square()
    return (a_ch[:, :, None] * d2).sum(1), mag.sum(1), mag.sum(2), d2.sum(2)


def _backward_chunk(s_c, weight, bias, t_c, a_ch, g1, g2, g3, g7):
    """Gradients of one chunk w.r.t. ``s`` (and ``weight``, ``bias``), plainly (``torch.compile`` path).

    ``dL/dS~ = 2 (a g1 + g7) (S~ - T) + sign(S~) (g2 + g3)`` (see :class:`_SardStatistics`).
    """
    s_ad = _adapt(s_c, weight, bias)
    g = 2.0 * (a_ch[:, :, None] * g1[:, None, :] + g7[:, :, None]) * (s_ad - t_c)
    g = g + s_ad.sign() * (g2[:, None, :] + g3[:, :, None])
    if weight is None:
        return g, None, None
    return torch.matmul(weight.t(), g), torch.matmul(g, s_c.transpose(1, 2)).sum(0), g.sum((0, 2))


_COMPILED: dict[str, object] = {}


def _compiled(name: str):
    """``torch.compile`` of :func:`_forward_chunk` / :func:`_backward_chunk`, built on first use."""
    if name not in _COMPILED:
        fn = {"forward": _forward_chunk, "backward": _backward_chunk}[name]
        _COMPILED[name] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[name]


class _SardStatistics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, weight, bias, t, a_ch, chunk, compiled=False):  # noqa: D401 - autograd API
        ctx.save_for_backward(s, weight, bias, t, a_ch)
        ctx.chunk = chunk
        ctx.compiled = compiled
        if compiled:  # one chunk: one compiled graph per feature shape
            return _compiled("forward")(s, weight, bias, t, a_ch)
        B, C, N = t.shape
        r1 = t.new_empty(B, N)
        r2 = t.new_empty(B, N)
        r3 = t.new_zeros(B, C)
        r7 = t.new_zeros(B, C)
        a_row = a_ch[:, None, :]  # B x 1 x C
        for lo in range(0, N, chunk):
            hi = min(N, lo + chunk)
            s_ad = _adapt(s[:, :, lo:hi], weight, bias)
            mag = s_ad.abs()
            r3 += mag.sum(2)
            r2[:, lo:hi] = mag.sum(1)
            d2 = mag.copy_(s_ad).sub_(t[:, :, lo:hi]).square_()  # reuse the buffer: S~ may be a view of s
            r7 += d2.sum(2)
            r1[:, lo:hi] = torch.bmm(a_row, d2)[:, 0]
        return r1, r2, r3, r7

    @staticmethod
    def backward(ctx, g1, g2, g3, g7):
        s, weight, bias, t, a_ch = ctx.saved_tensors
        chunk = ctx.chunk
        B, C, N = t.shape
        # d/dS~ of  sum g1 * sum_c a (S~-T)^2 + sum g7 * sum_v (S~-T)^2  = (S~-T) * 2 (a g1 + g7)
        # d/dS~ of  sum g2 * sum_c |S~|       + sum g3 * sum_v |S~|       = sign(S~) * (g2 + g3)
        # both factors are rank-1 updates of a per-channel term: one baddbmm each
        g1 = t.new_zeros(B, N) if g1 is None else g1
        g2 = t.new_zeros(B, N) if g2 is None else g2
        g3 = t.new_zeros(B, C) if g3 is None else g3
        g7 = t.new_zeros(B, C) if g7 is None else g7
        if ctx.compiled:
            grad_s, grad_w, grad_b = _compiled("backward")(s, weight, bias, t, a_ch, g1, g2, g3, g7)
            return grad_s, grad_w, grad_b, None, None, None, None
        two_a = (2.0 * a_ch)[:, :, None]  # B x C x 1
        two_g7 = (2.0 * g7)[:, :, None]
        g3c = g3[:, :, None]
        ones = t.new_ones(B, C, 1)
        grad_s = torch.empty_like(s) if ctx.needs_input_grad[0] else None
        need_w = weight is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_w else None
        w_t = weight.t().expand(B, -1, -1) if weight is not None else None
        for lo in range(0, N, chunk):
            hi = min(N, lo + chunk)
            n = hi - lo
            s_c = s[:, :, lo:hi]
            s_ad = _adapt(s_c, weight, bias)
            g = torch.baddbmm(two_g7.expand(B, C, n), two_a, g1[:, None, lo:hi])
            g.mul_(s_ad - t[:, :, lo:hi])
            h = torch.baddbmm(g3c.expand(B, C, n), ones, g2[:, None, lo:hi])
            sign = s_ad.sign_() if weight is not None else s_ad.sign()  # s_ad is a view of s if W is None
            g.addcmul_(sign, h)
            if weight is None:
                if grad_s is not None:
                    grad_s[:, :, lo:hi] = g
                continue
            if grad_s is not None:
                grad_s[:, :, lo:hi] = torch.bmm(w_t, g)
            if need_w:
                grad_w += torch.bmm(g, s_c.transpose(1, 2)).sum(0)
                grad_b += g.sum((0, 2))
        return grad_s, grad_w, grad_b, None, None, None, None


class SardStatistics(NamedTuple):
    """The per-level reductions of the module docstring (``R1, R2, R3, R7``), by name."""

    weighted_sq_diff: torch.Tensor  #: R1, ``B x N``: sum_c a[c] (S~ - T)**2
    abs_sum_over_channels: torch.Tensor  #: R2, ``B x N``: sum_c |S~|
    abs_sum_over_voxels: torch.Tensor  #: R3, ``B x C``: sum_v |S~|
    sq_diff_over_voxels: torch.Tensor  #: R7, ``B x C``: sum_v (S~ - T)**2


def sard_statistics(
    s: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    t: torch.Tensor,
    a_ch: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    compiled: bool = False,
) -> SardStatistics:
    """``(R1, R2, R3, R7)`` of the module docstring as a :class:`SardStatistics`, differentiable
    w.r.t. ``s``, ``weight``, ``bias``.

    Args:
        s: student feature ``B x C' x N`` (contiguous; flattened spatial axes).
        weight, bias: the adapter ``C x C'`` and ``C`` (``None`` for an identity adapter, ``C' = C``).
        t: teacher feature ``B x C x N`` (no gradient).
        a_ch: teacher channel attention ``B x C`` (no gradient).
        chunk: voxels per chunk (eager path).
        compiled: run the ``torch.compile``-d kernels (see the module docstring) instead.
    """
    if (weight is None) != (bias is None):
        raise KDError("adapter weight and bias must both be given or both be None")
    return SardStatistics(*_SardStatistics.apply(
        s.contiguous(), weight, bias, t.detach().contiguous(), a_ch.detach(), int(chunk), bool(compiled)
    ))
