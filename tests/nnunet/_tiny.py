"""A tiny, really planned nnU-Net dataset shared by the plans, teacher and compatibility tests.

``tiny_nnunet_dirs`` runs nnU-Net's fingerprinting, planning (default and ResEnc M planner) and
3d_fullres preprocessing once per session in a temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

TINY_ID = 901
TINY_NAME = "Dataset901_RecoKDTiny"
TINY_LABELS = {"background": 0, "blob_a": 1, "blob_b": 2}
RESENC_PLANS = "nnUNetResEncUNetMPlans"

_TINY_CACHE: dict[str, Path] = {}


def write_tiny_raw_dataset(raw_root: Path, n_cases: int = 4, size: int = 32, seed: int = 0) -> Path:
    """nnU-Net raw dataset: ``n_cases`` single-channel ``size**3`` volumes with two spherical blobs."""
    folder = raw_root / TINY_NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"))
    for i in range(n_cases):
        seg = np.zeros((size,) * 3, np.uint8)
        for label in (1, 2):
            centre = rng.uniform(size / 4, 3 * size / 4, 3)[:, None, None, None]
            radius = rng.uniform(size / 10, size / 5)
            seg[((grid - centre) ** 2).sum(0) < radius**2] = label
        image = (rng.normal(0.0, 1.0, seg.shape) + 3.0 * seg).astype(np.float32)
        for array, path in ((image, folder / "imagesTr" / f"tiny_{i:03d}_0000.nii.gz"),
                            (seg, folder / "labelsTr" / f"tiny_{i:03d}.nii.gz")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(itk, str(path))
    dataset_json = {"channel_names": {"0": "MRI"}, "labels": TINY_LABELS, "numTraining": n_cases,
                    "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    return folder


def tiny_nnunet_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Once per session: raw dataset + nnU-Net fingerprint, plans (default and ResEnc M) and
    3d_fullres preprocessing. Returns the ``raw``/``preprocessed``/``results`` roots."""
    if not _TINY_CACHE:
        root = tmp_path_factory.mktemp("nnunet_tiny")
        dirs = {k: root / k for k in ("raw", "preprocessed", "results")}
        for d in dirs.values():
            d.mkdir()
        write_tiny_raw_dataset(dirs["raw"])
        with pytest.MonkeyPatch.context() as mp:
            set_nnunet_env(mp, dirs)
            from nnunetv2.experiment_planning.plan_and_preprocess_api import (
                extract_fingerprints,
                plan_experiments,
                preprocess,
            )

            extract_fingerprints([TINY_ID], num_processes=1, check_dataset_integrity=False, clean=True,
                                 verbose=False, show_progress_bar=False)
            plans_identifier = plan_experiments([TINY_ID])  # ExperimentPlanner -> nnUNetPlans
            assert plans_identifier == "nnUNetPlans"
            assert plan_experiments([TINY_ID], "nnUNetPlannerResEncM") == RESENC_PLANS
            preprocess([TINY_ID], plans_identifier, configurations=("3d_fullres",), num_processes=(1,),
                       verbose=False, show_progress_bar=False)
        _TINY_CACHE.update(dirs)
    return dict(_TINY_CACHE)


def set_nnunet_env(mp: pytest.MonkeyPatch, dirs: dict[str, Path]) -> None:
    for key in ("raw", "preprocessed", "results"):
        mp.setenv(f"nnUNet_{key}", str(dirs[key]))


def load_tiny_plans(dirs: dict[str, Path], identifier: str = "nnUNetPlans") -> dict:
    return json.loads((dirs["preprocessed"] / TINY_NAME / f"{identifier}.json").read_text())


def load_tiny_dataset_json(dirs: dict[str, Path]) -> dict:
    return json.loads((dirs["preprocessed"] / TINY_NAME / "dataset.json").read_text())


def nnunet_checkpoint(plans: dict, dataset_json: dict, configuration: str = "3d_fullres",
                      fold: int | str = 0, prefix: str = "", seed: int = 1
                      ) -> tuple[dict, dict[str, torch.Tensor]]:
    """A checkpoint dict with the keys ``nnUNetTrainer.save_checkpoint`` writes (nnunetv2 2.8),
    for a network built from ``plans`` the way the trainer builds it (random weights drawn with
    ``seed``); returns it and the weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    torch.manual_seed(seed)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=True)
    with torch.no_grad():  # make the weights recognisable (fresh He init would also differ)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    checkpoint = {
        "network_weights": {prefix + k: v for k, v in weights.items()},
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [0.5], "ema_fg_dice": [0.5], "train_losses": [0.1]},
        "_best_ema": 0.5,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                      "dataset_json": dataset_json, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    return checkpoint, weights
