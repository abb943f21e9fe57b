"""Feature taps: capture the outputs of named submodules with forward hooks.

A *tap* is a dotted module path relative to a network, e.g. ``"encoder.stages.0"`` (integer
components index ``nn.Sequential``/``nn.ModuleList``). The distilled levels of ReCo-KD are the
outputs of every encoder stage except the bottleneck (docs/method.md section 1); :func:`default_taps` finds
them for nnU-Net and MONAI networks by duck typing (no nnunetv2/monai import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from recokd.errors import KDError

_MAX_LISTED = 20


def _list_names(names: Sequence[str]) -> str:
    """Human-readable, truncated list of child names."""
    if not names:
        return "(none: it has no child modules)"
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... ({len(names) - _MAX_LISTED} more)"
    return shown


def resolve_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule of ``root`` at the dotted ``path`` (``""`` is ``root`` itself).

    Integer components index ``nn.Sequential``/``nn.ModuleList`` children (``"encoder.stages.0"``),
    exactly like :meth:`torch.nn.Module.get_submodule`.

    Raises:
        KDError: the path does not exist; the message names the path, the first component that
            failed, the module reached so far and the child names available there.
    """
    if not isinstance(path, str):
        raise KDError(f"a tap path must be a dotted string such as 'encoder.stages.0', got {path!r}")
    if path == "":
        return root
    module = root
    done: list[str] = []
    for part in path.split("."):
        children = module._modules
        child = children.get(part)
        if child is None:
            where = ".".join(done) if done else "<root>"
            hint = ""
            wrapped = any(isinstance(getattr(root, a, None), nn.Module) for a in ("_orig_mod", "module"))
            if not done and wrapped:
                hint = (
                    " The network looks wrapped (torch.compile / DistributedDataParallel): resolve taps on "
                    "the unwrapped module (recokd.kd.ema.unwrap)."
                )
            raise KDError(
                f"module path {path!r} does not exist in {type(root).__name__}: component {part!r} not found "
                f"under {where} ({type(module).__name__}). "
                f"Available there: {_list_names(list(children))}.{hint}"
            )
        module = child
        done.append(part)
    return module


