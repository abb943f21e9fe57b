"""OpenVINO (CPU) backend: conversion of a trained network, a compiled stand-in for nnU-Net's
predictor, and the model folder that ``recokd export --openvino`` and ``recokd quantize`` write.

Conversion: ``openvino.convert_model`` traces the inference network (deep supervision off, eval,
float32; :mod:`recokd.deploy.model`) with a patch-sized example and keeps the batch and spatial
axes dynamic (``PartialShape([-1, C, -1, -1, -1])``). The model is saved uncompressed
(``compress_to_fp16=False``): weights stay float32.

Precision: OpenVINO's CPU plugin runs float32 models in bfloat16 by default on CPUs with AMX or
AVX512-BF16 (``INFERENCE_PRECISION_HINT``); every model here is compiled with the hint ``f32`` so
that an "fp32" model computes in float32 (an int8 model's quantized layers still run in int8; only
what NNCF left unquantized follows the hint).

Shapes: nnU-Net's sliding window feeds batch-1 tiles of the patch size, so
:class:`OpenVINONetwork` compiles one static-shape model per input shape it meets (usually one)
and keeps it; ``static_shapes=False`` compiles the dynamic model once instead
(``benchmarks/inference.py`` measures both; static was faster on our machine).

Model folder (``DIR``): ``model.xml`` + ``model.bin`` (OpenVINO IR) and ``recokd.json``
(:data:`SIDECAR_FILE`: :func:`recokd.deploy.model.model_description` plus precision, OpenVINO
version, the export check and, for int8, the calibration set).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recokd.atomic_files import DiskFullError, atomic_paths, is_disk_full, looks_full
from recokd.deploy.model import InferenceModel, load_inference_model, model_description, read_sidecar_file
from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL

MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"
SIDECAR_FILE = "recokd.json"
PRECISIONS = ("fp32", "int8")
DEFAULT_TOLERANCE = 1e-3  #: allowed max |openvino - torch| relative to max(1, max |torch logits|) (fp32)
INSTALL_HINT = "pip install 'reco-kd[deploy]' (or: pip install openvino nncf)"


def require_openvino():
    """The ``openvino`` module, or a :class:`UserError` saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise UserError(f"the OpenVINO backend needs the openvino package: {INSTALL_HINT}") from e
    return openvino


def openvino_available() -> str | None:
    """``None`` if OpenVINO can be imported, else a one-line reason."""
    try:
        require_openvino()
    except UserError as e:
        return str(e)
    return None


