"""Paired runs: with KD weight 0, every KD method trains exactly the stock-nnU-Net student of its seed.

A bench compares a KD student with the no-KD student of the same seed; the comparison measures the
KD term only if nothing else differs. Building the teacher or a KD method's adapters must
therefore not shift the student's initialisation or its data stream (recokd.nnunet.seeding):
on the CPU with augmentation in the main process, ``recokd train --kd-weight 0 --seed S`` of any
registered method gives a student bit-identical to ``nnUNetTrainerShort`` with ``RECOKD_SEED=S``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recokd.cli import main
from recokd.kd.registry import available_methods
from tests.nnunet.conftest import CONFIGURATION, DATASET_ID, DATASET_NAME

STUDENT_PLANS = "nnUNetPlans_recokd_t2"
EPOCHS, ITERS = 1, 3
SCHEDULE = ["--epochs", str(EPOCHS), "--iters-per-epoch", str(ITERS), "--val-iters", "1"]


def _weights(model_folder: Path) -> dict[str, torch.Tensor]:
    path = model_folder / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == EPOCHS
    return ckpt["network_weights"]


def _stock_student(kd_env, monkeypatch: pytest.MonkeyPatch, seed: int, trainer: str = "nnUNetTrainerShort",
                   optimizer: str = "sgd"):
    from nnunetv2.run.run_training import run_training

    monkeypatch.setenv("RECOKD_SEED", str(seed))
    monkeypatch.setenv("RECOKD_SHORT_OPTIMIZER", optimizer)
    monkeypatch.setenv("RECOKD_SHORT_EPOCHS", str(EPOCHS))
    monkeypatch.setenv("RECOKD_SHORT_ITERS", str(ITERS))
    monkeypatch.setenv("RECOKD_SHORT_VAL_ITERS", "1")
    folder = kd_env.results / DATASET_NAME / f"{trainer}__{STUDENT_PLANS}__{CONFIGURATION}"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    run_training(str(DATASET_ID), CONFIGURATION, 0, trainer, STUDENT_PLANS, device=torch.device("cpu"))
    monkeypatch.delenv("RECOKD_SEED")
    return _weights(folder)


def _kd_student(kd_env, teacher: Path, method: str, seed: int, kd_weight: float,
                trainer: str = "nnUNetTrainerReCoKD", optimizer: str = "sgd",
                extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    rc = main(["train", str(DATASET_ID), CONFIGURATION, "0", "--teacher", str(teacher), "-t", "2",
               "--method", method, "--kd-weight", str(kd_weight), "--schedule", "constant",
               "--seed", str(seed), "-tr", trainer, "--optimizer", optimizer,
               *SCHEDULE, "--device", "cpu", "--overwrite", *extra])
    assert rc == 0
    return _weights(kd_env.results / DATASET_NAME / f"{trainer}__{STUDENT_PLANS}__{CONFIGURATION}")


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow
def test_kd_weight_zero_reproduces_the_stock_student_for_every_method(
    kd_env, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the student plans must exist before the stock run; recokd train of the first method makes them
    assert main(["student-plans", str(DATASET_ID), "-c", CONFIGURATION, "-t", "2"]) == 0
    stock = _stock_student(kd_env, monkeypatch, seed=0)
    other_seed = _stock_student(kd_env, monkeypatch, seed=1)
    assert _differing(stock, other_seed), "a different seed must give a different student"

    not_equal = {}
    for method in available_methods():
        diff = _differing(stock, _kd_student(kd_env, teacher, method, seed=0, kd_weight=0.0))
        if diff:
            not_equal[method] = diff[:3]
    assert not not_equal, f"KD weight 0 changed the student: {not_equal}"

    # the KD term does reach the student when its weight is not zero (constant schedule: a linear
    # warm-up would still be at 0 in the first epoch)
    assert _differing(stock, _kd_student(kd_env, teacher, "fitnet", seed=0, kd_weight=1.0))


@pytest.mark.slow
def test_no_augmentation_trainers_are_paired_too(
    kd_env, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["student-plans", str(DATASET_ID), "-c", CONFIGURATION, "-t", "2"]) == 0
    stock = _stock_student(kd_env, monkeypatch, seed=2, trainer="nnUNetTrainerShortNoDA")
    kd = _kd_student(kd_env, teacher, "reco", seed=2, kd_weight=0.0, trainer="nnUNetTrainerReCoKDNoDA")
    assert not _differing(stock, kd)
    with_da = _stock_student(kd_env, monkeypatch, seed=2)
    assert _differing(stock, with_da), "augmentation must change the training stream"


@pytest.mark.slow
def test_adam_students_are_paired_too(kd_env, teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU regime's students train with nnU-Net's AdamW (RECOKD_SHORT_OPTIMIZER / --optimizer)."""
    assert main(["student-plans", str(DATASET_ID), "-c", CONFIGURATION, "-t", "2"]) == 0
    trainers = ("nnUNetTrainerShortNoDA", "nnUNetTrainerReCoKDNoDA")
    stock = _stock_student(kd_env, monkeypatch, seed=3, trainer=trainers[0], optimizer="adam")
    # MS-SARD has adapters (KD parameters in the optimiser): still bit-identical at weight 0
    kd = _kd_student(kd_env, teacher, "reco", seed=3, kd_weight=0.0, trainer=trainers[1], optimizer="adam")
    assert not _differing(stock, kd)
    sgd = _stock_student(kd_env, monkeypatch, seed=3, trainer=trainers[0], optimizer="sgd")
    assert _differing(stock, sgd), "the optimiser must change the student"
    ckpt = torch.load(kd_env.results / DATASET_NAME / f"{trainers[1]}__{STUDENT_PLANS}__{CONFIGURATION}"
                      / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert "amsgrad" in ckpt["optimizer_state"]["param_groups"][0]


@pytest.mark.slow
def test_unlabelled_runs_are_paired_too(kd_env, teacher: Path, monkeypatch: pytest.MonkeyPatch,
                                        phantom_dataset) -> None:
    """``--unlabelled`` at share 0 trains the stock student bit for bit; at share 0.5 the stream changes
    (half of every batch is unlabelled) and a seed still reproduces its run exactly."""
    assert main(["student-plans", str(DATASET_ID), "-c", CONFIGURATION, "-t", "2"]) == 0
    scans = ["--unlabelled", str(phantom_dataset.images_ts)]
    stock = _stock_student(kd_env, monkeypatch, seed=4)
    zero = _kd_student(kd_env, teacher, "reco+logits", seed=4, kd_weight=0.0,
                       extra=(*scans, "--unlabelled-share", "0"))
    assert not _differing(stock, zero)
    half = _kd_student(kd_env, teacher, "reco+logits", seed=4, kd_weight=0.0, extra=tuple(scans))
    assert _differing(stock, half), "with half of every batch unlabelled, the labelled stream changes"
    again = _kd_student(kd_env, teacher, "reco+logits", seed=4, kd_weight=0.0, extra=tuple(scans))
    assert not _differing(half, again)
