"""A student's agreement with its teacher on the test scans, their labels unused: the student's segmentation
scored against the teacher's, per class and case, with the conventions of the test Dice
(:func:`recokd.evaluation.evaluate.evaluate_folders`). It is what a clinic can measure on its own
unlabelled scans, and how faithfully a student distilled from unlabelled scans copies its teacher
(issue 27). A run's worker writes it to ``<run>/agreement/`` after scoring the run; a bench writes it
before its report for runs that finished without it (their predictions and the teacher's still on disk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

#: the folder of a run that holds its agreement with the teacher (``summary.json``, ``per_case.csv``)
AGREEMENT_DIR = "agreement"


def write_agreement(
    predictions: str | Path,
    teacher_predictions: str | Path,
    out_dir: str | Path,
    *,
    dataset_json: str | Path | None = None,
    class_groups: Mapping[str, Sequence[str]] | None = None,
) -> float | None:
    """Score the segmentations in ``predictions`` against the teacher's of the same cases (the teacher's
    take the place of the labels), write ``summary.json`` and ``per_case.csv`` to ``out_dir`` and return
    the mean Dice over foreground classes (of the per-class means over cases)."""
    from recokd.evaluation.evaluate import evaluate_folders

    result = evaluate_folders(
        predictions, teacher_predictions, dataset_json=dataset_json, class_groups=class_groups,
        out_dir=out_dir, overwrite=True,
    )
    return result.summary()["foreground_mean"]["dice"]
