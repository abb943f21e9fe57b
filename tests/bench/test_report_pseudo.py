"""The bench report with pseudo-label runs: ``pseudo`` compared with the no-KD student like any method, and
every other method also tested against it (paired by seed and case, Holm over the methods of one t)."""

from __future__ import annotations

import csv
import io

import pytest
from scipy.stats import wilcoxon

from recokd.bench.report import main_table, results_markdown, summarize, summary_csv
from recokd.bench.stats import holm
from tests.bench.test_report import _run

CASES = ("c1", "c2", "c3", "c4")


def _runs_of(method: str, base: float, steps: tuple[float, ...], seeds: tuple[int, ...] = (0, 1, 2)) -> list:
    """Runs of ``method`` whose organ Dice per case is ``base + step`` (+0.01 per seed), vessel 0.5."""
    return [
        _run(method, seed, {c: (base + s + 0.01 * seed, 0.5) for c, s in zip(CASES, steps, strict=True)})
        for seed in seeds
    ]


@pytest.fixture
def runs() -> list:
    return [
        _run("teacher", 0, {c: (0.95, 0.8) for c in CASES}),
        *_runs_of("nokd", 0.6, (0.0, 0.02, 0.01, 0.03)),
        *_runs_of("pseudo", 0.7, (0.01, 0.0, 0.03, 0.02)),
        *_runs_of("reco", 0.75, (0.02, 0.03, 0.0, 0.05)),
        *_runs_of("at", 0.68, (0.04, 0.0, 0.01, 0.02), seeds=(0, 2)),  # a seed missing: 8 pairs
    ]


def _pairs(runs: list, method: str, baseline: str) -> tuple[list[float], list[float]]:
    base = {r.seed: r for r in runs if r.method == baseline}
    a, b = [], []
    for r in (r for r in runs if r.method == method):
        for case in CASES:
            a.append(r.case_dice[case])
            b.append(base[r.seed].case_dice[case])
    return a, b


def test_every_method_is_tested_against_the_pseudo_label_student(runs: list) -> None:
    rows = {r.method: r for r in summarize(runs, ["reco", "pseudo", "at"], [2])}
    assert rows["pseudo"].test is not None and rows["pseudo"].test.n_pairs == 12  # vs nokd, like any method
    assert rows["pseudo"].vs_pseudo is None and rows["nokd"].vs_pseudo is None
    assert rows["teacher"].vs_pseudo is None
    p_values = []
    for method, n_pairs in (("reco", 12), ("at", 8)):
        test = rows[method].vs_pseudo
        a, b = _pairs(runs, method, "pseudo")
        assert test.n_pairs == n_pairs == len(a)
        assert test.mean_difference == pytest.approx(sum(x - y for x, y in zip(a, b, strict=True)) / len(a))
        assert test.p_value == pytest.approx(wilcoxon(a, b).pvalue)
        p_values.append(test.p_value)
    assert [rows["reco"].p_holm_vs_pseudo, rows["at"].p_holm_vs_pseudo] == pytest.approx(holm(p_values))
    # the tests against the no-KD student are unchanged by the pseudo runs (Holm over reco, pseudo, at)
    assert rows["reco"].test.mean_difference == pytest.approx((0.15 + 0.01) / 2)  # organ and vessel
    assert rows["reco"].p_holm == pytest.approx(
        holm([rows[m].test.p_value for m in ("reco", "pseudo", "at")])[0]
    )
    assert rows["pseudo"].gap_dice == pytest.approx(
        (rows["pseudo"].mean_dice.mean - rows["nokd"].mean_dice.mean)
        / (rows["teacher"].mean_dice.mean - rows["nokd"].mean_dice.mean)
    )


def test_tables_show_the_pseudo_comparison_only_with_pseudo_runs(runs: list) -> None:
    rows = summarize(runs, ["reco", "pseudo", "at"], [2])
    summ = {r["method"]: r for r in csv.DictReader(io.StringIO(summary_csv(rows)))}
    reco = next(r for r in rows if r.method == "reco")
    assert float(summ["reco"]["delta_dice_vs_pseudo"]) == pytest.approx(reco.vs_pseudo.mean_difference)
    assert float(summ["reco"]["wilcoxon_p_holm_vs_pseudo"]) == pytest.approx(reco.p_holm_vs_pseudo, rel=1e-5)
    assert summ["at"]["n_pairs_vs_pseudo"] == "8" and summ["pseudo"]["n_pairs_vs_pseudo"] == ""
    assert summ["pseudo"]["n_pairs"] == "12"
    md = results_markdown(rows, title="t", setup=[])
    section = md.split("## Against the pseudo-label student", 1)[1].split("## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and "model" not in line]
    assert [line.split("|")[1].strip() for line in lines] == ["reco", "at"]
    assert f"{reco.vs_pseudo.mean_difference:+.3f}" in lines[0]
    assert "| pseudo-labels | 2 | 3 |" in main_table(rows) and "Δ Dice vs pseudo-labels" in md

    without = summarize([r for r in runs if r.method != "pseudo"], ["reco", "at"], [2])
    assert all(r.vs_pseudo is None for r in without)
    assert "vs_pseudo" not in summary_csv(without).splitlines()[0]
    assert "pseudo" not in results_markdown(without, title="t", setup=[])
