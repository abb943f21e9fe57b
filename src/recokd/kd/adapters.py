"""Channel adapters ``A_l`` (docs/method.md section 2)."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAdapter(nn.Module):
    """A 1x1x1 convolution ``C_in -> C_out`` with bias, applied to flattened ``B x C_in x N`` features.

    Equivalent to ``nn.Conv3d(C_in, C_out, 1)`` on ``B x C_in x D x H x W`` (the weight is stored as
    ``C_out x C_in``); computed as one batched matmul. When ``C_in == C_out`` use
    :func:`make_adapter`, which returns an identity instead (spec: "only where channels differ").
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        conv = nn.Conv3d(in_channels, out_channels, 1)  # reuse Conv3d's default initialisation
        self.weight = nn.Parameter(conv.weight.detach().reshape(out_channels, in_channels).clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """``B x C_in x N -> B x C_out x N``: ``W @ F + b``."""
        w = self.weight.to(feat.dtype)
        return torch.matmul(w, feat) + self.bias.to(feat.dtype)[:, None]


def make_adapter(in_channels: int, out_channels: int) -> nn.Module:
    """A :class:`ChannelAdapter`, or ``nn.Identity`` when the channel counts agree."""
    if in_channels == out_channels:
        return nn.Identity()
    return ChannelAdapter(in_channels, out_channels)
