"""Export a trained nnU-Net (teacher or ReCo-KD student) network to ONNX for CPU deployment.

What is exported: the network nnU-Net's predictor runs, i.e. the configuration's network with deep
supervision *off* (a single full-resolution logits output), in eval mode, float32, with weights
from the checkpoint. Input ``input`` has shape ``(batch, channels, *spatial)`` and output
``logits`` has shape ``(batch, classes, *spatial)``; batch and spatial axes are dynamic (spatial
sizes must still be divisible by the network's total stride, as for the PyTorch network; nnU-Net's
sliding window always feeds patch-sized tiles).

Exporters (torch 2.14): ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) is
PyTorch's supported exporter; it needs the ``onnxscript`` package and works offline. The legacy
TorchScript exporter (``dynamo=False``) still works in torch 2.14 without extra packages but is
deprecated (``DeprecationWarning``; "will be removed"). ``exporter="auto"`` uses the dynamo
exporter when onnxscript is importable and the TorchScript one otherwise; the sidecar records
which one ran. The dynamo exporter implements opset >= 18 and converts down to a lower requested
opset with ONNX's version converter (fine for the Conv/ConvTranspose/InstanceNormalization/
LeakyRelu/Concat graph of PlainConvUNet and ResidualEncoderUNet, and checked numerically below).

Every export is checked: ONNX Runtime (CPU) and PyTorch run the same random input of the patch
size, and the export fails (:class:`UserError`) when the largest absolute difference of the logits
exceeds ``tolerance * max(1, max |logits|)``.

Sidecar: ``<OUT>.onnx`` gets ``<OUT>.onnx.json`` (:data:`SIDECAR_SUFFIX`) with the plans
identifier, configuration, patch size, classes, input channels, mirroring axes, source checkpoint,
exporter, opset and the measured difference, plus the full ``plans`` and ``dataset_json`` the
network was trained with, so the ``.onnx`` file and its sidecar are all that
:mod:`recokd.deploy.onnx_predictor` needs (no checkpoint, no results folder).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recokd.atomic_files import DiskFullError, atomic_paths, is_disk_full, looks_full
from recokd.deploy.model import (
    InferenceModel,
    load_inference_model,
    model_description,
    read_sidecar_file,
)
from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


#: ONNX graph input / output names
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: ``model.onnx`` -> ``model.onnx.json``
SIDECAR_SUFFIX = ".json"
DEFAULT_OPSET = 17
#: allowed max |onnx - torch| relative to max(1, max |torch logits|)
DEFAULT_TOLERANCE = 1e-3
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    exporter: str  #: "dynamo" or "torchscript"
    opset: int
    max_abs_diff: float  #: max |onnx - torch| on the check input
    max_abs_logit: float  #: max |torch logits| on the check input
    patch_size: list[int]
    num_classes: int
    num_input_channels: int


# ---------------------------------------------------------------------------- export


def resolve_exporter(exporter: str) -> str:
    """``"dynamo"`` or ``"torchscript"`` for ``exporter`` in :data:`EXPORTERS`."""
    if exporter not in EXPORTERS:
        raise UserError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "auto":
        return "dynamo" if has_onnxscript else "torchscript"
    if exporter == "dynamo" and not has_onnxscript:
        raise UserError("exporter 'dynamo' needs the onnxscript package (pip install onnxscript); "
                        "or use --exporter torchscript")
    return exporter


def sidecar_path_for(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + SIDECAR_SUFFIX)


def export_network(network: nn.Module, example: torch.Tensor, file: str | Path, opset: int = DEFAULT_OPSET,
                   exporter: str = "auto") -> str:
    """Export an inference network (single output) to ``file`` with dynamic batch and spatial axes;
    ``example`` is a ``(1, C, *patch)`` input. Returns the exporter used. No numerical check."""
    import torch

    exporter = resolve_exporter(exporter)
    file = str(file)

    spatial = range(2, example.ndim)
    if exporter == "dynamo":
        from torch.export import Dim

        shapes = {0: Dim("batch"), **{d: Dim.AUTO for d in spatial}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), file, dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=(shapes,), external_data=False, verbose=False)
    else:
        names = {0: "batch", **{d: f"spatial_{d - 2}" for d in spatial}}
        with warnings.catch_warnings():
            # TracerWarnings from InstanceNorm's input-size checks (data-independent for our
            # inputs), the exporter's deprecation notice and its instance_norm train-mode note
            # (InstanceNorm without running stats always uses instance statistics: same maths)
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), file, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: names, OUTPUT_NAME: dict(names)},
                              do_constant_folding=True)
    return exporter


def create_session(onnx_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations; ``threads`` = intra-op threads
    (``None``: ONNX Runtime's default, one per physical core); inter-op threads 1 (sequential
    execution, as the graph is a chain)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be a positive integer, got {threads}")
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile classes
        raise UserError(f"ONNX file {onnx_path} could not be loaded by ONNX Runtime: {e}") from e


def compare_with_onnxruntime(network: nn.Module, session, x: torch.Tensor) -> tuple[float, float]:
    """(max |onnx - torch|, max |torch|) of the logits for input ``x`` (CPU)."""
    import numpy as np
    import torch

    with torch.no_grad():
        reference = network(x).float().cpu().numpy()
    out = run_session(session, x.cpu().numpy())
    if out.shape != reference.shape:
        raise UserError(f"ONNX output shape {out.shape} differs from PyTorch's {reference.shape}")
    return float(np.abs(out - reference).max()), float(np.abs(reference).max())


def run_session(session, x: np.ndarray) -> np.ndarray:
    import numpy as np

    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(
    model: str | Path,
    onnx_path: str | Path,
    *,
    fold: int | str = 0,
    checkpoint: str = CHECKPOINT_FINAL,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (see :func:`load_inference_model`) to ``onnx_path`` and write its sidecar.

    Refuses to replace an existing ``.onnx`` or sidecar unless ``overwrite``. Files are written
    under temporary names and renamed only after the numerical check passed, so a failed export
    leaves nothing behind.
    """
    import torch

    onnx_path = Path(onnx_path).expanduser()
    if onnx_path.suffix != ".onnx":
        raise UserError(f"--onnx {onnx_path}: expected a file name ending in .onnx")
    sidecar = sidecar_path_for(onnx_path)
    for target in (onnx_path, sidecar):
        if target.exists() and not overwrite:
            raise UserError(f"{target} already exists; pass --overwrite to replace it")
    if not onnx_path.parent.is_dir():
        raise UserError(f"--onnx {onnx_path}: folder {onnx_path.parent} does not exist")
    from recokd.nnunet.inputs import check_output_folder_writable

    check_output_folder_writable(onnx_path.parent, flag="--onnx")
    if not isinstance(opset, int) or opset < 13:
        raise UserError(f"opset must be an integer >= 13, got {opset!r}")
    if not tolerance > 0:
        raise UserError(f"tolerance must be positive, got {tolerance!r}")
    exporter = resolve_exporter(exporter)

    model_ = load_inference_model(model, fold=fold, checkpoint=checkpoint, device="cpu")
    loaded = model_.loaded
    network = loaded.network.float().eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(1, loaded.num_input_channels, *model_.patch_size, generator=generator)

    with atomic_paths(onnx_path, sidecar) as (tmp_onnx, tmp_sidecar):
        try:
            export_network(network, example, tmp_onnx, opset, exporter)
        except UserError:
            raise
        except Exception as e:
            if is_disk_full(e) or looks_full(onnx_path.parent):
                raise DiskFullError(onnx_path.parent) from None
            if isinstance(e, OSError):  # a file-system problem: another exporter would not help
                raise UserError(f"cannot write the ONNX file next to {onnx_path} ({e.strerror or e})"
                                ) from None
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            raise UserError(f"ONNX export of {loaded.checkpoint_path} with the {exporter} exporter failed "
                            f"({type(e).__name__}: {e}); try --exporter {other}") from e
        session = create_session(tmp_onnx)
        check = torch.randn(1, loaded.num_input_channels, *model_.patch_size, generator=generator)
        max_diff, max_logit = compare_with_onnxruntime(network, session, check)
        allowed = tolerance * max(1.0, max_logit)
        if not max_diff <= allowed:  # also catches NaN
            raise UserError(
                f"ONNX export of {loaded.checkpoint_path} does not match PyTorch: max |onnx - torch| = "
                f"{max_diff:.3g} on a random {tuple(check.shape)} input exceeds the tolerance "
                f"{allowed:.3g} ({tolerance:g} x max(1, max |logits| = {max_logit:.3g}))"
            )
        result = ExportResult(
            onnx_path=onnx_path, sidecar_path=sidecar, exporter=exporter, opset=_model_opset(tmp_onnx, opset),
            max_abs_diff=max_diff, max_abs_logit=max_logit, patch_size=model_.patch_size,
            num_classes=model_.num_classes, num_input_channels=int(loaded.num_input_channels),
        )
        with open(tmp_sidecar, "w", encoding="utf-8") as f:
            json.dump(sidecar_content(model_, result, tolerance), f, indent=4)
            f.write("\n")
    return result


def _model_opset(file: Path, requested: int) -> int:
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return requested


def sidecar_content(model: InferenceModel, result: ExportResult, tolerance: float) -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        **model_description(model),
        "backend": "onnxruntime",
        "onnx_file": result.onnx_path.name,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "dynamic_axes": ["batch", "spatial"],
        "exporter": result.exporter,
        "opset": result.opset,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "check": {"max_abs_diff": result.max_abs_diff, "max_abs_logit": result.max_abs_logit,
                  "tolerance": tolerance, "input_shape": [1, result.num_input_channels, *result.patch_size]},
    }


def read_sidecar(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported ONNX model; :class:`UserError` if missing or malformed."""
    return read_sidecar_file(sidecar_path_for(onnx_path), "'recokd export' next to the .onnx file")
