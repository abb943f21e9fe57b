"""Straightforward reference implementations of the baseline KD methods, written directly from
the one-liners of spec section 7 (../shared/spec/reco-kd.md) and the choices stated in the
docstrings of ``recokd.kd.baselines``: per sample, per channel, per voxel loops, explicit pooling
windows, explicit similarity matrices. Slow on purpose; float64 inputs expected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-8


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm().clamp_min(EPS) * b.norm().clamp_min(EPS))


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max())
    return e / e.sum()


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of two probability vectors."""
    return (p * (torch.log(p) - torch.log(q))).sum()


def _huber(x: torch.Tensor) -> torch.Tensor:
    """Smooth L1 with beta 1, elementwise."""
    return torch.where(x.abs() < 1, 0.5 * x**2, x.abs() - 0.5)


def _apply_adapter(adapter, f: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 conv by hand: ``out[o, v] = sum_i W[o, i] f[i, v] + b[o]`` (f: C x *spatial)."""
    if isinstance(adapter, torch.nn.Identity):
        return f
    C_out, C_in = adapter.weight.shape
    flat = f.reshape(C_in, -1)
    rows = [sum(adapter.weight[o, i] * flat[i] for i in range(C_in)) + adapter.bias[o] for o in range(C_out)]
    return torch.stack(rows).reshape(C_out, *f.shape[1:])


def ref_pool(f: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """Adaptive pooling by explicit windows: ``f`` (C x D x H x W) -> cells (C x n), row-major.

    Axis of size ``s`` -> ``g = min(grid, s)`` cells; cell ``i`` covers ``[floor(i s/g), ceil((i+1) s/g))``.
    """
    spatial = f.shape[1:]
    out_size = [min(grid, s) for s in spatial]
    windows = [
        [(math.floor(i * s / g), math.ceil((i + 1) * s / g)) for i in range(g)]
        for s, g in zip(spatial, out_size, strict=True)
    ]
    cells = []
    for wz in windows[0]:
        for wy in windows[1]:
            for wx in windows[2]:
                block = f[:, wz[0]:wz[1], wy[0]:wy[1], wx[0]:wx[1]].reshape(f.shape[0], -1)
                cells.append(block.mean(1) if mode == "avg" else block.max(1).values)
    return torch.stack(cells, dim=1)


# ---- per-level losses (s, t: B x C x D x H x W) --------------------------------------------------


def ref_logits(zs: torch.Tensor, zt: torch.Tensor, temperature: float, regions: bool = False) -> torch.Tensor:
    """``T^2 * mean over voxels of KL(softmax(z_T/T) || softmax(z_S/T))`` (sigmoid per channel if regions)."""
    B, K = zs.shape[:2]
    zs, zt = zs.reshape(B, K, -1), zt.reshape(B, K, -1)
    T = temperature
    total = 0.0
    for b in range(B):
        for v in range(zs.shape[2]):
            if regions:
                for k in range(K):
                    p, q = torch.sigmoid(zt[b, k, v] / T), torch.sigmoid(zs[b, k, v] / T)
                    total = total + _kl(torch.stack([p, 1 - p]), torch.stack([q, 1 - q]))
            else:
                total = total + _kl(_softmax(zt[b, :, v] / T), _softmax(zs[b, :, v] / T))
    return T * T * total / (B * zs.shape[2])


def ref_fitnet(adapter, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``mean (A(S) - T)^2``."""
    total = 0.0
    for b in range(s.shape[0]):
        total = total + ((_apply_adapter(adapter, s[b]) - t[b]) ** 2).sum()
    return total / t.numel()


def ref_at(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``mean_b || a_S/|a_S| - a_T/|a_T| ||_2`` with ``a = mean_c F^2`` flattened."""
    total = 0.0
    for b in range(s.shape[0]):
        a_s = (s[b] ** 2).mean(0).flatten()
        a_t = (t[b] ** 2).mean(0).flatten()
        total = total + (a_s / a_s.norm().clamp_min(EPS) - a_t / a_t.norm().clamp_min(EPS)).norm()
    return total / s.shape[0]


def ref_cwd(adapter, s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 / (B C) sum_{b,c} KL(softmax_v(T[b,c]/T) || softmax_v(A(S)[b,c]/T))``."""
    B, C = t.shape[:2]
    T = temperature
    total = 0.0
    for b in range(B):
        a = _apply_adapter(adapter, s[b])
        for c in range(C):
            total = total + _kl(_softmax(t[b, c].flatten() / T), _softmax(a[c].flatten() / T))
    return T * T * total / (B * C)


def ref_skd(s: torch.Tensor, t: torch.Tensor, grid: int, pool: str) -> torch.Tensor:
    """``mean_{b,i,j} (cos(s_i, s_j) - cos(t_i, t_j))^2`` over pooled cells."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        ps, pt = ref_pool(s[b], grid, pool), ref_pool(t[b], grid, pool)
        n = ps.shape[1]
        for i in range(n):
            for j in range(n):
                total = total + (_cos(ps[:, i], ps[:, j]) - _cos(pt[:, i], pt[:, j])) ** 2
                count += 1
    return total / count


def ref_cirkd(s: torch.Tensor, t: torch.Tensor, grid: int, pool: str, temperature: float) -> torch.Tensor:
    """For all sample pairs (i, j) and rows r: ``KL(softmax_m(cos(t_i[r], t_j[m])/tau) || same for s)``,
    summed, divided by ``B^2 n``."""
    B = s.shape[0]
    ps = [ref_pool(s[b], grid, pool) for b in range(B)]
    pt = [ref_pool(t[b], grid, pool) for b in range(B)]
    n = ps[0].shape[1]
    total = 0.0
    for i in range(B):
        for j in range(B):
            for r in range(n):
                row_s = torch.stack([_cos(ps[i][:, r], ps[j][:, m]) for m in range(n)]) / temperature
                row_t = torch.stack([_cos(pt[i][:, r], pt[j][:, m]) for m in range(n)]) / temperature
                total = total + _kl(_softmax(row_t), _softmax(row_s))
    return total / (B * B * n)


def _rkd_set(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Point set x (n x C) -> (psi_D: n x n, psi_A: n x n x n indexed [j, i, k] = <e_ij, e_kj>)."""
    n = x.shape[0]
    d = torch.zeros(n, n, dtype=x.dtype)
    e = torch.zeros(n, n, x.shape[1], dtype=x.dtype)  # e[j, i] = (x_i - x_j) / |x_i - x_j|
    for i in range(n):
        for j in range(n):
            diff = x[i] - x[j]
            if i != j and bool((diff != 0).any()):  # coincident points: distance 0, no direction
                d[i, j] = diff.norm()
                e[j, i] = diff / diff.norm()
    if n >= 2:
        d = d / (d.sum() / (n * (n - 1)))
    angle = torch.stack([e[j] @ e[j].T for j in range(n)])
    return d, angle


def ref_rkd(s, t, grid, pool, across_batch, distance_weight, angle_weight):
    """``w_d mean huber(psi_D^S - psi_D^T) + w_a mean huber(psi_A^S - psi_A^T)`` over point sets."""
    B = s.shape[0]
    cells_s = [ref_pool(s[b], grid, pool).T for b in range(B)]
    cells_t = [ref_pool(t[b], grid, pool).T for b in range(B)]
    if across_batch:
        cells_s, cells_t = [torch.cat(cells_s)], [torch.cat(cells_t)]
    dist = angle = 0.0
    for xs, xt in zip(cells_s, cells_t, strict=True):
        ds, as_ = _rkd_set(xs)
        dt, at = _rkd_set(xt)
        dist = dist + _huber(ds - dt).mean() / len(cells_s)
        angle = angle + _huber(as_ - at).mean() / len(cells_s)
    return distance_weight * dist + angle_weight * angle, dist, angle


def ref_ifvd(s, t, target, num_classes, ignore_label=None, regions=False):
    """Per sample: prototype = mean feature of each class (region, and background = in no region);
    ``mean over valid (voxel, class) memberships of (cos(s_v, p^S) - cos(t_v, p^T))^2``."""
    y = F.interpolate(target.double(), size=s.shape[2:], mode="nearest")
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        fs, ft = s[b].reshape(s.shape[1], -1), t[b].reshape(t.shape[1], -1)
        N = fs.shape[1]
        yb = y[b].reshape(y.shape[1], -1)
        if regions:
            valid = yb[-1] < 0.5 if ignore_label is not None else torch.ones(N, dtype=torch.bool)
            regs = yb[:-1] > 0.5 if ignore_label is not None else yb > 0.5
            masks = [regs[r] & valid for r in range(regs.shape[0])] + [~regs.any(0) & valid]
        else:
            lab = yb[0].long()
            masks = [(lab == k) & (lab != (ignore_label if ignore_label is not None else -1))
                     for k in range(num_classes)]
        for m in masks:
            if not m.any():
                continue
            proto_s = fs[:, m].mean(1)
            proto_t = ft[:, m].mean(1)
            for v in torch.nonzero(m).flatten().tolist():
                total = total + (_cos(fs[:, v], proto_s) - _cos(ft[:, v], proto_t)) ** 2
                count += 1
    return total / max(count, 1)


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``sum (a - mean a)(b - mean b) / max(sqrt(sum (a - mean a)^2) sqrt(sum (b - mean b)^2), eps)``."""
    da, db = a - a.sum() / a.numel(), b - b.sum() / b.numel()
    denominator = torch.sqrt((da * da).sum()) * torch.sqrt((db * db).sum())
    return (da * db).sum() / torch.maximum(denominator, torch.tensor(eps, dtype=denominator.dtype))


def ref_dist(zs: torch.Tensor, zt: torch.Tensor, tau: float, beta: float, gamma: float,
             regions: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DIST on B x K x *spatial logits, every voxel an instance: build the M x K probability table
    row by row (``M = B * N``; softmax over classes of each voxel, or a sigmoid per channel), then
    ``inter = tau^2 mean_v (1 - rho(row_v^S, row_v^T))``, ``intra = tau^2 mean_k (1 - rho(col_k^S,
    col_k^T))``; returns ``(beta * inter + gamma * intra, inter, intra)``."""
    B, K = zs.shape[:2]
    zs, zt = zs.reshape(B, K, -1), zt.reshape(B, K, -1)
    rows_s, rows_t = [], []
    for b in range(B):
        for v in range(zs.shape[2]):
            if regions:
                rows_s.append(torch.stack([torch.sigmoid(zs[b, k, v] / tau) for k in range(K)]))
                rows_t.append(torch.stack([torch.sigmoid(zt[b, k, v] / tau) for k in range(K)]))
            else:
                rows_s.append(_softmax(zs[b, :, v] / tau))
                rows_t.append(_softmax(zt[b, :, v] / tau))
    ys, yt = torch.stack(rows_s), torch.stack(rows_t)  # M x K
    M = ys.shape[0]
    inter = sum(1 - _pearson(ys[v], yt[v]) for v in range(M)) / M
    intra = sum(1 - _pearson(ys[:, k], yt[:, k]) for k in range(K)) / K
    inter, intra = tau * tau * inter, tau * tau * intra
    return beta * inter + gamma * intra, inter, intra
