"""``recokd pseudo-label`` (recokd.nnunet.pseudo_label): checks before writing, the dataset it writes, its
labels against nnU-Net's own prediction and fold ensembling, and a killed run that continues.

The model folders here hold random-weight networks built from real nnU-Net plans (fast); the end-to-end
test with a teacher trained by nnU-Net, whose dataset stock nnU-Net then trains on, is
``test_pseudo_label_e2e.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from recokd.cli import main
from recokd.nnunet import pseudo_label
from recokd.nnunet.pseudo_label import PROVENANCE_KEY, plan_pseudo_labels, write_pseudo_label_dataset
from tests.nnunet._tiny import (
    TINY_NAME,
    load_tiny_dataset_json,
    load_tiny_plans,
    nnunet_checkpoint,
    tiny_nnunet_dirs,
)

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
SCANS = ("scan_a", "scan_b")


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A two-fold model folder (random weights, different per fold) from the tiny dataset's real plans, its
    labelled raw dataset, and a folder of two unlabelled scans (32^3, 1 mm, one channel)."""
    dirs = tiny_nnunet_dirs(tmp_path_factory)
    plans, ds = load_tiny_plans(dirs), load_tiny_dataset_json(dirs)
    root = tmp_path_factory.mktemp("pseudo")
    model = root / "results" / TINY_NAME / TRAINER_FOLDER
    model.mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps(ds))
    for fold in (0, 1):
        (model / f"fold_{fold}").mkdir()
        checkpoint, _ = nnunet_checkpoint(plans, ds, fold=fold, seed=10 + fold)
        torch.save(checkpoint, model / f"fold_{fold}" / "checkpoint_final.pth")
    scans = root / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for case in SCANS:
        image = sitk.GetImageFromArray(rng.normal(0, 1, (32, 32, 32)).astype(np.float32))
        image.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(image, str(scans / f"{case}_0000.nii.gz"))
    return {"model": model, "scans": scans, "labelled": dirs["raw"] / TINY_NAME, "root": root}


