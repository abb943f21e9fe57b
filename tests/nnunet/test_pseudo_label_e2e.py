"""End to end on CPU (issue 26, item 7): a teacher trained by stock nnU-Net pseudo-labels its held-out
scans with ``recokd pseudo-label``; stock ``nnUNetv2_plan_and_preprocess`` and ``nnUNetv2_train`` take
the dataset as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.cli import main
from recokd.nnunet.model_folder import check_model_folder
from recokd.nnunet.pseudo_label import PROVENANCE_KEY
from tests.nnunet.conftest import CONFIGURATION, PhantomDataset

BIN = Path(sys.executable).parent
PSEUDO_ID = 989
PSEUDO_NAME = f"Dataset{PSEUDO_ID}_KDPseudo"


def _run(cmd: list[str], **env: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_stock_nnunet_trains_on_the_pseudo_label_dataset(kd_env, teacher: Path,
                                                         phantom_dataset: PhantomDataset) -> None:
    assert check_model_folder(teacher).folds == (0,)  # a real training's plans.json equals its checkpoint's
    out = kd_env.raw / PSEUDO_NAME
    argv = ["pseudo-label", str(teacher), "-i", str(phantom_dataset.images_ts), "-o", PSEUDO_NAME,
            "--labelled", str(phantom_dataset.dataset_id), "--device", "cpu"]
    assert main(argv) == 0  # a bare name goes to $nnUNet_raw; --labelled by id, as nnU-Net commands take it
    ds = json.loads((out / "dataset.json").read_text())
    scans = sorted(p.name[: -len("_0000.nii.gz")] for p in phantom_dataset.images_ts.glob("*_0000.nii.gz"))
    assert ds[PROVENANCE_KEY]["pseudo_labelled_cases"] == scans and len(scans) == 2
    assert ds["numTraining"] == 8 and ds["labels"] == phantom_dataset.labels
    for case in scans:  # the teacher's segmentation, on the scan's grid
        image = sitk.ReadImage(str(phantom_dataset.images_ts / f"{case}_0000.nii.gz"))
        label = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
        assert label.GetSize() == image.GetSize() and np.allclose(label.GetSpacing(), image.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= set(phantom_dataset.labels.values())

    # stock nnU-Net: integrity check, planning and preprocessing, then training (its planner needs
    # nnUNet_n_proc_DA > 0; training runs augmentation in the main process)
    _run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(PSEUDO_ID), "-c", CONFIGURATION, "-np", "1",
          "--verify_dataset_integrity"], nnUNet_n_proc_DA="1")
    _run([str(BIN / "nnUNetv2_train"), str(PSEUDO_ID), CONFIGURATION, "0", "-tr", "nnUNetTrainerShortNoDA",
          "-device", "cpu"])
    fold = kd_env.results / PSEUDO_NAME / f"nnUNetTrainerShortNoDA__nnUNetPlans__{CONFIGURATION}" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    splits = json.loads((kd_env.preprocessed / PSEUDO_NAME / "splits_final.json").read_text())
    cases = [*scans, *ds[PROVENANCE_KEY]["labelled_cases"]]
    assert sorted(splits[0]["train"] + splits[0]["val"]) == sorted(cases)
