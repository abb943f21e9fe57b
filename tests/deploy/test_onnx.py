"""ONNX export (recokd.deploy.onnx_export) and ONNX Runtime inference in nnU-Net's predictor
(recokd.deploy.onnx_predictor) on a tiny PlainConvUNet in a hand-made nnU-Net results folder.

This module also holds the tiny results-folder builders that tests/deploy/conftest.py, tests/test_faults.py
and tests/evaluation/test_profile.py import (``tiny_plans``, ``write_results_folder``, ``write_case``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from recokd.cli import main
from recokd.errors import UserError
from tests.nnunet.test_trained_model import nnunet_checkpoint

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
TINY_DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                     "numTraining": 2, "file_ending": ".nii.gz"}


def tiny_plans(widths: list[int], patch: list[int], name: str = "nnUNetPlans") -> dict:
    """An nnU-Net v2 plans dict (the layout ExperimentPlanner writes) with one 3d_fullres PlainConvUNet,
    spacing 1 mm, z-score normalisation; stride 2 after the first stage."""
    n = len(widths)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(widths), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset902_RecoKDDeploy", "plans_name": name,
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 32], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": f"{name}_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [32.0, 32.0, 32.0],
            "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": arch, "batch_dice": False,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 9.0, "mean": 5.0, "median": 5.0, "min": -1.0, "percentile_00_5": 0.7,
            "percentile_99_5": 8.5, "std": 1.7}},
    }


def write_results_folder(root: Path, plans: dict, dataset_json: dict = TINY_DATASET_JSON,
                         folder_name: str = TRAINER_FOLDER, configuration: str = "3d_fullres") -> Path:
    """``root/<folder_name>`` laid out as nnU-Net's training output: plans.json, dataset.json and
    fold_0/checkpoint_final.pth (nnUNetTrainer's checkpoint keys, perturbed He-initialised weights of
    ``configuration``'s network, mirroring on every axis of its patch)."""
    folder = root / folder_name
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    checkpoint, _ = nnunet_checkpoint(copy.deepcopy(plans), dict(dataset_json), configuration)
    patch = plans["configurations"][configuration].get("patch_size", [0, 0, 0])
    checkpoint["inference_allowed_mirroring_axes"] = tuple(range(len(patch)))
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def write_case(folder: Path, case: str, shape: tuple[int, int, int], seed: int) -> None:
    """A single-channel NIfTI image with two bright blobs on noise (nnU-Net naming CASE_0000.nii.gz)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"))
    image = rng.normal(0.0, 1.0, shape)
    for _ in range(2):
        centre = np.array([rng.uniform(s / 4, 3 * s / 4) for s in shape])[:, None, None, None]
        image += 3.0 * (((grid - centre) ** 2).sum(0) < (min(shape) / 5) ** 2)
    itk = sitk.GetImageFromArray(image.astype(np.float32))
    itk.SetSpacing((1.0, 1.0, 1.0))
    itk.SetOrigin((10.0, -5.0, 2.5))
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(itk, str(folder / f"{case}_0000.nii.gz"))


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """The tiny model exported with the default exporter (dynamo where onnxscript is installed);
    (onnx path, ExportResult)."""
    from recokd.deploy.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return out, export_onnx(tiny_model, out)


# ---------------------------------------------------------------------------- export


def test_export_matches_pytorch_and_writes_sidecar(tiny_model, exported):
    from recokd.deploy.onnx_export import read_sidecar, resolve_exporter

    out, result = exported
    assert out.is_file() and result.sidecar_path == out.with_name("tiny.onnx.json")
    assert result.exporter == resolve_exporter("auto") and result.opset == 17
    assert result.max_abs_diff < 1e-4 and result.max_abs_logit > 0
    sidecar = read_sidecar(out)
    plans = json.loads((tiny_model / "plans.json").read_text())
    assert sidecar["plans"] == plans and sidecar["dataset_json"] == TINY_DATASET_JSON
    assert sidecar["plans_identifier"] == "nnUNetPlans" and sidecar["configuration"] == "3d_fullres"
    assert sidecar["patch_size"] == [16, 16, 16] and sidecar["num_classes"] == 3
    assert sidecar["num_input_channels"] == 1 and sidecar["inference_allowed_mirroring_axes"] == [0, 1, 2]
    assert sidecar["source_checkpoint"] == str((tiny_model / "fold_0" / "checkpoint_final.pth").resolve())
    assert sidecar["check"]["max_abs_diff"] == result.max_abs_diff
    assert sidecar["exporter"] == result.exporter


def _torch_network(model_dir: Path):
    from recokd.deploy.model import load_inference_model

    return load_inference_model(model_dir).network


@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 16), (2, 1, 24, 16, 32), (1, 1, 8, 40, 12)])
def test_dynamic_axes_agree_with_pytorch(tiny_model, exported, shape):
    """Batch and spatial axes are dynamic: other sizes than the export's 1x1x16^3 run and agree."""
    from recokd.deploy.onnx_export import compare_with_onnxruntime, create_session

    session = create_session(exported[0], threads=1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    diff, scale = compare_with_onnxruntime(_torch_network(tiny_model), session, x)
    assert diff < 1e-4 * max(1.0, scale)


def test_exporter_choice(monkeypatch):
    import importlib.util

    from recokd.deploy.onnx_export import resolve_exporter

    assert resolve_exporter("torchscript") == "torchscript"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "onnxscript" else real(name))
    assert resolve_exporter("auto") == "torchscript"
    with pytest.raises(UserError, match="needs the onnxscript package"):
        resolve_exporter("dynamo")


def test_export_refuses_to_overwrite_and_bad_input(tiny_model, exported, tmp_path):
    from recokd.deploy.onnx_export import export_onnx

    out, _ = exported
    before = out.read_bytes()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export_onnx(tiny_model, out, exporter="torchscript")
    assert out.read_bytes() == before
    with pytest.raises(UserError, match="ending in .onnx"):
        export_onnx(tiny_model, tmp_path / "model.bin")
    with pytest.raises(UserError, match="does not exist"):
        export_onnx(tmp_path / "missing", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="exporter must be one of"):
        export_onnx(tiny_model, tmp_path / "m.onnx", exporter="tf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_into_an_unwritable_folder_is_one_clear_error(tiny_model, tmp_path, monkeypatch, capsys):
    """The fault: three chained tracebacks (the cleanup's unlink raised again) and advice to try
    another exporter. Root ignores permissions, so there the OS's answer is injected instead."""
    import tempfile

    from recokd.cli import main

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        ro.chmod(0o500)
    try:
        assert main(["export", str(tiny_model), "--onnx", str(ro / "m.onnx")]) == 2
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err
    assert f"cannot write into the output folder {ro} (Permission denied)" in err
    assert "choose a writable folder with --onnx" in err
    assert "Traceback" not in err and "--exporter" not in err
    assert not list(ro.iterdir())


def test_export_fails_above_tolerance(tiny_model, tmp_path):
    from recokd.deploy.onnx_export import export_onnx

    with pytest.raises(UserError, match=r"does not match PyTorch: max \|onnx - torch\|"):
        export_onnx(tiny_model, tmp_path / "m.onnx", exporter="torchscript", tolerance=1e-12)
    assert not list(tmp_path.iterdir())


def test_export_cli_legacy_exporter(tiny_model, tmp_path, capsys):
    """The TorchScript exporter (no onnxscript needed) through the command line."""
    from recokd.deploy.onnx_export import read_sidecar

    out = tmp_path / "cli.onnx"
    assert main(["export", str(tiny_model), "--onnx", str(out), "--exporter", "torchscript"]) == 0
    text = capsys.readouterr().out
    assert "torchscript exporter, opset 17" in text and read_sidecar(out)["check"]["max_abs_diff"] < 1e-4
    assert "max |onnx - torch| =" in text and out.is_file() and (tmp_path / "cli.onnx.json").is_file()
    assert main(["export", str(tiny_model), "--onnx", str(out), "--exporter", "torchscript"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tiny_model), "--onnx", str(out), "--exporter", "torchscript",
                 "--overwrite"]) == 0


# ---------------------------------------------------------------------------- prediction


def _segmentations(folder: Path) -> dict[str, sitk.Image]:
    return {p.name: sitk.ReadImage(str(p)) for p in sorted(folder.glob("*.nii.gz"))}


def test_onnx_predictor_matches_nnunet_predictor(tiny_model, exported, cases, tmp_path):
    """Same files, same geometry, and (all but at most 0.1% of) the same labels as nnU-Net's own
    predictor with the PyTorch network; mirroring on (8 network calls per tile)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from recokd.deploy.onnx_predictor import nnUNetONNXPredictor

    reference = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(tiny_model), (0,))
    (tmp_path / "torch").mkdir()
    reference.predict_from_files_sequential(str(cases), str(tmp_path / "torch"))

    onnx = nnUNetONNXPredictor(tile_step_size=0.5, use_mirroring=True, threads=1)
    onnx.initialize_from_onnx(exported[0])
    calls = []
    run = onnx.network.session.run
    onnx.network.session = type("Spy", (), {"run": lambda self, *a: calls.append(1) or run(*a)})()
    (tmp_path / "onnx").mkdir()
    onnx.predict_from_files_sequential(str(cases), str(tmp_path / "onnx"))

    ref, got = _segmentations(tmp_path / "torch"), _segmentations(tmp_path / "onnx")
    assert list(got) == list(ref) == ["case_a.nii.gz", "case_b.nii.gz"]
    # 16^3 patch, step 0.5: case_a 20x16x24 -> 2*1*2 tiles, case_b 16x24x18 -> 1*2*2; 8 flips per tile
    assert len(calls) == (4 + 4) * 8
    for name in ref:
        a, b = sitk.GetArrayFromImage(ref[name]), sitk.GetArrayFromImage(got[name])
        assert a.shape == b.shape
        assert ref[name].GetOrigin() == got[name].GetOrigin()
        assert ref[name].GetSpacing() == got[name].GetSpacing()
        assert len(np.unique(a)) > 1  # not a trivial all-background prediction
        assert (a == b).mean() >= 0.999, f"{name}: {(a != b).sum()} of {a.size} voxels differ"


def test_predict_onnx_cli(tiny_model, exported, cases, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["predict-onnx", "-i", str(cases), "-o", str(out), "--onnx", str(exported[0]), "--sequential",
            "--disable-tta", "--threads", "1"]
    assert main(args + ["--model", str(tiny_model)]) == 0
    assert "predicted 2 case(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_a.nii.gz", "case_b.nii.gz"]
    assert main(args) == 2  # outputs exist
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_predictor_rejects_mismatched_model_dir(exported, tmp_path):
    from recokd.deploy.onnx_predictor import nnUNetONNXPredictor

    other = write_results_folder(tmp_path, tiny_plans([4, 8, 16], [16, 16, 16], name="OtherPlans"),
                                 folder_name="nnUNetTrainer__OtherPlans__3d_fullres")
    predictor = nnUNetONNXPredictor(use_mirroring=False)
    with pytest.raises(UserError, match="is plans 'OtherPlans' but .* was exported from plans 'nnUNetPlans'"):
        predictor.initialize_from_onnx(exported[0], other)
    with pytest.raises(UserError, match=r"tiny\.onnx\.json does not exist"):
        copy_ = tmp_path / "tiny.onnx"
        copy_.write_bytes(exported[0].read_bytes())
        predictor.initialize_from_onnx(copy_)


def test_recokd_predict_backend_onnxruntime_matches_torch(cases, tmp_path, monkeypatch, capsys):
    """`recokd predict --backend onnxruntime` (export on the fly, and with --onnx) writes the
    segmentations of `recokd predict` (nnU-Net's predictor on PyTorch)."""
    results = tmp_path / "results"
    model = write_results_folder(results / "Dataset902_RecoKDDeploy", tiny_plans([4, 8, 16], [16, 16, 16]))
    for key in ("raw", "preprocessed"):
        (tmp_path / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    monkeypatch.setenv("nnUNet_results", str(results))
    base = ["predict", "-i", str(cases), "-d", "902", "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer",
            "-p", "nnUNetPlans", "--device", "cpu", "-npp", "0", "-nps", "0"]
    assert main([*base, "-o", str(tmp_path / "torch")]) == 0
    assert main([*base, "-o", str(tmp_path / "ort"), "--backend", "onnxruntime"]) == 0
    assert "ONNX Runtime" in capsys.readouterr().out

    from recokd.deploy.onnx_export import export_onnx

    onnx_file = tmp_path / "model.onnx"
    export_onnx(model, onnx_file)
    ort2 = ["-o", str(tmp_path / "ort2"), "--backend", "onnxruntime", "--onnx", str(onnx_file)]
    assert main([*base, *ort2]) == 0
    ref = _segmentations(tmp_path / "torch")
    for folder in ("ort", "ort2"):
        got = _segmentations(tmp_path / folder)
        assert list(got) == list(ref) == ["case_a.nii.gz", "case_b.nii.gz"]
        for name in ref:
            a, b = sitk.GetArrayFromImage(ref[name]), sitk.GetArrayFromImage(got[name])
            assert (a == b).mean() >= 0.999, f"{folder}/{name}: {(a != b).sum()} of {a.size} voxels differ"

    assert main([*base, "-o", str(tmp_path / "x"), "--onnx", str(onnx_file)]) == 2
    assert "--onnx needs --backend onnxruntime" in capsys.readouterr().err
    assert main([*base[:-6], "--device", "cuda", "-o", str(tmp_path / "y"), "--backend", "onnxruntime"]) == 2
    assert "--device cpu" in capsys.readouterr().err
