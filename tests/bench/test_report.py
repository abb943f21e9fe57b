"""Aggregation of bench runs: mean/sd over seeds, the paired test, Holm, gap recovered, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import wilcoxon

from recokd.bench.report import (
    RunResult,
    load_run_result,
    main_table,
    results_markdown,
    runs_csv,
    summarize,
    summary_csv,
)
from recokd.bench.stats import Stat, gap_recovered, holm, mean_sd, paired_pairs, paired_test

CLASSES = ("organ", "vessel")


def _run(
    method: str,
    seed: int | None,
    cases: dict[str, tuple[float, float]],
    t: int | None = 2,
    hd95: float | None = 3.0,
) -> RunResult:
    """A run whose per-case Dice of (organ, vessel) are ``cases``; summaries computed as evaluate does."""
    class_dice = {c: float(np.mean([v[i] for v in cases.values()])) for i, c in enumerate(CLASSES)}
    return RunResult(
        method=method,
        t=None if method == "teacher" else t,
        seed=seed,
        mean_dice=float(np.mean(list(class_dice.values()))),
        small_dice=class_dice["vessel"],
        hd95_mm=hd95,
        class_dice=class_dice,
        case_dice={k: (a + b) / 2 for k, (a, b) in cases.items()},
        small_classes=["vessel"],
        wall_s=1.0,
        device="cpu",
        folder=f"/x/{method}/{seed}",
    )


@pytest.fixture
def runs() -> list[RunResult]:
    return [
        _run("teacher", 0, {"c1": (0.9, 0.7), "c2": (0.8, 0.6), "c3": (0.85, 0.65)}),
        _run("nokd", 0, {"c1": (0.8, 0.3), "c2": (0.7, 0.2), "c3": (0.75, 0.25)}),
        _run("nokd", 1, {"c1": (0.82, 0.35), "c2": (0.72, 0.1), "c3": (0.7, 0.3)}),
        _run("reco", 0, {"c1": (0.85, 0.5), "c2": (0.74, 0.4), "c3": (0.8, 0.42)}),
        _run("reco", 1, {"c1": (0.83, 0.45), "c2": (0.73, 0.2), "c3": (0.79, 0.44)}),
        _run("at", 0, {"c1": (0.8, 0.3), "c2": (0.7, 0.2), "c3": (0.75, 0.25)}),  # = nokd seed 0
    ]


def test_mean_sd_is_sample_sd_over_the_values_present() -> None:
    s = mean_sd([0.5, 0.7, 0.9])
    assert s.n == 3 and s.mean == pytest.approx(0.7) and s.sd == pytest.approx(0.2)
    assert mean_sd([0.4, None, float("nan")]) == Stat(0.4, None, 1)
    assert mean_sd([]) == Stat(None, None, 0)


def test_paired_test_pairs_seed_and_case_and_matches_scipy(runs: list[RunResult]) -> None:
    nokd = [r for r in runs if r.method == "nokd"]
    reco = [r for r in runs if r.method == "reco"]
    # a method seed without a no-KD partner and a case the partner lacks are left out
    reco.append(_run("reco", 7, {"c1": (0.9, 0.9)}))
    del nokd[1].case_dice["c3"]
    pairs = paired_pairs(reco, nokd)
    x = [0.675, 0.57, 0.61, 0.64, 0.465]  # reco seed 0 c1..c3, seed 1 c1, c2
    y = [0.55, 0.45, 0.5, 0.585, 0.41]
    assert [a for a, _ in pairs] == pytest.approx(x) and [b for _, b in pairs] == pytest.approx(y)
    test = paired_test(reco, nokd)
    expected = wilcoxon(x, y, alternative="two-sided")
    assert test.n_pairs == 5
    assert test.mean_difference == pytest.approx(np.mean(np.subtract(x, y)))
    assert test.p_value == pytest.approx(expected.pvalue) and test.statistic == pytest.approx(
        expected.statistic
    )


def test_paired_test_without_pairs_or_differences(runs: list[RunResult]) -> None:
    nokd = [r for r in runs if r.method == "nokd"]
    same = paired_test([r for r in runs if r.method == "at"], nokd)
    assert same.n_pairs == 3 and same.mean_difference == 0 and same.p_value is None
    assert "zero" in same.note
    none = paired_test([_run("reco", 5, {"c1": (1, 1)})], nokd)
    assert none.n_pairs == 0 and none.p_value is None and "no (seed, case) pairs" in none.note


def test_holm_step_down() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.2]) == [pytest.approx(0.5), None, pytest.approx(0.4)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_gap_recovered() -> None:
    assert gap_recovered(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert gap_recovered(0.5, 0.6, 0.8) == pytest.approx(-0.5)
    assert gap_recovered(0.7, 0.6, 0.6) is None  # the teacher is not better: no gap to recover
    assert gap_recovered(None, 0.6, 0.8) is None


def test_summarize_rows_statistics_test_gap_and_profiles(runs: list[RunResult]) -> None:
    profiles = {
        "teacher": {"parameters": 5_600_000, "flops_per_patch": 4e9, "latency_s": 1.5},
        "t2": {"parameters": 350_000, "flops_per_patch": 2.6e8, "latency_s": 0.3},
    }
    rows = summarize(runs, ["reco", "at", "cwd"], [2], profiles)
    assert [(r.method, r.t) for r in rows] == [("teacher", None), ("nokd", 2), ("reco", 2), ("at", 2)]
    teacher, nokd, reco, at = rows
    assert teacher.test is None and nokd.test is None and teacher.parameters == 5_600_000
    nokd_means = [r.mean_dice for r in runs if r.method == "nokd"]
    assert nokd.mean_dice.mean == pytest.approx(np.mean(nokd_means))
    assert nokd.mean_dice.sd == pytest.approx(np.std(nokd_means, ddof=1))
    assert reco.class_dice["vessel"].mean == pytest.approx(
        np.mean([r.class_dice["vessel"] for r in runs if r.method == "reco"])
    )
    assert reco.seeds == [0, 1] and at.seeds == [0] and at.mean_dice.sd is None
    assert reco.gap_dice == pytest.approx(
        (reco.mean_dice.mean - nokd.mean_dice.mean) / (teacher.mean_dice.mean - nokd.mean_dice.mean)
    )
    assert reco.gap_small == pytest.approx(
        (reco.small_dice.mean - nokd.small_dice.mean) / (teacher.small_dice.mean - nokd.small_dice.mean)
    )
    assert reco.test.n_pairs == 6 and at.test.n_pairs == 3
    assert reco.p_holm == pytest.approx(min(1.0, reco.test.p_value))  # the only p-value of t=2
    assert reco.latency_s == 0.3 and reco.flops_per_patch == 2.6e8


def test_csv_and_markdown(runs: list[RunResult]) -> None:
    rows = summarize(
        runs,
        ["reco", "at"],
        [2],
        {"t2": {"parameters": 350_000, "flops_per_patch": 2.6e8, "latency_s": 0.25}},
    )
    per_run = list(csv.DictReader(io.StringIO(runs_csv(runs))))
    assert len(per_run) == len(runs)
    assert per_run[1]["method"] == "nokd" and per_run[1]["seed"] == "0" and per_run[0]["t"] == ""
    assert float(per_run[3]["dice_vessel"]) == pytest.approx(runs[3].class_dice["vessel"])
    assert float(per_run[3]["small_dice"]) == pytest.approx(runs[3].small_dice)
    assert per_run[3]["n_cases"] == "3"

    summ = {r["method"]: r for r in csv.DictReader(io.StringIO(summary_csv(rows)))}
    assert set(summ) == {"teacher", "nokd", "reco", "at"}
    assert summ["reco"]["n_runs"] == "2" and summ["reco"]["seeds"] == "0 1" and summ["reco"]["n_pairs"] == "6"
    assert float(summ["reco"]["mean_dice_sd"]) == pytest.approx(rows[2].mean_dice.sd)
    assert float(summ["reco"]["wilcoxon_p"]) == pytest.approx(rows[2].test.p_value, rel=1e-5)
    assert float(summ["reco"]["gflops_per_patch"]) == pytest.approx(0.26)
    assert summ["at"]["wilcoxon_p"] == "" and summ["nokd"]["delta_dice_vs_nokd"] == ""
    assert float(summ["nokd"]["share_of_teacher_dice"]) == pytest.approx(
        rows[1].mean_dice.mean / rows[0].mean_dice.mean, rel=1e-5)
    assert summ["teacher"]["share_of_teacher_dice"] == ""

    md = results_markdown(
        rows,
        title="t",
        setup=["schedule: 1 x 2"],
        small_classes=["vessel"],
        missing=["t2 cwd seed 0: failed"],
    )
    table = main_table(rows)
    assert table in md and "vessel (small)" in md and "- schedule: 1 x 2" in md and "t2 cwd seed 0" in md
    reco_line = next(line for line in table.splitlines() if line.startswith("| reco |"))
    cells = [c.strip() for c in reco_line.strip("|").split("|")]
    assert cells[:3] == ["reco", "2", "2"]
    assert cells[3] == f"{rows[2].mean_dice.mean:.3f} ± {rows[2].mean_dice.sd:.3f}"
    assert cells[4] == f"{rows[2].mean_dice.mean / rows[0].mean_dice.mean:.2f}"  # ÷ teacher
    assert cells[7] == f"{rows[2].test.mean_difference:+.3f}" and cells[10] == "6"
    assert cells[13:] == ["0.35M", "0.26", "0.250"]
    assert "| no KD | 2 | 2 |" in table and "| teacher |  | 1 |" in table
    assert "Wilcoxon" in md and "Holm" in md and "sample sd" in md


def _write_nifti(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def test_load_run_result_reads_what_the_worker_writes(tmp_path: Path) -> None:
    """A real evaluation (evaluate_folders) of two cases read back: per-class, per-case, small group."""
    from recokd.evaluation.evaluate import evaluate_folders

    gt_dir, pred_dir, run = tmp_path / "gt", tmp_path / "pred", tmp_path / "run"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for i, shift in enumerate((0, 2)):
        gt = np.zeros((8, 16, 16), np.uint8)
        gt[2:6, 2:12, 2:12] = 1
        gt[3:5, 13:15, 13:15] = 2
        pred = np.roll(gt, shift, axis=2)
        _write_nifti(gt, gt_dir / f"case{i}.nii.gz")
        _write_nifti(pred, pred_dir / f"case{i}.nii.gz")
    result = evaluate_folders(
        pred_dir,
        gt_dir,
        labels={"organ": 1, "dot": 2},
        class_groups={"small": ["dot"]},
        out_dir=run / "evaluation",
    )
    (run / "result.json").write_text(
        json.dumps(
            {
                "method": "reco",
                "t": 2,
                "seed": 1,
                "wall_s": 3.5,
                "device": "cpu",
                "evaluation": str(run / "evaluation"),
            }
        )
    )
    loaded = load_run_result(run)
    summary = result.summary()
    assert (loaded.method, loaded.t, loaded.seed, loaded.wall_s) == ("reco", 2, 1, 3.5)
    assert loaded.mean_dice == pytest.approx(summary["foreground_mean"]["dice"])
    assert loaded.small_dice == pytest.approx(summary["per_class"]["dot"]["dice"]["mean"])
    assert loaded.small_classes == ["dot"]
    assert loaded.class_dice == pytest.approx(
        {c: summary["per_class"][c]["dice"]["mean"] for c in ("organ", "dot")}
    )
    for case in ("case0", "case1"):
        expected = np.mean([result.per_case[case][c].dice for c in ("organ", "dot")])
        assert loaded.case_dice[case] == pytest.approx(expected)
    assert loaded.case_dice["case0"] == 1.0 and loaded.case_dice["case1"] < 1.0
    assert math.isclose(np.mean(list(loaded.case_dice.values())), loaded.mean_dice)


def _finished_run(folder: Path, method: str, t: int | None, seed: int | None, dice: float = 0.8) -> None:
    """The files of a finished bench run: result.json and the evaluation's summary.json/per_case.csv (mean
    Dice ``dice``: every class at it, one case whose organ / vessel are 0.1 above / below it)."""
    evaluation = folder / "evaluation"
    evaluation.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"method": method, "t": t, "seed": seed, "device": "cpu",
                                                    "wall_s": 1.0, "evaluation": str(evaluation)}))
    summary = {"foreground_mean": {"dice": dice, "hd95_mm": 2.0},
               "per_class": {c: {"dice": dice} for c in CLASSES}}
    (evaluation / "summary.json").write_text(json.dumps(summary))
    (evaluation / "per_case.csv").write_text(
        f"case,class,dice\nc1,organ,{dice + 0.1:.6g}\nc1,vessel,{dice - 0.1:.6g}\n")


@pytest.mark.parametrize("report_dir", [None, "more-seeds"])
def test_reports_show_paths_relative_to_their_folder(tmp_path: Path, report_dir: str | None) -> None:
    """No absolute path in results.md or runs.csv (committed reports must not name the machine they
    were made on); every path shown resolves from the report's folder to the real file."""
    from recokd.bench.config import RunSpec, Selection, Study
    from recokd.bench.runner import BenchRunner, Layout

    data = tmp_path / "data"
    teacher = data / "nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    study = Study(dataset="Dataset004_Hippocampus", phantoms=None, teacher=str(teacher), epochs=2,
                  iters_per_epoch=3, val_iters=1, kd_weight=0.01)
    out = tmp_path / "bench"
    reports = out / report_dir if report_dir else out
    runner = BenchRunner(out, study, Selection(["reco"], [2], [0]), progress=False, print_table=False,
                         report_dir=reports if report_dir else None, echo=lambda _: None)
    raw = data / "nnUNet_raw/Dataset004_Hippocampus"
    layout = Layout(out, study.dataset, data / "nnUNet_raw", data / "nnUNet_preprocessed", raw / "imagesTs",
                    raw / "labelsTs", teacher, {2: "nnUNetPlans_recokd_t2"})
    specs = [RunSpec("teacher", None, None), RunSpec("nokd", 2, 0), RunSpec("reco", 2, 0)]
    for spec in specs:
        _finished_run(spec.folder(out), spec.method, spec.t, spec.seed)
    case = layout.test_images / "hippocampus_001_0000.nii.gz"
    profile = {"label": "t2", "parameters": 1, "flops_per_patch": 1, "latency_s": 0.1,
               "profile": {"threads": 2, "volume_shape": [8, 8, 8], "volume_source": f"case: {case}"},
               "settings": {"repeats": 3}, "environment": {"platform": "x86_64"}}
    runner.write_report(layout, {s: "done" for s in specs}, {"t2": profile})

    md = (reports / "results.md").read_text()
    rows = list(csv.DictReader((reports / "runs.csv").open()))
    assert str(tmp_path) not in md and str(tmp_path) not in (reports / "runs.csv").read_text()
    up = "../" if report_dir else ""
    assert f"({up}../data/nnUNet_raw/Dataset004_Hippocampus)" in md
    assert f"teacher: existing model {up}../data/nnUNet_results/Dataset004_Hippocampus/" in md
    assert f"case: {up}../data/nnUNet_raw/Dataset004_Hippocampus/imagesTs/hippocampus_001_0000.nii.gz" in md
    assert "paths: relative to the folder of this report" in md
    assert [r["folder"] for r in rows] == [f"{up}{f}" for f in ("teacher", "runs/t2/nokd/seed0",
                                                                 "runs/t2/reco/seed0")]
    assert all((reports / r["folder"] / "result.json").is_file() for r in rows)
