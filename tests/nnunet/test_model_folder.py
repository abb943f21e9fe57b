"""Checking a trained nnU-Net model folder and its folds before use (recokd.nnunet.model_folder)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from recokd.errors import UserError
from recokd.nnunet.model_folder import check_model_folder, first_difference, resolve_folds
from tests.nnunet._tiny import (
    TINY_NAME,
    load_tiny_dataset_json,
    load_tiny_plans,
    nnunet_checkpoint,
    tiny_nnunet_dirs,
)

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A results folder laid out as nnU-Net's training leaves it: plans.json, dataset.json, fold_0 and
    fold_1 (checkpoint_final, fold_0 also checkpoint_best) and fold_all, all trained with the same plans
    (fold_1's checkpoint carries the ``continue_training`` flag run_training adds)."""
    dirs = tiny_nnunet_dirs(tmp_path_factory)
    plans, ds = load_tiny_plans(dirs), load_tiny_dataset_json(dirs)
    folder = tmp_path_factory.mktemp("results") / TINY_NAME / TRAINER_FOLDER
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(ds))
    checkpoint, _ = nnunet_checkpoint(plans, ds)
    for fold in (0, 1, "all"):
        (folder / f"fold_{fold}").mkdir()
        ckpt = copy.deepcopy(checkpoint)
        ckpt["init_args"]["fold"] = fold
        if fold == 1:
            ckpt["init_args"]["plans"]["continue_training"] = False
        torch.save(ckpt, folder / f"fold_{fold}" / "checkpoint_final.pth")
    shutil.copy(folder / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_best.pth")
    return folder


@pytest.fixture
def copy_of(model_folder: Path, tmp_path: Path):
    """A writable copy of the model folder (same folder name)."""
    target = tmp_path / TINY_NAME / TRAINER_FOLDER
    shutil.copytree(model_folder, target)
    return target


def _rewrite_checkpoint(file: Path, change) -> None:
    ckpt = torch.load(file, weights_only=False)
    change(ckpt)
    torch.save(ckpt, file)


def test_a_good_folder_and_its_folds(model_folder: Path) -> None:
    model = check_model_folder(model_folder)  # every numbered fold, as nnU-Net's predictor without -f
    assert model.folds == (0, 1)
    assert model.checkpoints == (model_folder / "fold_0" / "checkpoint_final.pth",
                                 model_folder / "fold_1" / "checkpoint_final.pth")
    assert (model.configuration, model.trainer, model.plans_identifier) == \
        ("3d_fullres", "nnUNetTrainer", "nnUNetPlans")
    assert model.plans == json.loads((model_folder / "plans.json").read_text())
    assert model.file_ending == ".nii.gz" and model.channel_names == {"0": "MRI"}
    assert check_model_folder(model_folder, None).folds == (0, 1)
    assert check_model_folder(model_folder, [1]).folds == (1,)
    assert check_model_folder(str(model_folder), ["1", 0]).folds == (1, 0)
    assert check_model_folder(model_folder, ["all"]).checkpoints == \
        (model_folder / "fold_all" / "checkpoint_final.pth",)  # nnU-Net's -f all: fold_all
    best = check_model_folder(model_folder, "all", "checkpoint_best.pth")
    assert best.folds == (0,) and best.checkpoints[0].name == "checkpoint_best.pth"


def test_missing_and_repeated_folds_are_named(model_folder: Path) -> None:
    with pytest.raises(UserError, match=r"-f: model folder .* has no fold_3, fold_4 \(folds present: fold_0, "
                                        r"fold_1, fold_all\)"):
        check_model_folder(model_folder, [0, 3, 4])
    with pytest.raises(UserError, match=r"--teacher-folds: fold\(s\) 1 given more than once"):
        check_model_folder(model_folder, [1, "1"], what="--teacher-folds")
    with pytest.raises(UserError, match="must be a non-negative integer or 'all', got 'x'"):
        check_model_folder(model_folder, ["x"])
    with pytest.raises(UserError, match=r"checkpoint_best\.pth does not exist; checkpoints in .*fold_1: "
                                        r"checkpoint_final\.pth"):
        check_model_folder(model_folder, [0, 1], "checkpoint_best.pth")
    with pytest.raises(UserError, match=r"has no fold_X/checkpoint_latest\.pth \(folds present: fold_0"):
        check_model_folder(model_folder, "all", "checkpoint_latest.pth")


def test_folder_name_plans_and_dataset_json(copy_of: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model folder .*nope does not exist"):
        check_model_folder(tmp_path / "nope")
    odd = tmp_path / "my_model"
    shutil.copytree(copy_of, odd)
    with pytest.raises(UserError, match=r"my_model is not named Trainer__Plans__Configuration"):
        check_model_folder(odd, role="teacher")
    with pytest.raises(UserError, match=r"^teacher dataset\.json .*dataset\.json does not exist$"):
        (copy_of / "dataset.json").rename(copy_of / "dataset.bak")
        check_model_folder(copy_of, role="teacher")
    (copy_of / "dataset.bak").rename(copy_of / "dataset.json")
    plans_text = (copy_of / "plans.json").read_text()
    (copy_of / "plans.json").write_text(plans_text[:50])
    with pytest.raises(UserError, match=r"model plans file .*plans\.json could not be read as JSON"):
        check_model_folder(copy_of)
    (copy_of / "plans.json").unlink()
    with pytest.raises(UserError, match=r"model plans file .*plans\.json does not exist"):
        check_model_folder(copy_of)
    plans = json.loads(plans_text)
    plans["configurations"].pop("3d_fullres")
    (copy_of / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(UserError, match=r"plans\.json has no configuration '3d_fullres' \(the folder name's"):
        check_model_folder(copy_of)
    (copy_of / "plans.json").write_text(plans_text)
    ds = json.loads((copy_of / "dataset.json").read_text())
    (copy_of / "dataset.json").write_text(json.dumps({k: v for k, v in ds.items() if k != "file_ending"}))
    with pytest.raises(UserError, match=r"dataset\.json has no file_ending"):
        check_model_folder(copy_of)
    (copy_of / "dataset.json").write_text(json.dumps({**ds, "labels": {"blob": 1}}))  # no background
    with pytest.raises(UserError, match=r"nnU-Net cannot set up configuration '3d_fullres'"):
        check_model_folder(copy_of)


def test_folds_trained_with_other_plans_are_refused(copy_of: Path) -> None:
    def other_patch(ckpt):
        ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 16]

    _rewrite_checkpoint(copy_of / "fold_1" / "checkpoint_final.pth", other_patch)
    check_model_folder(copy_of, [0])  # fold 0 alone is fine
    with pytest.raises(UserError, match=r"fold_1/checkpoint_final\.pth was trained with other plans than "
                                        r".*plans\.json \(they differ in configurations\.3d_fullres\."
                                        r"patch_size\[0\]\)"):
        check_model_folder(copy_of)


def test_folds_with_other_labels_configuration_or_trainer_are_refused(copy_of: Path) -> None:
    file = copy_of / "fold_1" / "checkpoint_final.pth"
    original = torch.load(file, weights_only=False)
    _rewrite_checkpoint(file, lambda c: c["init_args"]["dataset_json"].update(labels={"background": 0,
                                                                                       "x": 1}))
    with pytest.raises(UserError, match=r"fold_1/checkpoint_final\.pth was trained with other labels"):
        check_model_folder(copy_of)
    _rewrite_checkpoint(file, lambda c: c.update(copy.deepcopy(original)) or
                        c["init_args"].update(configuration="2d"))
    with pytest.raises(UserError, match=r"trained with configuration '2d', but .* is configuration "
                                        r"'3d_fullres'"):
        check_model_folder(copy_of)
    _rewrite_checkpoint(file, lambda c: c.update(copy.deepcopy(original)) or
                        c.update(trainer_name="nnUNetTrainerNoDA"))
    with pytest.raises(UserError, match=r"different trainer classes \(fold_0: nnUNetTrainer, fold_1: "
                                        r"nnUNetTrainerNoDA\)"):
        check_model_folder(copy_of)
    file.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"fold_1/checkpoint_final\.pth could not be read by torch\.load"):
        check_model_folder(copy_of)


def test_resolve_folds_and_first_difference(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"has no fold_X/checkpoint_final\.pth \(folds present: \(none\)\)"):
        resolve_folds(tmp_path, "all")
    with pytest.raises(UserError, match="no fold given"):
        resolve_folds(tmp_path, [])
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == "a.b[1]"
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == "c"
    assert first_difference([1], [1, 2]) == "(top level)"
    assert first_difference({"a": [1, {"x": None}]}, {"a": [1, {"x": None}]}) is None
