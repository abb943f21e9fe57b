"""OpenVINO backend (recokd.deploy.openvino_backend) and int8 quantization (recokd.deploy.quantize)
on the tiny PlainConvUNet results folder of tests/deploy/test_onnx.py.

The int8 accuracy on a *trained* model is tested end to end in tests/nnunet/test_e2e_deploy.py
(slow); here the weights are random, so int8 is checked for what it must do whatever the weights:
run inside nnU-Net's predictor, keep shapes and geometry, and stay close to fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from recokd.cli import main
from recokd.errors import UserError
from tests.deploy.test_onnx import _segmentations, tiny_plans, write_results_folder

pytest.importorskip("openvino")

DATASET = "Dataset902_RecoKDDeploy"


@pytest.fixture(scope="module")
def ov_folder(tiny_model, tmp_path_factory):
    """(folder, OpenVINOExportResult) of the tiny model exported to OpenVINO."""
    from recokd.deploy.openvino_backend import export_openvino

    out = tmp_path_factory.mktemp("ov") / "tiny_ov"
    return out, export_openvino(tiny_model, out)


def _tiny_network(tiny_model):
    from recokd.deploy.model import load_inference_model

    return load_inference_model(tiny_model).network


# ---------------------------------------------------------------------------- export


def test_export_matches_pytorch_and_writes_the_model_folder(tiny_model, ov_folder):
    from recokd.deploy.openvino_backend import MODEL_BIN, MODEL_XML, SIDECAR_FILE, read_model_folder

    folder, result = ov_folder
    assert sorted(p.name for p in folder.iterdir()) == sorted([MODEL_XML, MODEL_BIN, SIDECAR_FILE])
    assert result.max_abs_diff < 1e-4 * max(1.0, result.max_abs_logit)
    assert result.argmax_agreement > 0.999
    sidecar, model, _ = read_model_folder(folder)
    assert sidecar["backend"] == "openvino" and sidecar["precision"] == "fp32"
    assert sidecar["patch_size"] == [16, 16, 16] and sidecar["num_classes"] == 3
    assert sidecar["plans"]["plans_name"] == "nnUNetPlans"
    assert sidecar["check"]["max_abs_diff"] == result.max_abs_diff
    # weights are stored as float32, not compressed to fp16 (ov.save_model's default): 4 bytes per
    # parameter (less the few of the deep-supervision heads, which are not in the inference graph)
    bin_bytes = (folder / MODEL_BIN).stat().st_size
    n_params = sum(p.numel() for p in _tiny_network(tiny_model).parameters())
    assert 0.95 * 4 * n_params <= bin_bytes <= 4 * n_params


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 16), (2, 1, 32, 16, 48)])
def test_network_agrees_with_pytorch_on_any_tile_shape(tiny_model, ov_folder, static, shape):
    from recokd.deploy.openvino_backend import OpenVINONetwork, compare_with_torch, read_model_folder

    _, model, _ = read_model_folder(ov_folder[0])
    runner = OpenVINONetwork(model, threads=1, static_shapes=static)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    diff, scale, agreement = compare_with_torch(_tiny_network(tiny_model), runner, x)
    assert diff < 1e-4 * max(1.0, scale)
    assert agreement > 0.999


def test_outputs_are_fresh_tensors(ov_folder):
    """nnU-Net's mirroring adds the outputs of consecutive calls: a call must not overwrite the last one."""
    from recokd.deploy.openvino_backend import OpenVINONetwork, read_model_folder

    runner = OpenVINONetwork(read_model_folder(ov_folder[0])[1], threads=1)
    x = torch.randn(1, 1, 16, 16, 16)
    first = runner(x)
    kept = first.clone()
    runner(torch.flip(x, (2,)))
    assert torch.equal(first, kept)


def test_export_refuses_to_overwrite_and_bad_folders(tiny_model, ov_folder, tmp_path):
    from recokd.deploy.openvino_backend import (
        MODEL_BIN,
        MODEL_XML,
        SIDECAR_FILE,
        export_openvino,
        read_model_folder,
    )

    folder, _ = ov_folder
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export_openvino(tiny_model, folder)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file; expected a folder"):
        export_openvino(tiny_model, a_file)
    with pytest.raises(UserError, match="is not a folder"):
        read_model_folder(tmp_path / "missing")
    with pytest.raises(UserError, match=r"^model path .*nope does not exist"):  # not "teacher": any model
        export_openvino(tmp_path / "nope", tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / SIDECAR_FILE).write_text((folder / SIDECAR_FILE).read_text())
    (broken / MODEL_XML).write_text((folder / MODEL_XML).read_text())
    with pytest.raises(UserError, match=rf"{MODEL_BIN} does not exist"):
        read_model_folder(broken)
    onnx_like = tmp_path / "onnx_like"
    onnx_like.mkdir()
    sidecar = json.loads((folder / SIDECAR_FILE).read_text())
    (onnx_like / SIDECAR_FILE).write_text(json.dumps({**sidecar, "backend": "onnxruntime"}))
    with pytest.raises(UserError, match="not an OpenVINO one"):
        read_model_folder(onnx_like)


