"""Tiny 3D segmentation networks (nnU-Net and MONAI) for the tap / partial-forward tests.

Every builder returns a freshly seeded network in eval mode for a 1-channel ``SIZE**3`` input,
and :data:`NETS` lists, per network, the expected default taps with their channels and spatial
sizes, plus the path of a module that runs only *after* the last default tap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SIZE = 16  # input is 1 x SIZE^3; total stride 8 -> bottleneck 2^3


def plain_unet(widths: tuple[int, ...] = (4, 8, 16, 32)) -> nn.Module:
    """nnU-Net PlainConvUNet, 4 stages (default widths [4, 8, 16, 32]), deep supervision."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(
        input_channels=1,
        n_stages=4,
        features_per_stage=list(widths),
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=2,
        num_classes=3,
        n_conv_per_stage_decoder=2,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    ).eval()


def resenc_unet() -> nn.Module:
    """nnU-Net ResidualEncoderUNet, 4 stages [4, 8, 16, 32], deep supervision."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    torch.manual_seed(0)
    return ResidualEncoderUNet(
        input_channels=1,
        n_stages=4,
        features_per_stage=[4, 8, 16, 32],
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 2, 2, 2],
        num_classes=3,
        n_conv_per_stage_decoder=1,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    ).eval()


def dynunet() -> nn.Module:
    """MONAI DynUNet, 4 levels [4, 8, 16, 32] (input block, 2 downsamples, bottleneck)."""
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        kernel_size=[3, 3, 3, 3],
        strides=[1, 2, 2, 2],
        upsample_kernel_size=[2, 2, 2],
        filters=[4, 8, 16, 32],
    ).eval()


def segresnet() -> nn.Module:
    """MONAI SegResNet, init_filters 4, 4 down layers [4, 8, 16, 32]."""
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    return SegResNet(
        spatial_dims=3,
        init_filters=4,
        in_channels=1,
        out_channels=3,
        norm=("GROUP", {"num_groups": 2}),
        blocks_down=(1, 1, 1, 1),
        blocks_up=(1, 1, 1),
    ).eval()


@dataclass(frozen=True)
class NetCase:
    """A test network with its expected default taps."""

    build: Callable[[], nn.Module]
    taps: list[str]
    channels: list[int]
    sizes: list[int]  # isotropic spatial size of each tap
    after_last_tap: str  # a module that must not run when the forward stops at the last tap


NETS: dict[str, NetCase] = {
    "plain": NetCase(
        plain_unet, ["encoder.stages.0", "encoder.stages.1", "encoder.stages.2"], [4, 8, 16], [16, 8, 4],
        "encoder.stages.3",
    ),
    "resenc": NetCase(
        resenc_unet, ["encoder.stages.0", "encoder.stages.1", "encoder.stages.2"], [4, 8, 16], [16, 8, 4],
        "encoder.stages.3",
    ),
    "dynunet": NetCase(
        dynunet, ["input_block", "downsamples.0", "downsamples.1"], [4, 8, 16], [16, 8, 4], "bottleneck"
    ),
    "segresnet": NetCase(
        segresnet, ["down_layers.0", "down_layers.1", "down_layers.2"], [4, 8, 16], [16, 8, 4],
        "down_layers.3",
    ),
}


def input_volume(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A random ``batch x 1 x SIZE^3`` input."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, SIZE, SIZE, SIZE, generator=g)


class CallRecorder:
    """Forward hook that records how often a module ran; ``.handle`` removes it."""

    def __init__(self, module: nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.calls += 1
