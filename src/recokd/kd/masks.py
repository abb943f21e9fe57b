"""Class-aware, size-normalised region weights for MS-SARD (docs/method.md section 3).

Shapes: label maps are ``B x 1 x D x H x W`` (integer classes) or ``B x R x D x H x W``
(binary region channels, nnU-Net's region-based training); weights are returned flattened,
``B x N`` with ``N = D*H*W``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from recokd.errors import KDError


def resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``B x K x D x H x W`` label/region map to spatial ``size``.

    Returns ``target`` itself when it already has that size. Labels are never interpolated, so
    the result contains only values present in the input.
    """
    if tuple(target.shape[2:]) == tuple(size):
        return target
    return F.interpolate(target.float(), size=tuple(size), mode="nearest").to(target.dtype)


def target_for_level(target: torch.Tensor | Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Pick the label map for a feature of spatial ``size``.

    ``target`` is a full-resolution map or a list of maps (nnU-Net's deep-supervision targets,
    highest resolution first). From a list, the entry whose spatial shape equals ``size`` is used;
    if none matches, the first (largest) is nearest-resized.
    """
    if isinstance(target, torch.Tensor):
        return resize_target(target, size)
    if len(target) == 0:
        raise KDError("target list is empty: expected one label map per deep-supervision level")
    for t in target:
        if tuple(t.shape[2:]) == tuple(size):
            return t
    return resize_target(target[0], size)


def _power(count: torch.Tensor, tau: float) -> torch.Tensor:
    """``count ** -tau`` with ``0 -> 0`` (absent classes contribute nothing)."""
    count = count.double()  # counts are exact integers; keep the reciprocal exact too
    return torch.where(count > 0, count.clamp_min(1).pow(-tau), torch.zeros_like(count))


def region_weights(
    target: torch.Tensor,
    num_classes: int,
    *,
    regions: bool = False,
    ignore_label: int | None = None,
    tau: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background voxel weights ``(W_fg, W_bg)``, each ``B x N`` (docs/method.md section 3).

    Integer label maps (``B x 1 x ...``, classes ``0..num_classes-1``, 0 = background)::

        M_k(v) = [Y(v) == k],  N_k = sum_v M_k(v)        (per sample)
        W_fg(v) = sum_{k>=1} M_k(v) / N_k**tau           (every present class weighs 1 when tau=1)
        W_bg(v) = [v is background] / N_bg**tau

    Region targets (``regions=True``, ``B x R x ...`` binary, possibly overlapping)::

        W_fg(v) = max_r M_r(v) / N_r**tau,   background = voxels in no region

    Ignore label: integer maps give voxels equal to ``ignore_label`` weight 0 in both masks. For
    region targets nnU-Net appends the ignore mask as the *last* channel when the dataset has an
    ignore label; pass ``ignore_label`` (any value) to treat that channel so.
    """
    B = target.shape[0]
    if regions:
        t = target.flatten(2) > 0.5  # B x R x N, bool
        if ignore_label is not None:
            ignored = t[:, -1]
            t = t[:, :-1]
        else:
            ignored = None
        counts = t.sum(-1)  # B x R
        inv = _power(counts, tau).to(dtype)  # B x R
        w_fg = (
            (t.to(dtype) * inv[:, :, None]).amax(1)
            if t.shape[1] > 0
            else torch.zeros(B, t.shape[-1], dtype=dtype, device=t.device)
        )
        bg = ~t.any(1)
        if ignored is not None:
            w_fg = w_fg.masked_fill(ignored, 0)
            bg = bg & ~ignored
    else:
        if target.shape[1] != 1:
            raise KDError(
                f"integer label maps must have one channel (B x 1 x D x H x W), got shape "
                f"{tuple(target.shape)}; pass regions=True for multi-channel region targets"
            )
        y = target.flatten(1)
        if y.is_floating_point():
            y = y.round()
        y = y.long()
        valid = torch.ones_like(y, dtype=torch.bool) if ignore_label is None else y != ignore_label
        y = torch.where(valid, y, torch.zeros_like(y))
        # per-sample class counts without a one-hot tensor: bincount on (sample, class) ids
        flat_ids = y + num_classes * torch.arange(B, device=y.device)[:, None]
        counts = torch.bincount(flat_ids[valid], minlength=B * num_classes).view(B, num_classes)
        inv = _power(counts, tau).to(dtype)  # B x K
        per_voxel = torch.gather(inv, 1, y)  # B x N: 1 / N_{y(v)}
        fg = (y > 0) & valid
        bg = (y == 0) & valid
        w_fg = torch.where(fg, per_voxel, torch.zeros_like(per_voxel))
    n_bg = bg.sum(-1, keepdim=True)
    w_bg = bg.to(dtype) * _power(n_bg, tau).to(dtype)
    return w_fg, w_bg


def check_labels(
    target: torch.Tensor | Sequence[torch.Tensor], num_classes: int, ignore_label: int | None
) -> None:
    """Raise a clear :class:`~recokd.errors.KDError` if an integer label map holds values outside ``0..K-1``.

    ``target`` is the map, or nnU-Net's deep-supervision list of maps (its first, full-resolution one
    is checked: the others are downsampled from it).

    Only the range is checked (one ``min``/``max``), which catches the usual mistakes: a
    ``num_classes`` that forgot the background, or an ignore label that was not declared.
    """
    if not isinstance(target, torch.Tensor):
        target = target[0]
    lo, hi = int(target.min()), int(target.max())
    top = max(num_classes - 1, ignore_label if ignore_label is not None else -1)
    if lo < 0 or hi > top:
        raise KDError(
            f"target holds label values in [{lo}, {hi}] but num_classes={num_classes}"
            + (f" and ignore_label={ignore_label}" if ignore_label is not None else "")
            + "; expected integer classes 0..num_classes-1 (0 = background) or the ignore label"
        )
