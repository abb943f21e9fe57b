"""``recokd study``: study files loaded and checked (variables, [tiny], --set, step selection), every
refusal in one line before anything runs, the commands a dry run prints, resumable training steps, and
the committed evidence benches: each bench step of ``benchmarks/studies/evidence.toml`` describes exactly
the bench its committed ``bench_config.json`` holds, so that ``recokd bench`` resumes it (no training
here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from recokd.bench import runner
from recokd.bench.cli import build_selection, build_study
from recokd.bench.config import CONFIG_FILE, study_differences
from recokd.bench.study import load_study
from recokd.bench.study_steps import _copy_subset, bench_argv
from recokd.cli import build_parser, main
from tests.doc_blocks import ROOT

EVIDENCE = ROOT / "benchmarks/studies/evidence.toml"
ATLAS = ROOT / "benchmarks/studies/atlas.toml"
COMMITTED = ROOT / "benchmarks/results/evidence"


def _dry(capsys: pytest.CaptureFixture, *argv: str) -> list[str]:
    """The command lines (``+ ...``) a dry run prints."""
    assert main(["study", *argv, "--dry-run"]) == 0
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("+ ")]


# ---------------------------------------------------------------------------- loading, variables, selection


def test_default_steps_are_the_scripts_defaults() -> None:
    evidence = load_study(EVIDENCE)
    assert evidence.default_steps() == [
        "data",
        "teacher",
        "students",
        "curves",
        "sweep",
        "adam-students",
        "adam-curves",
        "adam-sweep",
        "adam-long",
        "final",
    ]
    assert "int8" in evidence.step_names() and "few-nolevel0" in evidence.step_names()
    assert load_study(ATLAS).default_steps() == [
        "data", "teacher", "teacher-adamw", "students", "curves", "test"
    ]


def test_selection_keeps_the_file_order_and_every_entry_of_a_step() -> None:
    study = load_study(EVIDENCE)
    steps = study.select(["final", "sweep"])
    assert [s.name for s in steps] == ["sweep"] * 4 + ["final"]
    assert [Path(s.fields["output"]).name for s in steps[:4]] == ["warmup0.2", "warmup0", "warmup0.6", "long"]


def test_variables_builtins_tiny_and_set(tmp_path: Path) -> None:
    study = load_study(EVIDENCE, folder=tmp_path / "ev")
    assert study.variables["teacher"] == str(
        tmp_path / "ev/data/nnUNet_results/Dataset801_P32s2p0/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres"
    )
    (teacher,) = study.select(["teacher"])
    assert teacher.fields["epochs"] == 40 and isinstance(
        teacher.fields["epochs"], int
    )  # "{var}" keeps its type
    tiny = load_study(EVIDENCE, tiny=True, sets=["seeds=5", "few_weight=:10"], folder=tmp_path)
    (teacher,) = tiny.select(["teacher"])
    assert teacher.fields["epochs"] == 1
    (final,) = tiny.select(["final"])
    argv = bench_argv(final)
    assert argv[argv.index("--seeds") + 1] == "5"  # --set after [tiny] (seeds 1)
    assert argv[argv.index("--iters-per-epoch") + 1] == "2"
    (few,) = tiny.select(["few-final"])
    assert "reco:10,reco-sard:10,reco-ca:10" in bench_argv(few)[bench_argv(few).index("--methods") + 1]


def test_relative_folder_is_taken_from_the_current_directory(tmp_path: Path) -> None:
    assert load_study(EVIDENCE, cwd=tmp_path).folder == tmp_path / "benchmarks/results/evidence"
    assert load_study(EVIDENCE, folder="x", cwd=tmp_path).folder == tmp_path / "x"


# ---------------------------------------------------------------------------- refusals

BASE = """
[study]
folder = "s"
[vars]
n = 3
name = "a"
[[step]]
name = "data"
kind = "recokd"
about = "a"
args = ["phantoms", "--cases", "{n}"]
"""


@pytest.mark.parametrize(
    ("extra", "sets", "message"),
    [
        ('[[step]]\nname = "x"\nkind = "train"\nabout = "a"\n', [], "field 'kind': unknown kind 'train'"),
        (
            '[[step]]\nname = "x"\nkind = "recokd"\nabout = "a"\nargs = []\nfoo = 1\n',
            [],
            "step 'x' (entry 2): unknown field 'foo' for kind 'recokd'",
        ),
        (
            '[[step]]\nname = "x"\nkind = "recokd"\nabout = "a"\n',
            [],
            "step 'x' (entry 2): missing field 'args'",
        ),
        ('[[step]]\nname = "x"\nkind = "recokd"\nargs = []\n', [], "entry 2 field 'about': missing"),
        (
            '[[step]]\nname = "x"\nkind = "recokd"\nabout = "a"\nargs = ["{nope}"]\n',
            [],
            "step 'x' (entry 2) field 'args': undefined variable {nope}",
        ),
        ("", ["nope=1"], "--set nope=1: unknown variable 'nope'"),
        ("", ["n=abc"], "--set n=abc: variable 'n' is an integer (3), got 'abc'"),
        (
            '[[step]]\nname = "x"\nkind = "nnunet-train"\nabout = "a"\ndataset = "Dataset001_A"\n'
            'epochs = "{name}"\n'
            "iters = 1\nval_iters = 1\n",
            [],
            "step 'x' (entry 2) field 'epochs': expected a positive integer, got 'a'",
        ),
        (
            '[[step]]\nname = "x"\nkind = "nnunet-train"\nabout = "a"\ndataset = "801"\nepochs = 1\n'
            "iters = 1\nval_iters = 1\n",
            [],
            "field 'dataset': expected an nnU-Net dataset folder name",
        ),
        (
            '[[step]]\nname = "x"\nkind = "bench"\nabout = "a"\noutput = "o"\n'
            "options = { seed_list = [0] }\n",
            [],
            "field 'options': unknown recokd bench option 'seed_list'",
        ),
        (
            '[[step]]\nname = "x"\nkind = "bench"\nabout = "a"\noutput = "o"\noptions = { no-profile = 1 }\n',
            [],
            "option 'no-profile': expected true or false",
        ),
        (
            '[[step]]\nname = "x"\nkind = "bench"\nabout = "a"\noutput = "o"\npresets = ["p"]\n',
            [],
            "field 'presets': unknown preset(s) p",
        ),
        (
            '[[step]]\nname = "x"\nkind = "nnunet"\nabout = "a"\ncommand = "nnUNetv2_train"\nargs = []\n',
            [],
            "field 'command': expected an nnU-Net entry point",
        ),
        (
            '[[step]]\nname = "x"\nkind = "recokd"\nabout = "a"\nargs = []\nneeds = { y = ["p"] }\n',
            [],
            "field 'needs': unknown step 'y'",
        ),
        ("[tiny]\nm = 1\n", [], "[tiny] m: unknown variable 'm'"),
        ('[tiny]\nn = "x"\n', [], "[tiny] n: variable 'n' is an integer (3), got 'x'"),
    ],
)
def test_bad_study_files_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: str, sets: list[str], message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BASE + extra)
    argv = ["study", str(path), "--list", *(a for s in sets for a in ("--set", s))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"recokd study: error: {path}: "), err
    assert message in err, err
    assert not (tmp_path / "s").exists()  # nothing ran


def test_unknown_step_on_the_command_line_lists_the_steps(capsys: pytest.CaptureFixture) -> None:
    assert main(["study", str(EVIDENCE), "sweeep", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown step(s) sweeep; its steps: data, teacher, teacher-long" in err


# ---------------------------------------------------------------------------- what runs


def test_dry_run_prints_each_bench_of_a_step_relative_to_the_current_directory(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    lines = _dry(capsys, str(EVIDENCE), "sweep")
    assert len(lines) == 4
    assert all(
        re.match(
            r"\+ recokd bench --dataset 801 --teacher benchmarks/results/evidence/data/nnUNet_results/"
            r"Dataset801_P32s2p0/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres ",
            line,
        )
        for line in lines
    ), lines
    assert " --epochs 40 " in lines[3]  # the step's own value replaces the preset's
    assert lines[3].endswith("--methods reco:100 --output benchmarks/results/evidence/sweep/long")


def test_report_only_runs_the_begun_benches_with_report_only_and_nothing_else(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study/sweep/long").mkdir(parents=True)
    (tmp_path / "study/sweep/long" / CONFIG_FILE).write_text("{}")  # begun; the other sweep benches not
    assert main(["study", str(EVIDENCE), "data", "teacher", "sweep", "--folder", "study", "--report-only",
                 "--dry-run"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("+ ")]
    assert len(lines) == 1 and lines[0].startswith("+ recokd bench ")
    assert lines[0].endswith("--methods reco:100 --output study/sweep/long --report-only")
    assert err.count("skipped: no bench in study/sweep/") == 3
    assert "== data" not in err and "== teacher" not in err  # no data, planning or training step


def test_only_if_runs_the_warmup_benches_once_the_best_weight_is_set(capsys: pytest.CaptureFixture) -> None:
    assert len(_dry(capsys, str(EVIDENCE), "adam-sweep")) == 1
    lines = _dry(capsys, str(EVIDENCE), "adam-sweep", "--set", "adam_best=reco")
    assert len(lines) == 3 and "--warmup 0 --methods reco --output " in lines[1]
    assert lines[1].endswith("results/evidence/adam-sweep/warmup0")


def test_training_skips_a_finished_run_and_continues_a_stopped_one(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    fold = (
        tmp_path
        / "data/nnUNet_results/Dataset811_Subcortical/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres/fold_0"
    )
    args = (str(ATLAS), "teacher", "--tiny", "--folder", str(tmp_path))
    (line,) = _dry(capsys, *args)
    env = (
        "RECOKD_SHORT_EPOCHS=2 RECOKD_SHORT_ITERS=2 RECOKD_SHORT_VAL_ITERS=1 RECOKD_SEED=0 "
        "RECOKD_SHORT_SAVE_EVERY=1"
    )
    assert (
        line
        == f"+ {env} nnUNetv2_train 811 3d_fullres 0 -tr nnUNetTrainerShortNoDA -p nnUNetPlans -device cpu"
    )
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").touch()
    (line,) = _dry(capsys, *args)
    assert line.endswith("-device cpu --c")
    (fold / "checkpoint_final.pth").touch()
    assert _dry(capsys, *args) == []


def test_a_trained_teacher_keeps_its_weights_only_where_the_step_says_so(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    model = "Dataset811_Subcortical/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres/fold_0"
    weights = {"w": torch.arange(4.0)}
    checkpoint = {
        "network_weights": weights,
        "init_args": {"plans": {}, "configuration": "3d_fullres", "dataset_json": {}},
        "trainer_name": "nnUNetTrainerShortNoDA",
        "optimizer_state": {"state": {0: {"exp_avg": torch.ones(4)}}},
        "grad_scaler_state": None,
    }
    for results in ("nnUNet_results", "nnUNet_results_adamw"):
        (tmp_path / "data" / results / model).mkdir(parents=True)
        torch.save(checkpoint, tmp_path / "data" / results / model / "checkpoint_final.pth")
    for step in ("teacher", "teacher-adamw"):  # trained: nothing runs
        assert main(["study", str(ATLAS), step, "--tiny", "--folder", str(tmp_path)]) == 0
    assert "optimiser state dropped" in capsys.readouterr().err
    sgd, adamw = (
        torch.load(tmp_path / "data" / results / model / "checkpoint_final.pth", weights_only=False)
        for results in ("nnUNet_results", "nnUNet_results_adamw")
    )
    assert "optimizer_state" in sgd  # the SGD teacher's step does not ask for it
    assert "optimizer_state" not in adamw and "grad_scaler_state" not in adamw
    assert torch.equal(adamw["network_weights"]["w"], weights["w"])
    assert (tmp_path / ".gitignore").read_text().startswith("data/*\n!data/nnUNet_results_adamw/\n")


def test_students_make_their_plans_then_train_them_with_adamw(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    lines = _dry(
        capsys,
        str(ATLAS),
        "students",
        "--folder",
        str(tmp_path),
        "--set",
        "student_ts=[3]",
        "--set",
        "threads=1",
    )
    assert lines[0] == "+ recokd student-plans 811 -c 3d_fullres -t 3"
    assert " RECOKD_SHORT_OPTIMIZER=adam " in lines[1] and " python -c " in lines[1]
    assert lines[1].endswith(
        "' 1 811 3d_fullres 0 -tr nnUNetTrainerShortNoDA -p nnUNetPlans_recokd_t3 -device cpu"
    )
    (adamw,) = _dry(capsys, str(ATLAS), "teacher-adamw", "--folder", str(tmp_path))
    assert adamw.startswith(f"+ nnUNet_results={tmp_path}/data/nnUNet_results_adamw ")


def test_env_prints_the_studys_nnunet_folders(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["study", str(EVIDENCE), "--env", "--folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"export nnUNet_raw={tmp_path}/data/nnUNet_raw nnUNet_preprocessed=")
    assert f"nnUNet_results={tmp_path}/data/nnUNet_results " in out and f"EVIDENCE={tmp_path}" in out
    assert "nnUNet_extTrainer=" in out and not (tmp_path / ".gitignore").exists()


def test_options_may_come_before_or_after_the_steps(capsys: pytest.CaptureFixture) -> None:
    before = _dry(capsys, "--set", "adam_best=reco", str(EVIDENCE), "adam-sweep")
    after = _dry(capsys, str(EVIDENCE), "adam-sweep", "--set", "adam_best=reco")
    assert before == after and len(after) == 3
    assert build_parser().parse_args(["study", str(EVIDENCE), "final", "--tiny"]).steps == ["final", "--tiny"]


# ---------------------------------------------------------------------------- the committed evidence benches

#: the knobs RESULTS.md's "Exact commands" give the steps that wrote the committed benches
DOCUMENTED_SETS = ["few_weight=:10", "adam_best=reco"]


def _committed_benches() -> list[tuple[str, int]]:
    study = load_study(EVIDENCE)
    return [(s.name, s.index) for s in study.steps if s.kind == "bench"]


@pytest.mark.parametrize(("name", "index"), _committed_benches())
def test_each_bench_step_describes_its_committed_bench(
    name: str, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder_of = load_study(EVIDENCE)
    (step,) = [s for s in folder_of.steps if s.index == index]
    output = Path(step.fields["output"]).relative_to(folder_of.folder)
    saved = json.loads((COMMITTED / output / CONFIG_FILE).read_text())
    # the committed benches were run in another clone: the same study folder as theirs
    folder = saved["study"]["teacher"].split("/data/nnUNet_results/")[0]
    study = load_study(EVIDENCE, sets=DOCUMENTED_SETS, folder=folder)
    (step,) = [s for s in study.steps if s.index == index]
    datasets = {"801": "Dataset801_P32s2p0", "803": "Dataset803_P32s2p0Few"}
    monkeypatch.setattr(runner, "resolve_user_dataset", lambda d, p, c: (datasets[d], Path("/r"), Path("/p")))
    monkeypatch.setattr(runner, "check_teacher_folder", lambda path, c, f: Path(path))
    monkeypatch.setattr(runner, "check_test_folders", lambda *a: None)
    args = build_parser().parse_args(["bench", *bench_argv(step)])
    assert Path(args.output) == Path(folder) / output
    assert study_differences(saved["study"], json.loads(json.dumps(vars(build_study(args))))) == []
    selection = vars(build_selection(args))
    saved_selections = saved["selections"]
    if name == "few-final":  # first run before few_weight was chosen, then again with it
        assert selection in saved_selections[2:]
    else:
        assert selection in saved_selections, (selection, saved_selections)


def test_a_step_is_refused_until_the_step_it_needs_has_run(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    assert main(["study", str(EVIDENCE), "backends", "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    needs = r"step 'backends' \(entry \d+\) needs \S+_adam: run the step 'adam-students' first"
    assert re.search(needs, err), err
    assert not (tmp_path / "data").exists()


def test_subset_copies_the_first_cases_and_every_test_case(tmp_path: Path) -> None:
    source, target = tmp_path / "Dataset801_A", tmp_path / "Dataset803_AFew"
    for folder, names in (
        ("imagesTr", ["c1_0000", "c0_0000", "c2_0000"]),
        ("labelsTr", ["c1", "c0", "c2"]),
        ("imagesTs", ["t0_0000"]),
        ("labelsTs", ["t0"]),
    ):
        (source / folder).mkdir(parents=True)
        for name in names:
            (source / folder / f"{name}.nii.gz").write_text(name)
    (source / "dataset.json").write_text(
        json.dumps({"file_ending": ".nii.gz", "numTraining": 3, "name": "A"})
    )
    _copy_subset(source, target, 2, "AFew")
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == ["c0.nii.gz", "c1.nii.gz"]
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["c0_0000.nii.gz", "c1_0000.nii.gz"]
    assert (target / "imagesTs/t0_0000.nii.gz").is_file() and (target / "labelsTs/t0.nii.gz").is_file()
    assert json.loads((target / "dataset.json").read_text()) == {
        "file_ending": ".nii.gz",
        "numTraining": 2,
        "name": "AFew",
    }


def test_score_predicts_with_the_models_own_results_root_then_evaluates(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    lines = _dry(capsys, str(ATLAS), "test", "--folder", "s")
    assert len(lines) == 6  # the AdamW teacher and the two students: predict, evaluate
    predict, evaluate = lines[0], lines[1]
    assert predict.startswith(
        "+ nnUNet_results=s/data/nnUNet_results_adamw recokd predict -i "
        "s/data/nnUNet_raw/Dataset811_Subcortical/imagesTs -o s/data/predictions/teacher_adamw "
        "-d Dataset811_Subcortical -c 3d_fullres -f 0 -tr nnUNetTrainerShortNoDA -p nnUNetPlans "
    )
    assert evaluate.startswith("+ recokd evaluate s/data/predictions/teacher_adamw "
                               "s/data/nnUNet_raw/Dataset811_Subcortical/labelsTs ")
    assert evaluate.endswith("-o s/test/teacher_adamw --overwrite > s/test/teacher_adamw.txt")
    assert "-p nnUNetPlans_recokd_t3 " in lines[4]
    assert lines[4].startswith("+ nnUNet_results=s/data/nnUNet_results ")


def test_score_refuses_an_untrained_model_in_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["study", str(ATLAS), "test", "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recokd study: error: ") and "field 'model'" in err[-1]
    assert "has no finished fold 0 (checkpoint_final.pth): train it first" in err[-1]
    assert not (tmp_path / "test").exists()


def test_curves_read_every_results_root_and_name_a_model_trained_in_two(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    model = "Dataset811_Subcortical/nnUNetTrainerShortNoDA__nnUNetPlans{}__3d_fullres/fold_0"
    folds = [tmp_path / "data" / root / model.format(plans) for root, plans in
             [("nnUNet_results_adamw", ""), ("nnUNet_results", "_recokd_t2"), ("nnUNet_results", "")]]
    for fold in folds:
        fold.mkdir(parents=True)
    (line,) = _dry(capsys, str(ATLAS), "curves", "--folder", str(tmp_path))
    shown = line.split(" --iters-per-epoch")[0].split()[3:]
    assert shown == [str(folds[i]) for i in (2, 1, 0)]  # nnUNet_results first, sorted; then the AdamW teacher
