"""Straightforward reference implementations of ReCo-KD, written directly from the spec
(../shared/spec/reco-kd.md sections 3-5) with explicit loops and an explicit N x N affinity.

Slow and memory hungry on purpose: they exist to check the fast implementation in
``recokd.kd`` and as the baseline of ``benchmarks/kd_loss.py``.
"""

from __future__ import annotations

import torch


def ref_attention(f: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """f: C x N -> (A_sp: N, A_ch: C)."""
    C, N = f.shape
    g = f.abs().mean(0)
    h = f.abs().mean(1)
    return N * torch.softmax(g / temperature, 0), C * torch.softmax(h / temperature, 0)


def ref_weights(y: torch.Tensor, num_classes: int, tau: float = 1.0, ignore_label=None, regions=False):
    """y: (1 x N) integer labels or (R x N) binary regions -> (W_fg, W_bg), each N."""
    if regions:
        if ignore_label is not None:
            valid = y[-1] < 0.5
            y = y[:-1]
        else:
            valid = torch.ones(y.shape[1], dtype=torch.bool)
        w_fg = torch.zeros(y.shape[1], dtype=torch.float64)
        for r in range(y.shape[0]):
            m = (y[r] > 0.5) & valid
            n_r = int((y[r] > 0.5).sum())
            if n_r > 0:
                w_fg = torch.maximum(w_fg, m.double() / n_r**tau)
        in_any = (y > 0.5).any(0)
        bg = ~in_any & valid
    else:
        y = y[0]
        valid = torch.ones_like(y, dtype=torch.bool) if ignore_label is None else y != ignore_label
        w_fg = torch.zeros(y.shape[0], dtype=torch.float64)
        for k in range(1, num_classes):
            m = (y == k) & valid
            n_k = int(m.sum())
            if n_k > 0:
                w_fg = w_fg + m.double() / n_k**tau
        bg = (y == 0) & valid
    n_bg = int(bg.sum())
    w_bg = bg.double() / n_bg**tau if n_bg > 0 else torch.zeros_like(w_fg)
    return w_fg, w_bg


def ref_gc(block, f: torch.Tensor) -> torch.Tensor:
    """R(F) = F + W2 ReLU(GN(W1 ctx)), ctx = sum_v softmax_v(w_k . F[:,v]) F[:,v]; f: C x N."""
    logits = block.key.weight[0] @ f
    a = torch.softmax(logits, 0)
    ctx = (f * a[None]).sum(1)
    h = block.w1.weight @ ctx + block.w1.bias
    mu, var = h.mean(), h.var(unbiased=False)
    h = (h - mu) / torch.sqrt(var + block.norm.eps) * block.norm.weight + block.norm.bias
    delta = block.w2.weight @ torch.relu(h) + block.w2.bias
    return f + delta[:, None]


def ref_affinity(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """||Z_S^T Z_S - Z_T^T Z_T||_F^2 / N^2 with the explicit N x N matrices; s: Cs x N, t: Ct x N."""
    zs = s / s.norm(dim=0, keepdim=True).clamp_min(1e-12)
    zt = t / t.norm(dim=0, keepdim=True).clamp_min(1e-12)
    N = s.shape[1]
    return ((zs.T @ zs - zt.T @ zt) ** 2).sum() / N**2


def ref_reco(
    model,
    student_feats,
    teacher_feats,
    target,
    *,
    num_classes,
    temperature=0.5,
    tau=1.0,
    ignore_label=None,
    regions=False,
):
    """Total ReCo-KD loss and per-level components of ``model`` (a ReCoKD, used for its
    parameters and options), from the spec's formulas."""
    total = 0.0
    parts = {}
    for level, (s5, t5) in enumerate(zip(student_feats, teacher_feats, strict=True)):
        B, C = t5.shape[:2]
        size = t5.shape[2:]
        y5 = torch.nn.functional.interpolate(target.double(), size=size, mode="nearest")
        num_fg = den_fg = num_bg = den_bg = 0.0
        att_ch = att_sp = ctx = 0.0
        for b in range(B):
            s = s5[b].reshape(s5.shape[1], -1)
            t = t5[b].reshape(C, -1)
            N = t.shape[1]
            adapter = model.adapters[level]
            s_ad = s if isinstance(adapter, torch.nn.Identity) else adapter.weight @ s + adapter.bias[:, None]
            a_sp_t, a_ch_t = ref_attention(t, temperature)
            a_sp_s, a_ch_s = ref_attention(s_ad, temperature)
            e = torch.zeros(N, dtype=torch.float64)
            for c in range(C):
                e = e + a_ch_t[c] * a_sp_t * (s_ad[c] - t[c]) ** 2
            y = y5[b].reshape(y5.shape[1], -1)
            if not regions:
                y = y.long()
            w_fg, w_bg = ref_weights(y, num_classes, tau, ignore_label, regions)
            num_fg = num_fg + (w_fg * e).sum()
            den_fg = den_fg + w_fg.sum()
            num_bg = num_bg + (w_bg * e).sum()
            den_bg = den_bg + w_bg.sum()
            att_ch = att_ch + (a_ch_s - a_ch_t).abs().sum()
            att_sp = att_sp + (a_sp_s - a_sp_t).abs().sum()
            if model.context == "gc":
                r_s = ref_gc(model.context_student[level], s_ad)
                r_t = ref_gc(model.context_teacher[level], t)
                ctx = ctx + ((r_s - r_t) ** 2).sum() / (B * C * N)
            else:
                ctx = ctx + ref_affinity(s, t) / B
        fg = num_fg / (C * den_fg) if float(den_fg) > 0 else torch.zeros((), dtype=torch.float64)
        bg = num_bg / (C * den_bg) if float(den_bg) > 0 else torch.zeros((), dtype=torch.float64)
        att = att_ch / (B * C) + att_sp / (B * t5[0, 0].numel())
        comps = {"fg": fg, "bg": bg, "att": att, "ctx": ctx}
        for k, v in comps.items():
            parts[f"{k}/{level}"] = v
        total = total + model.weights[level] * sum(model.coef[k] * v for k, v in comps.items())
    return total, parts
