"""The fault matrix (issue 15): bad inputs and faults across the commands, each run through the
``recokd`` entry point as a user would. Every case asserts the exit code (2), that the message
names the offending file or field, that no Python traceback reaches the user, and that nothing
the user already had changed (checksums of the input and output folders before and after).

Faults that need a trained model in nnU-Net's own training loop (NaN losses, SIGINT / kill -9 and
resume, incompatible teachers for ``recokd train``) are in the slow suite:
tests/nnunet/test_guards.py, tests/nnunet/test_e2e_kd.py, tests/nnunet/test_trainer_resume.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.cli import main
from tests.deploy.test_onnx import tiny_plans, write_case, write_results_folder

DATASET = "Dataset902_RecoKDDeploy"
LABELS = {"background": 0, "a": 1, "b": 2}


def checksum(*folders: Path) -> str:
    """sha256 over every file (relative path and bytes) below ``folders``; missing folders count."""
    h = hashlib.sha256()
    for folder in folders:
        h.update(str(folder).encode())
        if not folder.exists():
            h.update(b"<missing>")
            continue
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def fails_cleanly(args: list[str], capsys, names: str | list[str], watched: list[Path]) -> str:
    """Run ``recokd ARGS``: exit code 2, one ``recokd <command>: error:`` message naming each of
    ``names``, no traceback, ``watched`` folders unchanged. Returns the message."""
    before = checksum(*watched)
    capsys.readouterr()
    assert main(args) == 2
    stderr = capsys.readouterr().err  # progress lines (profile, evaluate) may come first
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"recokd {args[0]}: error:")]
    assert len(lines) == 1, stderr
    err = lines[0]
    for name in [names] if isinstance(names, str) else names:
        assert name in err, f"{name!r} not in {err!r}"
    assert checksum(*watched) == before, "a failing command changed the user's files"
    return err


def write_seg(folder: Path, name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0),
              origin=(0.0, 0.0, 0.0)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(folder / name))
    return folder / name


def _cube(shape=(12, 12, 12), label=1) -> np.ndarray:
    a = np.zeros(shape, dtype=np.uint8)
    a[3:8, 3:8, 3:8] = label
    return a


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> dict[str, Path]:
    """Temporary nnU-Net folders with the tiny results folder of tests/deploy under nnUNet_results."""
    dirs = {k: tmp_path / f"nnUNet_{k}" for k in ("raw", "preprocessed", "results")}
    for key, folder in dirs.items():
        folder.mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(folder))
    dirs["model"] = write_results_folder(dirs["results"] / DATASET, tiny_plans([4, 8, 16], [16, 16, 16]))
    return dirs


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imagesTs"
    write_case(folder, "case_a", (20, 16, 24), seed=0)
    return folder


PREDICT = ["-d", "902", "-c", "3d_fullres", "-f", "0", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans",
           "--device", "cpu", "-npp", "0", "-nps", "0"]


# ---------------------------------------------------------------------------- datasets and plans


def test_nonexistent_dataset_id(nnunet_env, capsys):
    fails_cleanly(["student-plans", "999", "-c", "3d_fullres", "-t", "2"], capsys, "999",
                  [nnunet_env["preprocessed"]])


def test_student_plans_t_out_of_range(nnunet_env, capsys):
    pre = nnunet_env["preprocessed"] / DATASET
    pre.mkdir()
    (pre / "nnUNetPlans.json").write_text(json.dumps(tiny_plans([4, 8, 16], [16, 16, 16])))
    (pre / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS,
                                                  "numTraining": 2, "file_ending": ".nii.gz"}))
    fails_cleanly(["student-plans", "902", "-c", "3d_fullres", "-t", "-1"], capsys,
                  "width reduction exponent", [pre])


def test_phantoms_existing_dataset_id(tmp_path, capsys):
    raw = tmp_path / "raw"
    args = ["phantoms", "--id", "903", "--cases", "2", "--shape", "16", "16", "16", "--raw", str(raw)]
    assert main(args) == 0
    fails_cleanly(args, capsys, ["Dataset903", "--overwrite"], [raw])


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("command", ["export", "profile", "quantize"])
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "no fold"])
def test_bad_checkpoints(nnunet_env, tmp_path, capsys, command, damage):
    model = nnunet_env["model"]
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    if damage == "missing":
        ckpt.unlink()
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "garbage":
        ckpt.write_bytes(b"not a checkpoint" * 100)
    else:
        ckpt.unlink()
        ckpt.parent.rmdir()
    args = {"export": ["export", str(model), "--onnx", str(tmp_path / "out" / "m.onnx")],
            "profile": ["profile", str(model), "--threads", "1", "--repeats", "1", "--no-isolate"],
            "quantize": ["quantize", str(model), "-o", str(tmp_path / "out")]}[command]
    (tmp_path / "out").mkdir()
    name = "fold_0" if damage == "no fold" else "checkpoint_final.pth"
    err = fails_cleanly(args, capsys, name, [model, tmp_path / "out"])
    assert "teacher" not in err  # any model, not only a teacher


# ---------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("fault", ["names", "shape", "spacing", "origin", "corrupt", "empty pred",
                                   "missing gt"])
def test_evaluate_faults(tmp_path, capsys, fault):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_seg(gt, "c1.nii.gz", _cube())
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz",
                                        "channel_names": {"0": "CT"}}))
    expect = "c1.nii.gz"
    if fault == "names":
        write_seg(pred, "c2.nii.gz", _cube())
        expect = "c2"
    elif fault == "shape":
        write_seg(pred, "c1.nii.gz", _cube((12, 12, 10)))
    elif fault == "spacing":
        write_seg(pred, "c1.nii.gz", _cube(), spacing=(1.0, 1.0, 2.0))
    elif fault == "origin":
        write_seg(pred, "c1.nii.gz", _cube(), origin=(5.0, 0.0, 0.0))
    elif fault == "corrupt":
        pred.mkdir()
        (pred / "c1.nii.gz").write_bytes(b"\x1f\x8b broken")
    elif fault == "empty pred":
        pred.mkdir()
        expect = str(pred)
    else:
        write_seg(pred, "c1.nii.gz", _cube())
        gt = tmp_path / "nope"
        expect = "nope"
    out = tmp_path / "out"
    fails_cleanly(["evaluate", str(pred), str(gt), "--dataset-json", str(dataset_json), "-o", str(out)],
                  capsys, expect, [pred, gt, out])


def test_evaluate_label_outside_the_dataset_is_named_and_not_scored(tmp_path, capsys):
    """A prediction holding a value that dataset.json does not define is scored on the known classes
    and the value is reported per case (a subset of classes may be scored on purpose)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_seg(gt, "c1.nii.gz", _cube())
    write_seg(pred, "c1.nii.gz", _cube(label=7))
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    before = [f.read_bytes() for f in (gt / "c1.nii.gz", pred / "c1.nii.gz")]
    args = ["evaluate", str(pred), str(gt), "--dataset-json", str(dataset_json), "-o", str(tmp_path / "o")]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "case c1: prediction has label value(s) [7] not in the labels; not scored" in out.out + out.err
    assert [f.read_bytes() for f in (gt / "c1.nii.gz", pred / "c1.nii.gz")] == before


