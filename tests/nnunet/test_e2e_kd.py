"""End to end on CPU: stock-nnU-Net teacher -> ``recokd train`` -> stock ``nnUNetv2_predict``;
refusals of existing results and of incompatible teachers; a killed run continued with ``--c``."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from recokd.cli import main
from recokd.nnunet import ext_trainer_dir
from tests.nnunet.conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, PhantomDataset

BIN = Path(sys.executable).parent
STUDENT_PLANS = "nnUNetPlans_recokd_t2"
MODEL = f"nnUNetTrainerReCoKD__{STUDENT_PLANS}__{CONFIGURATION}"
TRAIN = ["train", str(DATASET_ID), CONFIGURATION]
CPU = ["--device", "cpu"]


def _model_dir(results: Path) -> Path:
    return results / DATASET_NAME / MODEL


def _assert_same_geometry_and_valid_labels(image_file: Path, pred_file: Path, labels: dict) -> np.ndarray:
    image, pred = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(pred_file))
    assert pred.GetSize() == image.GetSize()
    assert np.allclose(pred.GetSpacing(), image.GetSpacing())
    assert np.allclose(pred.GetOrigin(), image.GetOrigin())
    assert np.allclose(pred.GetDirection(), image.GetDirection())
    array = sitk.GetArrayFromImage(pred)
    assert set(np.unique(array).tolist()) <= set(labels.values())
    return array


@pytest.mark.slow
def test_train_then_stock_predict(kd_env, teacher: Path, phantom_dataset: PhantomDataset, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    rc = main([*TRAIN, "0", "--teacher", str(teacher), "--epochs", "2", "--iters-per-epoch", "3",
               "--val-iters", "1", "--ema", *CPU])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"export nnUNet_extTrainer={ext_trainer_dir()}" in out
    fold = _model_dir(kd_env.results) / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "recokd_settings.json", "progress.png",
                 "validation/summary.json"):
        assert (fold / name).is_file(), name
    assert (kd_env.preprocessed / DATASET_NAME / f"{STUDENT_PLANS}.json").is_file()
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert log.count("KD: kd_lambda") == 2 and "ReCo-KD teacher:" in log
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerReCoKD" and ckpt["current_epoch"] == 2
    assert ckpt["recokd"]["network_weights_are"] == "ema"
    widths = [ckpt["network_weights"][f"encoder.stages.{i}.0.convs.0.conv.weight"].shape[0] for i in range(4)]
    assert widths == [8, 16, 32, 64]  # the t=2 student of the 32..256 teacher

    # stock nnU-Net inference on the held-out cases, finding the trainer through nnUNet_extTrainer
    stock_out = tmp_path / "stock"
    cmd = [str(BIN / "nnUNetv2_predict"), "-i", str(phantom_dataset.images_ts), "-o", str(stock_out),
           "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "0", "-tr", "nnUNetTrainerReCoKD",
           "-p", STUDENT_PLANS, "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_tta"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    images = sorted(phantom_dataset.images_ts.glob("*_0000.nii.gz"))
    assert len(images) == 2
    stock = {}
    for image in images:
        pred = stock_out / image.name.replace("_0000.nii.gz", ".nii.gz")
        stock[pred.name] = _assert_same_geometry_and_valid_labels(image, pred, phantom_dataset.labels)

    # recokd predict: refuses to overwrite, then gives the same segmentations as stock nnU-Net (up to
    # voxels where float32 rounding of oneDNN vs PyTorch's default kernel flips a near-tie)
    predict = ["predict", "-i", str(phantom_dataset.images_ts), "-o", str(stock_out), "-d", str(DATASET_ID),
               "-f", "0", "--disable-tta", "-npp", "0", "-nps", "0", *CPU]
    assert main(predict) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*predict, "--overwrite"]) == 0
    for name, array in stock.items():
        assert (sitk.GetArrayFromImage(sitk.ReadImage(str(stock_out / name))) == array).mean() >= 0.999

    # a fresh start on a fold with results is refused
    assert main([*TRAIN, "0", "--teacher", str(teacher), "--epochs", "2", *CPU]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_final.pth" in err and "--c" in err and "--overwrite" in err


def _modified_teacher(teacher: Path, tmp_path: Path, kind: str) -> Path:
    """A copy of the teacher checkpoint that claims another label set / patch size / dataset /
    configuration (checkpoints carry their own plans and dataset.json)."""
    ckpt = torch.load(teacher / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    ckpt = copy.deepcopy(ckpt)
    args = ckpt["init_args"]
    if kind == "labels":
        labels = args["dataset_json"]["labels"]
        args["dataset_json"]["labels"] = {("organ_" + k if v else k): v for k, v in labels.items()}
    elif kind == "patch size":
        args["plans"]["configurations"][CONFIGURATION]["patch_size"] = [16, 16, 16]
    elif kind == "dataset":
        props = args["plans"]["foreground_intensity_properties_per_channel"]["0"]
        props["mean"] += 100.0
        props["percentile_99_5"] += 300.0
    elif kind == "configuration":
        args["configuration"] = "2d"
    path = tmp_path / f"teacher_{kind.replace(' ', '_')}.pth"
    torch.save(ckpt, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("labels", "labels: teacher"),
        ("patch size", "patch size: teacher [16, 16, 16], student [32, 32, 32]"),
        ("dataset", "foreground intensity properties"),
        ("configuration", "do not fit"),  # a 2d network: load_trained_model already refuses it
    ],
)
def test_incompatible_teacher_is_refused(kd_env, teacher: Path, tmp_path: Path, kind: str, expected: str,
                                         capsys: pytest.CaptureFixture) -> None:
    bad = _modified_teacher(teacher, tmp_path, kind)
    assert main([*TRAIN, "3", "--teacher", str(bad), "--epochs", "1", *CPU]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recokd train: error:") and expected in err and "Traceback" not in err
    assert not (_model_dir(kd_env.results) / "fold_3").exists()  # nothing started


@pytest.mark.slow
def test_incompatible_teacher_exit_code_of_the_command(kd_env, teacher: Path, tmp_path: Path) -> None:
    bad = _modified_teacher(teacher, tmp_path, "labels")
    proc = subprocess.run([str(BIN / "recokd"), *TRAIN, "3", "--teacher", str(bad), *CPU],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 2
    assert "mismatch" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_killed_run_continues_with_c(kd_env, teacher: Path, tmp_path: Path) -> None:
    """SIGKILL a training in the middle of its second epoch; --c continues from the first one's checkpoint."""
    fold = _model_dir(kd_env.results) / "fold_2"
    latest = fold / "checkpoint_latest.pth"
    log = (tmp_path / "run.log").open("w")
    cmd = [str(BIN / "recokd"), *TRAIN, "2", "--teacher", str(teacher), "--epochs", "2", "--iters-per-epoch",
           "6", "--val-iters", "1", "--save-every", "1", *CPU]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())

    def in_epoch_1() -> bool:  # checkpoint of epoch 0 written and epoch 1 started (nnU-Net's log)
        return latest.exists() and any(
            re.search(r": Epoch 1\s*$", f.read_text(), flags=re.M) for f in fold.glob("training_log_*.txt"))

    try:
        deadline = time.monotonic() + 300
        while not in_epoch_1() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_epoch_1() and proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert not (fold / "checkpoint_final.pth").exists()
    before = torch.load(latest, map_location="cpu", weights_only=False)
    done = before["current_epoch"]
    assert done == 1  # checkpoint_latest of epoch 0 (the last epoch writes checkpoint_final instead)
    first_log = set(fold.glob("training_log_*.txt"))
    time.sleep(1.0)  # nnU-Net names log files by the second

    assert main([*TRAIN, "2", "--c", *CPU]) == 0  # no --teacher: the saved settings are used
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    logging = final["logging"]
    assert len(logging["kd_lambda"]) == len(logging["epoch_start_timestamps"]) == 2
    # the epochs done before the kill were kept, not re-run
    assert logging["epoch_start_timestamps"][:done] == before["logging"]["epoch_start_timestamps"][:done]
    assert logging["kd_loss"][:done] == before["logging"]["kd_loss"][:done]
    new_logs = set(fold.glob("training_log_*.txt")) - first_log
    assert len(new_logs) == 1
    resumed = new_logs.pop().read_text()
    epochs = re.findall(r": Epoch (\d+)\s*$", resumed, flags=re.M)
    assert epochs == ["1"]  # nnU-Net's log of the continued run starts at the epoch after the checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("method", ["logits", "fitnet", "at", "cwd", "skd", "ifvd", "cirkd", "rkd",
                                    "reco-affinity", "reco+logits:0.5"])
