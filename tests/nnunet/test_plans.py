"""Student plans (recokd.nnunet.plans, recokd student-plans) on a tiny, really planned nnU-Net dataset
(built by :mod:`tests.nnunet._tiny`)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from recokd.errors import UserError
from recokd.kd.widths import scale_widths
from recokd.nnunet.plans import (
    architecture_source,
    configurations_sharing_architecture,
    count_parameters,
    get_widths,
    make_student_plans,
    scale_plans,
    student_plans_identifier,
)
from tests.nnunet._tiny import (
    RESENC_PLANS,
    TINY_ID,
    TINY_NAME,
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


@pytest.fixture
def isolated(tiny, tmp_path, monkeypatch):
    """A private $nnUNet_preprocessed holding the tiny dataset's planned JSON files (no data)."""
    dst = tmp_path / "preprocessed" / TINY_NAME
    dst.mkdir(parents=True)
    for name in ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json", f"{RESENC_PLANS}.json"):
        shutil.copy(tiny["preprocessed"] / TINY_NAME / name, dst / name)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    return dst


def _without_widths(plans: dict, configuration: str) -> dict:
    out = copy.deepcopy(plans)
    out.pop("plans_name")
    kwargs = out["configurations"][architecture_source(out, configuration)]["architecture"]["arch_kwargs"]
    for key in ("features_per_stage", "stem_channels", "bottleneck_channels"):
        kwargs.pop(key, None)
    return out


# --------------------------------------------------------------------------- identifiers


def test_student_plans_identifier():
    assert student_plans_identifier("nnUNetPlans", 2) == "nnUNetPlans_recokd_t2"
    assert student_plans_identifier("nnUNetPlans", 0, c_min=4) == "nnUNetPlans_recokd_t0"
    assert student_plans_identifier("nnUNetResEncUNetMPlans", 3, 8) == \
        "nnUNetResEncUNetMPlans_recokd_t3_cmin8"
    for bad in ({"t": -1}, {"t": 1.5}, {"t": 2, "c_min": 0}):
        with pytest.raises(UserError):
            student_plans_identifier("nnUNetPlans", **bad)
    with pytest.raises(UserError, match="path separators"):
        student_plans_identifier("a/b", 2)


# --------------------------------------------------------------------------- scale_plans


