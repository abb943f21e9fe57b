"""The bench runner without training: the job and environment of each run, and a failing run
(a real worker process) reported with its log while the bench goes on and exits non-zero."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from recokd.bench.config import RunSpec, Selection, Study
from recokd.bench.runner import BenchRunner, Layout
from recokd.nnunet import ext_trainer_dir

DATASET = "Dataset991_BenchPhantoms"


def _setup(
    tmp_path: Path, teacher: str | None = None, kd_options: dict | None = None, **options: object
) -> tuple[BenchRunner, Layout]:
    study = Study(
        dataset=DATASET,
        phantoms=None if teacher else {"cases": 5},
        teacher=teacher,
        teacher_epochs=None if teacher else 3,
        epochs=4,
        iters_per_epoch=6,
        val_iters=1,
        kd_weight=0.02,
        kd_options=kd_options or {},
    )
    out = tmp_path / "out"
    runner = BenchRunner(
        out, study, Selection(["reco"], [2], [0]), device="cpu", progress=False, **options  # type: ignore[arg-type]
    )
    teacher_model = (
        Path(teacher)
        if teacher
        else (out / "teacher/nnUNet_results" / DATASET / "nnUNetTrainerShort__nnUNetPlans__3d_fullres")
    )
    layout = Layout(
        out,
        DATASET,
        tmp_path / "raw",
        tmp_path / "pre",
        tmp_path / "imagesTs",
        tmp_path / "labelsTs",
        teacher_model,
        {2: "nnUNetPlans_recokd_t2"},
    )
    return runner, layout


def test_jobs_and_environments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOKD_SETTINGS", "/stale.json")
    monkeypatch.setenv("nnUNet_def_n_proc", "3")  # the user's own setting wins over the CPU default
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    runner, layout = _setup(tmp_path)
    out = layout.out

    job, env = runner.run_job(layout, RunSpec("reco", 2, 0))
    run = out / "runs/t2/reco/seed0"
    assert job["seed"] == 0 and job["train"]["type"] == "recokd"
    argv = job["train"]["argv"]
    assert argv[:4] == ["train", DATASET, "3d_fullres", "0"]
    for flag, value in (
        ("--teacher", str(layout.teacher_model)),
        ("--teacher-fold", "0"),
        ("-t", "2"),
        ("--method", "reco"),
        ("--epochs", "4"),
        ("--iters-per-epoch", "6"),
        ("--val-iters", "1"),
        ("--kd-weight", "0.02"),
        ("--device", "cpu"),
    ):
        assert argv[argv.index(flag) + 1] == value, flag
    model = run / "nnUNet_results" / DATASET / "nnUNetTrainerReCoKD__nnUNetPlans_recokd_t2__3d_fullres"
    assert job["fold_folder"] == str(model / "fold_0") and job["result"] == str(run / "result.json")
    p = job["predict_argv"]
    assert p[0] == "predict" and "--disable-tta" in p and p[p.index("-tr") + 1] == "nnUNetTrainerReCoKD"
    assert (
        p[p.index("-o") + 1] == str(run / "predictions") and p[p.index("-p") + 1] == "nnUNetPlans_recokd_t2"
    )
    assert env["nnUNet_results"] == str(run / "nnUNet_results")
    assert env["nnUNet_preprocessed"] == str(tmp_path / "pre") and env["nnUNet_raw"] == str(tmp_path / "raw")
    assert env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_compile"] == "0" and env["nnUNet_def_n_proc"] == "3"
    assert "RECOKD_SETTINGS" not in env and "RECOKD_SHORT_EPOCHS" not in env
    assert env["nnUNet_extTrainer"].split(":")[0] == ext_trainer_dir()

    job, env = runner.run_job(layout, RunSpec("nokd", 2, 0))
    assert job["train"] == {
        "type": "stock",
        "plans": "nnUNetPlans_recokd_t2",
        "dataset": DATASET,
        "configuration": "3d_fullres",
        "fold": "0",
        "trainer": "nnUNetTrainerShort",
        "device": "cpu",
    }
    assert (env["RECOKD_SHORT_EPOCHS"], env["RECOKD_SHORT_ITERS"], env["RECOKD_SHORT_VAL_ITERS"]) == (
        "4",
        "6",
        "1",
    )

    job, env = runner.run_job(layout, RunSpec("teacher", None, None))
    assert job["train"]["plans"] == "nnUNetPlans" and job["seed"] == 0 and env["RECOKD_SHORT_EPOCHS"] == "3"
    assert env["nnUNet_results"] == str(out / "teacher/nnUNet_results")


def test_kd_options_reach_recokd_train(tmp_path: Path) -> None:
    from recokd.cli import build_parser

    options = {"level_weights": [0, 0.7, 0.3], "reco.context": "affinity", "cwd.temperature": 2.0}
    runner, layout = _setup(tmp_path, kd_options=options)
    argv = runner.run_job(layout, RunSpec("reco:10", 2, 0))[0]["train"]["argv"]
    parsed = build_parser().parse_args(argv)  # what `recokd train` will read
    assert dict(parsed.kd_option) == {"level_weights": [0, 0.7, 0.3], "reco.context": "affinity"}
    assert parsed.method == "reco:10"
    argv = runner.run_job(layout, RunSpec("cwd", 2, 0))[0]["train"]["argv"]
    assert dict(build_parser().parse_args(argv).kd_option) == {
        "level_weights": [0, 0.7, 0.3], "cwd.temperature": 2.0
    }
    runner, layout = _setup(tmp_path / "plain")
    assert "--kd-option" not in runner.run_job(layout, RunSpec("reco", 2, 0))[0]["train"]["argv"]


def test_a_width_is_profiled_with_the_weights_that_are_on_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runner, layout = _setup(tmp_path)
    nokd, reco0, reco1 = RunSpec("nokd", 2, 0), RunSpec("reco", 2, 0), RunSpec("reco", 2, 1)
    status = {RunSpec("teacher", None, None): "done", nokd: "done", reco0: "done", reco1: "done"}
    weights = "fold_0/checkpoint_final.pth"
    for spec in (reco0, reco1):
        (runner.model_folder(layout, spec) / "fold_0").mkdir(parents=True)
    assert runner.profiled_models(layout, status) == [("teacher", layout.teacher_model), ("t2", None)]
    (runner.model_folder(layout, reco1) / weights).write_bytes(b"")  # a run finished on this machine
    assert runner.profiled_models(layout, status)[1] == ("t2", runner.model_folder(layout, reco1))
    (runner.model_folder(layout, nokd) / "fold_0").mkdir(parents=True)
    (runner.model_folder(layout, nokd) / weights).write_bytes(b"")  # the no-KD student's come first
    assert runner.profiled_models(layout, status)[1] == ("t2", runner.model_folder(layout, nokd))
    del status[RunSpec("teacher", None, None)]
    (runner.model_folder(layout, nokd) / weights).unlink()
    (runner.model_folder(layout, reco1) / weights).unlink()
    assert runner.profile_all(layout, status) == {}  # nothing to profile: said, not a failure
    assert "not profiled: t2 (no finished run of this width has its weights" in capsys.readouterr().out
    assert runner.failures == []


def test_an_existing_teacher_is_only_predicted(tmp_path: Path) -> None:
    teacher = tmp_path / "results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    runner, layout = _setup(tmp_path, teacher=str(teacher))
    job, env = runner.run_job(layout, RunSpec("teacher", None, None))
    assert job["train"] is None and job["seed"] is None
    assert env["nnUNet_results"] == str(tmp_path / "results")
    p = job["predict_argv"]
    assert p[p.index("-tr") + 1] == "nnUNetTrainer" and p[p.index("-p") + 1] == "nnUNetPlans"
    assert job["predictions"] == str(layout.out / "teacher/predictions")


def test_failed_runs_are_reported_with_their_log_and_the_bench_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher = tmp_path / "results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    runner, layout = _setup(tmp_path, teacher=str(teacher))
    # the real jobs and workers on a dataset that does not exist: the teacher's prediction fails
    # (UserError: no model folder), the no-KD training fails (no preprocessed data)
    status = runner.run_all(layout)
    out = capsys.readouterr().out
    assert set(status.values()) == {"failed"} and len(status) == 3
    teacher_log = layout.out / "teacher/run.log"
    assert "[1/3] teacher: FAILED (exit code 2) after" in out and f"log: {teacher_log}" in out
    assert "[2/3] t2 nokd seed 0: FAILED" in out  # the no-KD student does not need the teacher
    assert "[3/3] t2 reco seed 0: FAILED: no teacher" in out  # a KD run does: not started
    assert not (layout.out / "runs/t2/reco/seed0").exists()
    assert f"model folder {teacher} does not exist" in teacher_log.read_text()
    assert len(runner.failures) == 3 and str(teacher_log) in runner.failures[0]
    rows = runner.write_report(layout, status, runner.profile_all(layout, status))
    assert rows == []
    with (layout.out / "runs.csv").open() as f:
        assert list(csv.DictReader(f)) == []
    md = (layout.out / "results.md").read_text()
    assert "## Missing or failed runs" in md and "- t2 reco seed 0: failed" in md


def test_report_dir_takes_the_report_and_leaves_the_main_one(tmp_path: Path) -> None:
    teacher = tmp_path / "results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    subset = tmp_path / "out/more_seeds"
    runner, layout = _setup(tmp_path, teacher=str(teacher), report_dir=subset, print_table=False)
    layout.out.mkdir(parents=True)
    (layout.out / "results.md").write_text("the main report")
    # no finished run (nothing to load): the report lists both as missing
    status = {RunSpec("teacher", None, None): "failed", RunSpec("reco", 2, 0): "failed"}
    assert runner.write_report(layout, status, {}) == []
    assert (layout.out / "results.md").read_text() == "the main report"
    assert not (layout.out / "runs.csv").exists() and not (layout.out / "summary.csv").exists()
    md = (subset / "results.md").read_text()
    assert "- t2 reco seed 0: failed" in md and (subset / "runs.csv").is_file()
    assert (subset / "summary.csv").is_file()
