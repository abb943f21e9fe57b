"""Shared benchmark fixtures: nnU-Net-like 3D networks built without a dataset."""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from recokd.kd.widths import scale_widths

#: the issue's setting: 5 stages, nnU-Net's default 3d_fullres widths for a 64^3 patch
TEACHER_WIDTHS = [32, 64, 128, 256, 320]
STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]


def plain_unet(widths: list[int], num_classes: int = 4, input_channels: int = 1) -> nn.Module:
    """A PlainConvUNet as nnU-Net builds it for 3d_fullres (InstanceNorm, LeakyReLU, deep supervision)."""
    n = len(widths)
    return PlainConvUNet(
        input_channels=input_channels,
        n_stages=n,
        features_per_stage=widths,
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=STRIDES[:n],
        n_conv_per_stage=[2] * n,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )


def teacher_and_student(t: int = 2, num_classes: int = 4) -> tuple[nn.Module, nn.Module]:
    return plain_unet(TEACHER_WIDTHS, num_classes), plain_unet(scale_widths(TEACHER_WIDTHS, t), num_classes)


def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
