"""Point-wise feature baselines of docs/method.md section 7: FitNet, attention transfer (AT), CWD."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recokd.errors import KDError
from recokd.kd.adapters import make_adapter
from recokd.kd.base import FeatureKD
from recokd.kd.baselines.common import l2_normalise


class FitNet(FeatureKD):
    """FitNet (Romero et al. 2015): ``L_l = mean_{b,c,v} (A_l(S_l)[b,c,v] - T_l[b,c,v])**2``.

    ``A_l`` is the 1x1x1 regressor ``C'_l -> C_l`` with bias (trained with the student), the
    identity where the channel counts already agree (as ReCo-KD's adapters, docs/method.md section 2).
    Features are not normalised. Levels are combined with ``alpha`` / ``level_weights`` as in
    :class:`~recokd.kd.baselines.common.FeatureKD`. Logs ``"fitnet/<l>"`` and ``"fitnet"``.
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        self.coef = {"fitnet": 1.0}
        self.adapters = nn.ModuleList(
            make_adapter(s, t) for s, t in zip(self.student_channels, self.teacher_channels, strict=True)
        )

    def level_losses(self, level, s, t, target):
        adapted = self.adapters[level](s.flatten(2))
        return {"fitnet": ((adapted - t.flatten(2)) ** 2).mean()}


class AttentionTransfer(FeatureKD):
    """Attention transfer (Zagoruyko & Komodakis 2017), docs/method.md section 7:

    ``a(F)[b] = vec(mean_c F[b,c]**2)`` (a length-``N`` vector per sample),
    ``L_l = mean_b || a_S[b] / |a_S[b]| - a_T[b] / |a_T[b]| ||_2``.

    The plain L2 norm of the difference, as the spec and the paper's equation write it (the
    authors' code uses the mean *squared* difference times ``beta = 1000`` instead; rescale with
    the method weight if you want that magnitude). ``L_l`` lies in ``[0, 2]``. Channel counts
    may differ (the map averages over channels), so there are no parameters. Norms are clamped
    at ``1e-8``. Logs ``"at/<l>"`` and ``"at"``.
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        self.coef = {"at": 1.0}

    def level_losses(self, level, s, t, target):
        a_s = l2_normalise(s.pow(2).mean(1).flatten(1), dim=1)
        a_t = l2_normalise(t.pow(2).mean(1).flatten(1), dim=1)
        return {"at": torch.linalg.vector_norm(a_s - a_t, dim=1).mean()}


class ChannelWiseDistillation(FeatureKD):
    """Channel-wise distillation (Shu et al. 2021), docs/method.md section 7:

    ``p(F)[b,c,:] = softmax_v(F[b,c,v] / T)`` (a distribution over voxels per channel),
    ``L_l = T**2 / (B C_l) * sum_{b,c} KL(p(T_l)[b,c] || p(A_l(S_l))[b,c])``.

    ``A_l`` is a 1x1x1 conv ``C'_l -> C_l`` trained with the student (the identity where channels
    agree). Its bias is fixed at 0: a per-channel constant cannot change a softmax over voxels,
    so a bias would never receive a gradient (the CWD code uses ``bias=False`` too).
    ``temperature`` ``T = 4``: the value of the CWD paper and of the CIRKD benchmark code for
    segmentation features. Logs ``"cwd/<l>"`` and ``"cwd"``.
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        num_classes: int,
        *,
        temperature: float = 4.0,
        **level_options: Any,
    ):
        super().__init__(student_channels, teacher_channels, num_classes, **level_options)
        if temperature <= 0:
            raise KDError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.coef = {"cwd": 1.0}
        self.adapters = nn.ModuleList(
            make_adapter(s, t) for s, t in zip(self.student_channels, self.teacher_channels, strict=True)
        )
        for adapter in self.adapters:
            bias = getattr(adapter, "bias", None)
            if bias is not None:
                nn.init.zeros_(bias)
                bias.requires_grad_(False)

    def level_losses(self, level, s, t, target):
        T = self.temperature
        adapted = self.adapters[level](s.flatten(2))
        log_s = F.log_softmax(adapted / T, dim=-1)
        log_t = F.log_softmax(t.flatten(2) / T, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # B x C
        return {"cwd": T * T * kl.mean()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, T={self.temperature}"