def test_overwrite_replaces_only_the_model(tiny_model, tmp_path):
    from recokd.deploy.openvino_backend import MODEL_XML, export_openvino

    out = tmp_path / "out"
    export_openvino(tiny_model, out)
    (out / "notes.txt").write_text("mine")
    before = (out / MODEL_XML).stat().st_mtime_ns
    export_openvino(tiny_model, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / MODEL_XML).stat().st_mtime_ns >= before
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_missing_openvino_is_one_clear_error(monkeypatch, tiny_model, tmp_path):
    import builtins

    from recokd.deploy import openvino_backend

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert "pip install" in openvino_backend.openvino_available()
    with pytest.raises(UserError, match=r"needs the openvino package: pip install 'reco-kd\[deploy\]'"):
        openvino_backend.export_openvino(tiny_model, tmp_path / "x")


def test_export_cli_writes_both_formats(tiny_model, tmp_path, capsys):
    args = ["export", str(tiny_model), "--onnx", str(tmp_path / "m.onnx"), "--openvino", str(tmp_path / "ov")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "max |onnx - torch|" in out and "max |openvino - torch|" in out
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "ov" / "model.xml").is_file()
    assert main(["export", str(tiny_model)]) == 2
    assert "--onnx OUT.onnx and/or --openvino DIR" in capsys.readouterr().err


# ---------------------------------------------------------------------------- prediction


def test_openvino_predictor_matches_nnunet_predictor(tiny_model, ov_folder, cases, tmp_path):
    """Same files, same geometry, (all but at most 0.1% of) the same labels as nnU-Net's own predictor
    with the PyTorch network; mirroring on."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from recokd.deploy.openvino_backend import nnUNetOpenVINOPredictor

    reference = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    reference.initialize_from_trained_model_folder(str(tiny_model), (0,))
    (tmp_path / "torch").mkdir()
    reference.predict_from_files_sequential(str(cases), str(tmp_path / "torch"))

    predictor = nnUNetOpenVINOPredictor(tile_step_size=0.5, use_mirroring=True, threads=1)
    predictor.initialize_from_openvino(ov_folder[0])
    (tmp_path / "ov").mkdir()
    predictor.predict_from_files_sequential(str(cases), str(tmp_path / "ov"))
    # one static-shape compilation: every tile is patch-sized
    assert list(predictor.network._requests) == [(1, 1, 16, 16, 16)]

    ref, got = _segmentations(tmp_path / "torch"), _segmentations(tmp_path / "ov")
    assert list(got) == list(ref) == ["case_a.nii.gz", "case_b.nii.gz"]
    for name in ref:
        a, b = sitk.GetArrayFromImage(ref[name]), sitk.GetArrayFromImage(got[name])
        assert a.shape == b.shape
        assert ref[name].GetOrigin() == got[name].GetOrigin()
        assert ref[name].GetSpacing() == got[name].GetSpacing()
        assert ref[name].GetDirection() == got[name].GetDirection()
        assert len(np.unique(a)) > 1
        assert (a == b).mean() >= 0.999, f"{name}: {(a != b).sum()} of {a.size} voxels differ"


def _predict_env(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    results = tmp_path / "results"
    model = write_results_folder(results / DATASET, tiny_plans([4, 8, 16], [16, 16, 16]))
    for key in ("raw", "preprocessed"):
        (tmp_path / key).mkdir(exist_ok=True)
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / key))
    monkeypatch.setenv("nnUNet_results", str(results))
    base = ["-d", "902", "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans",
            "--device", "cpu", "-npp", "0", "-nps", "0"]
    return model, base


def test_recokd_predict_backend_openvino_matches_torch(cases, tmp_path, monkeypatch, capsys):
    model, base = _predict_env(tmp_path, monkeypatch)
    predict = ["predict", "-i", str(cases), *base]
    assert main([*predict, "-o", str(tmp_path / "torch")]) == 0
    assert main([*predict, "-o", str(tmp_path / "ov"), "--backend", "openvino", "--threads", "1"]) == 0
    assert "OpenVINO fp32" in capsys.readouterr().out
    folder = tmp_path / "exported"
    assert main(["export", str(model), "--openvino", str(folder)]) == 0
    ov = ["--backend", "openvino", "--openvino", str(folder)]
    assert main([*predict, "-o", str(tmp_path / "ov2"), *ov]) == 0
    ref = _segmentations(tmp_path / "torch")
    for out in ("ov", "ov2"):
        got = _segmentations(tmp_path / out)
        assert list(got) == list(ref)
        for name in ref:
            a, b = sitk.GetArrayFromImage(ref[name]), sitk.GetArrayFromImage(got[name])
            assert (a == b).mean() >= 0.999, f"{out}/{name}: {(a != b).sum()} voxels differ"

    capsys.readouterr()
    assert main([*predict, "-o", str(tmp_path / "x"), "--openvino", str(folder)]) == 2
    assert "--openvino needs --backend openvino" in capsys.readouterr().err
    assert main([*predict, "-o", str(tmp_path / "x"), "--backend", "onnxruntime", *ov[2:]]) == 2
    assert "--openvino needs --backend openvino, not --backend onnxruntime" in capsys.readouterr().err
    assert main([*predict, "-o", str(tmp_path / "x"), "--backend", "openvino", "--openvino",
                 str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*predict, "-o", str(tmp_path / "x"), *ov, "--stock-cpu-convs"]) == 2
    assert "applies to --backend torch" in capsys.readouterr().err


# ---------------------------------------------------------------------------- int8


def write_preprocessed(root: Path, plans: dict, n_cases: int, validation: list[str],
                       configuration: str = "3d_fullres") -> Path:
    """``root/<dataset>/<data_identifier of configuration>`` with ``n_cases`` nnU-Net blosc2 cases (image +
    seg with a foreground cube) and a splits_final.json whose fold 0 validates on ``validation``."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    folder = root / plans["dataset_name"] / plans["configurations"][configuration]["data_identifier"]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"case_{i:02d}" for i in range(n_cases)]
    for i, name in enumerate(names):
        data = rng.normal(size=(1, 24, 20, 28)).astype(np.float32)
        seg = np.zeros((1, 24, 20, 28), dtype=np.int8)
        seg[0, 4 + i % 4:10 + i % 4, 5:11, 6:12] = 1 + i % 2
        data[seg > 0] += 3.0
        nnUNetDatasetBlosc2.save_case(data, seg, {"spacing": [1.0, 1.0, 1.0]}, str(folder / name))
    train = [n for n in names if n not in validation]
    (folder.parent / "splits_final.json").write_text(json.dumps([{"train": train, "val": validation}]))
    return folder