def test_every_kd_method_trains_through_recokd_train(kd_env, teacher: Path, method: str) -> None:
    """Issue 5: each baseline (and a combination) runs a few nnU-Net iterations via `recokd train`,
    logs its components and leaves a final checkpoint holding its KD modules."""
    rc = main([*TRAIN, "all", "--teacher", str(teacher), "--method", method, "--epochs", "1",
               "--iters-per-epoch", "2", "--val-iters", "1", "--overwrite", *CPU])
    assert rc == 0
    fold = _model_dir(kd_env.results) / "fold_all"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"ReCo-KD method {method!r}" in log
    kd_line = next(line for line in log.splitlines() if "KD: kd_lambda" in line)
    values = dict(re.findall(r"(kd/[\w/.:-]+) (-?[\d.e+-]+|nan)", kd_line))
    assert values and all(np.isfinite(float(v)) for v in values.values()), kd_line
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerReCoKD" and "recokd" in ckpt


@pytest.mark.slow
def test_kd_options_are_checked_on_the_real_taps_before_anything_is_deleted(
    kd_env, teacher: Path, capsys: pytest.CaptureFixture
) -> None:
    """The fault: the up-front check built the method on dummy 2-level channels, so a correct
    3-entry level_weights (4-stage net: 3 taps) was refused and a wrong 2-entry one passed, failing
    only inside the trainer after --overwrite had deleted the trained fold."""
    fold = _model_dir(kd_env.results) / "fold_all"
    ok = main([*TRAIN, "all", "--teacher", str(teacher), "--kd-option", "level_weights=[0.5, 0.3, 0.2]",
               "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--overwrite", *CPU])
    assert ok == 0 and (fold / "checkpoint_final.pth").is_file()
    before = {p: p.stat().st_mtime_ns for p in fold.rglob("*") if p.is_file()}
    plans = kd_env.preprocessed / DATASET_NAME / f"{STUDENT_PLANS}.json"
    plans_before = plans.read_bytes()
    capsys.readouterr()
    rc = main([*TRAIN, "all", "--teacher", str(teacher), "--kd-option", "level_weights=[1, 0]",
               "--epochs", "1", "--iters-per-epoch", "1", "--val-iters", "1", "--overwrite", *CPU])
    err = capsys.readouterr().err
    assert rc == 2 and "level_weights has 2 entries for 3 levels" in err and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in fold.rglob("*") if p.is_file()} == before  # fold untouched
    assert plans.read_bytes() == plans_before
