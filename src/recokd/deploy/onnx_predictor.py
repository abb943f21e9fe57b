"""CPU inference with ONNX Runtime inside nnU-Net's own predictor.

:class:`nnUNetONNXPredictor` is :class:`recokd.deploy.runtime_predictor.nnUNetRuntimePredictor`
(nnU-Net's ``nnUNetPredictor`` with the network call replaced) whose network is an
:class:`OnnxNetwork`, a parameter-free ``nn.Module`` whose ``forward`` runs an ONNX Runtime session.
A segmentation differs from nnU-Net's PyTorch prediction only where ONNX Runtime's float32 kernels
round differently from PyTorch's (max |logit diff| ~1e-5) *and* that flips the argmax: voxels where
two classes tie to ~1e-3 after the predictor's fp16 accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from recokd.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, create_session, read_sidecar
from recokd.deploy.runtime_predictor import nnUNetRuntimePredictor, predict_folder_with
from recokd.errors import UserError


class OnnxNetwork(nn.Module):
    """Stands in for the PyTorch network: ``forward(x)`` runs the ONNX Runtime session on ``x``."""

    def __init__(self, session, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME):
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.output_name = output_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)


class nnUNetONNXPredictor(nnUNetRuntimePredictor):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net's predictor running an exported network on ONNX Runtime (CPU)."""

    def initialize_from_onnx(self, onnx_files: str | Path | Sequence[str | Path],
                             model_dir: str | Path | None = None) -> None:
        """Load ``onnx_files`` (one file, or one per fold: nnU-Net's fold ensemble) and the
        plans/dataset.json they need (the first one's sidecar, or ``model_dir``: see
        :meth:`~recokd.deploy.runtime_predictor.nnUNetRuntimePredictor.initialize_from_sidecar`)."""
        files = [onnx_files] if isinstance(onnx_files, str | Path) else list(onnx_files)
        first, *others = [self._load_onnx(f) for f in files]
        self.initialize_from_sidecar(*first, model_dir)
        self.add_folds(others)

    def _load_onnx(self, onnx_file: str | Path) -> tuple[dict, Path, OnnxNetwork]:
        """(sidecar, file, network) of one exported ONNX model."""
        onnx_file = Path(onnx_file).expanduser()
        if not onnx_file.is_file():
            raise UserError(f"--onnx {onnx_file} does not exist")
        sidecar = read_sidecar(onnx_file)
        session = create_session(onnx_file, self.threads)
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        input_name = sidecar.get("input_name", INPUT_NAME)
        output_name = sidecar.get("output_name", OUTPUT_NAME)
        if input_name not in names_in or output_name not in names_out:
            raise UserError(f"{onnx_file}: expected input {input_name!r} and output {output_name!r}, the "
                            f"graph has inputs {names_in} and outputs {names_out}")
        return sidecar, onnx_file, OnnxNetwork(session, input_name, output_name)


def predict_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    onnx_file: str | Path | Sequence[str | Path],
    *,
    model_dir: str | Path | None = None,
    step_size: float = 0.5,
    mirroring: bool = True,
    threads: int | None = None,
    **options,
) -> list[str]:
    """Segment every case of ``input_dir`` with ``onnx_file`` (or several, one per fold: their
    ensemble) on ONNX Runtime;
    ``options``: see :func:`recokd.deploy.runtime_predictor.predict_folder_with`."""
    predictor = nnUNetONNXPredictor(tile_step_size=step_size, use_mirroring=mirroring, threads=threads)
    return predict_folder_with(predictor, lambda: predictor.initialize_from_onnx(onnx_file, model_dir),
                               input_dir, output_dir, **options)
