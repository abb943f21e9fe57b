"""Loading nnU-Net checkpoints as frozen teachers (recokd.nnunet.trained_model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from recokd.errors import UserError
from recokd.nnunet.trained_model import (
    TRAINING_STATE_KEYS,
    drop_training_state,
    load_trained_model,
    resolve_checkpoint,
    strip_wrapper_prefixes,
    weights_digest,
)
from tests.nnunet._tiny import (
    TINY_NAME,
    load_tiny_dataset_json,
    load_tiny_plans,
    nnunet_checkpoint,
    set_nnunet_env,
    tiny_nnunet_dirs,
)

TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """``$nnUNet_results/Dataset901_.../nnUNetTrainer__nnUNetPlans__3d_fullres`` with fold_0 (final +
    best checkpoints) and fold_all, laid out like nnU-Net's training output; yields (folder, weights)."""
    dirs = tiny_nnunet_dirs(tmp_path_factory)
    results = tmp_path_factory.mktemp("teacher_results")
    with pytest.MonkeyPatch.context() as mp:
        set_nnunet_env(mp, {**dirs, "results": results})
        plans, ds = load_tiny_plans(dirs), load_tiny_dataset_json(dirs)
        folder = results / TINY_NAME / TRAINER_FOLDER
        (folder / "fold_0").mkdir(parents=True)
        (folder / "fold_all").mkdir()
        (folder / "plans.json").write_text(json.dumps(plans))
        (folder / "dataset.json").write_text(json.dumps(ds))
        checkpoint, weights = nnunet_checkpoint(plans, ds)
        torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
        shutil.copy(folder / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_best.pth")
        checkpoint["init_args"]["fold"] = "all"
        torch.save(checkpoint, folder / "fold_all" / "checkpoint_final.pth")
        yield folder, weights


def _assert_frozen_teacher(teacher, weights):
    net = teacher.network
    assert not net.training and all(not m.training for m in net.modules())
    assert all(not p.requires_grad for p in net.parameters())
    state = net.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert net.decoder.deep_supervision  # as in training


def test_load_teacher_from_results_folder(teacher_folder):
    folder, weights = teacher_folder
    teacher = load_trained_model(folder)
    _assert_frozen_teacher(teacher, weights)
    assert teacher.checkpoint_path == folder / "fold_0" / "checkpoint_final.pth"
    assert teacher.configuration_name == "3d_fullres" and teacher.trainer_name == "nnUNetTrainer"
    assert teacher.fold == 0 and teacher.num_input_channels == 1
    assert teacher.plans_manager.plans_name == "nnUNetPlans"
    assert teacher.configuration_manager.patch_size == [32, 32, 32]
    assert teacher.label_manager.num_segmentation_heads == 3
    assert teacher.dataset_json["labels"] == {"background": 0, "blob_a": 1, "blob_b": 2}
    assert next(teacher.network.parameters()).device.type == "cpu"

    with torch.no_grad():
        outputs = teacher.network(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 32, 32, 32), (1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]


def test_load_teacher_from_file_fold_dir_and_fold_all(teacher_folder):
    folder, weights = teacher_folder
    by_file = load_trained_model(folder / "fold_0" / "checkpoint_best.pth")
    _assert_frozen_teacher(by_file, weights)
    assert by_file.checkpoint_path.name == "checkpoint_best.pth"
    assert load_trained_model(folder, fold="0", checkpoint="checkpoint_best.pth").checkpoint_path == \
        folder / "fold_0" / "checkpoint_best.pth"
    assert load_trained_model(folder / "fold_0").checkpoint_path == folder / "fold_0" / "checkpoint_final.pth"
    all_fold = load_trained_model(folder, fold="all")
    assert all_fold.fold == "all"
    _assert_frozen_teacher(all_fold, weights)


def test_load_teacher_strips_wrapper_prefixes(teacher_folder, tmp_path):
    folder, weights = teacher_folder
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    wrapped = {"module._orig_mod." + k: v for k, v in checkpoint["network_weights"].items()}
    checkpoint["network_weights"] = wrapped
    checkpoint["init_args"]["plans"]["continue_training"] = True  # as get_trainer_from_args adds it
    torch.save(checkpoint, tmp_path / "wrapped.pth")
    _assert_frozen_teacher(load_trained_model(tmp_path / "wrapped.pth"), weights)
    assert strip_wrapper_prefixes({"_orig_mod.module.a.b": 1, "c": 2}) == {"a.b": 1, "c": 2}


def test_bad_paths_list_what_exists(teacher_folder, tmp_path):
    folder, _ = teacher_folder
    with pytest.raises(UserError, match="does not exist"):
        load_trained_model(tmp_path / "nope")
    with pytest.raises(UserError, match=r"no fold_3/.*folds present: fold_0, fold_all"):
        load_trained_model(folder, fold=3)
    with pytest.raises(UserError, match=r"checkpoint_latest\.pth does not exist.*"
                                        r"checkpoint_best\.pth, checkpoint_final\.pth"):
        load_trained_model(folder, checkpoint="checkpoint_latest.pth")
    with pytest.raises(UserError, match="fold must be"):
        resolve_checkpoint(folder, fold="first")
    with pytest.raises(UserError, match="folds present: \\(none\\)"):
        load_trained_model(tmp_path)


def test_files_that_are_not_nnunet_checkpoints(teacher_folder, tmp_path):
    folder, _ = teacher_folder
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "lightning.pth")
    with pytest.raises(UserError, match=r"not an nnU-Net v2 checkpoint: missing network_weights, init_args, "
                                        r"trainer_name \(keys present: epoch, state_dict\)"):
        load_trained_model(tmp_path / "lightning.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(UserError, match="holds a Tensor"):
        load_trained_model(tmp_path / "tensor.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(UserError, match="could not be read by torch.load"):
        load_trained_model(tmp_path / "text.pth")

    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    del checkpoint["init_args"]["dataset_json"]
    torch.save(checkpoint, tmp_path / "no_ds.pth")
    with pytest.raises(UserError, match=r"missing init_args\.dataset_json"):
        load_trained_model(tmp_path / "no_ds.pth")

    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["network_weights"].pop("decoder.seg_layers.0.weight")
    torch.save(checkpoint, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"(?s)do not fit.*decoder\.seg_layers\.0\.weight"):
        load_trained_model(tmp_path / "partial.pth")


def test_unknown_trainer_falls_back_to_default_builder(teacher_folder, tmp_path):
    folder, weights = teacher_folder
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer_DoesNotExist"
    torch.save(checkpoint, tmp_path / "custom.pth")
    from nnunetv2.utilities import find_objects

    def not_found(name):
        raise RuntimeError(f"Could not find requested nnunet trainer {name}")

    with pytest.MonkeyPatch.context() as mp:  # skip nnU-Net's slow walk over all trainer modules
        mp.setattr(find_objects, "recursive_find_trainer_class_by_name", not_found)
        with pytest.warns(UserWarning, match="nnUNetTrainer_DoesNotExist"):
            teacher = load_trained_model(tmp_path / "custom.pth")
    assert teacher.trainer_name == "nnUNetTrainer_DoesNotExist"
    _assert_frozen_teacher(teacher, weights)


def test_relative_path_and_str(teacher_folder, monkeypatch):
    folder, _ = teacher_folder
    monkeypatch.chdir(folder.parent)
    expected = Path(TRAINER_FOLDER) / "fold_0" / "checkpoint_final.pth"
    assert load_trained_model(TRAINER_FOLDER).checkpoint_path == expected


def test_drop_training_state_keeps_what_inference_reads(teacher_folder, tmp_path):
    folder, weights = teacher_folder
    slim = tmp_path / TRAINER_FOLDER
    shutil.copytree(folder, slim)
    final = slim / "fold_0" / "checkpoint_final.pth"
    before = torch.load(final, weights_only=False)
    assert drop_training_state(final) is True
    after = torch.load(final, weights_only=False)
    assert set(before) - set(after) == set(TRAINING_STATE_KEYS)
    assert sorted(p.name for p in final.parent.iterdir()) == ["checkpoint_best.pth", "checkpoint_final.pth"]
    _assert_frozen_teacher(load_trained_model(slim), weights)
    assert drop_training_state(final) is False  # nothing left to drop: the file is not rewritten

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(str(slim), use_folds=(0,))  # nnU-Net's own loader
    loaded = predictor.list_of_parameters[0]
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)

    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(UserError, match="text.pth could not be read"):
        drop_training_state(tmp_path / "text.pth")


def test_weights_digest_names_the_weights_and_nothing_else(teacher_folder, tmp_path):
    import hashlib

    folder, weights = teacher_folder
    final = folder / "fold_0" / "checkpoint_final.pth"
    digest = weights_digest(final)
    # the definition, written out: name, dtype, shape and raw bytes of each tensor, in name order
    reference = hashlib.sha256()
    for name in sorted(weights):
        w = weights[name]
        reference.update(f"{name}|{w.dtype}|{tuple(w.shape)}|".encode() + w.contiguous().numpy().tobytes())
    assert digest == reference.hexdigest()

    ckpt = torch.load(final, weights_only=False)
    assert "optimizer_state" in ckpt
    slim = tmp_path / "slim.pth"
    shutil.copy(final, slim)
    assert drop_training_state(slim) and weights_digest(slim) == digest  # the weights are the same teacher
    prefixed = {f"module.{k}": v for k, v in reversed(ckpt["network_weights"].items())}
    wrapped = dict(ckpt, network_weights=prefixed)
    torch.save(wrapped, tmp_path / "wrapped.pth")
    assert weights_digest(tmp_path / "wrapped.pth") == digest  # DDP's prefix and the order do not count

    name = next(k for k, v in weights.items() if v.is_floating_point())
    nudged = dict(ckpt["network_weights"])
    nudged[name] = nudged[name].clone()
    flat = nudged[name].view(-1)
    flat[0] = torch.nextafter(flat[0], flat[0] + 1)  # one weight, one ulp: another teacher
    torch.save(dict(ckpt, network_weights=nudged), tmp_path / "nudged.pth")
    assert weights_digest(tmp_path / "nudged.pth") != digest