def test_planned_tiny_dataset_is_what_the_tests_assume(tiny):
    plans = load_tiny_plans(tiny)
    assert get_widths(plans, "3d_fullres") == [32, 64, 128, 256]
    assert plans["configurations"]["3d_fullres"]["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert (tiny["preprocessed"] / TINY_NAME / "nnUNetPlans_3d_fullres").is_dir()


@pytest.mark.parametrize(("t", "c_min"), [(0, 4), (1, 4), (2, 4), (3, 4), (3, 8), (4, 16)])
def test_scale_plans_changes_only_widths_and_name(tiny, t, c_min):
    teacher = load_tiny_plans(tiny)
    pristine = copy.deepcopy(teacher)
    student = scale_plans(teacher, "3d_fullres", t, c_min, new_identifier="student_x")

    assert teacher == pristine  # input untouched
    assert student["plans_name"] == "student_x"
    t_widths = get_widths(teacher, "3d_fullres")
    expected = [min(w, max(c_min, w // 2**t)) for w in t_widths]
    assert get_widths(student, "3d_fullres") == expected == scale_widths(t_widths, t, c_min)
    assert _without_widths(student, "3d_fullres") == _without_widths(teacher, "3d_fullres")
    # the 2d configuration has its own architecture and is left as it was
    assert student["configurations"]["2d"] == teacher["configurations"]["2d"]


def test_scale_plans_default_identifier_and_floor(tiny):
    student = scale_plans(load_tiny_plans(tiny), "3d_fullres", 3, c_min=8)
    assert student["plans_name"] == "nnUNetPlans_recokd_t3_cmin8"
    assert get_widths(student, "3d_fullres") == [8, 8, 16, 32]


def test_scale_plans_resenc(tiny):
    teacher = load_tiny_plans(tiny, RESENC_PLANS)
    arch = teacher["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"].endswith(".ResidualEncoderUNet")
    assert "n_blocks_per_stage" in arch["arch_kwargs"]

    student = scale_plans(teacher, "3d_fullres", 2)
    s_kwargs = student["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert s_kwargs["features_per_stage"] == scale_widths(arch["arch_kwargs"]["features_per_stage"], 2)
    assert s_kwargs["n_blocks_per_stage"] == arch["arch_kwargs"]["n_blocks_per_stage"]
    assert _without_widths(student, "3d_fullres") == _without_widths(teacher, "3d_fullres")

    ds = load_tiny_dataset_json(tiny)
    ratio = count_parameters(student, "3d_fullres", ds) / count_parameters(teacher, "3d_fullres", ds)
    assert 1 / 20 < ratio < 1 / 10


def test_scale_plans_resenc_stem_and_bottleneck_channels(tiny):
    """Optional ResidualEncoderUNet width kwargs are scaled too, and the result still builds."""
    teacher = load_tiny_plans(tiny, RESENC_PLANS)
    kwargs = teacher["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs["stem_channels"] = 24
    kwargs["bottleneck_channels"] = [16, 32, 64, 128]
    kwargs["block"] = "dynamic_network_architectures.building_blocks.residual.BottleneckD"
    teacher["configurations"]["3d_fullres"]["architecture"]["_kw_requires_import"].append("block")
    student = scale_plans(teacher, "3d_fullres", 2)
    s_kwargs = student["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert s_kwargs["stem_channels"] == 6
    assert s_kwargs["bottleneck_channels"] == [4, 8, 16, 32]
    ds = load_tiny_dataset_json(tiny)
    assert count_parameters(student, "3d_fullres", ds) < count_parameters(teacher, "3d_fullres", ds) / 10


def test_scale_plans_inherited_architecture(tiny):
    """Widths are scaled where the inherited architecture entry is defined (nnU-Net's shallow update)."""
    plans = load_tiny_plans(tiny)
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres",
                                                     "previous_stage": "3d_lowres"}
    plans["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    own = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    plans["configurations"]["3d_own_arch"] = {"inherits_from": "3d_fullres", "architecture": own}

    assert architecture_source(plans, "3d_cascade_fullres") == "3d_fullres"
    assert architecture_source(plans, "3d_own_arch") == "3d_own_arch"
    assert configurations_sharing_architecture(plans, "3d_cascade_fullres") == [
        "3d_fullres", "3d_cascade_fullres", "3d_fullres_bs4"]

    student = scale_plans(plans, "3d_cascade_fullres", 2)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(student)
    def widths(name):
        return pm.get_configuration(name).network_arch_init_kwargs["features_per_stage"]

    for name in ("3d_cascade_fullres", "3d_fullres", "3d_fullres_bs4"):
        assert widths(name) == [8, 16, 32, 64]
    assert widths("3d_own_arch") == [32, 64, 128, 256]
    assert pm.get_configuration("3d_cascade_fullres").previous_stage_name == "3d_lowres"
    # the cascade entry itself is unchanged: the widths were scaled in its parent
    assert student["configurations"]["3d_cascade_fullres"] == plans["configurations"]["3d_cascade_fullres"]


def test_scale_plans_rejects_unknown_things(tiny):
    plans = load_tiny_plans(tiny)
    with pytest.raises(UserError, match=r"unknown configuration '3d_lowres'.*2d, 3d_fullres"):
        scale_plans(plans, "3d_lowres", 2)
    other = copy.deepcopy(plans)
    other["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my.nets.SwinUNETR"
    with pytest.raises(UserError, match="SwinUNETR.*not supported"):
        scale_plans(other, "3d_fullres", 2)
    loop = copy.deepcopy(plans)
    loop["configurations"]["a"] = {"inherits_from": "b"}
    loop["configurations"]["b"] = {"inherits_from": "a"}
    with pytest.raises(UserError, match="circular"):
        scale_plans(loop, "a", 2)
    with pytest.raises(UserError, match="t \\(width reduction exponent\\)"):
        scale_plans(plans, "3d_fullres", -1)


# --------------------------------------------------------------------------- make_student_plans


def test_make_student_plans_writes_file_and_counts_params(tiny, isolated):
    teacher_file = isolated / "nnUNetPlans.json"
    teacher_before = teacher_file.read_bytes()
    sp = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)

    assert sp.identifier == "nnUNetPlans_recokd_t2"
    assert sp.path == isolated / "nnUNetPlans_recokd_t2.json" and sp.written
    assert sp.dataset_name == TINY_NAME and sp.network_class == "PlainConvUNet"
    assert sp.teacher_widths == [32, 64, 128, 256] and sp.student_widths == [8, 16, 32, 64]
    assert 1 / 20 < sp.param_ratio < 1 / 10
    assert sp.student_params == count_parameters(json.loads(sp.path.read_text()), "3d_fullres",
                                                 load_tiny_dataset_json(tiny))
    assert sp.scaled_configurations == ["3d_fullres"]
    assert sp.preprocessed_data == isolated / "nnUNetPlans_3d_fullres"
    written = json.loads(sp.path.read_text())
    assert written == scale_plans(json.loads(teacher_before), "3d_fullres", 2)
    assert teacher_file.read_bytes() == teacher_before


def test_make_student_plans_accepts_name_and_custom_identifier(isolated):
    sp = make_student_plans(TINY_NAME, "nnUNetPlans", "3d_fullres", 1, c_min=8, new_identifier="tiny_student")
    assert sp.path.name == "tiny_student.json"
    assert json.loads(sp.path.read_text())["plans_name"] == "tiny_student"
    assert sp.student_widths == [16, 32, 64, 128]
    with pytest.raises(UserError, match="is the teacher's"):
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2, new_identifier="nnUNetPlans")


def test_make_student_plans_refuses_to_overwrite(isolated):
    first = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)
    content = first.path.read_text()
    again = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)  # identical: fine
    assert not again.written and first.path.read_text() == content

    with pytest.raises(UserError, match="already exists.*--overwrite"):  # same name, other widths
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 3, new_identifier=first.identifier)
    edited = json.loads(content)
    edited["configurations"]["3d_fullres"]["batch_size"] = 7
    first.path.write_text(json.dumps(edited))
    with pytest.raises(UserError, match="already exists"):
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)
    assert json.loads(first.path.read_text()) == edited  # user's file left alone

    forced = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2, overwrite=True)
    assert forced.written and json.loads(forced.path.read_text()) == json.loads(content)


def test_make_student_plans_errors_list_what_exists(isolated, monkeypatch):
    with pytest.raises(UserError, match=r"nnUNetPlansX\.json does not exist; plans in .*: "
                                        r"nnUNetPlans, nnUNetResEncUNetMPlans$"):
        make_student_plans(TINY_ID, "nnUNetPlansX", "3d_fullres", 2)
    with pytest.raises(UserError, match=r"unknown configuration '3d_lowres'; "
                                        r"available configurations: 2d, 3d_fullres$"):
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_lowres", 2)
    with pytest.raises(UserError, match=r"no preprocessed data for Dataset902_Missing"
                                        r".*Dataset901_RecoKDTiny"):
        make_student_plans("Dataset902_Missing", "nnUNetPlans", "3d_fullres", 2)
    with pytest.raises(UserError, match="dataset 'abc'"):
        make_student_plans("abc", "nnUNetPlans", "3d_fullres", 2)
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(UserError, match="nnUNet_preprocessed is not set"):
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)


