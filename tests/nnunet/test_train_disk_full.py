"""`recokd train` on a full disk (issue 31; part of the fault matrix of tests/test_faults_io.py, here for the
session's phantom dataset and teacher): one line naming the fold folder, no traceback, no checkpoint a
later run would trust; with room again, `--c` finishes the training."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from recokd.atomic_files import is_partial
from recokd.cli import main
from tests.nnunet.conftest import CONFIGURATION, DATASET_ID, DATASET_NAME
from tests.test_faults import checksum
from tests.test_faults_io import small_filesystem

FOLD = 4  # test_e2e_kd and test_trainer_resume use folds 0 and 1 of the same results folder
SCHEDULE = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1"]


@pytest.mark.slow
def test_train_on_a_full_disk_then_continue(kd_env, teacher: Path, capsys) -> None:
    fold = (kd_env.results / DATASET_NAME / "nnUNetTrainerReCoKD__nnUNetPlans_recokd_t2__3d_fullres"
            / f"fold_{FOLD}")
    args = ["train", str(DATASET_ID), CONFIGURATION, str(FOLD), "--teacher", str(teacher), "-t", "2",
            *SCHEDULE, "--device", "cpu"]
    # what the user had: the teacher, the raw dataset and its preprocessed data (the student plans file is
    # the command's own output, written before training starts)
    data = kd_env.preprocessed / DATASET_NAME
    users = [teacher, kd_env.raw / DATASET_NAME, *sorted(p for p in data.iterdir() if p.is_dir())]
    before = checksum(*users)
    # the fold folder on its own small file system: room for the settings and the log, not for a checkpoint
    with small_filesystem(fold, 160 * 1024):
        capsys.readouterr()
        assert main(args) == 2
        assert checksum(*users) == before
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.startswith("recokd train: error:")]
        assert len(lines) == 1, err
        assert str(fold) in lines[0] and "no space left on device" in lines[0]
        left = sorted(p.name for p in fold.iterdir())
        assert not [n for n in left if n.startswith("checkpoint") or is_partial(n)], left

        subprocess.run(["mount", "-o", "remount,size=64m", str(fold)], check=True)  # room again
        assert main([*args[:4], "--c", "--device", "cpu"]) == 0
        final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert final["current_epoch"] == 1 and final["recokd"]["settings"]["teacher"] == str(teacher)
