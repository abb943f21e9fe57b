"""The statistics of a bench table (the conventions are :mod:`recokd.bench.report`'s docstring and each
``results.md``): mean and sample sd over seeds, the paired Wilcoxon test against the no-KD student over
(seed, test case) pairs, Holm's correction, and the share of the teacher - no-KD gap recovered."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: the teacher must beat the no-KD student by more than this for a gap to be recovered
GAP_EPS = 1e-9


class PairedRun(Protocol):
    """What the paired test reads of a run (:class:`recokd.bench.report.RunResult`)."""

    seed: int | None
    case_dice: dict[str, float]  #: test case -> mean Dice over foreground classes


@dataclass(frozen=True)
class Stat:
    """Mean and sample sd (n-1) over ``n`` values (:func:`mean_sd`)."""

    mean: float | None
    sd: float | None
    n: int


@dataclass(frozen=True)
class PairedTest:
    """A paired test of a method against a baseline, the no-KD student or the pseudo-label student
    (:func:`paired_test`)."""

    n_pairs: int
    mean_difference: float | None  #: mean of (method - baseline) over the pairs
    statistic: float | None
    p_value: float | None
    note: str = ""



def mean_sd(values: Sequence[float | None]) -> Stat:
    """Mean and sample sd (n-1; None below 2 values) of the values that are not None/NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(kept)
    if n == 0:
        return Stat(None, None, 0)
    mean = sum(kept) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n >= 2 else None
    return Stat(mean, sd, n)


def paired_pairs(
    method_runs: Sequence[PairedRun], nokd_runs: Sequence[PairedRun]
) -> list[tuple[float, float]]:
    """(method, nokd) case mean Dice per (seed, case) present in both, ordered by seed then case."""
    baseline = {r.seed: r for r in nokd_runs}
    pairs = []
    for run in sorted(method_runs, key=lambda r: (r.seed is None, r.seed)):
        base = baseline.get(run.seed)
        if base is None:
            continue
        for case in sorted(run.case_dice):
            if case in base.case_dice:
                pairs.append((run.case_dice[case], base.case_dice[case]))
    return pairs


def paired_test(
    method_runs: Sequence[PairedRun], nokd_runs: Sequence[PairedRun], baseline: str = "the no-KD student"
) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of the (seed, case) pairs against the no-KD student (or the
    runs of another ``baseline``, named in the note of a test without pairs)."""
    pairs = paired_pairs(method_runs, nokd_runs)
    if not pairs:
        return PairedTest(0, None, None, None, f"no (seed, case) pairs with {baseline}")
    diffs = [a - b for a, b in pairs]
    delta = sum(diffs) / len(diffs)
    if all(d == 0 for d in diffs):
        return PairedTest(len(pairs), delta, None, None, "all paired differences are zero")
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample notes
        res = wilcoxon([a for a, _ in pairs], [b for _, b in pairs], alternative="two-sided")
    return PairedTest(len(pairs), delta, float(res.statistic), float(res.pvalue))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None entries are not tests and stay None)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(order)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def gap_recovered(method: float | None, nokd: float | None, teacher: float | None) -> float | None:
    """``(method - nokd) / (teacher - nokd)``; None when a value is missing or the teacher is not better."""
    if method is None or nokd is None or teacher is None or teacher - nokd <= GAP_EPS:
        return None
    return (method - nokd) / (teacher - nokd)
