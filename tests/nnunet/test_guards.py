"""Training with a non-finite loss stops with a clear error and writes no final model."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recokd.nnunet.guards import MAX_NONFINITE_STEPS, FiniteLossGuard, NonFiniteLossError


class _Trainer(FiniteLossGuard):
    current_epoch = 3
    preprocessed_dataset_folder = "/data/nnUNet_preprocessed/Dataset1_X/nnUNetPlans_3d_fullres"

    def __init__(self) -> None:
        self.log: list[str] = []

    def print_to_log_file(self, *args) -> None:
        self.log.append(" ".join(map(str, args)))


def test_a_few_non_finite_steps_are_tolerated_and_the_count_resets() -> None:
    t = _Trainer()
    for _ in range(3):
        for _ in range(MAX_NONFINITE_STEPS - 1):
            t._check_finite_loss(np.float32("nan"))
        t._check_finite_loss(np.float32(0.5))  # a finite step resets the count
    assert t._nonfinite_steps == 0 and not t.log


def test_a_persistently_non_finite_loss_stops_training_naming_what_to_check() -> None:
    t = _Trainer()
    for _ in range(MAX_NONFINITE_STEPS - 1):
        t._check_finite_loss(torch.tensor(float("inf")), {"seg_loss": 1.0, "kd_loss": math.inf})
    with pytest.raises(NonFiniteLossError) as e:
        t._check_finite_loss(torch.tensor(float("inf")), {"seg_loss": 1.0, "kd_loss": math.inf})
    msg = str(e.value)
    assert f"not finite for {MAX_NONFINITE_STEPS} iterations in a row (epoch 3" in msg
    assert "non-finite terms: kd_loss" in msg and "teacher checkpoint" in msg
    assert "No final checkpoint was written" in msg and t.log == [msg]

    t = _Trainer()
    with pytest.raises(NonFiniteLossError, match="NaN or infinite voxels in the training images .*"
                                                 "nnUNet_preprocessed/Dataset1_X"):
        for _ in range(MAX_NONFINITE_STEPS):
            t._check_finite_loss(np.array(np.nan), {"seg_loss": math.nan, "kd_loss": 0.0})


@pytest.mark.slow
def test_training_on_nan_images_stops_without_a_final_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault: NaN voxels in every training image; nnU-Net alone trains on and saves a NaN model."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.run.run_training import run_training

    from recokd.nnunet import add_ext_trainer_dir_to_env
    from tests.nnunet._tiny import TINY_ID, TINY_NAME, set_nnunet_env, write_tiny_raw_dataset

    dirs = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for d in dirs.values():
        d.mkdir()
    write_tiny_raw_dataset(dirs["raw"], n_cases=5)
    set_nnunet_env(monkeypatch, dirs)
    for key, value in {"nnUNet_def_n_proc": "1", "nnUNet_compile": "0", "nnUNet_wandb_enabled": "0",
                       "RECOKD_SHORT_EPOCHS": "2", "RECOKD_SHORT_ITERS": "6",
                       "RECOKD_SHORT_VAL_ITERS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_extTrainer", add_ext_trainer_dir_to_env({}))
    threads = torch.get_num_threads()
    extract_fingerprints([TINY_ID], num_processes=1, check_dataset_integrity=False, verbose=False,
                         show_progress_bar=False)
    plan_experiments([TINY_ID])
    preprocess([TINY_ID], "nnUNetPlans", configurations=("3d_fullres",), num_processes=(1,), verbose=False,
               show_progress_bar=False)
    torch.set_num_threads(threads)
    # NaN voxels in every preprocessed training case (nnU-Net's fingerprinting refuses NaN raw images,
    # so this is data corrupted after preprocessing, or written by other tools)
    import blosc2

    cases = sorted((dirs["preprocessed"] / TINY_NAME / "nnUNetPlans_3d_fullres").glob("*[0-9].b2nd"))
    assert len(cases) == 5
    for path in cases:
        array = blosc2.open(str(path), mode="a")
        array[0, 3:20, 3:20, 3:20] = np.full((17, 17, 17), np.nan, dtype=np.float32)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # training only: the planner refuses 0
    with pytest.raises(NonFiniteLossError, match="not finite for 5 iterations in a row"):
        run_training(str(TINY_ID), "3d_fullres", 0, "nnUNetTrainerShort", "nnUNetPlans",
                     device=torch.device("cpu"))
    fold = dirs["results"] / TINY_NAME / "nnUNetTrainerShort__nnUNetPlans__3d_fullres" / "fold_0"
    assert fold.is_dir() and not (fold / "checkpoint_final.pth").exists()
    assert "training stopped: the loss was not finite" in "".join(
        p.read_text() for p in fold.glob("training_log_*.txt"))


def test_a_truncated_checkpoint_is_named_with_the_ways_on(tmp_path: Path) -> None:
    from recokd.errors import UserError
    from recokd.nnunet.guards import read_checkpoint

    good = tmp_path / "checkpoint_best.pth"
    torch.save({"network_weights": {"w": torch.ones(3)}, "current_epoch": 4}, good)
    assert read_checkpoint(str(good))["current_epoch"] == 4
    latest = tmp_path / "checkpoint_latest.pth"
    latest.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # killed while writing
    with pytest.raises(UserError) as e:
        read_checkpoint(str(latest))
    msg = str(e.value)
    assert f"cannot read the checkpoint {latest}" in msg and "truncated or corrupt" in msg
    assert "checkpoint_best.pth" in msg and "--overwrite" in msg and "\n" not in msg
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="garbage.pth .*truncated or corrupt"):
        read_checkpoint(str(tmp_path / "garbage.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="is not an nnU-Net checkpoint"):
        read_checkpoint(str(tmp_path / "list.pth"))


@pytest.mark.slow
def test_stock_short_trainer_continues_with_c(kd_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """``nnUNetv2_train --c`` of our stock short trainers (teacher and no-KD students of the bench, which
    resumes them): the readable-checkpoint check must hand nnU-Net's load_checkpoint a path, not a dict
    (nnunetv2 2.8 raised UnboundLocalError on a dict)."""
    from nnunetv2.run.run_training import run_training

    from tests.nnunet.conftest import CONFIGURATION, DATASET_ID, DATASET_NAME, TEACHER_TRAINER

    fold = kd_env.results / DATASET_NAME / f"{TEACHER_TRAINER}__nnUNetPlans__{CONFIGURATION}" / "fold_3"
    assert not fold.exists()
    try:
        run_training(str(DATASET_ID), CONFIGURATION, 3, TEACHER_TRAINER, "nnUNetPlans",
                     device=torch.device("cpu"))
        assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 1
        monkeypatch.setenv("RECOKD_SHORT_EPOCHS", "2")
        run_training(str(DATASET_ID), CONFIGURATION, 3, TEACHER_TRAINER, "nnUNetPlans",
                     continue_training=True, device=torch.device("cpu"))
        assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 2
    finally:  # the session teacher is shared: later tests count its folds (fold_0 only)
        shutil.rmtree(fold, ignore_errors=True)
