"""The partial (cheap) teacher forward: run a network only as far as its feature taps need.

ReCo-KD distils encoder features only (spec section 1), so the teacher's decoder never has to run.
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
        UserError: an unknown path.
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