def test_calibration_tiles_come_from_training_cases(tiny_model, tmp_path, monkeypatch):
    from recokd.deploy.model import load_inference_model
    from recokd.deploy.quantize import calibration_set

    plans = json.loads((tiny_model / "plans.json").read_text())
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    folder = write_preprocessed(tmp_path, plans, 6, validation=["case_01", "case_04"])
    model = load_inference_model(tiny_model)
    cal = calibration_set(model, num_cases=3, tiles_per_case=4, seed=0)
    assert cal.folder == folder and cal.split.startswith("fold 0 training cases")
    assert cal.cases == ["case_00", "case_03", "case_05"]  # evenly spaced over the 4 training cases
    assert len(cal.tiles) == 12 and all(t.shape == (1, 1, 16, 16, 16) for t in cal.tiles)
    # even tiles are centred on foreground: their centre voxel is bright
    centres = [t[0, 0, 8, 8, 8] for t in cal.tiles[::2]]
    assert min(centres) > 1.0
    again = calibration_set(model, num_cases=3, tiles_per_case=4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(cal.tiles, again.tiles, strict=True))
    with pytest.raises(UserError, match="holds only 4 eligible case"):
        calibration_set(model, num_cases=5)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="nnUNet_preprocessed|plan_and_preprocess"):
        calibration_set(model, num_cases=1)


def test_crop_pads_with_zeros_like_the_predictor():
    from recokd.deploy.quantize import _crop

    data = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6) + 1
    tile = _crop(data, [-2, 1, 3], [8, 3, 4])
    assert tile.shape == (2, 8, 3, 4)
    assert (tile[:, :2] == 0).all() and (tile[:, 6:] == 0).all()  # rows -2,-1 and 4,5 are outside
    assert (tile[:, :, :, 3] == 0).all()  # column 6 is outside
    np.testing.assert_array_equal(tile[:, 2:6, :, :3], data[:, 0:4, 1:4, 3:6])


def test_quantize_cli_writes_an_int8_model_that_predicts(tiny_model, cases, tmp_path, monkeypatch, capsys):
    from recokd.deploy.openvino_backend import nnUNetOpenVINOPredictor, read_model_folder

    plans = json.loads((tiny_model / "plans.json").read_text())
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    write_preprocessed(tmp_path / "pre", plans, 4, validation=["case_03"])
    out = tmp_path / "int8"
    args = ["quantize", str(tiny_model), "-o", str(out), "--calibration-cases", "3", "--tiles-per-case", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "6 tile(s) from 3 case(s)" in printed and "argmax agreement" in printed
    sidecar, model, _ = read_model_folder(out)
    assert sidecar["precision"] == "int8"
    assert sidecar["quantization"]["calibration"]["cases"] == ["case_00", "case_01", "case_02"]
    assert "case_03" not in json.dumps(sidecar["quantization"])  # the validation case is never used
    ops = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in ops  # NNCF's int8 quantization points
    assert sidecar["check"]["argmax_agreement_vs_fp32_torch"] > 0.8

    predictor = nnUNetOpenVINOPredictor(use_mirroring=False, threads=1)
    predictor.initialize_from_openvino(out)
    (tmp_path / "pred").mkdir()
    predictor.predict_from_files_sequential(str(cases), str(tmp_path / "pred"))
    got = _segmentations(tmp_path / "pred")
    assert list(got) == ["case_a.nii.gz", "case_b.nii.gz"]
    assert got["case_a.nii.gz"].GetSize() == sitk.ReadImage(str(cases / "case_a_0000.nii.gz")).GetSize()

    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
