"""int8 post-training quantization of a trained network with NNCF, calibrated on the dataset's own
preprocessed training cases (``recokd quantize``).

Calibration set: the network sees preprocessed tiles at inference (nnU-Net normalises, resamples
and crops before the sliding window), so the calibration tiles are drawn from the same
preprocessed arrays nnU-Net trains on: ``$nnUNet_preprocessed/<dataset>/<data_identifier>``
(nnU-Net's dataset classes read them, ``.b2nd`` or ``.npz``). The cases are the fold's *training*
cases from ``splits_final.json`` (all cases where there is no split file or for fold ``all``),
``calibration_cases`` of them evenly spaced in sorted order, never the fold's validation cases.
From each case ``tiles_per_case`` patch-sized tiles are cut: alternately centred on a random
foreground voxel (``seg > 0``, so that the small structures' activations are in the statistics)
and at a uniformly random position (a 2d configuration: from the slice of that voxel / a random
slice); volumes smaller than the patch are zero-padded as nnU-Net's predictor pads them.
Seeded, so the same command gives the same set.

Quantization: the fp32 model is converted to OpenVINO (:mod:`recokd.deploy.openvino_backend`)
and ``nncf.quantize`` inserts int8 fake-quantize operations from the calibration statistics
(NNCF's defaults: symmetric weights per channel, activations per tensor, fast bias correction;
``preset="mixed"`` makes activations asymmetric). The int8 model is checked against the fp32
PyTorch network on the calibration tiles (max |logit diff| and voxel-wise argmax agreement) and
saved as a model folder with its calibration set recorded in ``recokd.json``. The accuracy cost is
measured on held-out cases with ``recokd evaluate`` (``benchmarks/RESULTS.md``), not assumed.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recokd.deploy.model import InferenceModel, load_inference_model
from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL

DEFAULT_CALIBRATION_CASES = 8
DEFAULT_TILES_PER_CASE = 4
PRESETS = ("performance", "mixed")
SPLITS_FILE = "splits_final.json"  #: nnU-Net's split file in the preprocessed dataset folder


@dataclass(frozen=True)
class CalibrationSet:
    tiles: list[np.ndarray]  #: each ``(1, C, *patch)`` float32
    cases: list[str]
    folder: Path  #: the preprocessed data folder the tiles came from
    tiles_per_case: int
    split: str  #: which cases were eligible (e.g. "fold 0 training cases of splits_final.json")

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "cases": self.cases, "tiles_per_case": self.tiles_per_case,
                "tiles": len(self.tiles), "split": self.split,
                "tile_choice": "alternately centred on a random foreground voxel and uniformly random"}


def preprocessed_data_folder(model: InferenceModel) -> Path:
    """``$nnUNet_preprocessed/<dataset>/<data_identifier>`` of the model's configuration."""
    from recokd.nnunet.plans import preprocessed_dataset_folder

    loaded = model.loaded
    dataset = loaded.plans_manager.dataset_name
    folder = preprocessed_dataset_folder(dataset) / loaded.configuration_manager.data_identifier
    if not folder.is_dir():
        raise UserError(f"recokd quantize calibrates on nnU-Net's preprocessed training cases, but {folder} "
                        f"does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} -c "
                        f"{loaded.configuration_name} first (or point nnUNet_preprocessed at the folder the "
                        "model was trained from)")
    return folder


