"""Faster CPU inference of narrow 3D networks: pick PyTorch's convolution kernel per layer.

At batch 1 (nnU-Net's sliding window) PyTorch's CPU heuristic sends a 3D convolution to its
im2col kernel ``slow_conv3d_forward`` instead of oneDNN whenever ``N * C * D * H <= 20480`` (a
rule made for 2D). That hits exactly the narrow layers of a width-reduced student: in a profile of
the t=2 student (64^3 tiles) it took 54% of the time, and the student ran at 30 GFLOP/s against
the teacher's 110. :func:`use_fastest_cpu_conv3d` times, for every ``nn.Conv3d`` on the input it
really gets (one forward of an example tile), PyTorch's default kernel against oneDNN
(``torch.mkldnn_convolution``) and switches the layer to oneDNN where that is faster. Same
arithmetic (differences at float32 rounding level); only CPU float32 inference without autograd
takes the new path, everything else falls back to the layer's own forward.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

#: switch a layer only if oneDNN is at least this much faster (timing noise margin)
MIN_GAIN = 1.1


def _mkldnn_forward(conv: nn.Conv3d) -> Callable[[torch.Tensor], torch.Tensor]:
    default = conv.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return default(x)
        return torch.mkldnn_convolution(x.contiguous(), conv.weight, conv.bias, conv.padding, conv.stride,
                                        conv.dilation, conv.groups)

    forward.recokd_default = default  # type: ignore[attr-defined]
    return forward


def _eligible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv3d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.device.type == "cpu"
        and conv.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    )


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def use_fastest_cpu_conv3d(network: nn.Module, example: torch.Tensor, repeats: int = 3) -> dict[str, str]:
    """Switch each eligible ``nn.Conv3d`` of ``network`` to oneDNN where that is faster on its input.

    Args:
        network: a CPU float32 network in eval mode (e.g. nnU-Net's, deep supervision off).
        example: one input tile, ``1 x C x D x H x W`` (the patch size the predictor will use).
        repeats: timed runs per kernel and layer (median).

    Returns ``{layer name: "onednn" | "default" | "not run"}``. Calling it again re-decides from
    scratch.
    """
    convs = {name: m for name, m in network.named_modules() if _eligible(m)}
    for m in convs.values():  # undo an earlier call
        default = getattr(m.forward, "recokd_default", None)
        if default is not None:
            m.forward = default
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, args[0]))
        for name, m in convs.items()
    ]
    try:
        network(example)
    finally:
        for h in hooks:
            h.remove()
    choice: dict[str, str] = {}
    for name, m in convs.items():
        x = inputs.get(name)
        if x is None:  # not run for this input (e.g. deep-supervision heads)
            choice[name] = "not run"
            continue
        fast = _mkldnn_forward(m)
        t_default = _median_time(lambda m=m, x=x: m(x), repeats)
        t_onednn = _median_time(lambda fast=fast, x=x: fast(x), repeats)
        if t_onednn * MIN_GAIN < t_default:
            m.forward = fast
            choice[name] = "onednn"
        else:
            choice[name] = "default"
    return choice


@contextlib.contextmanager
def default_conv_kernels(network: nn.Module) -> Iterator[None]:
    """Temporarily give every switched layer its own forward back (e.g. while
    ``torch.utils.flop_counter`` counts: it knows ``aten.convolution``, not the oneDNN op)."""
    switched = [m for m in network.modules() if hasattr(m.forward, "recokd_default")]
    fast = [m.forward for m in switched]
    for m in switched:
        m.forward = m.forward.recokd_default
    try:
        yield
    finally:
        for m, f in zip(switched, fast, strict=True):
            m.forward = f