def compile_config(threads: int | None) -> dict[str, Any]:
    """CPU plugin settings: float32 arithmetic (see module doc), latency hint (one stream: nnU-Net
    feeds one tile at a time), ``threads`` inference threads (``None``: OpenVINO's default)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                              "NUM_STREAMS": 1}
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be a positive integer, got {threads}")
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def convert_network(network: nn.Module, input_shape: tuple[int, ...]):
    """``openvino.Model`` of an inference network; ``input_shape`` = ``(1, C, *patch)`` is the
    tracing example; batch and spatial axes stay dynamic."""
    ov = require_openvino()
    example = torch.zeros(input_shape)
    shape = ov.PartialShape([-1, input_shape[1], *([-1] * (len(input_shape) - 2))])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings from InstanceNorm's input-size checks
        with torch.no_grad():
            return ov.convert_model(network.float().eval(), example_input=example, input=[shape])


class OpenVINONetwork(nn.Module):
    """Stands in for the PyTorch network: ``forward(x)`` runs an ``openvino.Model`` on the CPU,
    ``(B, C, *spatial)`` float tensor in, ``(B, classes, *spatial)`` float32 logits out (a fresh
    tensor each call). Parameter-free, so nnU-Net's predictor can move it, switch it to eval mode
    and load an empty state dict into it."""

    def __init__(self, model, threads: int | None = None, static_shapes: bool = True):
        super().__init__()
        self.ov = require_openvino()
        self.model = model
        self.config = compile_config(threads)
        self.static_shapes = static_shapes
        self._requests: dict[tuple[int, ...] | None, Any] = {}

    def request_for(self, shape: tuple[int, ...]):
        """The infer request for inputs of ``shape`` (compiled on first use)."""
        key = shape if self.static_shapes else None
        request = self._requests.get(key)
        if request is None:
            model = self.model
            if self.static_shapes:
                model = model.clone()
                model.reshape(list(shape))
            compiled = self.ov.Core().compile_model(model, "CPU", self.config)
            request = self._requests[key] = compiled.create_infer_request()
        return request

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        request = self.request_for(tuple(array.shape))
        request.infer({0: array}, share_inputs=True)
        out = np.array(request.get_output_tensor(0).data, copy=True)  # the request reuses its buffer
        return torch.from_numpy(out).to(x.device)


def compare_with_torch(network: nn.Module, runner: nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """(max |runtime - torch|, max |torch|, argmax agreement) of the logits for input ``x``."""
    with torch.no_grad():
        reference = network(x).float().cpu().numpy()
    out = runner(x).numpy()
    if out.shape != reference.shape:
        raise UserError(f"OpenVINO output shape {out.shape} differs from PyTorch's {reference.shape}")
    agreement = float((out.argmax(1) == reference.argmax(1)).mean())
    return float(np.abs(out - reference).max()), float(np.abs(reference).max()), agreement


# ---------------------------------------------------------------------------- model folders


def check_model_folder_target(out_dir: Path, overwrite: bool, flag: str) -> None:
    """Refuse to write into ``out_dir`` if it is a file or holds a model already (unless
    ``overwrite``). Creates nothing: :func:`write_model_folder` does, once the model is ready."""
    ours = [out_dir / n for n in (MODEL_XML, MODEL_BIN, SIDECAR_FILE)]
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{flag} {out_dir} is a file; expected a folder for {MODEL_XML}, {MODEL_BIN} and "
                        f"{SIDECAR_FILE}")
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; pass --overwrite to replace the model in {out_dir}")


def write_model_folder(model, sidecar: dict[str, Any], out_dir: Path, flag: str = "-o") -> None:
    """Save ``model`` (uncompressed IR) and ``sidecar`` into ``out_dir`` (created if needed):
    written under partial names, renamed into place only when everything was written (a failure or
    a kill leaves nothing half-done; :mod:`recokd.atomic_files`); a full disk is one line."""
    import json

    from recokd.nnunet.inputs import check_output_folder_writable

    ov = require_openvino()
    check_output_folder_writable(out_dir, flag=flag)
    # OpenVINO writes <name>.bin next to <name>.xml: the partial names of model.bin and model.xml pair up
    targets = (out_dir / MODEL_BIN, out_dir / MODEL_XML, out_dir / SIDECAR_FILE)
    with atomic_paths(*targets) as (_, tmp_xml, tmp_sidecar):
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            with open(tmp_sidecar, "w", encoding="utf-8") as f:
                json.dump(sidecar, f, indent=4)
                f.write("\n")
        except Exception as e:  # OpenVINO's writer raises RuntimeError("... iostream error"), no errno
            if is_disk_full(e) or looks_full(out_dir):
                raise DiskFullError(out_dir) from None
            reason = e.strerror if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            raise UserError(f"cannot write the OpenVINO model into {out_dir} ({reason or e})") from None


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The sidecar (``recokd.json``) of an OpenVINO model folder."""
    return read_sidecar_file(Path(folder) / SIDECAR_FILE, "'recokd export --openvino' / 'recokd quantize'")


def read_model_folder(folder: str | Path) -> tuple[dict[str, Any], Any, Path]:
    """(sidecar, ``openvino.Model``, folder) of a folder written by ``recokd export --openvino`` or
    ``recokd quantize``."""
    ov = require_openvino()
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"--openvino {folder} is not a folder (expected {MODEL_XML}, {MODEL_BIN} and "
                        f"{SIDECAR_FILE} from 'recokd export --openvino' or 'recokd quantize')")
    sidecar = read_sidecar(folder)
    if sidecar.get("backend") != "openvino":
        raise UserError(f"{folder / SIDECAR_FILE} describes a {sidecar.get('backend')!r} model, not an "
                        "OpenVINO one")
    for name in (MODEL_XML, MODEL_BIN):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} does not exist: the model folder is incomplete; write it again "
                            "with 'recokd export --openvino' or 'recokd quantize'")
    try:
        model = ov.Core().read_model(str(folder / MODEL_XML))
    except Exception as e:  # OpenVINO raises RuntimeError with its own text
        raise UserError(f"{folder / MODEL_XML} could not be read by OpenVINO: {e}") from e
    return sidecar, model, folder


@dataclass(frozen=True)
class OpenVINOExportResult:
    folder: Path
    precision: str
    max_abs_diff: float  #: max |openvino - torch| on the check input
    max_abs_logit: float
    argmax_agreement: float  #: fraction of voxels with the same argmax as PyTorch on the check input
    patch_size: list[int]
    num_classes: int
    num_input_channels: int