def training_cases(folder: Path, identifiers: list[str], fold: int | str) -> tuple[list[str], str]:
    """The fold's training cases among ``identifiers`` (``splits_final.json`` beside ``folder``)."""
    import json

    splits_file = folder.parent / SPLITS_FILE
    if fold == "all" or not splits_file.is_file():
        why = "fold all" if fold == "all" else f"no {SPLITS_FILE}"
        return sorted(identifiers), f"all preprocessed cases ({why})"
    try:
        splits = json.loads(splits_file.read_text(encoding="utf-8"))
        train = set(splits[int(fold)]["train"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"{splits_file}: could not read fold {fold}'s training cases "
                        f"({type(e).__name__}: {e})") from e
    cases = sorted(c for c in identifiers if c in train)
    return cases, f"fold {fold} training cases of {SPLITS_FILE}"


def _crop(data: np.ndarray, start: list[int], patch: list[int]) -> np.ndarray:
    """``data[:, start:start+patch]`` zero-padded where the patch leaves the volume."""
    out = np.zeros((data.shape[0], *patch), dtype=np.float32)
    src, dst = [slice(None)], [slice(None)]
    for s, p, n in zip(start, patch, data.shape[1:], strict=True):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = data[tuple(src)]
    return out


def case_tiles(data: np.ndarray, seg: np.ndarray, patch: list[int], count: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` patch-sized tiles ``(1, C, *patch)`` of ``data`` (C, *spatial): even ones centred on a
    random foreground voxel of ``seg`` (uniform where there is none), odd ones uniformly placed. A
    2d configuration's patch (one axis fewer than the volume) is cut from one slice, as nnU-Net's
    2d networks see the volume."""
    shape = data.shape[1:]
    if len(patch) not in (len(shape), len(shape) - 1):
        raise UserError(f"patch {patch} does not fit preprocessed data of shape {tuple(shape)}")
    box = [1] * (len(shape) - len(patch)) + list(patch)  # a 2d patch: a box one slice thick
    foreground = np.argwhere(np.asarray(seg)[0] > 0)
    tiles = []
    for i in range(count):
        if i % 2 == 0 and len(foreground):
            centre = foreground[rng.integers(len(foreground))]
            start = [int(c) - p // 2 for c, p in zip(centre, box, strict=True)]
        else:
            start = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(shape, box, strict=True)]
        tiles.append(_crop(data, start, box).reshape(1, data.shape[0], *patch))
    return tiles


def calibration_set(model: InferenceModel, num_cases: int = DEFAULT_CALIBRATION_CASES,
                    tiles_per_case: int = DEFAULT_TILES_PER_CASE, seed: int = 0,
                    folder: Path | None = None) -> CalibrationSet:
    """Calibration tiles from ``num_cases`` preprocessed training cases (see the module doc)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    if num_cases < 1 or tiles_per_case < 1:
        raise UserError(f"--calibration-cases and --tiles-per-case must be positive, got {num_cases} and "
                        f"{tiles_per_case}")
    folder = folder or preprocessed_data_folder(model)
    try:
        dataset_class = infer_dataset_class(str(folder))
        identifiers = dataset_class.get_identifiers(str(folder))
    except (AssertionError, OSError) as e:
        raise UserError(f"{folder} does not look like nnU-Net preprocessed data ({e})") from e
    cases, split = training_cases(folder, identifiers, model.loaded.fold)
    if len(cases) < num_cases:
        raise UserError(f"--calibration-cases {num_cases}: {folder} holds only {len(cases)} eligible "
                        f"case(s) ({split})")
    chosen = [cases[int(i)] for i in np.linspace(0, len(cases) - 1, num_cases).round()]
    dataset = dataset_class(str(folder), identifiers=list(chosen))
    rng = np.random.default_rng(seed)
    tiles = []
    for case in chosen:
        data, seg, _prev, _props = dataset.load_case(case)
        data = np.asarray(data, dtype=np.float32)
        if data.shape[0] != model.num_input_channels:
            raise UserError(f"{folder}/{case}: {data.shape[0]} channel(s), the model takes "
                            f"{model.num_input_channels}")
        tiles += case_tiles(data, seg, model.patch_size, tiles_per_case, rng)
    return CalibrationSet(tiles=tiles, cases=chosen, folder=folder, tiles_per_case=tiles_per_case,
                          split=split)


def require_nncf():
    try:
        import nncf
    except ImportError as e:
        from recokd.deploy.openvino_backend import INSTALL_HINT

        raise UserError(f"int8 quantization needs the nncf package: {INSTALL_HINT}") from e
    return nncf


def quantize_openvino(ov_model, tiles: list[np.ndarray], preset: str = "performance"):
    """``nncf.quantize`` of an ``openvino.Model`` on ``tiles`` (each ``(1, C, *patch)``), quietly."""
    nncf = require_nncf()
    if preset not in PRESETS:
        raise UserError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(ov_model, nncf.Dataset(tiles), preset=presets[preset],
                                 subset_size=len(tiles))
    finally:
        nncf_logger.setLevel(level)


@dataclass(frozen=True)
class QuantizeResult:
    folder: Path
    calibration: CalibrationSet
    max_abs_diff: float  #: max |int8 - fp32 torch| over the calibration tiles
    argmax_agreement: float  #: fraction of calibration voxels whose argmax matches fp32 PyTorch


def quantize_model(
    model: str | Path,
    out_dir: str | Path,
    *,
    calibration_cases: int = DEFAULT_CALIBRATION_CASES,
    tiles_per_case: int = DEFAULT_TILES_PER_CASE,
    fold: int | str = 0,
    checkpoint: str = CHECKPOINT_FINAL,
    preset: str = "performance",
    seed: int = 0,
    overwrite: bool = False,
) -> QuantizeResult:
    """int8 OpenVINO model folder of ``model`` in ``out_dir`` (see the module doc)."""
    import torch

    from recokd.deploy.openvino_backend import (
        OpenVINONetwork,
        check_model_folder_target,
        convert_network,
        openvino_sidecar,
        require_openvino,
        write_model_folder,
    )

    require_openvino()
    require_nncf()
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    out_dir = Path(out_dir).expanduser()
    check_model_folder_target(out_dir, overwrite, "-o")
    inference = load_inference_model(model, fold=fold, checkpoint=checkpoint, device="cpu")
    calibration = calibration_set(inference, calibration_cases, tiles_per_case, seed)
    network = inference.network.float().eval()
    fp32 = convert_network(network, inference.patch_input_shape)
    try:
        int8 = quantize_openvino(fp32, calibration.tiles, preset)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"NNCF quantization of {inference.loaded.checkpoint_path} failed "
                        f"({type(e).__name__}: {e})") from e
    runner = OpenVINONetwork(int8)
    diff, agree, voxels = 0.0, 0.0, 0
    for tile in calibration.tiles:
        x = torch.from_numpy(tile)
        with torch.no_grad():
            reference = network(x).numpy()
        out = runner(x).numpy()
        diff = max(diff, float(np.abs(out - reference).max()))
        agree += float((out.argmax(1) == reference.argmax(1)).sum())
        voxels += reference[:, 0].size
    check = {"max_abs_diff_vs_fp32_torch": diff, "argmax_agreement_vs_fp32_torch": agree / voxels,
             "input": "the calibration tiles"}
    extra = {"quantization": {"tool": "nncf", "nncf_version": require_nncf().__version__,
                              "preset": preset, "seed": seed, "calibration": calibration.describe()}}
    write_model_folder(int8, openvino_sidecar(inference, "int8", check, extra), out_dir)
    return QuantizeResult(folder=out_dir, calibration=calibration, max_abs_diff=diff,
                          argmax_agreement=agree / voxels)
