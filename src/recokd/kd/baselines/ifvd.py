"""IFVD: intra-class feature variation distillation (Wang et al. 2020), docs/method.md section 7."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recokd.errors import KDError
from recokd.kd.base import FeatureKD
from recokd.kd.baselines.common import EPS
from recokd.kd.masks import check_labels, target_for_level


class IFVD(FeatureKD):
    """Per sample ``b`` and level ``l`` (``Y`` the label map nearest-resized to the level)::

        p_k[b]   = mean_{v: Y[b,v] = k} F[b,:,v]                 (prototype of each present class)
        m(F)[b,v] = cos(F[b,:,v], p_{Y[b,v]}[b])                  (intra-class feature variation map)
        L_l       = mean_{b, v valid} (m(S_l)[b,v] - m(T_l)[b,v])**2

    Choices (documented, as the IFVD / CIRKD code does unless noted):

    - every class incl. background 0 has a prototype; prototypes are per sample; absent classes
      have none (and no voxel refers to them);
    - raw student features, no adapter: the cosine similarities are independent of the channel
      count, so student and teacher maps are comparable as they are (the IFVD code does the same);
      gradients also flow through the student prototypes;
    - cosine with norms clamped at ``1e-8`` (``F.cosine_similarity``);
    - ``ignore_label`` voxels take part in no prototype and in no mean (the original code lets
      them form a "class" of their own, which only dilutes the mean); if a level has no valid voxel
      the level loss is 0;
    - ``regions=True`` (nnU-Net region targets ``B x R x ...``, binary, possibly overlapping; with
      ``ignore_label`` set, the last channel is the ignore mask): every region and the background
      (voxels in no region) has a prototype; a voxel contributes one squared difference per region
      it belongs to, and the mean runs over these (voxel, region) memberships.

    Logs ``"ifvd/<l>"`` and ``"ifvd"``. Needs ``target``: a full-resolution map or nnU-Net's
    list of deep-supervision maps (see :func:`~recokd.kd.masks.target_for_level`).
    """

    uses_target = True

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        ignore_label: int | None = None,
        regions: bool = False,
        validate_targets: bool = True,
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.regions = bool(regions)
        self.validate_targets = bool(validate_targets)
        self.coef = {"ifvd": 1.0}

    def check_target(self, target):
        super().check_target(target)
        if self.validate_targets and not self.regions and target is not None:
            check_labels(target, self.num_classes, self.ignore_label)

    def level_losses(self, level, s, t, target):
        y = target_for_level(target, s.shape[2:])
        sf, tf = s.flatten(2), t.flatten(2)
        if self.regions:
            members = self._region_memberships(y, sf.dtype)  # B x (R+1) x N
            m_s = _membership_similarity(sf, members)
            with torch.no_grad():
                m_t = _membership_similarity(tf, members)
            err = members * (m_s - m_t) ** 2
            count = members.sum()
        else:
            labels, valid = self._labels(y)
            m_s = _class_similarity(sf, labels, self.num_classes + 1)
            with torch.no_grad():
                m_t = _class_similarity(tf, labels, self.num_classes + 1)
            err = torch.where(valid, (m_s - m_t) ** 2, torch.zeros_like(m_s))
            count = valid.sum()
        return {"ifvd": err.sum() / count.clamp_min(1)}

    def _labels(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B x 1 x ...`` label map -> (``B x N`` class ids with ignored voxels sent to the spare
        id ``K``, ``B x N`` validity mask)."""
        if y.shape[1] != 1:
            raise KDError(
                f"integer label maps must have one channel (B x 1 x D x H x W), got shape {tuple(y.shape)}; "
                "pass regions=True for multi-channel region targets"
            )
        y = y.flatten(1)
        if y.is_floating_point():
            y = y.round()
        y = y.long()
        valid = torch.ones_like(y, dtype=torch.bool) if self.ignore_label is None else y != self.ignore_label
        labels = torch.where(valid, y, torch.full_like(y, self.num_classes))
        return labels, valid

    def _region_memberships(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``B x R x ...`` binary regions -> ``B x (R+1) x N`` memberships (regions, background),
        ignored voxels (last channel when ``ignore_label`` is set) in none."""
        m = y.flatten(2) > 0.5
        if self.ignore_label is not None:
            valid = ~m[:, -1]
            m = m[:, :-1]
        else:
            valid = torch.ones_like(m[:, 0])
        background = ~m.any(1)
        members = torch.cat([m, background[:, None]], dim=1) & valid[:, None]
        return members.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, classes={self.num_classes}, ignore_label={self.ignore_label}, "
            f"regions={self.regions}"
        )


def _class_similarity(f: torch.Tensor, labels: torch.Tensor, num_ids: int) -> torch.Tensor:
    """``cos(F[b,:,v], p_{labels[b,v]}[b])`` for ``f`` ``B x C x N`` and ``labels`` ``B x N`` in
    ``0..num_ids-1``; prototypes by ``scatter_add`` (no one-hot tensor). Returns ``B x N``."""
    B, C, N = f.shape
    idx = labels[:, None, :].expand(B, C, N)
    sums = f.new_zeros(B, C, num_ids).scatter_add(2, idx, f)
    counts = torch.zeros(B, num_ids, dtype=f.dtype, device=f.device).scatter_add(
        1, labels, torch.ones_like(labels, dtype=f.dtype)
    )
    protos = sums / counts.clamp_min(1)[:, None, :]  # B x C x K'
    p_v = torch.gather(protos, 2, idx)  # B x C x N, the prototype of each voxel's class
    return _cosine(f, p_v)


def _membership_similarity(f: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """``cos(F[b,:,v], p_r[b])`` for every region ``r`` (``members`` ``B x R x N`` in {0, 1});
    returns ``B x R x N`` (entries outside a region are meaningless and must be masked)."""
    counts = members.sum(-1)  # B x R
    protos = (f @ members.transpose(1, 2)) / counts.clamp_min(1)[:, None, :]  # B x C x R
    dots = protos.transpose(1, 2) @ f  # B x R x N
    f_norm = torch.linalg.vector_norm(f, dim=1).clamp_min(EPS)  # B x N
    p_norm = torch.linalg.vector_norm(protos, dim=1).clamp_min(EPS)  # B x R
    return dots / (p_norm[:, :, None] * f_norm[:, None, :])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along dim 1 with norms clamped at ``EPS``: ``B x C x N -> B x N``."""
    a_norm = torch.linalg.vector_norm(a, dim=1).clamp_min(EPS)
    b_norm = torch.linalg.vector_norm(b, dim=1).clamp_min(EPS)
    return (a * b).sum(1) / (a_norm * b_norm)