def test_student_trains_on_teacher_preprocessed_data(tiny):
    """nnU-Net's own trainer, given the student plans, points at the teacher's preprocessed folder."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    sp = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2, new_identifier="nnUNetPlans_reuse_check")
    plans = json.loads(sp.path.read_text())
    sp.path.unlink()  # keep the shared preprocessed folder as planned
    plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args adds
    trainer = nnUNetTrainer(plans=plans, configuration="3d_fullres", fold=0,
                            dataset_json=load_tiny_dataset_json(tiny), device=torch.device("cpu"))
    teacher_data = tiny["preprocessed"] / TINY_NAME / "nnUNetPlans_3d_fullres"
    assert Path(trainer.preprocessed_dataset_folder) == teacher_data == sp.preprocessed_data
    assert len(list(teacher_data.glob("*.pkl"))) == 4
    assert trainer.configuration_manager.network_arch_init_kwargs["features_per_stage"] == [8, 16, 32, 64]
    assert Path(trainer.output_folder).parent.name == "nnUNetTrainer__nnUNetPlans_reuse_check__3d_fullres"


# --------------------------------------------------------------------------- CLI


def test_cli_student_plans(isolated, capsys):
    from recokd.cli import main

    assert main(["student-plans", str(TINY_ID), "-p", "nnUNetPlans", "-c", "3d_fullres", "-t", "2"]) == 0
    out = capsys.readouterr().out
    assert "nnUNetPlans_recokd_t2" in out and str(isolated / "nnUNetPlans_recokd_t2.json") in out
    assert "[32, 64, 128, 256]" in out and "[8, 16, 32, 64]" in out
    assert "ratio 0.0" in out and "nnUNetv2_train" in out
    assert main(["student-plans", str(TINY_ID), "-t", "3", "--name", "nnUNetPlans_recokd_t2"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert main(["student-plans", str(TINY_ID), "-t", "3", "--name", "nnUNetPlans_recokd_t2",
                 "--overwrite"]) == 0
    assert get_widths(json.loads((isolated / "nnUNetPlans_recokd_t2.json").read_text()),
                      "3d_fullres") == [4, 8, 16, 32]


def test_dry_run_checks_but_writes_nothing(isolated):
    target = isolated / "nnUNetPlans_recokd_t2.json"
    sp = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2, dry_run=True)
    assert not target.exists() and not sp.written
    assert get_widths(sp.plans, "3d_fullres") == [8, 16, 32, 64]
    make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)
    before = target.read_bytes()
    with pytest.raises(UserError, match="already exists with different content; pass --overwrite"):
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 3, new_identifier=target.stem, dry_run=True)
    sp = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 3, new_identifier=target.stem, dry_run=True,
                            overwrite=True)
    assert target.read_bytes() == before and get_widths(sp.plans, "3d_fullres") == [4, 8, 16, 32]


def test_widths_saturating_at_c_min_are_reported(isolated, capsys):
    from recokd.cli import main

    assert make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2).saturation_note() is None
    sp = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 5, new_identifier="t5")
    assert sp.student_widths == [4, 4, 4, 8]
    assert sp.saturation_note() == (
        "note: 2 of 4 stage widths saturate at c_min 4 (teacher width / 2**5 < 4, stages [0, 1]);"
        " a larger -t shrinks the student no further there")
    assert main(["student-plans", str(TINY_ID), "-t", "7", "--name", "t7"]) == 0
    assert "4 of 4 stage widths saturate at c_min 4" in capsys.readouterr().out


def test_configurations_share_one_student_plans_file_without_colliding(isolated):
    """Issue 15: writing the 2d student's plans must keep the 3d student's widths in the shared
    `nnUNetPlans_recokd_t2.json` (and the other way round); a real conflict is still refused."""
    teacher = json.loads((isolated / "nnUNetPlans.json").read_text())
    assert {"2d", "3d_fullres"} <= set(teacher["configurations"])
    sp3 = make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2)
    sp2 = make_student_plans(TINY_ID, "nnUNetPlans", "2d", 2)  # no --overwrite needed: nothing is lost
    assert sp2.written and sp2.path == sp3.path
    both = json.loads(sp3.path.read_text())
    for configuration in ("3d_fullres", "2d"):
        alone = scale_plans(teacher, configuration, 2)
        source = architecture_source(teacher, configuration)
        assert both["configurations"][source] == alone["configurations"][source]
        assert get_widths(both, configuration) == scale_widths(get_widths(teacher, configuration), 2)
    # asking again for either configuration changes nothing
    assert not make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2).written
    assert not make_student_plans(TINY_ID, "nnUNetPlans", "2d", 2, dry_run=True).written
    assert json.loads(sp3.path.read_text()) == both
    # the same file name with other widths for 3d_fullres (another c_min) is a conflict, not a merge
    with pytest.raises(UserError, match="already exists with different content"):
        make_student_plans(TINY_ID, "nnUNetPlans", "3d_fullres", 2, c_min=16,
                           new_identifier="nnUNetPlans_recokd_t2")
