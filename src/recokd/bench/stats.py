"""The statistics of a bench table (the conventions are :mod:`recokd.bench.report`'s docstring and each
``results.md``): mean and sample sd over seeds, the paired Wilcoxon test against the no-KD student over
(seed, test case) pairs, the seed-level paired permutation test, Holm's correction, and the share of the
teacher - no-KD gap recovered."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: the teacher must beat the no-KD student by more than this for a gap to be recovered
GAP_EPS = 1e-9
#: :func:`seed_test` enumerates every sign flip up to this many seeds
EXACT_SEED_TEST_MAX = 16


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


@dataclass(frozen=True)
class SeedTest:
    """A method against a baseline seed by seed (:func:`seed_test`)."""

    n_seeds: int  #: seeds with a run of both
    better: int  #: seeds at which the method's run beats the baseline's
    mean_difference: float | None  #: mean over those seeds of (method - baseline) mean Dice
    p_value: float | None


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


def seed_test(
    method: Mapping[int | None, float | None], baseline: Mapping[int | None, float | None]
) -> SeedTest:
    """The runs of a method against those of a baseline, one pair per seed present in both (seed ->
    the run's mean Dice): how many seeds the method wins, and the exact two-sided paired permutation
    test of the mean difference (every sign flip of the per-seed differences,
    ``scipy.stats.permutation_test``). The seed is the unit that is independent: one run's test cases
    share its weights, so a class a run learns or misses moves all of them. With n seeds p cannot go
    below 2 / 2^n (0.0625 at 5 seeds); p is None below 2 seeds or without a non-zero difference. Above
    :data:`EXACT_SEED_TEST_MAX` seeds, 2^that random sign flips (seeded) stand in for all of them."""
    diffs = []
    for seed, value in method.items():
        base = baseline.get(seed)
        if value is None or base is None or math.isnan(value) or math.isnan(base):
            continue
        diffs.append(value - base)
    if not diffs:
        return SeedTest(0, 0, None, None)
    better = sum(d > 0 for d in diffs)
    delta = sum(diffs) / len(diffs)
    if len(diffs) < 2 or all(d == 0 for d in diffs):
        return SeedTest(len(diffs), better, delta, None)
    import numpy as np
    from scipy.stats import permutation_test

    if len(diffs) <= EXACT_SEED_TEST_MAX:
        sampling: dict[str, Any] = {"n_resamples": np.inf}
    else:  # scipy >= 1.15 names the generator rng, older ones random_state
        name = "rng" if "rng" in inspect.signature(permutation_test).parameters else "random_state"
        sampling = {"n_resamples": 2**EXACT_SEED_TEST_MAX, name: np.random.default_rng(0)}
    res = permutation_test(
        (np.asarray(diffs),), np.mean, permutation_type="samples", alternative="two-sided", **sampling
    )
    return SeedTest(len(diffs), better, delta, min(1.0, float(res.pvalue)))


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
