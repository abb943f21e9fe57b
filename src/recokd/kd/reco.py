"""ReCo-KD: MS-SARD + MS-CA over several feature levels (docs/method.md sections 2-5).

The per-level loop, level weights, input checks and logging are :class:`~recokd.kd.base.FeatureKD`'s;
this module holds the level equations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recokd.errors import KDError
from recokd.kd.adapters import make_adapter
from recokd.kd.attention import attention_maps, channel_attention, spatial_attention
from recokd.kd.base import FeatureKD
from recokd.kd.context import GlobalContextBlock, affinity_loss, gc_alignment_loss
from recokd.kd.fused import DEFAULT_CHUNK, sard_statistics
from recokd.kd.masks import check_labels, region_weights, target_for_level


class ReCoKD(FeatureKD):
    """Region- and Context-aware KD loss over ``L`` feature levels.

    Args:
        student_channels: ``C'_l`` for each distilled level, highest resolution first.
        teacher_channels: ``C_l`` for the same levels.
        num_classes: ``K`` including background (integer targets), or the number of regions.
        alpha, level_weights: the level weights (docs/method.md section 5), as every
            :class:`~recokd.kd.base.FeatureKD`: ``alpha`` is ignored if ``level_weights`` is given
            (used as given, not renormalised).
        temperature: ``T`` of the attention softmaxes (docs/method.md section 3), default 0.5.
        tau: exponent on the size-normalised weights (1: every class weighs 1; 0: plain masks).
        fg, bg, att, ctx: component coefficients (docs/method.md section 5, all 1). A coefficient of 0
            skips that component's computation (MS-SARD-only: ``ctx=0``; MS-CA-only: ``fg=bg=att=0``).
        context: ``"gc"`` (global-context blocks, default) or ``"affinity"`` (docs/method.md section 4).
        freeze_adapters: ablation: keep the adapters at their random initialisation.
        ignore_label: nnU-Net's ignore label, weight 0 in both region masks.
        regions: targets are multi-channel binary region maps (nnU-Net region training).
        validate_targets: check integer labels lie in ``0..K-1`` (one min/max per call).
        chunk: voxels per chunk of the fused statistics (memory/cache trade-off, not semantics).
        compile: run the fused statistics through ``torch.compile`` (:mod:`recokd.kd.fused`); same
            values, one compilation per level; no gain measured on a CPU, meant for GPUs.

    ``forward(student_feats, teacher_feats, target)``: features are ``B x C x D x H x W`` lists, one
    per level; ``target`` is a full-resolution map (``B x 1 x ...`` or ``B x R x ...``) or a list of
    maps (nnU-Net's deep-supervision targets). Returns ``{"loss": tensor}`` plus detached floats:
    ``"<comp>/<l>"`` per level and ``"<comp>"`` level-weighted, for ``comp`` in fg, bg, att, ctx.

    ``L = sum_l w_l (c_fg L_fg + c_bg L_bg + c_att L_att + c_ctx L_ctx)``; the schedule weight
    ``lambda(e)`` is applied by the trainer. The computation runs outside autocast, in at least
    float32; ``E`` (docs/method.md section 3) is computed once per level and shared by ``L_fg`` and ``L_bg``.
    """

    uses_features = True
    uses_logits = False
    uses_target = True

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        temperature: float = 0.5,
        tau: float = 1.0,
        fg: float = 1.0,
        bg: float = 1.0,
        att: float = 1.0,
        ctx: float = 1.0,
        context: str = "gc",
        freeze_adapters: bool = False,
        ignore_label: int | None = None,
        regions: bool = False,
        validate_targets: bool = True,
        chunk: int = DEFAULT_CHUNK,
        compile: bool = False,
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        if context not in ("gc", "affinity"):
            raise KDError(f"context must be 'gc' or 'affinity', got {context!r}")
        if temperature <= 0:
            raise KDError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.tau = float(tau)
        self.coef = {"fg": float(fg), "bg": float(bg), "att": float(att), "ctx": float(ctx)}
        self.context = context
        self.ignore_label = ignore_label
        self.regions = bool(regions)
        self.validate_targets = validate_targets
        self.chunk = int(chunk)
        self.compiled = bool(compile)
        self.adapters = nn.ModuleList(
            make_adapter(s, t) for s, t in zip(self.student_channels, self.teacher_channels, strict=True)
        )
        if freeze_adapters:
            self.adapters.requires_grad_(False)
        if context == "gc" and self.coef["ctx"] != 0:
            self.context_student = nn.ModuleList(GlobalContextBlock(c) for c in self.teacher_channels)
            self.context_teacher = nn.ModuleList(GlobalContextBlock(c) for c in self.teacher_channels)

    @property
    def uses_sard(self) -> bool:
        return any(self.coef[k] != 0 for k in ("fg", "bg", "att"))

    def check_target(self, target: torch.Tensor | Sequence[torch.Tensor] | None) -> None:
        """MS-SARD needs the target (its fg/bg weights); integer labels must lie in ``0..K-1``."""
        if not self.uses_sard:
            return
        if target is None:
            raise KDError("ReCoKD needs the ground-truth target for MS-SARD (fg/bg weights)")
        if self.validate_targets and not self.regions:
            check_labels(target, self.num_classes, self.ignore_label)

    def level_losses(
        self,
        level: int,
        s: torch.Tensor,
        t: torch.Tensor,
        target: torch.Tensor | Sequence[torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """The components of one level (docs/method.md sections 3-4) on flattened features
        (``B x C x N``; ``s``/``t`` arrive in the compute dtype, ``t`` detached).

        The non-linear statistics of ``S~ = A(S)`` come from :func:`~recokd.kd.fused.sard_statistics`
        (chunked, ``S~`` never stored whole); everything linear in ``S~`` is computed on the
        narrow student feature through the adapter's weights.
        """
        dtype = s.dtype
        sf, tf = s.flatten(2), t.flatten(2)
        B, C, N = tf.shape
        adapter = self.adapters[level]
        weight = getattr(adapter, "weight", None)
        bias = getattr(adapter, "bias", None)
        if weight is not None:
            weight, bias = weight.to(dtype), bias.to(dtype)
        out: dict[str, torch.Tensor] = {}
        gc = self.coef["ctx"] != 0 and self.context == "gc"
        if self.uses_sard or gc:
            with torch.no_grad():
                if self.uses_sard:
                    a_sp_t, a_ch_t = attention_maps(tf, self.temperature)
                else:
                    a_ch_t = tf.new_ones(B, C)
            stats = sard_statistics(sf, weight, bias, tf, a_ch_t, self.chunk, self.compiled)
        if self.uses_sard:
            # E(v) = A_sp_T(v) * sum_c A_ch_T(c) (S~[c,v] - T[c,v])^2, computed once (B x N)
            e = stats.weighted_sq_diff * a_sp_t
            y = target_for_level(target, t.shape[2:])
            w_fg, w_bg = region_weights(
                y,
                self.num_classes,
                regions=self.regions,
                ignore_label=self.ignore_label,
                tau=self.tau,
                dtype=dtype,
            )
            if self.coef["fg"] != 0:
                out["fg"] = _weighted_mean(e, w_fg, C)
            if self.coef["bg"] != 0:
                out["bg"] = _weighted_mean(e, w_bg, C)
            if self.coef["att"] != 0:
                # student attention from the sums of |S~| (docs/method.md section 3): g = R2 / C, h = R3 / N
                a_sp_s = spatial_attention(stats.abs_sum_over_channels / C, self.temperature)
                a_ch_s = channel_attention(stats.abs_sum_over_voxels / N, self.temperature)
                out["att"] = (a_ch_s - a_ch_t).abs().mean() + (a_sp_s - a_sp_t).abs().mean()
        if self.coef["ctx"] != 0:
            if gc:
                block_s, block_t = self.context_student[level], self.context_teacher[level]
                if weight is None:
                    d_s = block_s.delta(sf)
                    sum_s = sf.sum(-1)
                else:
                    d_s = block_s.delta_affine(sf, weight, bias)
                    sum_s = sf.sum(-1) @ weight.t() + N * bias  # sum_v S~
                d_t = block_t.delta(tf)
                out["ctx"] = gc_alignment_loss(sum_s - tf.sum(-1), stats.sq_diff_over_voxels, d_s, d_t, N)
            else:
                out["ctx"] = affinity_loss(sf, tf)
        return out

    def extra_repr(self) -> str:
        w = ", ".join(f"{x:.3f}" for x in self.weights)
        return (
            f"levels={self.num_levels}, student={self.student_channels}, teacher={self.teacher_channels}, "
            f"classes={self.num_classes}, weights=[{w}], T={self.temperature}, tau={self.tau}, "
            f"coef={self.coef}, context={self.context!r}"
        )


def _weighted_mean(e: torch.Tensor, w: torch.Tensor, channels: int) -> torch.Tensor:
    """``sum_{b,v} w E / (C sum_{b,v} w)``, and 0 when ``w`` is all zero (no such voxels)."""
    denom = (w.sum() * channels).clamp_min(torch.finfo(w.dtype).tiny)
    return (w * e).sum() / denom
