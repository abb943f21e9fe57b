"""Bench settings: method names against the registry, lists, run order, bench_config.json refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from recokd.bench.config import (
    CONFIG_FILE,
    RunSpec,
    Selection,
    Study,
    check_or_write_config,
    method_weights_text,
    parse_int_list,
    parse_methods,
    plan_runs,
)
from recokd.errors import UserError
from recokd.kd.registry import available_methods


def test_methods_default_to_every_registered_one_and_unknown_names_are_refused() -> None:
    registered = list(available_methods())
    assert parse_methods(None) == registered
    assert {
        "reco",
        "reco-sard",
        "reco-ca",
        "reco-affinity",
        "logits",
        "fitnet",
        "at",
        "cwd",
        "skd",
        "ifvd",
        "cirkd",
        "rkd",
    } <= set(registered)
    assert parse_methods("at, reco,nokd,teacher,at") == ["at", "reco"]
    with pytest.raises(UserError) as e:
        parse_methods("reco,recoo,kd")
    msg = str(e.value)
    assert "unknown method(s) recoo, kd" in msg and all(m in msg for m in registered)
    # weighted specs of registered methods (a KD-weight sweep in one bench)
    assert parse_methods("reco,reco:10,reco+logits:0.5") == ["reco", "reco:10", "reco+logits:0.5"]
    for bad in ("reco:x", "reco:0", "reco:nan", "recoo:2", "reco+reco:2"):
        with pytest.raises(UserError, match="unknown method"):
            parse_methods(bad)


def test_the_report_spells_out_each_terms_weight() -> None:
    """A suffix weighs its own term only: reco+logits:10 and reco:10+logits are different students."""
    text = method_weights_text(["pseudo", "reco", "reco:10", "reco+logits:10", "reco:100+logits"], 0.01)
    assert text is not None and text.endswith(
        "reco:10 = reco 0.1; reco+logits:10 = reco 0.01 + logits 0.1; reco:100+logits = reco 1 + logits 0.01")
    assert "W x 0.01" in text
    assert method_weights_text(["pseudo", "reco", "cwd"], 0.01) is None


def test_int_lists() -> None:
    assert parse_int_list("1, 2,3,2", "-t") == [1, 2, 3]
    with pytest.raises(UserError, match="-t: expected comma-separated integers"):
        parse_int_list("1,x", "-t")
    with pytest.raises(UserError, match="values must be >= 1"):
        parse_int_list("0,1", "-t", minimum=1)
    with pytest.raises(UserError, match="width exponents must be >= 1"):
        Selection(["reco"], [0], [0]).validate()


def test_runs_are_ordered_teacher_then_seed_by_seed() -> None:
    runs = plan_runs(Selection(["reco", "at"], [1, 2], [0, 1]))
    assert runs[0] == RunSpec("teacher", None, None)
    assert [r.key for r in runs[1:4]] == ["t1/nokd/seed0", "t1/reco/seed0", "t1/at/seed0"]
    assert runs[4].key == "t1/nokd/seed1" and len(runs) == 1 + 2 * 2 * 3
    assert RunSpec("reco", 2, 1).folder(Path("/o")) == Path("/o/runs/t2/reco/seed1")
    assert RunSpec("teacher", None, None).folder(Path("/o")) == Path("/o/teacher")


def _study(**kw) -> Study:
    return replace(Study(dataset="Dataset991_BenchPhantoms", phantoms={"cases": 6}), **kw)


def test_config_written_resumed_and_refused_when_the_study_differs(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert check_or_write_config(out, _study(), Selection(["reco"], [2], [0])) is False
    # other methods, widths or seeds only add runs: the same study resumes
    assert check_or_write_config(out, _study(), Selection(["reco", "at"], [2, 3], [0, 1, 2])) is True
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["study"]["epochs"] == 5 and len(saved["selections"]) == 2
    # resuming with a selection asked before records it once
    assert check_or_write_config(out, _study(), Selection(["reco"], [2], [0])) is True
    assert json.loads((out / CONFIG_FILE).read_text()) == saved
    with pytest.raises(UserError) as e:
        check_or_write_config(out, _study(epochs=6, kd_weight=0.1), Selection(["reco"], [2], [0]))
    msg = str(e.value)
    assert (
        "epochs: saved 5, now 6" in msg and "kd_weight: saved 0.01, now 0.1" in msg and "--overwrite" in msg
    )
    assert json.loads((out / CONFIG_FILE).read_text()) == saved  # nothing recorded for a refused call


def test_a_bench_written_before_new_study_fields_resumes_with_their_defaults(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    study = _study(phantoms={"cases": 24, "test_cases": 8, "shape": [32, 32, 32], "seed": 0})
    assert check_or_write_config(out, study, Selection(["reco"], [2], [0])) is False
    saved = json.loads((out / CONFIG_FILE).read_text())
    for key in ("schedule", "warmup", "augmentation"):  # an older bench_config.json lacks these
        del saved["study"][key]
    (out / CONFIG_FILE).write_text(json.dumps(saved))
    assert check_or_write_config(out, study, Selection(["reco"], [2], [1])) is True
    with pytest.raises(UserError, match="augmentation: saved True, now False"):
        check_or_write_config(out, replace(study, augmentation=False), Selection(["reco"], [2], [0]))
    scaled = replace(study, phantoms={**study.phantoms, "small_scale": 2.0})
    with pytest.raises(UserError, match="phantoms: saved"):
        check_or_write_config(out, scaled, Selection(["reco"], [2], [0]))


def test_trainers_follow_the_augmentation_setting() -> None:
    assert (_study().stock_trainer, _study().kd_trainer) == ("nnUNetTrainerShort", "nnUNetTrainerReCoKD")
    no_da = _study(augmentation=False, warmup=0.2)
    assert (no_da.stock_trainer, no_da.kd_trainer) == ("nnUNetTrainerShortNoDA", "nnUNetTrainerReCoKDNoDA")
    text = no_da.schedule_text()
    assert "no data augmentation" in text and "linear warm-up over the first 20% of the epochs" in text
    assert "(constant)" in _study(warmup=0.0).schedule_text()
    with pytest.raises(UserError, match="--warmup must be in"):
        _study(warmup=1.5).validate()


def test_config_refuses_a_folder_that_is_not_a_bench(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no bench_config.json"):
        check_or_write_config(tmp_path, _study(), Selection(["reco"], [2], [0]))
    (tmp_path / "notes.txt").unlink()
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not a readable bench configuration"):
        check_or_write_config(tmp_path, _study(), Selection(["reco"], [2], [0]))


def test_study_validation() -> None:
    with pytest.raises(UserError, match="--test-images and --test-labels together"):
        _study(test_images="/x").validate()
    with pytest.raises(UserError, match="--epochs must be >= 1"):
        _study(epochs=0).validate()
    text = _study(epochs=3, iters_per_epoch=7, teacher_epochs=9).schedule_text()
    assert "3 epoch(s) x 7 training iterations" in text and "nnUNetTrainerShort, SGD" in text
    assert "9 epoch(s) x 7" in text
    adam = _study(optimizer="adam").schedule_text()
    assert "iteration(s) per epoch), AdamW (nnU-Net's nnUNetTrainerAdam)" in adam
    with pytest.raises(UserError, match="--optimizer must be one of sgd, adam"):
        _study(optimizer="lbfgs").validate()


def test_kd_options_are_routed_to_the_methods_that_take_them_and_checked() -> None:
    study = _study(kd_options={"level_weights": [0, 0.7, 0.3], "reco.tau": 0.5, "dist.tau": 2.0})
    # a plain KEY goes to every run; METHOD.KEY only to the runs that have METHOD as a term
    assert study.kd_options_for("reco:10") == {"level_weights": [0, 0.7, 0.3], "reco.tau": 0.5}
    assert study.kd_options_for("reco-sard") == {"level_weights": [0, 0.7, 0.3]}
    assert study.kd_options_for("reco+cwd:0.5") == {"level_weights": [0, 0.7, 0.3], "reco.tau": 0.5}
    _study(kd_options={"level_weights": [0, 0.7, 0.3], "reco.tau": 0.5}).check_kd_options(["reco:10", "cwd"])
    with pytest.raises(UserError) as e:  # DIST has no level weights: refused, naming what it takes
        study.check_kd_options(["reco", "dist"])
    msg = str(e.value)
    assert "'dist'" in msg and "'level_weights'" in msg and "beta, gamma, regions, tau" in msg
    assert "METHOD.KEY" in msg
    with pytest.raises(UserError, match=r"--kd-option dist.tau: no KD method of --methods \(reco\)"):
        _study(kd_options={"dist.tau": 2.0}).check_kd_options(["reco"])
    with pytest.raises(UserError, match="option 'temperature' of KD method 'reco' must be"):
        _study(kd_options={"temperature": "hot"}).check_kd_options(["reco"])
    with pytest.raises(UserError, match="'reco' .* has no option 'nonsense'"):
        _study(kd_options={"reco.nonsense": 1}).check_kd_options(["reco"])
    text = study.schedule_text()
    assert 'level_weights=[0, 0.7, 0.3], reco.tau=0.5, dist.tau=2.0)' in text


def test_kd_options_belong_to_the_study(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    check_or_write_config(out, _study(), Selection(["reco"], [2], [0]))
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["study"]["kd_options"] == {}
    del saved["study"]["kd_options"]  # a bench written before the field resumes as "no options"
    (out / CONFIG_FILE).write_text(json.dumps(saved))
    assert check_or_write_config(out, _study(), Selection(["reco"], [2], [1])) is True
    with pytest.raises(UserError, match=r"kd_options: saved \{\}, now \{'temperature': 1.0\}"):
        check_or_write_config(out, _study(kd_options={"temperature": 1.0}), Selection(["reco"], [2], [0]))
