"""The partial (cheap) teacher forward: run a network only as far as its feature taps need.

ReCo-KD distils encoder features only (docs/method.md section 1), so the teacher's decoder never has to run.
:func:`forward_features` saves that cost in two ways:

- ``"encoder"`` mode: every tap lies under ``network.encoder`` (nnU-Net nets): only
  ``network.encoder(x)`` runs, never the decoder;
- ``"early-exit"`` mode (any other network): ``network(x)`` runs but is aborted right after the
  last tapped module has produced its output, so nothing after it runs.

In both modes the forward stops as soon as every tap has fired (in encoder mode this also skips
the nnU-Net bottleneck stage, which the default taps leave out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recokd.errors import KDError
from recokd.kd.taps import FeatureTaps

ENCODER = "encoder"
EARLY_EXIT = "early-exit"


class _StopForward(Exception):
    """Raised by a tap hook once every tap has fired; caught in :func:`forward_features` only."""


def teacher_forward_mode(network: nn.Module, paths: Sequence[str]) -> str:
    """How :func:`forward_features` will run ``network`` for ``paths``: ``"encoder"`` or ``"early-exit"``.

    ``"encoder"`` when the network has an ``encoder`` submodule and every path is ``"encoder"`` or
    starts with ``"encoder."``; this assumes the network's forward feeds its input straight to
    ``encoder`` (true for PlainConvUNet / ResidualEncoderUNet). Otherwise ``"early-exit"``.
    """
    paths = list(paths)
    encoder = getattr(network, "encoder", None)
    if (
        paths
        and isinstance(encoder, nn.Module)
        and all(p == "encoder" or p.startswith("encoder.") for p in paths)
    ):
        return ENCODER
    return EARLY_EXIT


def forward_features(network: nn.Module, x: torch.Tensor, paths: Sequence[str]) -> list[torch.Tensor]:
    """The features at ``paths`` for input ``x``, running only as much of ``network`` as needed.

    Args:
        network: the (teacher) network.
        x: its input, ``B x C_in x *spatial``.
        paths: dotted tap paths (see :func:`recokd.kd.taps.resolve_module`).

    Returns:
        One tensor per path, in order (a tuple/list module output gives its first tensor),
        identical to what :class:`~recokd.kd.taps.FeatureTaps` captures during a full
        ``network(x)`` -- provided each tapped module runs once per forward (with a module called
        several times, the capture of the call that completed the set of taps is returned).

    The mode is :func:`teacher_forward_mode`; in both modes the forward is aborted (by a private
    exception raised from the hooks and caught here) once every tap has fired. Hooks are removed
    on every exit path. This function does **not** change grad mode or train/eval state: the
    caller (the :class:`~recokd.kd.distiller.Distiller`) runs the teacher in eval mode under
    ``torch.no_grad()``.

    Raises:
        KDError: an unknown path.
        RuntimeError: a tapped module did not run during the forward (named in the message).
    """
    paths = list(paths)
    if not paths:
        return []
    pending = set(range(len(paths)))

    def on_capture(index: int) -> None:
        pending.discard(index)
        if not pending:
            raise _StopForward

    runner = network.encoder if teacher_forward_mode(network, paths) == ENCODER else network
    taps = FeatureTaps(network, paths, on_capture=on_capture)
    with taps:
        try:
            runner(x)
        except _StopForward:
            pass
    return taps.features()


def tap_channels(network: nn.Module, paths: Sequence[str], input_shape: Sequence[int]) -> list[int]:
    """Channel count (dim 1) of each tap, from one forward of a zero tensor.

    Args:
        network: the network (its parameters' device and floating dtype are used).
        paths: tap paths.
        input_shape: the full input shape ``(B, C_in, *spatial)``, e.g. ``(1, 1, 32, 32, 32)``;
            the spatial size must be valid for the network (divisible by its total stride).

    The forward runs under ``torch.no_grad()`` and as far as needed only
    (:func:`forward_features`), with the network temporarily in eval mode so that
    no normalisation statistics are updated; every module's training flag is restored afterwards.

    Raises:
        KDError: bad ``input_shape``, or the forward failed for that shape.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 3 or any(s < 1 for s in shape):
        raise KDError(
            f"input_shape must be (B, C_in, *spatial) with positive sizes, got {tuple(input_shape)}"
        )
    param = next(iter(network.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in network.modules()}
    network.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(shape, device=device, dtype=dtype)
            try:
                feats = forward_features(network, x, paths)
            except RuntimeError as e:
                raise KDError(
                    f"forward of a zero tensor of shape {shape} through {type(network).__name__} failed "
                    f"while probing tap channels: {e}. Check input_shape (B, C_in, *spatial): C_in must "
                    "match the network and the spatial size must suit its strides."
                ) from e
    finally:
        for m, mode in modes.items():
            m.training = mode
    for p, f in zip(paths, feats, strict=True):
        if f.dim() < 2:
            raise KDError(f"tap {p!r} produced a tensor of shape {tuple(f.shape)}; expected (B, C, ...)")
    return [int(f.shape[1]) for f in feats]
