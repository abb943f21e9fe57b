"""Distillation beyond the labels, end to end on the CPU (issue 26): unlabelled scans in ``recokd train``
(train, predict, evaluate), the fold ensemble as teacher (its logits equal nnU-Net's own ensembling of
the same folds), refusals before anything is written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from recokd.cli import main
from tests.nnunet.conftest import (
    CONFIGURATION,
    DATASET_ID,
    DATASET_NAME,
    TEACHER_TRAINER,
    PhantomDataset,
    apply_env,
)

STUDENT_PLANS = "nnUNetPlans_recokd_t2"
MODEL = f"nnUNetTrainerReCoKD__{STUDENT_PLANS}__{CONFIGURATION}"
TRAIN = ["train", str(DATASET_ID), CONFIGURATION]
SHORT = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu"]


@pytest.fixture
def scans(phantom_dataset: PhantomDataset, tmp_path: Path) -> Path:
    """The two test phantoms' images as a folder of unlabelled scans (their labels stay hidden)."""
    folder = tmp_path / "unlabelled"
    shutil.copytree(phantom_dataset.images_ts, folder)
    return folder


@pytest.fixture(scope="module")
def two_fold_teacher(teacher: Path, nnunet_dirs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session teacher's model folder with a second fold (fold 1) trained the same stock
    way; the session teacher itself keeps its one fold (other tests count its folds)."""
    from nnunetv2.run.run_training import run_training

    with pytest.MonkeyPatch.context() as mp:
        apply_env(mp, nnunet_dirs)
        run_training(str(DATASET_ID), CONFIGURATION, 1, TEACHER_TRAINER, "nnUNetPlans",
                     device=torch.device("cpu"))
    copy = tmp_path_factory.mktemp("two_folds") / DATASET_NAME / teacher.name
    shutil.copytree(teacher, copy)
    shutil.rmtree(teacher / "fold_1")
    return copy


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_unlabelled_scans_train_predict_evaluate(kd_env, teacher: Path, scans: Path, tmp_path: Path,
                                                 phantom_dataset: PhantomDataset, capsys) -> None:
    given = _tree(scans)
    rc = main([*TRAIN, "0", "--teacher", str(teacher), "--unlabelled", str(scans), "--method", "reco+logits",
               "--kd-weight", "1", "--schedule", "constant", "--seed", "0", *SHORT, "--overwrite"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "unlabelled:     2 scans" in out and "1 of 2 patches per batch" in out
    assert _tree(scans) == given  # the user's scans are read, never written
    pre = list((kd_env.preprocessed / DATASET_NAME / "unlabelled").glob("unlabelled_*/*"))
    assert len(pre) == 1 and len(list(pre[0].glob("*.pkl"))) == 2
    fold = kd_env.results / DATASET_NAME / MODEL / "fold_0"
    settings = json.loads((fold / "recokd_settings.json").read_text())
    assert settings["unlabelled"] == str(scans.resolve()) and settings["unlabelled_share"] == 0.5
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert re.search(r"unlabelled scans: 2 from .*, 1 of 2 patches per batch", log)
    kd_line = next(line for line in log.splitlines() if "KD: kd_lambda" in line)
    assert "kd/reco:loss" in kd_line and "kd/logits:loss" in kd_line

    pred = tmp_path / "pred"
    assert main(["predict", "-i", str(phantom_dataset.images_ts), "-o", str(pred), "-d", str(DATASET_ID),
                 "-c", CONFIGURATION, "-f", "0", "-p", STUDENT_PLANS, "--device", "cpu"]) == 0
    assert len(list(pred.glob("*.nii.gz"))) == 2
    labels_ts = phantom_dataset.raw_folder / "labelsTs"
    assert main(["evaluate", str(pred), str(labels_ts)]) == 0
    assert "mean" in capsys.readouterr().out.lower()

    # --c continues with the saved unlabelled settings (the preprocessed scans are reused, not redone)
    stamps = {p: p.stat().st_mtime_ns for p in pre[0].iterdir()}
    assert main([*TRAIN, "0", "--c", "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in pre[0].iterdir()} == stamps


@pytest.mark.slow
def test_bad_unlabelled_scans_are_refused_before_anything_is_written(kd_env, teacher: Path, scans: Path,
                                                                    phantom_dataset: PhantomDataset,
                                                                    tmp_path: Path, capsys) -> None:
    results = kd_env.results / DATASET_NAME / MODEL / "fold_3"
    clash = tmp_path / "clash"
    shutil.copytree(scans, clash)
    first_training = sorted((phantom_dataset.raw_folder / "imagesTr").iterdir())[0]
    shutil.copy(first_training, clash / first_training.name)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, expected in ((clash, first_training.name.rsplit("_", 1)[0]), (empty, str(empty))):
        capsys.readouterr()
        rc = main([*TRAIN, "3", "--teacher", str(teacher), "--unlabelled", str(folder), *SHORT])
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
        assert not results.exists()
        assert not (kd_env.preprocessed / DATASET_NAME / "unlabelled" / f"{folder.name}").exists()


@pytest.mark.slow
def test_fold_ensemble_logits_equal_nnunets_ensembling_of_the_same_folds(two_fold_teacher: Path,
                                                                         kd_env) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from recokd.kd.distiller import Distiller
    from recokd.kd.registry import build_kd_method
    from recokd.nnunet.trained_model import load_trained_model

    folds = [load_trained_model(two_fold_teacher, fold=f) for f in (0, 1)]
    teacher = folds[0].network
    num_classes = folds[0].label_manager.num_segmentation_heads
    kd = build_kd_method("logits", [1], [1], num_classes)  # logits only: no taps
    d = Distiller(teacher, teacher, kd, [], ensemble=[folds[1].network])
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    _, ours = d.teacher_outputs(x)

    # one tile of the patch size without Gaussian weighting: nnU-Net's sliding window is the plain forward
    # of each fold, averaged (it accumulates in float16: compare at that precision)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=False, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(two_fold_teacher), use_folds=(0, 1))
    theirs = predictor.predict_logits_from_preprocessed_data(x[0]).unsqueeze(0)
    assert ours.shape == theirs.shape
    assert theirs.dtype == torch.float16
    assert torch.allclose(ours, theirs.float(), rtol=2e-3, atol=2e-3), (ours - theirs.float()).abs().max()
    one_fold = Distiller(teacher, teacher, kd, []).teacher_outputs(x)[1]
    assert not torch.allclose(ours, one_fold, atol=1e-4)  # the second fold does change the targets


@pytest.mark.slow
def test_train_with_the_fold_ensemble(kd_env, two_fold_teacher: Path, capsys) -> None:
    rc = main([*TRAIN, "4", "--teacher", str(two_fold_teacher), "--teacher-folds", "all-folds",
               "--method", "reco+logits", "--kd-weight", "1", "--schedule", "constant", *SHORT,
               "--overwrite"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "teacher folds:  [0, 1]" in out
    fold = kd_env.results / DATASET_NAME / MODEL / "fold_4"
    settings = json.loads((fold / "recokd_settings.json").read_text())
    assert settings["teacher_fold"] == 0 and settings["teacher_ensemble_folds"] == [1]
    assert "ReCo-KD teacher ensemble: folds [0, 1]" in next(fold.glob("training_log_*.txt")).read_text()


@pytest.mark.slow
def test_distil_a_model_folder_alone_on_unlabelled_scans(kd_env, two_fold_teacher: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`recokd distil` with nothing but the teacher's results folder (copied away; nnU-Net's folders point
    at empty ones, so its training dataset is out of reach) and 6 new phantoms without their labels."""
    import subprocess
    import sys

    from recokd.data.phantoms import write_phantom_dataset

    model = tmp_path / "released" / two_fold_teacher.name
    shutil.copytree(two_fold_teacher, model)
    hidden = write_phantom_dataset(991, num_cases=6, seed=11, shape=(32, 32, 32), name="Clinic",
                                   raw_dir=tmp_path / "clinic")
    scans = hidden / "imagesTr"
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / "empty" / var).mkdir(parents=True)
        monkeypatch.setenv(var, str(tmp_path / "empty" / var))
    out = tmp_path / "distilled"
    command = ["distil", str(model), "-i", str(scans), "-o", str(out), "-t", "2", "--epochs", "1",
               "--iters-per-epoch", "2", "--val-iters", "1", "--seed", "0", "--disable-tta",
               "--device", "cpu"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert re.search(r"agreement with the teacher on 2 held-out scans \(Dice of student vs teacher "
                     r"segmentation\): mean \d\.\d{3}", printed), printed
    student = out / "nnUNet_results" / DATASET_NAME / MODEL / "fold_0"
    settings = json.loads((student / "recokd_settings.json").read_text())
    assert settings["label_free"] and settings["teacher_ensemble_folds"] == [1]
    assert settings["teacher"] == str(model.resolve())
    labels = sorted((out / "nnUNet_raw" / DATASET_NAME / "labelsTr").iterdir())
    assert len(labels) == 6  # the teacher's segmentations of the 6 scans
    assert not list(Path(tmp_path / "empty").rglob("*.json"))  # the user's nnU-Net folders untouched

    # the same command again: refused (the folder exists); with --c every step is found complete
    assert main(command) == 2
    assert "pass --c to continue it" in capsys.readouterr().err
    assert main([*command, "--c"]) == 0
    assert "[training]" in capsys.readouterr().out

    # the student folder as nnU-Net's own predictor takes it, in the distillation's folders
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(out / var))
    pred = tmp_path / "pred"
    assert main(["predict", "-i", str(scans), "-o", str(pred), "-d", DATASET_NAME, "-c", CONFIGURATION,
                 "-f", "0", "-p", STUDENT_PLANS, "--device", "cpu"]) == 0
    assert main(["evaluate", str(pred), str(hidden / "labelsTr")]) == 0  # against the hidden ground truth
    stock = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(scans), "-o",
                            str(tmp_path / "stock"), "-d", DATASET_NAME, "-c", CONFIGURATION, "-f", "0",
                            "-tr", "nnUNetTrainerReCoKD", "-p", STUDENT_PLANS, "-device", "cpu",
                            "--disable_tta"], capture_output=True, text=True, timeout=600)
    assert stock.returncode == 0, stock.stderr[-2000:]
    assert len(list((tmp_path / "stock").glob("*.nii.gz"))) == 6


@pytest.mark.slow
def test_pseudo_label_loss_adds_the_label_loss_of_the_unlabelled_patches(kd_env, teacher: Path,
                                                                          scans: Path) -> None:
    """``--pseudo-label-loss``: the same seed, the same batches; the label loss now also covers the
    unlabelled patch (against the teacher's segmentation), so it differs from the run without it, and
    the setting is saved for --c."""
    fold = kd_env.results / DATASET_NAME / MODEL / "fold_2"
    seg_losses = []
    for extra in ([], ["--pseudo-label-loss"]):
        rc = main([*TRAIN, "2", "--teacher", str(teacher), "--unlabelled", str(scans), "--method",
                   "logits", "--kd-weight", "1", "--schedule", "constant", "--seed", "0", *SHORT,
                   "--overwrite", *extra])
        assert rc == 0
        settings = json.loads((fold / "recokd_settings.json").read_text())
        assert settings["pseudo_label_loss"] is bool(extra)
        log = max(fold.glob("training_log_*.txt")).read_text()
        kd_line = next(line for line in log.splitlines() if "KD: kd_lambda" in line)
        seg_losses.append(float(re.search(r"seg_loss (\S+)", kd_line).group(1)))
    assert seg_losses[0] != seg_losses[1]
