"""``recokd bench --phantoms --labelled-cases 5 --methods reco,pseudo`` end to end on tiny data (real nnU-Net
preprocessing, training, pseudo-labelling, prediction, evaluation): the teacher trains on all 8 training
cases, no KD and ReCo-KD on the 5 labelled ones (4 training + 1 validation, ReCo-KD with the other 3 as
unlabelled scans), the pseudo-label student on the 4 + the teacher's segmentations of the 3 with the same
validation case; the report has the comparison against it; a second call only resumes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from recokd.cli import main

TINY = (
    "--phantom-cases 8 --phantom-test-cases 2 --phantom-shape 24 --teacher-epochs 1 --epochs 1 "
    "--iters-per-epoch 2 --val-iters 1 --methods reco,pseudo --seeds 1 -t 2 --device cpu --profile-repeats 1 "
    "--no-progress --labelled-cases 5"
).split()
DATASET = "Dataset991_BenchPhantoms"


def _split_sizes(log: Path) -> set[tuple[int, int]]:
    """(training, validation) cases of every split nnU-Net announced in a run's log."""
    found = re.findall(r"This split has (\d+) training and (\d+) validation cases", log.read_text())
    return {(int(a), int(b)) for a, b in found}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_with_unlabelled_cases_and_pseudo_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "--phantoms", "-o", str(out), *TINY]
    assert main(argv) == 0, capsys.readouterr()
    first = capsys.readouterr().out
    assert first.count(": done in ") == 4 and "preprocessing the 3 unlabelled scan(s)" in first

    with (out / "runs.csv").open(newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["teacher", "nokd", "reco", "pseudo"]
    runs = out / "runs/t2"
    assert _split_sizes(out / "teacher/run.log") == {(6, 2)}  # the teacher: all 8 cases, nnU-Net's split
    assert _split_sizes(runs / "nokd/seed0/run.log") == {(4, 1)}
    assert _split_sizes(runs / "reco/seed0/run.log") == {(4, 1)}
    assert "unlabelled:     3 scans from" in (runs / "reco/seed0/run.log").read_text()
    assert _split_sizes(runs / "pseudo/seed0/run.log") == {(7, 1)}

    split = json.loads((out / "labelled/split.json").read_text())
    unlabelled = [f"BenchPhantoms_{i:03d}" for i in (5, 6, 7)]
    assert split["labelled"] == [f"BenchPhantoms_{i:03d}" for i in range(5)]
    assert split["unlabelled"] == unlabelled
    pseudo_splits = json.loads((out / f"pseudo/nnUNet_preprocessed/{DATASET}/splits_final.json").read_text())
    assert pseudo_splits[0] == {"train": sorted(split["train"] + unlabelled), "val": split["val"]}

    # the pseudo-labelled cases carry the teacher's segmentations, the labelled ones their own labels
    pseudo_raw = out / "pseudo/nnUNet_raw" / DATASET
    provenance = json.loads((pseudo_raw / "dataset.json").read_text())["reco_kd_pseudo_labels"]
    assert provenance["pseudo_labelled_cases"] == unlabelled and provenance["mirroring"] is False
    assert provenance["labelled_cases"] == split["labelled"]

    def label(folder: Path, case: str) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz")))

    raw = out / "nnUNet_raw" / DATASET
    assert np.array_equal(label(pseudo_raw, "BenchPhantoms_000"), label(raw, "BenchPhantoms_000"))
    for case in unlabelled:  # the teacher's prediction, not the hidden ground truth (a 1-epoch teacher)
        assert not np.array_equal(label(pseudo_raw, case), label(raw, case))

    md = (out / "results.md").read_text()
    assert "## Against the pseudo-label student" in md and "| pseudo-labels | 2 | 1 |" in md
    assert "labelled cases (--labelled-cases 5): the teacher trained on all 8 training cases" in md
    with (out / "summary.csv").open(newline="") as f:
        summary = {r["method"]: r for r in csv.DictReader(f)}
    assert summary["reco"]["n_pairs_vs_pseudo"] == "2" and summary["pseudo"]["n_pairs"] == "2"
    # every student scored against the teacher's segmentations by its worker (not the teacher itself)
    assert not (out / "teacher/agreement").exists()
    for method in ("nokd", "reco", "pseudo"):
        agreed = json.loads((runs / method / "seed0/agreement/summary.json").read_text())
        assert agreed["num_cases"] == 2 and float(summary[method]["agreement_dice_mean"]) >= 0, method
        assert "agreement with the teacher" in (runs / method / "seed0/run.log").read_text(), method
    assert "## Agreement with the teacher on the test scans (labels unused)" in md

    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("skip (done)") == 4 and "preprocessing the" not in again