def openvino_sidecar(model: InferenceModel, precision: str, check: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    ov = require_openvino()
    return {**model_description(model), "backend": "openvino", "precision": precision,
            "model_file": MODEL_XML, "dynamic_axes": ["batch", "spatial"], "torch_version": torch.__version__,
            "openvino_version": ov.get_version(), "check": check, **(extra or {})}


def export_openvino(
    model: str | Path,
    out_dir: str | Path,
    *,
    fold: int | str = 0,
    checkpoint: str = CHECKPOINT_FINAL,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    seed: int = 0,
) -> OpenVINOExportResult:
    """Convert ``model`` (see :func:`recokd.deploy.model.load_inference_model`) to OpenVINO IR in
    ``out_dir``, checked against PyTorch on a random patch-sized input: the export fails when max
    |openvino - torch| exceeds ``tolerance * max(1, max |logits|)``."""
    out_dir = Path(out_dir).expanduser()
    if not tolerance > 0:
        raise UserError(f"tolerance must be positive, got {tolerance!r}")
    require_openvino()
    check_model_folder_target(out_dir, overwrite, "--openvino")
    inference = load_inference_model(model, fold=fold, checkpoint=checkpoint, device="cpu")
    network = inference.network.float().eval()
    try:
        ov_model = convert_network(network, inference.patch_input_shape)
    except Exception as e:
        raise UserError(f"OpenVINO conversion of {inference.loaded.checkpoint_path} failed "
                        f"({type(e).__name__}: {e})") from e
    x = torch.randn(inference.patch_input_shape, generator=torch.Generator().manual_seed(seed))
    diff, scale, agreement = compare_with_torch(network, OpenVINONetwork(ov_model), x)
    allowed = tolerance * max(1.0, scale)
    if not diff <= allowed:  # also catches NaN
        raise UserError(f"OpenVINO conversion of {inference.loaded.checkpoint_path} does not match PyTorch: "
                        f"max |openvino - torch| = {diff:.3g} on a random {tuple(x.shape)} input exceeds the "
                        f"tolerance {allowed:.3g} ({tolerance:g} x max(1, max |logits| = {scale:.3g}))")
    check = {"max_abs_diff": diff, "max_abs_logit": scale, "argmax_agreement": agreement,
             "tolerance": tolerance, "input_shape": list(x.shape), "input": "standard normal, seed "
             f"{seed}"}
    write_model_folder(ov_model, openvino_sidecar(inference, "fp32", check), out_dir, flag="--openvino")
    return OpenVINOExportResult(folder=out_dir, precision="fp32", max_abs_diff=diff, max_abs_logit=scale,
                                argmax_agreement=agreement, patch_size=inference.patch_size,
                                num_classes=inference.num_classes,
                                num_input_channels=inference.num_input_channels)


# ---------------------------------------------------------------------------- prediction


def _runtime_predictor_base():
    from recokd.deploy.runtime_predictor import nnUNetRuntimePredictor

    return nnUNetRuntimePredictor


class nnUNetOpenVINOPredictor(_runtime_predictor_base()):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net's predictor running an OpenVINO model folder (fp32 or int8) on the CPU."""

    static_shapes: bool = True

    def initialize_from_openvino(self, folders: str | Path | Sequence[str | Path],
                                 model_dir: str | Path | None = None) -> None:
        """Load the model folder(s) ``folders`` (one, or one per fold: nnU-Net's fold ensemble) and
        the plans/dataset.json they need (the first one's sidecar, or ``model_dir``: see
        ``initialize_from_sidecar``)."""
        paths = [folders] if isinstance(folders, str | Path) else list(folders)
        models = []
        for path in paths:
            sidecar, model, folder = read_model_folder(path)
            models.append((sidecar, folder, OpenVINONetwork(model, threads=self.threads,
                                                            static_shapes=self.static_shapes)))
        self.initialize_from_sidecar(*models[0], model_dir)
        self.add_folds(models[1:])


def predict_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    folder: str | Path | Sequence[str | Path],
    *,
    model_dir: str | Path | None = None,
    step_size: float = 0.5,
    mirroring: bool = True,
    threads: int | None = None,
    **options,
) -> list[str]:
    """Segment every case of ``input_dir`` with the OpenVINO model folder ``folder`` (or several,
    one per fold: their ensemble);
    ``options``: see :func:`recokd.deploy.runtime_predictor.predict_folder_with`."""
    from recokd.deploy.runtime_predictor import predict_folder_with

    predictor = nnUNetOpenVINOPredictor(tile_step_size=step_size, use_mirroring=mirroring, threads=threads)
    return predict_folder_with(predictor, lambda: predictor.initialize_from_openvino(folder, model_dir),
                               input_dir, output_dir, **options)