# ---------------------------------------------------------------------------- predict


def test_predict_into_a_folder_with_predictions(nnunet_env, images, tmp_path, capsys):
    out = tmp_path / "pred"
    write_seg(out, "case_a.nii.gz", _cube())
    fails_cleanly(["predict", "-i", str(images), "-o", str(out), *PREDICT], capsys, ["case_a", "--overwrite"],
                  [out, images])


def test_predict_nan_image(nnunet_env, tmp_path, capsys):
    folder = tmp_path / "nan"
    write_case(folder, "case_a", (20, 16, 24), seed=0)
    image = sitk.ReadImage(str(folder / "case_a_0000.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[2, 3, 4] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(folder / "case_a_0000.nii.gz"))
    fails_cleanly(["predict", "-i", str(folder), "-o", str(tmp_path / "pred"), *PREDICT], capsys,
                  "case_a_0000.nii.gz", [folder, tmp_path / "pred"])


def test_predict_wrong_channel_count_and_missing_suffix(nnunet_env, images, tmp_path, capsys):
    two = tmp_path / "two"
    two.mkdir()
    for ch in ("0000", "0001"):
        (two / f"case_a_{ch}.nii.gz").write_bytes((images / "case_a_0000.nii.gz").read_bytes())
    fails_cleanly(["predict", "-i", str(two), "-o", str(tmp_path / "p1"), *PREDICT], capsys, "case_a",
                  [two, tmp_path / "p1"])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "case_a.nii.gz").write_bytes((images / "case_a_0000.nii.gz").read_bytes())
    fails_cleanly(["predict", "-i", str(plain), "-o", str(tmp_path / "p2"), *PREDICT], capsys, "_0000",
                  [plain, tmp_path / "p2"])


def test_predict_runtime_backend_faults(nnunet_env, images, tmp_path, capsys):
    watched = [images, nnunet_env["model"], tmp_path / "p"]
    predict = ["predict", "-i", str(images), "-o", str(tmp_path / "p"), *PREDICT]
    fails_cleanly([*predict, "--backend", "openvino", "--openvino", str(tmp_path / "missing")], capsys,
                  "missing", watched)
    fails_cleanly([*predict, "--backend", "onnxruntime", "--onnx", str(tmp_path / "missing.onnx")], capsys,
                  "missing.onnx", watched)
    fails_cleanly([*predict, "--threads", "2"], capsys, "--threads", watched)
    fails_cleanly([*predict, "--backend", "openvino", "--device", "cuda"], capsys, "--device cpu", watched)


def test_predict_model_without_dataset_json(nnunet_env, images, tmp_path, capsys):
    (nnunet_env["model"] / "dataset.json").unlink()
    fails_cleanly(["predict", "-i", str(images), "-o", str(tmp_path / "p"), *PREDICT], capsys, "dataset.json",
                  [images, nnunet_env["model"]])


# ---------------------------------------------------------------------------- export and quantize targets


def test_export_and_quantize_never_overwrite_silently(nnunet_env, tmp_path, capsys):
    model = nnunet_env["model"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"mine")
    fails_cleanly(["export", str(model), "--onnx", str(out / "m.onnx")], capsys, ["m.onnx", "--overwrite"],
                  [out])
    (out / "model.xml").write_text("mine")
    fails_cleanly(["export", str(model), "--openvino", str(out)], capsys, ["model.xml", "--overwrite"], [out])
    fails_cleanly(["quantize", str(model), "-o", str(out)], capsys, ["model.xml", "--overwrite"], [out])
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    fails_cleanly(["export", str(model), "--openvino", str(a_file)], capsys, "is a file", [tmp_path / "out"])
    assert a_file.read_text() == "mine"


def test_quantize_without_preprocessed_data(nnunet_env, tmp_path, capsys):
    fails_cleanly(["quantize", str(nnunet_env["model"]), "-o", str(tmp_path / "q")], capsys,
                  ["nnUNetv2_plan_and_preprocess", DATASET], [nnunet_env["model"], tmp_path / "q"])


def test_profile_bad_backends_and_paths(nnunet_env, tmp_path, capsys):
    model = nnunet_env["model"]
    fails_cleanly(["profile", str(model), "--backends", "tensorrt"], capsys, "tensorrt", [model])
    fails_cleanly(["profile", str(tmp_path / "a"), str(model), str(tmp_path / "b")], capsys,
                  [str(tmp_path / "a"), str(tmp_path / "b")], [model])