def _argv(setup, out: Path, *extra: str) -> list[str]:
    return ["pseudo-label", str(setup["model"]), "-i", str(setup["scans"]), "-o", str(out), "--device", "cpu",
            *extra]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _stock_prediction(model: Path, folds: list[int], scans: Path, out: Path) -> None:
    """nnU-Net's own prediction (nnUNetPredictor, as ``nnUNetv2_predict --disable_tta``) of the scans."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out.mkdir()
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), folds, "checkpoint_final.pth")
    predictor.predict_from_files_sequential(str(scans), str(out), save_probabilities=False, overwrite=True)


def test_the_dataset_holds_nnunets_segmentations_and_the_labelled_cases(setup, tmp_path: Path) -> None:
    out = tmp_path / "raw" / "Dataset950_Pseudo"
    assert main(_argv(setup, out, "-f", "0", "--labelled", str(setup["labelled"]), "--disable-tta")) == 0
    labelled = [f"tiny_{i:03d}" for i in range(4)]
    assert _tree(out) == sorted(
        ["dataset.json", "imagesTr", "labelsTr"]
        + [f"imagesTr/{c}_0000.nii.gz" for c in (*labelled, *SCANS)]
        + [f"labelsTr/{c}.nii.gz" for c in (*labelled, *SCANS)])
    assert sorted(p.name for p in out.parent.iterdir()) == ["Dataset950_Pseudo"]  # no partial left behind
    ds = json.loads((out / "dataset.json").read_text())
    model_ds = json.loads((setup["model"] / "dataset.json").read_text())
    assert {k: ds[k] for k in ("channel_names", "labels", "file_ending")} == \
        {k: model_ds[k] for k in ("channel_names", "labels", "file_ending")}
    assert ds["numTraining"] == 6
    assert ds[PROVENANCE_KEY]["folds"] == [0]
    assert ds[PROVENANCE_KEY]["pseudo_labelled_cases"] == list(SCANS)
    assert ds[PROVENANCE_KEY]["labelled_cases"] == labelled

    stock = tmp_path / "stock"
    _stock_prediction(setup["model"], [0], setup["scans"], stock)
    for case in SCANS:
        written, expected = out / "labelsTr" / f"{case}.nii.gz", stock / f"{case}.nii.gz"
        np.testing.assert_array_equal(_read(written), _read(expected))
        assert sitk.ReadImage(str(written)).GetSpacing() == sitk.ReadImage(str(expected)).GetSpacing()
        assert (out / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == \
            (setup["scans"] / f"{case}_0000.nii.gz").read_bytes()
    for case in labelled:
        assert (out / "labelsTr" / f"{case}.nii.gz").read_bytes() == \
            (setup["labelled"] / "labelsTr" / f"{case}.nii.gz").read_bytes()

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(out), num_processes=1)  # nnU-Net's own check of a raw dataset


def test_two_folds_give_the_argmax_of_the_mean_of_the_folds_logits(setup, tmp_path: Path) -> None:
    """The reference: each fold alone in nnU-Net's predictor, its logits averaged by hand, exported by
    nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape``."""
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape as to_segmentation,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out = tmp_path / "Dataset951_Ensemble"
    assert main(_argv(setup, out, "--disable-tta")) == 0  # default: every fold
    assert json.loads((out / "dataset.json").read_text())[PROVENANCE_KEY]["folds"] == [0, 1]
    predictors = []
    for fold in (0, 1):
        predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(setup["model"]), [fold], "checkpoint_final.pth")
        predictors.append(predictor)
    p0 = predictors[0]
    differs_from_fold_0 = 0
    for case in SCANS:
        preprocessor = p0.configuration_manager.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case([str(setup["scans"] / f"{case}_0000.nii.gz")], None,
                                               p0.plans_manager, p0.configuration_manager, p0.dataset_json)
        # each fold's logits as nnU-Net's sliding window returns them (float16), averaged in that precision
        logits = [p.predict_logits_from_preprocessed_data(torch.from_numpy(data)) for p in predictors]
        managers = (p0.plans_manager, p0.configuration_manager, p0.label_manager, props)
        expected = to_segmentation((logits[0] + logits[1]) / 2, *managers)
        np.testing.assert_array_equal(_read(out / "labelsTr" / f"{case}.nii.gz"), expected)
        differs_from_fold_0 += int((to_segmentation(logits[0], *managers) != expected).sum())
    assert differs_from_fold_0 > 0  # the folds disagree: the test would see a single fold used


def test_a_killed_run_leaves_no_dataset_and_continues(setup, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "Dataset952_Resume"
    plan = plan_pseudo_labels(setup["model"], setup["scans"], out, folds=[0], mirroring=False)
    predicted: list[str] = []
    real = pseudo_label._predict_case

    def killed_after_one(predictor, case, files, work, file_ending):
        if predicted:
            raise KeyboardInterrupt
        predicted.append(case)
        real(predictor, case, files, work, file_ending)

    monkeypatch.setattr(pseudo_label, "_predict_case", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        write_pseudo_label_dataset(plan, progress=False)
    assert not out.exists() and plan.partial.is_dir()
    assert (plan.partial / "labelsTr" / "scan_a.nii.gz").is_file()

    def counting(predictor, case, files, work, file_ending):
        predicted.append(case)
        real(predictor, case, files, work, file_ending)

    monkeypatch.setattr(pseudo_label, "_predict_case", counting)
    assert write_pseudo_label_dataset(plan, progress=False) == out
    assert predicted == ["scan_a", "scan_b"]  # scan_a was not predicted twice
    assert not plan.partial.exists()
    uninterrupted = tmp_path / "Dataset953_Once"
    write_pseudo_label_dataset(plan_pseudo_labels(setup["model"], setup["scans"], uninterrupted, folds=[0],
                                                  mirroring=False), progress=False)
    for case in SCANS:
        np.testing.assert_array_equal(_read(out / "labelsTr" / f"{case}.nii.gz"),
                                      _read(uninterrupted / "labelsTr" / f"{case}.nii.gz"))

    # a partial folder of another request (here: other folds) is not resumed
    again = tmp_path / "Dataset954_Other"
    first = plan_pseudo_labels(setup["model"], setup["scans"], again, folds=[0], mirroring=False)
    shutil.copytree(plan.partial.parent / out.name, first.partial)  # looks done, but for fold 0
    (first.partial / "dataset.json").unlink()
    other = plan_pseudo_labels(setup["model"], setup["scans"], again, folds=[1], mirroring=False)
    predicted.clear()
    write_pseudo_label_dataset(other, progress=False)
    assert predicted == list(SCANS)


def _bad_scans(root: Path) -> Path:
    folder = root / "two_channels"
    folder.mkdir()
    for c in (0, 1):
        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkFloat32), str(folder / f"x_{c:04d}.nii.gz"))
    return folder


@pytest.mark.parametrize("case", ["exists", "fold", "scans", "collision", "name", "id", "labels", "inside"])
def test_bad_requests_are_refused_before_anything_is_written(setup, tmp_path: Path, case: str,
                                                             capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    out = raw / "Dataset960_Pseudo"
    argv = _argv(setup, out)
    if case == "exists":
        out.mkdir()
        (out / "mine.txt").write_text("the user's")
        expected = r"Dataset960_Pseudo already exists; pass --overwrite to replace it"
    elif case == "fold":
        argv += ["-f", "0", "3"]
        expected = r"-f: model folder .* has no fold_3 \(folds present: fold_0, fold_1\)"
    elif case == "scans":
        argv[3] = str(_bad_scans(tmp_path))
        expected = r"case x has 2 channel file\(s\) but the model takes 1 input channel\(s\)"
    elif case == "collision":
        scans = tmp_path / "scans"
        shutil.copytree(setup["scans"], scans)
        shutil.copy(setup["labelled"] / "imagesTr" / "tiny_001_0000.nii.gz", scans)
        argv[3] = str(scans)
        argv += ["--labelled", str(setup["labelled"])]
        expected = r"-i .*scans: case id\(s\) tiny_001 are labelled cases too"
    elif case == "name":
        argv[5] = str(raw / "Pseudo")
        expected = r"-o .*Pseudo: the dataset folder must be named DatasetXXX_Name"
    elif case == "id":
        (raw / "Dataset960_Other").mkdir()
        expected = r"-o: .*raw already holds Dataset960_Other with id 960"
    elif case == "labels":
        labelled = tmp_path / "Dataset961_L"
        shutil.copytree(setup["labelled"], labelled)
        ds = json.loads((labelled / "dataset.json").read_text())
        (labelled / "dataset.json").write_text(json.dumps({**ds, "labels": {"background": 0, "x": 1}}))
        argv += ["--labelled", str(labelled)]
        expected = r"--labelled .*dataset\.json: labels .* differ from the model's"
    else:
        argv[5] = str(tmp_path / "Dataset962_X")
        argv[3] = str(tmp_path / "Dataset962_X" / "scans")
        shutil.copytree(setup["scans"], argv[3])
        expected = r"-o .*Dataset962_X contains -i"
    before = _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recokd pseudo-label: error: ")
    assert re.search(expected, err), err
    assert _tree(tmp_path) == before
    if case == "exists":
        assert (out / "mine.txt").read_text() == "the user's"


def test_overwrite_replaces_the_folder_only_when_the_new_one_is_complete(setup, tmp_path: Path) -> None:
    out = tmp_path / "Dataset963_Pseudo"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(_argv(setup, out, "-f", "1", "--disable-tta", "--overwrite")) == 0
    assert not (out / "old.txt").exists() and (out / "labelsTr" / "scan_b.nii.gz").is_file()


def test_a_bare_dataset_name_goes_to_nnunet_raw(setup, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    plan = plan_pseudo_labels(setup["model"], setup["scans"], "Dataset964_Bare")
    assert plan.target == tmp_path / "Dataset964_Bare"
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(Exception, match="nnUNet_raw is not set"):
        plan_pseudo_labels(setup["model"], setup["scans"], "Dataset964_Bare")
    assert os.listdir(tmp_path) == []
