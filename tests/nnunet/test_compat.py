"""Teacher/student compatibility checks (recokd.nnunet.compat)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from recokd.errors import UserError
from recokd.nnunet.compat import check_teacher_student_compatible, describe_mismatches
from recokd.nnunet.plans import scale_plans
from recokd.nnunet.trained_model import LoadedModel
from tests.nnunet._tiny import (
    RESENC_PLANS,
    load_tiny_dataset_json,
    load_tiny_plans,
    set_nnunet_env,
    tiny_nnunet_dirs,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    dirs = tiny_nnunet_dirs(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        set_nnunet_env(mp, dirs)
        yield dirs


def make_teacher(plans: dict, dataset_json: dict, configuration: str = "3d_fullres") -> LoadedModel:
    """A LoadedModel as load_trained_model returns it, minus the checkpoint (compat never reads weights)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch import nn

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    return LoadedModel(
        network=nn.Identity(), plans_manager=pm, configuration_manager=cm,
        configuration_name=configuration, dataset_json=dataset_json, trainer_name="nnUNetTrainer",
        checkpoint_path=Path("teacher/fold_0/checkpoint_final.pth"),
        label_manager=pm.get_label_manager(dataset_json),
        num_input_channels=determine_num_input_channels(pm, cm, dataset_json), fold=0,
    )


def student_of(plans: dict, dataset_json: dict, configuration: str = "3d_fullres"):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    return pm, pm.get_configuration(configuration), dataset_json


@pytest.fixture
def setup(tiny):
    plans, ds = load_tiny_plans(tiny), load_tiny_dataset_json(tiny)
    return make_teacher(plans, ds), plans, ds


def _arch(plans: dict, configuration: str = "3d_fullres") -> dict:
    return plans["configurations"][configuration]["architecture"]["arch_kwargs"]


@pytest.mark.parametrize("t", [0, 1, 2, 3])
def test_scaled_student_is_compatible(setup, t):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", t)
    assert describe_mismatches(teacher, *student_of(student, ds)) == []
    check_teacher_student_compatible(teacher, *student_of(student, ds))
    check_teacher_student_compatible(teacher, *student_of(student, ds), student_num_input_channels=1)


def test_resenc_student_of_plain_teacher_is_compatible(tiny, setup):
    """The network class is not compared (the losses are backbone-agnostic); here the ResEnc M plans
    of the tiny dataset happen to share patch size, strides and kernels with the default plans."""
    teacher, _, ds = setup
    student = scale_plans(load_tiny_plans(tiny, RESENC_PLANS), "3d_fullres", 2)
    assert describe_mismatches(teacher, *student_of(student, ds)) == []


def test_patch_size_mismatch(setup):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", 2)
    student["configurations"]["3d_fullres"]["patch_size"] = [64, 64, 64]
    with pytest.raises(UserError) as e:
        check_teacher_student_compatible(teacher, *student_of(student, ds))
    msg = str(e.value)
    assert "1 mismatch(es)" in msg
    assert "patch size: teacher [32, 32, 32], student [64, 64, 64]" in msg
    assert "recokd student-plans Dataset901_RecoKDTiny -p nnUNetPlans -c 3d_fullres" in msg


def test_label_mismatches(setup):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", 2)
    swapped = copy.deepcopy(ds)
    swapped["labels"] = {"background": 0, "blob_a": 2, "blob_b": 1}  # same values, other meaning
    found = describe_mismatches(teacher, *student_of(student, swapped))
    assert [m.split(":")[0] for m in found] == ["labels"]
    extra = copy.deepcopy(ds)
    extra["labels"]["blob_c"] = 3
    (msg,) = describe_mismatches(teacher, *student_of(student, extra))
    assert msg.startswith("labels: teacher {") and "'blob_c': 3" in msg
    ignore = copy.deepcopy(ds)
    ignore["labels"]["ignore"] = 3
    assert describe_mismatches(teacher, *student_of(student, ignore)) == [
        "ignore label: teacher None, student 3"]


def test_input_channel_mismatch(setup):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", 2)
    two = copy.deepcopy(ds)
    two["channel_names"] = {"0": "MRI", "1": "T2"}
    found = describe_mismatches(teacher, *student_of(student, two))
    assert "number of input channels: teacher 1, student 2" in found
    assert any(m.startswith("input channel names") for m in found)
    renamed = copy.deepcopy(ds)
    renamed["channel_names"] = {"0": "CT"}
    assert describe_mismatches(teacher, *student_of(student, renamed)) == [
        "input channel names (channel_names): teacher {'0': 'MRI'}, student {'0': 'CT'}"]
    # an explicit channel count (e.g. from a cascade) overrides the one derived from dataset.json
    found = describe_mismatches(teacher, *student_of(student, ds), student_num_input_channels=3)
    assert found == ["number of input channels: teacher 1, student 3"]


def test_stage_count_mismatch(setup):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", 2)
    kw = _arch(student)
    kw["n_stages"] = 3
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        kw[key] = kw[key][:3]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][:2]
    found = {m.split(":")[0] for m in describe_mismatches(teacher, *student_of(student, ds))}
    assert found == {"number of stages", "pool op kernel sizes (strides)", "conv kernel sizes"}


def test_all_mismatches_are_listed_together(setup):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", 2)
    cfg = student["configurations"]["3d_fullres"]
    cfg["patch_size"] = [48, 48, 48]
    cfg["spacing"] = [1.0, 1.0, 2.0]
    cfg["normalization_schemes"] = ["CTNormalization"]
    _arch(student)["kernel_sizes"][0] = [1, 3, 3]
    _arch(student)["strides"][1] = [1, 2, 2]
    student["transpose_forward"] = [2, 1, 0]
    other = copy.deepcopy(ds)
    other["labels"] = {"background": 0, "tumour": 1}
    other["channel_names"] = {"0": "CT", "1": "PET"}
    with pytest.raises(UserError) as e:
        check_teacher_student_compatible(teacher, *student_of(student, other))
    msg = str(e.value)
    expected = ["labels", "number of input channels", "input channel names (channel_names)", "patch size",
                "pool op kernel sizes (strides)", "conv kernel sizes", "spacing", "transpose_forward",
                "normalization schemes"]
    assert f"{len(expected)} mismatch(es)" in msg
    listed = [line[4:].split(":")[0] for line in msg.splitlines() if line.startswith("  - ")]
    assert listed == expected


def test_spacing_tolerance_and_ct_intensities(setup):
    teacher, plans, ds = setup
    student = scale_plans(plans, "3d_fullres", 2)
    student["configurations"]["3d_fullres"]["spacing"] = [1.0 + 1e-9, 1.0, 1.0]
    assert describe_mismatches(teacher, *student_of(student, ds)) == []

    ct_plans = copy.deepcopy(plans)
    ct_plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization"]
    ct_teacher = make_teacher(ct_plans, ds)
    ct_student = scale_plans(ct_plans, "3d_fullres", 2)
    assert describe_mismatches(ct_teacher, *student_of(ct_student, ds)) == []
    ct_student["foreground_intensity_properties_per_channel"]["0"]["mean"] += 10.0
    (msg,) = describe_mismatches(ct_teacher, *student_of(ct_student, ds))
    assert msg.startswith("foreground intensity properties (used by CTNormalization)")
