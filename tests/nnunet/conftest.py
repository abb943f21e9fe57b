"""Session fixtures for the nnU-Net integration tests: a tiny phantom dataset, planned and
preprocessed by nnU-Net, and a teacher trained briefly by *stock* nnU-Net training.

Everything runs on the CPU in temporary nnU-Net folders (``nnUNet_raw``/``nnUNet_preprocessed``/
``nnUNet_results`` point there for the whole session once a fixture is used):

- ``phantom_dataset``: 6 training + 2 test phantoms of 32^3 voxels (1 mm), planned with nnU-Net's
  default planner for ``3d_fullres`` (patch size 32^3, batch size 2, 4 stages of widths
  32..256) and preprocessed -- in-process through ``nnunetv2.experiment_planning.plan_and_preprocess_api``
  (about 20 s; the ``nnUNetv2_plan_and_preprocess`` command takes 3x longer here because of
  process start-ups).
- ``teacher``: ``run_training`` with ``nnUNetTrainerShort`` (stock ``nnUNetTrainer`` with 1 epoch of
  2 iterations; nnU-Net's own ``nnUNetTrainer_1epoch`` still runs 250 + 50 iterations, which took
  over 4 minutes here), i.e. an ordinary nnU-Net model.
- ``kd_env`` (per test): the environment of :func:`apply_env`. The session fixtures set it only
  while they run, so other test modules (which plan their own datasets) never see it.

Data augmentation runs in the main process (``nnUNet_n_proc_DA=0``) and nnU-Net's export/metrics
pools use one process (``nnUNet_def_n_proc=1`` for subprocesses; nnunetv2 reads it at import
time, so in this process the module attributes that copied it are patched).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

DATASET_ID = 987
DATASET_NAME = f"Dataset{DATASET_ID:03d}_KDPhantoms"
CONFIGURATION = "3d_fullres"
TEACHER_TRAINER = "nnUNetTrainerShort"
TEACHER_EPOCHS = 1
TEACHER_ITERS = 2


@dataclass(frozen=True)
class NnunetDirs:
    raw: Path
    preprocessed: Path
    results: Path


@dataclass(frozen=True)
class PhantomDataset:
    dataset_id: int
    name: str
    raw_folder: Path  #: nnUNet_raw/DatasetXXX_Name
    preprocessed_folder: Path
    images_ts: Path
    labels: dict  #: dataset.json labels


def _patch_default_num_processes(mp: pytest.MonkeyPatch, value: int) -> None:
    """nnU-Net reads nnUNet_def_n_proc once, at import; patch modules that copied it."""
    for name in (
        "nnunetv2.configuration",
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
        "nnunetv2.inference.predict_from_raw_data",
    ):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "default_num_processes"):
            mp.setattr(module, "default_num_processes", value)


def apply_env(mp: pytest.MonkeyPatch, dirs: NnunetDirs) -> None:
    """Point nnU-Net at ``dirs`` and make it frugal (2 shared CPU cores): augmentation in the main
    process, one export/metrics process, no torch.compile, no W&B; short schedule for the teacher's
    trainer; reco-kd's trainers findable by name; no stray RECOKD_SETTINGS."""
    from recokd.nnunet import add_ext_trainer_dir_to_env

    mp.setenv("nnUNet_raw", str(dirs.raw))
    mp.setenv("nnUNet_preprocessed", str(dirs.preprocessed))
    mp.setenv("nnUNet_results", str(dirs.results))
    mp.setenv("nnUNet_n_proc_DA", "0")
    mp.setenv("nnUNet_def_n_proc", "1")
    mp.setenv("nnUNet_compile", "0")
    mp.setenv("nnUNet_wandb_enabled", "0")
    mp.setenv("RECOKD_SHORT_EPOCHS", str(TEACHER_EPOCHS))
    mp.setenv("RECOKD_SHORT_ITERS", str(TEACHER_ITERS))
    mp.setenv("RECOKD_SHORT_VAL_ITERS", "1")
    mp.delenv("RECOKD_SETTINGS", raising=False)
    mp.setenv("nnUNet_extTrainer", add_ext_trainer_dir_to_env({}))
    import nnunetv2.inference.predict_from_raw_data  # noqa: F401 - so that the patch below applies
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401

    _patch_default_num_processes(mp, 1)


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory: pytest.TempPathFactory) -> NnunetDirs:
    """Empty temporary nnU-Net folders (the environment is set by :func:`kd_env` per test)."""
    root = tmp_path_factory.mktemp("nnunet_kd")
    dirs = NnunetDirs(root / "raw", root / "preprocessed", root / "results")
    for d in (dirs.raw, dirs.preprocessed, dirs.results):
        d.mkdir()
    return dirs


@pytest.fixture(scope="session")
def phantom_dataset(nnunet_dirs: NnunetDirs) -> PhantomDataset:
    """6 + 2 phantoms of 32^3, planned and preprocessed for 3d_fullres by nnU-Net."""
    import json

    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    from recokd.data.phantoms import write_phantom_dataset

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        apply_env(mp, nnunet_dirs)
        folder = write_phantom_dataset(
            DATASET_ID, num_cases=6, num_test_cases=2, seed=3, shape=(32, 32, 32), name="KDPhantoms",
            raw_dir=nnunet_dirs.raw,
        )
        mp.setenv("nnUNet_n_proc_DA", "1")  # the planner calls torch.set_num_threads(<this>); 0 fails
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], configurations=(CONFIGURATION,), num_processes=(1,))
    torch.set_num_threads(threads)
    pre = nnunet_dirs.preprocessed / DATASET_NAME
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["configurations"][CONFIGURATION]["patch_size"] == [32, 32, 32]
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    return PhantomDataset(DATASET_ID, DATASET_NAME, folder, pre, folder / "imagesTs", labels)


@pytest.fixture(scope="session")
def teacher(phantom_dataset: PhantomDataset, nnunet_dirs: NnunetDirs) -> Path:
    """A teacher trained by stock nnU-Net (run_training, nnUNetTrainerShort, CPU); its results folder."""
    import torch
    from nnunetv2.run.run_training import run_training

    with pytest.MonkeyPatch.context() as mp:
        apply_env(mp, nnunet_dirs)
        run_training(str(DATASET_ID), CONFIGURATION, 0, TEACHER_TRAINER, "nnUNetPlans",
                     device=torch.device("cpu"))
    folder = nnunet_dirs.results / DATASET_NAME / f"{TEACHER_TRAINER}__nnUNetPlans__{CONFIGURATION}"
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    return folder


@pytest.fixture
def kd_env(monkeypatch: pytest.MonkeyPatch, nnunet_dirs: NnunetDirs, phantom_dataset: PhantomDataset,
           teacher: Path) -> NnunetDirs:
    """The nnU-Net environment of :func:`apply_env` for one test (after the dataset and teacher exist)."""
    import torch

    apply_env(monkeypatch, nnunet_dirs)
    threads = torch.get_num_threads()
    yield nnunet_dirs
    torch.set_num_threads(threads)
