"""A student's agreement with its teacher (recokd.bench.agreement): its segmentations of the test scans scored
against the teacher's, labels unused. Checked against Dice computed here with numpy; a bench writes it before
its report for finished students that lack it (not for the teacher), and the report shows and tabulates it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from recokd.bench.agreement import AGREEMENT_DIR, write_agreement
from recokd.bench.config import RunSpec, Selection, Study
from recokd.bench.report import load_run_result
from recokd.bench.runner import BenchRunner, Layout
from tests.bench.test_report import _write_nifti

LABELS = {"background": 0, "organ": 1, "dot": 2}


def _teacher_and_student(teacher_dir: Path, student_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Two cases: the student copies the teacher in the first, is shifted by 2 voxels in the second."""
    cases = {}
    teacher_dir.mkdir(parents=True, exist_ok=True)
    student_dir.mkdir(parents=True, exist_ok=True)
    for i, shift in enumerate((0, 2)):
        teacher = np.zeros((8, 16, 16), np.uint8)
        teacher[2:6, 2:12, 2:12] = 1
        teacher[3:5, 13:15, 13:15] = 2
        student = np.roll(teacher, shift, axis=2)
        _write_nifti(teacher, teacher_dir / f"case{i}.nii.gz")
        _write_nifti(student, student_dir / f"case{i}.nii.gz")
        cases[f"case{i}"] = {"teacher": teacher, "student": student}
    return cases


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _reference(cases: dict[str, dict[str, np.ndarray]]) -> tuple[float, float]:
    """Mean over classes of the per-class mean over cases, and the small group's (the dot)."""
    per_class = {c: np.mean([_dice(v["student"] == value, v["teacher"] == value) for v in cases.values()])
                 for c, value in LABELS.items() if value}
    return float(np.mean(list(per_class.values()))), float(per_class["dot"])


def test_agreement_is_the_dice_against_the_teachers_segmentations(tmp_path: Path) -> None:
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    cases = _teacher_and_student(tmp_path / "teacher", tmp_path / "student")
    mean, small = _reference(cases)
    assert (mean, small) == pytest.approx((0.7, 0.5))  # organ (1 + 0.8) / 2, dot (1 + 0) / 2
    got = write_agreement(tmp_path / "student", tmp_path / "teacher", tmp_path / "out",
                          dataset_json=dataset_json, class_groups={"small": ["dot"]})
    assert got == pytest.approx(mean)
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["groups"]["small"]["dice"] == pytest.approx(small)
    itself = write_agreement(tmp_path / "teacher", tmp_path / "teacher", tmp_path / "self")
    assert itself == pytest.approx(1.0)


def _finished_run(folder: Path, method: str, t: int | None, seed: int | None) -> None:
    evaluation = folder / "evaluation"
    evaluation.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"method": method, "t": t, "seed": seed, "device": "cpu",
                                                    "wall_s": 1.0, "evaluation": str(evaluation)}))
    per_class = {c: {"dice": 0.8} for c in ("organ", "dot")}
    (evaluation / "summary.json").write_text(json.dumps({
        "foreground_mean": {"dice": 0.8, "hd95_mm": 2.0}, "per_class": per_class}))
    (evaluation / "per_case.csv").write_text("case,class,dice\ncase0,organ,0.9\ncase0,dot,0.7\n")


def test_a_bench_measures_the_agreement_of_runs_finished_without_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    raw = data / "nnUNet_raw/Dataset004_Hippocampus"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    teacher = data / "nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"
    study = Study(dataset="Dataset004_Hippocampus", phantoms=None, teacher=str(teacher), epochs=2,
                  iters_per_epoch=3, val_iters=1, kd_weight=0.01, small_classes=["dot"])
    out = tmp_path / "bench"
    runner = BenchRunner(out, study, Selection(["reco"], [2], [0]), progress=False, print_table=False,
                         echo=lambda _: None)
    layout = Layout(out, study.dataset, data / "nnUNet_raw", data / "nnUNet_preprocessed", raw / "imagesTs",
                    raw / "labelsTs", teacher, {2: "nnUNetPlans_recokd_t2"})
    # reco seed 1: finished where its segmentations are not kept (a run committed from another machine)
    specs = [RunSpec("teacher", None, None), RunSpec("nokd", 2, 0), RunSpec("reco", 2, 0),
             RunSpec("reco", 2, 1)]
    for spec in specs:
        _finished_run(spec.folder(out), spec.method, spec.t, spec.seed)
    teacher_predictions = RunSpec("teacher", None, None).folder(out) / "predictions"
    cases = _teacher_and_student(teacher_predictions, RunSpec("reco", 2, 0).folder(out) / "predictions")
    _teacher_and_student(teacher_predictions, RunSpec("nokd", 2, 0).folder(out) / "predictions")
    runner.write_report(layout, {s: "done" for s in specs}, {})

    assert not (RunSpec("teacher", None, None).folder(out) / AGREEMENT_DIR).exists()
    mean, small = _reference(cases)
    loaded = load_run_result(RunSpec("reco", 2, 0).folder(out))
    assert (loaded.agreement_dice, loaded.agreement_small) == pytest.approx((mean, small))
    rows = {(r["method"], r["seed"]): r for r in csv.DictReader((out / "runs.csv").open())}
    assert rows["teacher", ""]["agreement_dice"] == rows["reco", "1"]["agreement_dice"] == ""
    assert float(rows["reco", "0"]["agreement_dice"]) == pytest.approx(mean)
    md = (out / "results.md").read_text()
    assert "## Agreement with the teacher on the test scans (labels unused)" in md
    assert "| reco | 2 | 1 of 2 | 0.700 | 0.500 | 0.800 ± 0.000 |" in md
    assert "**Dice vs teacher** (agreement)" in md
    assert "| no KD | 2 | 1 | " in md  # every run of it measured
