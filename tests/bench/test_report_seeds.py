"""The seed-level comparison of a bench report: each student's runs against the no-KD and pseudo-label
students of the same seed (seeds won, exact paired permutation test, Holm over the methods of one t)."""

from __future__ import annotations

import itertools

import pytest

from recokd.bench.report import results_markdown, seed_table, summarize
from recokd.bench.stats import EXACT_SEED_TEST_MAX, holm, seed_test
from tests.bench.test_report_pseudo import _runs_of
from tests.bench.test_report_pseudo import runs as runs  # noqa: F401  (the fixture)


def _sign_flip_p(diffs: list[float]) -> float:
    """The exact two-sided paired permutation p-value, from its definition: the share of the 2^n sign
    assignments whose mean is at least as far from 0 as the observed mean."""
    observed = abs(sum(diffs) / len(diffs))
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    extreme = sum(abs(sum(s * d for s, d in zip(signs, diffs, strict=True)) / len(diffs)) >= observed - 1e-12
                  for signs in flips)
    return extreme / len(flips)


@pytest.mark.parametrize("diffs", [[0.18, 0.1, 0.2, 0.09, 0.15], [0.18, -0.1, 0.2, 0.09, 0.15],
                                   [0.3, -0.01, -0.02, -0.01, 0.0], [-0.05, 0.02, 0.01]])
def test_seed_test_is_the_exact_sign_flip_test(diffs: list[float]) -> None:
    baseline = {seed: 0.6 for seed in range(len(diffs))}
    method = {seed: 0.6 + d for seed, d in enumerate(diffs)}
    test = seed_test(method, baseline)
    assert test.n_seeds == len(diffs) and test.better == sum(d > 0 for d in diffs)
    assert test.mean_difference == pytest.approx(sum(diffs) / len(diffs))
    assert test.p_value == pytest.approx(_sign_flip_p(diffs))
    assert test.p_value >= 2 / 2 ** len(diffs) - 1e-12  # the floor the report's conventions state


def test_seed_test_pairs_seeds_present_in_both_and_needs_two() -> None:
    test = seed_test({0: 0.7, 1: 0.8, 2: 0.9, 3: None}, {1: 0.6, 2: 0.6, 3: 0.6, 4: 0.6})
    assert (test.n_seeds, test.better) == (2, 2) and test.mean_difference == pytest.approx(0.25)
    assert test.p_value == pytest.approx(0.5)  # 2 seeds: the two same-sign assignments of 4
    assert seed_test({0: 0.7}, {0: 0.6}).p_value is None  # one seed: nothing to permute
    assert seed_test({0: 0.7, 1: 0.6}, {0: 0.7, 1: 0.6}).p_value is None  # no difference
    assert seed_test({0: 0.7}, {1: 0.6}).n_seeds == 0


def test_seed_test_samples_sign_flips_above_the_exact_limit() -> None:
    n = EXACT_SEED_TEST_MAX + 1
    diffs = [0.02 * (1 if i % 4 else -1) + 0.001 * i for i in range(n)]
    method, baseline = {i: 0.5 + d for i, d in enumerate(diffs)}, {i: 0.5 for i in range(n)}
    test = seed_test(method, baseline)
    assert test.p_value == seed_test(method, baseline).p_value  # seeded: the same p every time
    assert test.p_value == pytest.approx(_sign_flip_p(diffs), abs=0.01)


def test_seed_table_compares_each_student_with_both_baselines(runs: list) -> None:  # noqa: F811
    rows = summarize(runs, ["reco", "pseudo", "at"], [2])
    by = {r.method: r for r in rows}
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in seed_table(rows).splitlines()[2:]}
    assert list(lines) == ["no KD", "reco", "pseudo-labels", "at"]  # the students, methods' order
    assert seed_table(rows).splitlines()[0].startswith("| model | t | mean Dice at seed 0 / 1 / 2 |")
    # 'at' has no seed-1 run: its cell says so, and its tests pair seeds 0 and 2
    assert lines["at"][1] == f"{by['at'].seed_dice[0]:.3f} / – / {by['at'].seed_dice[2]:.3f}"
    vs_nokd = {m: seed_test(by[m].seed_dice, by["nokd"].seed_dice) for m in ("pseudo", "reco", "at")}
    vs_pseudo = {m: seed_test(by[m].seed_dice, by["pseudo"].seed_dice) for m in ("reco", "at")}
    holm_nokd = dict(zip(vs_nokd, holm([x.p_value for x in vs_nokd.values()]), strict=True))
    holm_pseudo = dict(zip(vs_pseudo, holm([x.p_value for x in vs_pseudo.values()]), strict=True))
    assert lines["reco"][2:] == [
        "3/3", f"{vs_nokd['reco'].p_value:.3f}", f"{holm_nokd['reco']:.3f}",
        "3/3", f"{vs_pseudo['reco'].p_value:.3f}", f"{holm_pseudo['reco']:.3f}",
    ]
    assert lines["at"][2] == "2/2" and lines["at"][5] == f"{vs_pseudo['at'].better}/2"
    assert lines["pseudo-labels"][2] == "3/3" and lines["pseudo-labels"][5:] == ["", "", ""]
    assert lines["no KD"][2:] == [""] * 6
    md = results_markdown(rows, title="t", setup=[])
    assert "## Seed by seed" in md and "2/2^n" in md


def test_no_seed_section_for_one_seed() -> None:
    one = [*_runs_of("nokd", 0.6, (0.0, 0.02, 0.01, 0.03), seeds=(0,)),
           *_runs_of("reco", 0.7, (0.0, 0.02, 0.01, 0.03), seeds=(0,))]
    md = results_markdown(summarize(one, ["reco"], [2]), title="t", setup=[])
    assert "## Seed by seed" not in md and "2/2^n" not in md
