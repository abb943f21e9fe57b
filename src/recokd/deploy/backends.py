"""The CPU inference backends side by side: one name each, what it needs, and how to turn a trained
PyTorch network into the module nnU-Net's predictor calls.

========================  =======================================================================
``torch``                 eager PyTorch, stock kernels: nnU-Net's predictor as shipped
``torch-onednn``          eager PyTorch with :mod:`recokd.deploy.cpu_conv`'s per-layer oneDNN
                          choice (what ``recokd predict`` runs on a CPU)
``onnxruntime``           ONNX export (:mod:`recokd.deploy.onnx_export`), ONNX Runtime CPU, all
                          graph optimisations
``openvino``              OpenVINO CPU plugin, fp32 weights and float32 arithmetic, one compiled
                          static shape per tile size (:mod:`recokd.deploy.openvino_backend`)
``openvino-int8``         the same after NNCF post-training int8 quantization
                          (:mod:`recokd.deploy.quantize`)
========================  =======================================================================

Every backend's module is a drop-in for the network in nnU-Net's sliding window (same input, same
logits up to its arithmetic), so timings differ only by who runs the network.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recokd.errors import UserError

BACKENDS = ("torch", "torch-onednn", "onnxruntime", "openvino", "openvino-int8")
BACKEND_TEXT = {
    "torch": "eager PyTorch, stock kernels (nnU-Net's predictor)",
    "torch-onednn": "eager PyTorch, per-layer oneDNN choice (recokd predict)",
    "onnxruntime": "ONNX Runtime CPU",
    "openvino": "OpenVINO CPU fp32",
    "openvino-int8": "OpenVINO CPU int8 (NNCF)",
}
#: packages each backend imports (``onnxscript`` is optional for ONNX export)
REQUIRED_PACKAGES = {
    "torch": (),
    "torch-onednn": (),
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("openvino",),
    "openvino-int8": ("openvino", "nncf"),
}
#: backends that run on the CPU only
CPU_ONLY = frozenset({"torch-onednn", "onnxruntime", "openvino", "openvino-int8"})


def parse_backends(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list (or a sequence) of :data:`BACKENDS` names, in the
    order given; :class:`UserError` on an unknown name."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return BACKENDS
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise UserError(f"backends must be 'all' or a comma-separated list of {', '.join(BACKENDS)}; got "
                        f"{', '.join(unknown) or 'nothing'}")
    return tuple(dict.fromkeys(names))


def unavailable_reason(backend: str) -> str | None:
    """``None`` if ``backend`` can run here, else a one-line reason (the missing package)."""
    missing = [p for p in REQUIRED_PACKAGES[backend] if importlib.util.find_spec(p) is None]
    if missing:
        return (f"{backend} skipped: package {', '.join(missing)} not installed "
                "(pip install 'reco-kd[deploy]')")
    if backend == "torch-onednn" and not torch.backends.mkldnn.is_available():
        return "torch-onednn skipped: this PyTorch build has no oneDNN (mkldnn)"
    return None


def synthetic_calibration(input_shape: tuple[int, ...], count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``count`` standard-normal tiles of ``input_shape`` (like z-scored data): a stand-in calibration
    set for *timing* int8 where no preprocessed cases are at hand (never for accuracy)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(input_shape).astype(np.float32) for _ in range(count)]


def prepare_network(backend: str, network: nn.Module, input_shape: tuple[int, ...],
                    threads: int | None = None, calibration: list[np.ndarray] | None = None) -> nn.Module:
    """The module that runs ``network`` (CPU, float32, eval, deep supervision off; not modified)
    on ``backend``. ``input_shape`` = ``(1, C, *patch)``: the tile nnU-Net feeds (the oneDNN choice
    is timed on it, exports trace it). ``calibration``: tiles for ``openvino-int8``."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    reason = unavailable_reason(backend)
    if reason:
        raise UserError(reason)
    if backend == "torch":
        return network
    if backend == "torch-onednn":
        from recokd.deploy.cpu_conv import use_fastest_cpu_conv3d

        fast = copy.deepcopy(network)
        use_fastest_cpu_conv3d(fast, torch.zeros(input_shape))
        return fast
    if backend == "onnxruntime":
        from recokd.deploy.onnx_export import create_session, export_network
        from recokd.deploy.onnx_predictor import OnnxNetwork

        with tempfile.TemporaryDirectory(prefix="recokd_onnx_") as tmp:
            file = Path(tmp) / "model.onnx"
            export_network(network, torch.zeros(input_shape), file)
            return OnnxNetwork(create_session(file, threads))  # the session holds the graph in memory
    from recokd.deploy.openvino_backend import OpenVINONetwork, convert_network

    model = convert_network(network, input_shape)
    if backend == "openvino-int8":
        from recokd.deploy.quantize import quantize_openvino

        if not calibration:
            raise UserError("openvino-int8 needs calibration tiles")
        model = quantize_openvino(model, calibration)
    return OpenVINONetwork(model, threads=threads)