def _first_tensor(output: Any, path: str) -> torch.Tensor:
    """The captured tensor of a module output: the tensor itself, or the first tensor of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise KDError(
        f"tap {path!r} returned {type(output).__name__}, not a tensor (or a tuple/list holding one); "
        "tap a submodule whose output is a feature tensor"
    )


class FeatureTaps:
    """Captures the outputs of the submodules of ``module`` at ``paths`` with forward hooks.

    Use as a context manager (hooks are registered on ``__enter__`` and removed on ``__exit__``,
    also when an exception propagates)::

        with FeatureTaps(net, ["encoder.stages.0", "encoder.stages.1"]) as taps:
            out = net(x)
            feats = taps.features()          # [B x C_0 x ..., B x C_1 x ...]

    or explicitly with :meth:`attach` / :meth:`remove`.

    Behaviour:
        - :meth:`features` returns one tensor per path, in the order of ``paths``.
        - Each call of a tapped module overwrites its previous capture (the last call wins);
          :meth:`clear` forgets all captures. Captures survive ``__exit__``/:meth:`remove`.
        - If a tapped module returns a tuple/list, its first tensor element is captured.
        - Nothing is detached or copied: gradients flow through captured features.
        - Paths are resolved on construction (unknown path -> :class:`~recokd.errors.KDError`).
          An empty ``paths`` is allowed (no hooks, ``features()`` is ``[]``).

    Args:
        module: the network.
        paths: dotted module paths (see :func:`resolve_module`).
        on_capture: optional ``callback(index)`` called after tap ``index`` captured a tensor
            (used by :func:`recokd.kd.partial.forward_features` to stop the forward early).
    """

    def __init__(
        self,
        module: nn.Module,
        paths: Sequence[str],
        on_capture: Callable[[int], None] | None = None,
    ):
        if isinstance(paths, str):
            raise KDError(f"tap paths must be a list of dotted paths, got the single string {paths!r}")
        self.module = module
        self.paths = list(paths)
        self.modules = [resolve_module(module, p) for p in self.paths]
        self._captures: list[torch.Tensor | None] = [None] * len(self.paths)
        self._handles: list[RemovableHandle] = []
        self._on_capture = on_capture

    def _hook(self, index: int) -> Callable[[nn.Module, Any, Any], None]:
        path = self.paths[index]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._captures[index] = _first_tensor(output, path)
            if self._on_capture is not None:
                self._on_capture(index)

        return hook

    @property
    def attached(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    def attach(self) -> FeatureTaps:
        """Register the hooks (clears earlier captures). Raises ``RuntimeError`` if already attached."""
        if self._handles:
            raise RuntimeError("FeatureTaps.attach(): hooks are already attached; call remove() first")
        self.clear()
        try:
            for i, m in enumerate(self.modules):
                self._handles.append(m.register_forward_hook(self._hook(i)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove all hooks (idempotent). Captured features are kept."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        """Forget all captured features."""
        self._captures = [None] * len(self.paths)

    def fired(self) -> list[bool]:
        """Per path, whether its module has produced a capture since the last :meth:`clear`."""
        return [c is not None for c in self._captures]

    def features(self) -> list[torch.Tensor]:
        """The captured features, one per path in the order of ``paths``.

        Raises:
            RuntimeError: some tapped module did not run (the message names the paths); e.g. the
                forward was not called inside the ``with`` block, or the path is not on the
                forward path of the network.
        """
        missing = [p for p, c in zip(self.paths, self._captures, strict=True) if c is None]
        if missing:
            raise RuntimeError(
                f"feature taps did not fire: {missing}. Run the network's forward while the taps are "
                "attached (inside the `with FeatureTaps(...)` block), and tap modules that the forward uses."
            )
        return list(self._captures)  # type: ignore[arg-type]

    def __enter__(self) -> FeatureTaps:
        return self.attach()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def default_nnunet_taps(network: nn.Module) -> list[str]:
    """Encoder-stage taps of an nnU-Net network from ``dynamic_network_architectures``.

    For PlainConvUNet / ResidualEncoderUNet (``network.encoder.stages``: one module per resolution
    stage) returns ``["encoder.stages.0", ..., "encoder.stages.{n-2}"]``: every stage except the
    last (the bottleneck), highest resolution first.

    Raises:
        KDError: the network has no ``encoder.stages`` with at least two stages.
    """
    stages = getattr(getattr(network, "encoder", None), "stages", None)
    if not isinstance(stages, nn.Sequential | nn.ModuleList):
        raise KDError(
            f"{type(network).__name__} is not an nnU-Net network: it has no 'encoder.stages' "
            "(nn.Sequential of resolution stages). Pass explicit tap paths instead."
        )
    if len(stages) < 2:
        raise KDError(
            f"{type(network).__name__}.encoder.stages has {len(stages)} stage(s); distillation taps every "
            "stage except the bottleneck, so at least 2 are needed"
        )
    return [f"encoder.stages.{i}" for i in range(len(stages) - 1)]


def _is_dynunet(network: nn.Module) -> bool:
    return type(network).__name__ == "DynUNet" or all(
        hasattr(network, a) for a in ("input_block", "downsamples", "bottleneck")
    )


def _is_segresnet(network: nn.Module) -> bool:
    names = {c.__name__ for c in type(network).__mro__}
    return "SegResNet" in names or (
        isinstance(getattr(network, "down_layers", None), nn.ModuleList) and hasattr(network, "up_layers")
    )


def default_taps(network: nn.Module) -> list[str]:
    """Default distillation taps (every encoder level except the bottleneck, highest resolution first).

    Supported, by duck typing on attributes / class names:
        - nnU-Net (PlainConvUNet, ResidualEncoderUNet): see :func:`default_nnunet_taps`.
        - MONAI DynUNet: ``["input_block", "downsamples.0", ..., "downsamples.{n-1}"]`` (its
          ``bottleneck`` is a separate module and is not tapped).
        - MONAI SegResNet (and subclasses): ``["down_layers.0", ..., "down_layers.{n-2}"]``.

    Raises:
        KDError: unknown architecture; pass explicit tap paths.
    """
    if isinstance(getattr(getattr(network, "encoder", None), "stages", None), nn.Sequential | nn.ModuleList):
        return default_nnunet_taps(network)
    if _is_dynunet(network):
        downsamples = network.downsamples
        return ["input_block"] + [f"downsamples.{i}" for i in range(len(downsamples))]
    if _is_segresnet(network):
        down = network.down_layers
        if len(down) < 2:
            raise KDError(f"{type(network).__name__} has {len(down)} down layer(s); at least 2 are needed")
        return [f"down_layers.{i}" for i in range(len(down) - 1)]
    raise KDError(
        f"no default feature taps for {type(network).__name__} (known: nnU-Net PlainConvUNet/"
        "ResidualEncoderUNet, MONAI DynUNet, SegResNet). Pass explicit tap paths, e.g. the dotted names "
        f"of its encoder stages; top-level modules: {_list_names(list(network._modules))}"
    )
