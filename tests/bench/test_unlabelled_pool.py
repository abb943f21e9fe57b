"""``recokd bench --labelled-cases K`` with ``--unlabelled-images DIR``, ``--unlabelled-cases U`` and
``--pseudo-label-loss``: the unlabelled pool (the dataset's unlabelled cases, then the extra scans), the
students' scans folder and the pseudo-label splits built from it, the KD runs' arguments, the study's
checks and the command line's one-line refusals before anything is written (no nnU-Net run needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recokd.bench.cli import build_study
from recokd.bench.config import (
    CONFIG_FILE,
    PSEUDO,
    TEACHER,
    RunSpec,
    Selection,
    Study,
    check_or_write_config,
    plan_runs,
)
from recokd.bench.labelled import (
    SPLIT_RECORD,
    LabelledSplit,
    extra_scans,
    student_splits,
    unlabelled_pool,
    write_labelled_views,
)
from recokd.bench.runner import BenchRunner, Layout
from recokd.cli import build_parser, main
from recokd.errors import UserError
from tests.bench.test_cli import TINY
from tests.bench.test_labelled_split import (
    DATASET,
    LABELLED,
    TEACHER_MODEL,
    UNLABELLED,
    K,
    _preprocessed,
    _raw,
)

EXTRA = ["x2", "x0", "x1"]


def _extra(tmp_path: Path, ids: list[str] = EXTRA, channels: int = 2, name: str = "extra") -> Path:
    """A folder of extra scans of ``channels`` channels whose files hold their own names."""
    folder = tmp_path / name
    folder.mkdir()
    for case in ids:
        for c in range(channels):
            (folder / f"{case}_{c:04d}.nii.gz").write_text(f"{case} extra {c}")
    return folder


def test_the_pool_is_the_dataset_cases_then_the_extra_scans() -> None:
    assert unlabelled_pool(["u1", "u0"], ["x1", "x0"], None) == (["u0", "u1"], ["x0", "x1"])
    assert unlabelled_pool(["u1", "u0"], ["x1", "x0"], 1) == (["u0"], [])
    assert unlabelled_pool(["u1", "u0"], ["x1", "x0"], 2) == (["u0", "u1"], [])
    assert unlabelled_pool(["u1", "u0"], ["x1", "x0"], 3) == (["u0", "u1"], ["x0"])
    assert unlabelled_pool(["u1", "u0"], ["x1", "x0"], 4) == (["u0", "u1"], ["x0", "x1"])
    with pytest.raises(UserError, match=r"--unlabelled-cases 5: the unlabelled pool has 4 scan\(s\)"):
        unlabelled_pool(["u1", "u0"], ["x1", "x0"], 5)


def test_extra_scans_must_fit_the_dataset(tmp_path: Path) -> None:
    dataset_json = {"channel_names": {"0": "CT", "1": "PET"}, "file_ending": ".nii.gz"}
    assert list(extra_scans(_extra(tmp_path), dataset_json, LABELLED + UNLABELLED)) == sorted(EXTRA)
    clash = _extra(tmp_path, ["x0", "a5"], name="clash")
    with pytest.raises(UserError, match=r"case id\(s\) a5 are training cases of the bench dataset"):
        extra_scans(clash, dataset_json, LABELLED + UNLABELLED)
    one = _extra(tmp_path, channels=1, name="one")
    with pytest.raises(UserError,
                       match=r"--unlabelled-images \(the bench dataset's 2 channel\(s\).* x0 has 1"):
        extra_scans(one, dataset_json, LABELLED + UNLABELLED)


def test_the_scans_folder_holds_the_pool(tmp_path: Path) -> None:
    raw, pre, out = _raw(tmp_path), _preprocessed(tmp_path), tmp_path / "out"
    extra = _extra(tmp_path)
    split = LabelledSplit(out, DATASET, LABELLED, UNLABELLED[:2], ["x0"], extra, len(LABELLED + UNLABELLED))
    assert split.pool == ["a4b", "a5", "x0"] and split.training_cases == 9
    write_labelled_views(split, raw, pre, "0")
    scans = sorted(p.name for p in split.scans.iterdir())
    assert scans == sorted(f"{c}_{i:04d}.nii.gz" for c in ("a4b", "a5", "x0") for i in range(2))
    assert (split.scans / "x0_0001.nii.gz").read_text() == "x0 extra 1"
    assert (split.scans / "a5_0000.nii.gz").read_text() == "a5 image 0"
    record = json.loads((split.root / SPLIT_RECORD).read_text())
    assert record["unlabelled"] == ["a4b", "a5"] and record["unlabelled_images"] == ["x0"]
    assert record["unlabelled_images_folder"] == str(extra)


def _runner(tmp_path: Path, **study: object) -> tuple[BenchRunner, Layout]:
    s = Study(dataset=DATASET, phantoms=None, teacher=TEACHER_MODEL, teacher_epochs=None, epochs=2,
              labelled_cases=K, unlabelled_share=0.5, **study)  # type: ignore[arg-type]
    out = tmp_path / "out"
    runner = BenchRunner(out, s, Selection(["reco", PSEUDO], [2], [0]), device="cpu", progress=False)
    layout = Layout(out, DATASET, tmp_path / "raw", tmp_path / "pre", tmp_path / "imagesTs",
                    tmp_path / "labelsTs", Path(TEACHER_MODEL), {2: "nnUNetPlans_recokd_t2"})
    return runner, layout


def test_the_runs_get_the_pool(tmp_path: Path) -> None:
    _raw(tmp_path)
    extra = _extra(tmp_path)
    runner, layout = _runner(tmp_path, unlabelled_images=str(extra), unlabelled_cases=6,
                             pseudo_label_loss=True)
    layout.split = split = runner.split_of(layout, K)
    assert (split.unlabelled, split.extra, split.training_cases) == (UNLABELLED, ["x0", "x1"], 9)
    job, _ = runner.run_job(layout, RunSpec(PSEUDO, 2, 0))
    for fold, labelled in zip(job["pseudo"]["splits"], student_splits(LABELLED), strict=True):
        assert fold["train"] == sorted(labelled["train"] + UNLABELLED + ["x0", "x1"])
    argv = runner.run_job(layout, RunSpec("reco", 2, 0))[0]["train"]["argv"]
    assert "--pseudo-label-loss" in argv and argv[argv.index("--unlabelled") + 1] == str(split.scans)
    line = runner.split_line(split, str)
    assert "unlabelled scans: 4 of the other 4 training cases + 2 extra scan(s) of --unlabelled-images" \
        in line
    assert "6 in all, the first 6 of the pool (--unlabelled-cases" in line and "--pseudo-label-loss" in line

    runner, layout = _runner(tmp_path, unlabelled_cases=2)  # fewer than the dataset's unlabelled cases
    split = runner.split_of(layout, K)
    assert (split.unlabelled, split.extra, split.training_cases) == (["a4b", "a5"], [], 9)
    assert "--pseudo-label-loss" not in runner.run_job(layout, RunSpec("reco", 2, 0))[0]["train"]["argv"]
    assert "unlabelled scans: 2 of the other 4 training cases, 2 in all" in runner.split_line(split, str)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unlabelled_images": "/x"}, "--unlabelled-images applies with --labelled-cases K only"),
        ({"unlabelled_cases": 3}, "--unlabelled-cases applies with --labelled-cases K only"),
        ({"pseudo_label_loss": True, "unlabelled_cases": 3},
         "--unlabelled-cases, --pseudo-label-loss apply with --labelled-cases K only"),
        ({"labelled_cases": 6, "unlabelled_share": 0.5, "unlabelled_cases": 0},
         "--unlabelled-cases must be >= 1"),
    ],
)
def test_study_checks_the_pool_options(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Study(dataset=DATASET, phantoms={"cases": 12}, **options).validate()


def _labelled_study(**kw: object) -> Study:
    return Study(dataset=DATASET, phantoms={"cases": 12}, labelled_cases=6, unlabelled_share=0.5,
                 **kw)  # type: ignore[arg-type]


def test_the_pool_is_part_of_the_study(tmp_path: Path) -> None:
    """An older bench resumes (no extra scans, the whole pool, no pseudo-label loss); other values are
    refused."""
    out = tmp_path / "bench"
    assert check_or_write_config(out, _labelled_study(), Selection(["reco"], [2], [0])) is False
    saved = json.loads((out / CONFIG_FILE).read_text())
    for key in ("unlabelled_images", "unlabelled_cases", "pseudo_label_loss"):
        del saved["study"][key]
    (out / CONFIG_FILE).write_text(json.dumps(saved))
    assert check_or_write_config(out, _labelled_study(), Selection(["reco"], [2], [1])) is True
    for key, value, saved_value in (("unlabelled_images", "/x", "None"), ("unlabelled_cases", 3, "None"),
                                    ("pseudo_label_loss", True, "False")):
        with pytest.raises(UserError, match=f"{key}: saved {saved_value}, now"):
            check_or_write_config(out, _labelled_study(**{key: value}), Selection(["reco"], [2], [0]))


def test_command_line_builds_the_pool(tmp_path: Path) -> None:
    extra = _extra(tmp_path, ["y0", "y1"], channels=1)
    args = build_parser().parse_args(
        ["bench", *TINY, "-o", "/nonexistent/b", "--labelled-cases", "5", "--unlabelled-images", str(extra),
         "--unlabelled-cases", "3", "--pseudo-label-loss"]
    )
    study = build_study(args)
    assert (study.unlabelled_images, study.unlabelled_cases, study.pseudo_label_loss) == (str(extra), 3, True)


def test_command_line_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "b"
    good = _extra(tmp_path, ["y0", "y1"], channels=1)

    def err(*extra: str) -> str:
        assert main(["bench", *TINY, "-o", str(out), *extra]) == 2
        text = capsys.readouterr().err
        assert len(text.strip().splitlines()) == 1, text
        return text

    assert "--unlabelled-images applies with --labelled-cases K only" in err("--unlabelled-images", str(good))
    assert "--pseudo-label-loss applies with" in err("--pseudo-label-loss")
    # TINY: 6 phantom training cases, 5 labelled: a pool of 1 + 2 extra scans
    assert "--unlabelled-cases 4: the unlabelled pool has 3 scan(s)" in err(
        "--labelled-cases", "5", "--unlabelled-images", str(good), "--unlabelled-cases", "4")
    assert "the unlabelled pool has 1 scan(s)" in err("--labelled-cases", "5", "--unlabelled-cases", "2")
    clash = _extra(tmp_path, ["BenchPhantoms_004"], channels=1, name="clash")
    assert "BenchPhantoms_004 are training cases of the bench dataset" in err(
        "--labelled-cases", "5", "--unlabelled-images", str(clash))
    two = _extra(tmp_path, ["y0"], channels=2, name="two")
    assert "the bench dataset's 1 channel(s), file ending .nii.gz): " in err(
        "--labelled-cases", "5", "--unlabelled-images", str(two))
    assert "does not exist" in err("--labelled-cases", "5", "--unlabelled-images", str(tmp_path / "none"))
    assert not out.exists()


# ---------------------------------------------------------------------------- label-free students (K = 0)


def test_label_free_students_train_on_the_pseudo_label_dataset(tmp_path: Path) -> None:
    raw, pre = _raw(tmp_path), _preprocessed(tmp_path)
    extra = _extra(tmp_path)
    runner, layout = _runner(tmp_path, unlabelled_images=str(extra), pseudo_label_loss=True)
    runner.study.labelled_cases, runner.study.unlabelled_share, runner.study.warmup = 0, None, 0.0
    runner.study.validate()
    layout.split = split = runner.split_of(layout, 0)
    pool = sorted(LABELLED + UNLABELLED) + sorted(EXTRA)
    assert split.label_free and split.labelled == [] and split.pool == pool
    assert split.splits() == student_splits(pool) == split.pseudo_splits()
    write_labelled_views(split, raw, pre, "0")
    assert len(list(split.scans.iterdir())) == 2 * len(pool)
    assert not split.preprocessed_root.exists()  # nobody trains on the labelled view

    pseudo_roots = (str(split.pseudo_raw_root), str(split.pseudo_preprocessed_root))
    for method in (PSEUDO, "reco"):
        job, env = runner.run_job(layout, RunSpec(method, 2, 0))
        assert (env["nnUNet_raw"], env["nnUNet_preprocessed"]) == pseudo_roots, method
        assert job["pseudo"]["labelled"] is None and job["pseudo"]["splits"] == student_splits(pool)
    argv = runner.run_job(layout, RunSpec("reco", 2, 0))[0]["train"]["argv"]
    assert "--label-free" in argv and "--pseudo-label-loss" in argv
    assert "--unlabelled" not in argv and "--unlabelled-share" not in argv
    assert [r.method for r in plan_runs(runner.selection, nokd=False)] == [TEACHER, "reco", PSEUDO]
    line = runner.split_line(split, str)
    assert line.startswith("label-free students (--labelled-cases 0): the teacher trained on all 9 training")
    assert "There is no 'nokd' student (no label to train it on)" in line and "--pseudo-label-loss" in line
    assert "unlabelled scans: 9 of the 9 training cases + 3 extra scan(s)" in line


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unlabelled_share": None}, "needs --kd-weight > 0 and a KD weight from the first step"),
        ({"unlabelled_share": None, "warmup": 0.0, "kd_weight": 0.0}, "needs --kd-weight > 0"),
        ({"unlabelled_share": 0.5, "warmup": 0.0}, "--unlabelled-share does not apply with"),
        ({"unlabelled_share": None, "warmup": 0.0, "fold": "all"}, "needs a numbered fold"),
    ],
)
def test_study_checks_label_free_students(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Study(dataset=DATASET, phantoms={"cases": 12}, labelled_cases=0, **options).validate()
    Study(dataset=DATASET, phantoms={"cases": 12}, labelled_cases=0, schedule="constant").validate()


def test_command_line_label_free(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = build_study(build_parser().parse_args(
        ["bench", *TINY, "-o", "/nonexistent/b", "--labelled-cases", "0", "--warmup", "0"]))
    assert (study.labelled_cases, study.unlabelled_share, study.label_free) == (0, None, True)
    out = tmp_path / "b"

    def err(*extra: str) -> str:
        assert main(["bench", *TINY, "-o", str(out), "--labelled-cases", "0", *extra]) == 2
        text = capsys.readouterr().err
        assert len(text.strip().splitlines()) == 1, text
        return text

    assert "a KD weight from the first step: --warmup 0" in err()
    assert "label-free students need 5" in err("--warmup", "0", "--unlabelled-cases", "4")
    assert "does not apply with --labelled-cases 0" in err("--warmup", "0", "--unlabelled-share", "0.5")
    assert not out.exists()


def test_the_report_without_a_no_kd_student() -> None:
    """Label-free benches have no ``nokd`` runs: every method is compared with ``pseudo`` only."""
    from recokd.bench.report import results_markdown, summarize
    from tests.bench.test_report import _run
    from tests.bench.test_report_pseudo import _runs_of

    runs = [_run("teacher", 0, {c: (0.95, 0.8) for c in ("c1", "c2", "c3", "c4")}),
            *_runs_of("pseudo", 0.7, (0.01, 0.0, 0.03, 0.02)),
            *_runs_of("reco", 0.75, (0.02, 0.03, 0.0, 0.05))]
    rows = {r.method: r for r in summarize(runs, ["reco", "pseudo"], [2])}
    assert "nokd" not in rows and rows["reco"].test is None
    assert rows["reco"].vs_pseudo is not None and rows["reco"].vs_pseudo.n_pairs == 12
    md = results_markdown(list(rows.values()), title="t", setup=["x"], small_classes=[], missing=[])
    assert "## Against the pseudo-label student" in md
