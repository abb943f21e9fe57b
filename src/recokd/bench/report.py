"""Aggregation of finished bench runs: tables (CSV, Markdown) and charts; the statistics they report are
:mod:`recokd.bench.stats`'.

Conventions (also written into ``results.md``):

- A run's **mean Dice** is the evaluation's foreground mean (mean over classes of the per-class
  mean over test cases); **small Dice** the same over the group ``small`` (the phantoms' small
  structures, or ``--small-classes``); **HD95** the foreground mean HD95 in mm (NaN cases left
  out, see ``docs/evaluation-conventions.md``).
- Per (method, t): **mean and sample sd (n-1) over seeds** of those per-run values (sd empty for
  one seed). Per-class Dice likewise.
- **Paired test** of a method against the no-KD student of the same t: one pair per (seed, test
  case) present in both, the values being the case's mean Dice over foreground classes (method
  run of seed s vs no-KD run of seed s); two-sided Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, zero differences dropped, scipy's default exact/normal choice);
  ``delta`` is the mean of the paired differences. Holm's correction is over the methods of one t.
- **Gap recovered** = (method - nokd) / (teacher - nokd) on the seed means, for mean Dice and
  small Dice; empty when the teacher is not better than nokd by more than 1e-9.
- With pseudo-label runs (``pseudo``, ``--labelled-cases``), every other method is also tested against
  them, paired in the same way (seed s vs seed s), Holm's correction over the methods of one t; these
  columns appear only then.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recokd.bench.agreement import AGREEMENT_DIR
from recokd.bench.config import NOKD, PSEUDO, RESULT_FILE, TEACHER
from recokd.bench.stats import (
    PairedTest,
    SeedTest,
    Stat,
    gap_recovered,
    holm,
    mean_sd,
    paired_test,
    seed_test,
)
from recokd.report_paths import shown_path


@dataclass
class RunResult:
    """The evaluation of one finished run."""

    method: str
    t: int | None
    seed: int | None
    mean_dice: float | None
    small_dice: float | None
    hd95_mm: float | None
    class_dice: dict[str, float | None]  #: class -> mean Dice over test cases
    case_dice: dict[str, float]  #: test case -> mean Dice over foreground classes
    small_classes: list[str] = field(default_factory=list)
    wall_s: float | None = None
    device: str | None = None
    folder: str | None = None
    #: Dice against the teacher's segmentations of the test scans (:mod:`recokd.bench.agreement`): the mean
    #: over foreground classes and over the small group; None when not measured
    agreement_dice: float | None = None
    agreement_small: float | None = None


@dataclass
class SummaryRow:
    method: str
    t: int | None
    seeds: list[int | None]
    mean_dice: Stat
    small_dice: Stat
    hd95_mm: Stat
    class_dice: dict[str, Stat]
    test: PairedTest | None = None
    p_holm: float | None = None
    #: the paired test against the pseudo-label student of the same t (when there are pseudo runs)
    vs_pseudo: PairedTest | None = None
    p_holm_vs_pseudo: float | None = None
    gap_dice: float | None = None
    gap_small: float | None = None
    #: the row's mean Dice / the teacher's (seed means), e.g. a label-free student's share of its teacher
    of_teacher: float | None = None
    parameters: int | None = None
    flops_per_patch: int | None = None
    latency_s: float | None = None
    agreement_dice: Stat = field(default_factory=lambda: mean_sd([]))
    agreement_small: Stat = field(default_factory=lambda: mean_sd([]))
    #: seed -> that seed's run mean Dice (the seed-by-seed table)
    seed_dice: dict[int | None, float | None] = field(default_factory=dict)
    #: the seed-level tests against the no-KD and the pseudo-label students of the same t, Holm-corrected
    #: over the methods of the t like :attr:`test` and :attr:`vs_pseudo`
    seeds_vs_nokd: SeedTest | None = None
    p_holm_seeds: float | None = None
    seeds_vs_pseudo: SeedTest | None = None
    p_holm_seeds_vs_pseudo: float | None = None



# ---------------------------------------------------------------------------- reading runs


def _number(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


def load_run_result(folder: Path) -> RunResult:
    """Read ``result.json`` and ``evaluation/{summary.json,per_case.csv}`` of a finished run."""
    record = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    evaluation = Path(record.get("evaluation") or folder / "evaluation")
    if not evaluation.is_dir():
        evaluation = folder / "evaluation"
    summary = json.loads((evaluation / "summary.json").read_text(encoding="utf-8"))
    per_class = summary.get("per_class", {})
    small = (summary.get("groups") or {}).get("small") or {}
    cases: dict[str, list[float]] = {}
    with (evaluation / "per_case.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cases.setdefault(row["case"], []).append(float(row["dice"]))
    agreement_dice = agreement_small = None
    agreement = folder / AGREEMENT_DIR / "summary.json"
    if agreement.is_file():
        agreed = json.loads(agreement.read_text(encoding="utf-8"))
        agreement_dice = _number(agreed["foreground_mean"].get("dice"))
        agreed_small = (agreed.get("groups") or {}).get("small") or {}
        agreement_small = _number(agreed_small.get("dice")) if agreed_small else None
    return RunResult(
        method=record["method"],
        t=record.get("t"),
        seed=record.get("seed"),
        mean_dice=_number(summary["foreground_mean"].get("dice")),
        small_dice=_number(small.get("dice")) if small else None,
        hd95_mm=_number(summary["foreground_mean"].get("hd95_mm")),
        class_dice={name: _number(entry["dice"]) for name, entry in per_class.items()},
        case_dice={case: sum(v) / len(v) for case, v in cases.items()},
        small_classes=list(small.get("classes", [])) if small else [],
        wall_s=record.get("wall_s"),
        device=record.get("device"),
        folder=str(folder),
        agreement_dice=agreement_dice,
        agreement_small=agreement_small,
    )


def class_names(results: Sequence[RunResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        names.extend(n for n in r.class_dice if n not in names)
    return names


def summarize(
    results: Sequence[RunResult],
    methods: Sequence[str],
    ts: Sequence[int],
    profiles: dict[str, dict[str, Any]] | None = None,
) -> list[SummaryRow]:
    """One row for the teacher, then per t one for ``nokd`` and one per method (runs present only); with
    ``pseudo`` runs of a t, every other method of that t is also tested against them (``vs_pseudo``)."""
    profiles = profiles or {}
    classes = class_names(results)

    def row(method: str, t: int | None, runs: list[RunResult], arch: str) -> SummaryRow:
        prof = profiles.get(arch) or {}
        return SummaryRow(
            method=method,
            t=t,
            seeds=[r.seed for r in runs],
            mean_dice=mean_sd([r.mean_dice for r in runs]),
            small_dice=mean_sd([r.small_dice for r in runs]),
            hd95_mm=mean_sd([r.hd95_mm for r in runs]),
            class_dice={c: mean_sd([r.class_dice.get(c) for r in runs]) for c in classes},
            parameters=prof.get("parameters"),
            flops_per_patch=prof.get("flops_per_patch"),
            latency_s=prof.get("latency_s"),
            agreement_dice=mean_sd([r.agreement_dice for r in runs]),
            agreement_small=mean_sd([r.agreement_small for r in runs]),
            seed_dice={r.seed: r.mean_dice for r in runs},
        )

    rows: list[SummaryRow] = []
    teacher_runs = [r for r in results if r.method == TEACHER]
    teacher = row(TEACHER, None, teacher_runs, TEACHER) if teacher_runs else None
    if teacher:
        rows.append(teacher)
    for t in ts:
        of_t = [r for r in results if r.t == t and r.method != TEACHER]
        nokd_runs = sorted((r for r in of_t if r.method == NOKD), key=lambda r: r.seed or 0)
        nokd = row(NOKD, t, nokd_runs, f"t{t}") if nokd_runs else None
        if nokd:
            rows.append(nokd)
        pseudo_runs = sorted((r for r in of_t if r.method == PSEUDO), key=lambda r: r.seed or 0)
        pseudo_seed_dice = {r.seed: r.mean_dice for r in pseudo_runs}
        tested, vs_pseudo = [], []
        for m in methods:
            runs = sorted((r for r in of_t if r.method == m), key=lambda r: r.seed or 0)
            if not runs:
                continue
            r = row(m, t, runs, f"t{t}")
            if nokd:
                r.test = paired_test(runs, nokd_runs)
                r.seeds_vs_nokd = seed_test(r.seed_dice, nokd.seed_dice)
                tested.append(r)
                if teacher:
                    r.gap_dice = gap_recovered(r.mean_dice.mean, nokd.mean_dice.mean, teacher.mean_dice.mean)
                    r.gap_small = gap_recovered(
                        r.small_dice.mean, nokd.small_dice.mean, teacher.small_dice.mean
                    )
            if pseudo_runs and m != PSEUDO:
                r.vs_pseudo = paired_test(runs, pseudo_runs, "the pseudo-label student")
                r.seeds_vs_pseudo = seed_test(r.seed_dice, pseudo_seed_dice)
                vs_pseudo.append(r)
            rows.append(r)
        p_cases = holm([r.test.p_value for r in tested if r.test])
        p_seeds = holm([r.seeds_vs_nokd.p_value for r in tested if r.seeds_vs_nokd])
        for r, p, q in zip(tested, p_cases, p_seeds, strict=True):
            r.p_holm, r.p_holm_seeds = p, q
        p_cases = holm([r.vs_pseudo.p_value if r.vs_pseudo else None for r in vs_pseudo])
        p_seeds = holm([r.seeds_vs_pseudo.p_value if r.seeds_vs_pseudo else None for r in vs_pseudo])
        for r, p, q in zip(vs_pseudo, p_cases, p_seeds, strict=True):
            r.p_holm_vs_pseudo, r.p_holm_seeds_vs_pseudo = p, q
    for r in rows:
        if r.method != TEACHER:
            r.of_teacher = share_of(r.mean_dice.mean, teacher)
    return rows


def share_of(mean_dice: float | None, teacher: SummaryRow | None) -> float | None:
    """``mean_dice`` / the teacher row's mean Dice (None without either, or with a teacher at 0)."""
    base = teacher.mean_dice.mean if teacher else None
    return None if mean_dice is None or not base else mean_dice / base


# ---------------------------------------------------------------------------- CSV


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _csv(fields: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in fields})
    return buf.getvalue()


def runs_csv(results: Sequence[RunResult], base: str | Path | None = None) -> str:
    """One row per run: method, t, seed, mean/small Dice, HD95, per-class Dice, wall time, the run's
    folder (relative to ``base``, the report's folder: :func:`recokd.report_paths.shown_path`)."""
    classes = class_names(results)
    fields = [
        "method",
        "t",
        "seed",
        "mean_dice",
        "small_dice",
        "hd95_mm",
        *[f"dice_{c}" for c in classes],
        "agreement_dice",
        "agreement_small_dice",
        "n_cases",
        "wall_s",
        "device",
        "folder",
    ]
    rows = []
    for r in results:
        rows.append(
            {
                "method": r.method,
                "t": r.t,
                "seed": r.seed,
                "mean_dice": r.mean_dice,
                "small_dice": r.small_dice,
                "hd95_mm": r.hd95_mm,
                **{f"dice_{c}": r.class_dice.get(c) for c in classes},
                "agreement_dice": r.agreement_dice,
                "agreement_small_dice": r.agreement_small,
                "n_cases": len(r.case_dice),
                "wall_s": r.wall_s,
                "device": r.device,
                "folder": None if r.folder is None else shown_path(r.folder, base),
            }
        )
    return _csv(fields, rows)


def summary_csv(rows: Sequence[SummaryRow]) -> str:
    """One row per (method, t): mean and sd over seeds, the paired test, gap recovered, efficiency."""
    classes = list(rows[0].class_dice) if rows else []
    fields = ["method", "t", "n_runs", "seeds"]
    for name in ("mean_dice", "small_dice", "hd95_mm", *[f"dice_{c}" for c in classes], "agreement_dice",
                 "agreement_small_dice"):
        fields += [f"{name}_mean", f"{name}_sd"]
    fields += [
        "delta_dice_vs_nokd",
        "wilcoxon_p",
        "wilcoxon_p_holm",
        "n_pairs",
        "share_of_teacher_dice",
        "gap_recovered_dice",
        "gap_recovered_small_dice",
        "parameters",
        "gflops_per_patch",
        "cpu_latency_s",
    ]
    with_pseudo = any(r.vs_pseudo for r in rows)
    if with_pseudo:
        fields += [
            "delta_dice_vs_pseudo", "wilcoxon_p_vs_pseudo", "wilcoxon_p_holm_vs_pseudo", "n_pairs_vs_pseudo"
        ]
    out = []
    for r in rows:
        d: dict[str, Any] = {
            "method": r.method,
            "t": r.t,
            "n_runs": len(r.seeds),
            "seeds": " ".join("" if s is None else str(s) for s in r.seeds),
        }
        stats = {
            "mean_dice": r.mean_dice,
            "small_dice": r.small_dice,
            "hd95_mm": r.hd95_mm,
            **{f"dice_{c}": s for c, s in r.class_dice.items()},
            "agreement_dice": r.agreement_dice,
            "agreement_small_dice": r.agreement_small,
        }
        for name, s in stats.items():
            d[f"{name}_mean"], d[f"{name}_sd"] = s.mean, s.sd
        if r.test:
            d.update(
                delta_dice_vs_nokd=r.test.mean_difference,
                wilcoxon_p=r.test.p_value,
                wilcoxon_p_holm=r.p_holm,
                n_pairs=r.test.n_pairs,
            )
        d.update(
            share_of_teacher_dice=r.of_teacher,
            gap_recovered_dice=r.gap_dice,
            gap_recovered_small_dice=r.gap_small,
            parameters=r.parameters,
            gflops_per_patch=None if r.flops_per_patch is None else r.flops_per_patch / 1e9,
            cpu_latency_s=r.latency_s,
        )
        if r.vs_pseudo:
            d.update(
                delta_dice_vs_pseudo=r.vs_pseudo.mean_difference,
                wilcoxon_p_vs_pseudo=r.vs_pseudo.p_value,
                wilcoxon_p_holm_vs_pseudo=r.p_holm_vs_pseudo,
                n_pairs_vs_pseudo=r.vs_pseudo.n_pairs,
            )
        out.append(d)
    return _csv(fields, out)


# ---------------------------------------------------------------------------- Markdown


def _ms(s: Stat, spec: str = ".3f") -> str:
    if s.mean is None:
        return "n/a"
    return format(s.mean, spec) if s.sd is None else f"{format(s.mean, spec)} ± {format(s.sd, spec)}"


def _f(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _p(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def display_name(method: str) -> str:
    return {NOKD: "no KD", TEACHER: "teacher", PSEUDO: "pseudo-labels"}.get(method, method)


def _params(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def main_table(rows: Sequence[SummaryRow]) -> str:
    head = [
        "model",
        "t",
        "seeds",
        "mean Dice",
        "÷ teacher",
        "small Dice",
        "HD95 mm",
        "Δ Dice vs no KD",
        "p (Wilcoxon)",
        "p (Holm)",
        "pairs",
        "gap rec. Dice",
        "gap rec. small",
        "params",
        "GFLOPs/patch",
        "CPU s/case",
    ]
    body = []
    for r in rows:
        test = r.test
        body.append([
            *_who(r),
            _ms(r.mean_dice),
            _f(r.of_teacher, ".2f"),
            _ms(r.small_dice),
            _ms(r.hd95_mm, ".1f"),
            _f(test.mean_difference, "+.3f") if test else "",
            _p(test.p_value) if test else "",
            _p(r.p_holm),
            str(test.n_pairs) if test else "",
            _f(r.gap_dice, ".2f"),
            _f(r.gap_small, ".2f"),
            _params(r.parameters),
            _f(None if r.flops_per_patch is None else r.flops_per_patch / 1e9, ".2f"),
            _f(r.latency_s, ".3f"),
        ])
    return _markdown_table(head, body)


def _markdown_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(cells) + " |" for cells in body)])


def _who(r: SummaryRow) -> list[str]:
    """A row's first cells: the model, its t, its number of seeds."""
    return [display_name(r.method), "" if r.t is None else str(r.t), str(len(r.seeds))]


def pseudo_table(rows: Sequence[SummaryRow]) -> str:
    """Each method against the pseudo-label student of its t (the rows with a ``vs_pseudo`` test)."""
    head = [
        "model", "t", "seeds", "mean Dice", "Δ Dice vs pseudo-labels", "p (Wilcoxon)", "p (Holm)", "pairs"
    ]
    return _markdown_table(head, [
        [*_who(r), _ms(r.mean_dice), _f(r.vs_pseudo.mean_difference, "+.3f"), _p(r.vs_pseudo.p_value),
         _p(r.p_holm_vs_pseudo), str(r.vs_pseudo.n_pairs)]
        for r in rows if r.vs_pseudo is not None
    ])


def agreement_table(rows: Sequence[SummaryRow]) -> str:
    """The students' agreement with the teacher on the test scans (the rows where it was measured; "2 of 5"
    seeds where only some runs have it, e.g. the teacher's segmentations were not on the machine that ran
    the others)."""
    head = ["model", "t", "seeds", "Dice vs teacher", "small Dice vs teacher", "mean Dice (labels)"]

    def who(r: SummaryRow) -> list[str]:
        name, t, seeds = _who(r)
        return [name, t, seeds if r.agreement_dice.n == len(r.seeds) else f"{r.agreement_dice.n} of {seeds}"]

    return _markdown_table(head, [
        [*who(r), _ms(r.agreement_dice), _ms(r.agreement_small), _ms(r.mean_dice)]
        for r in rows if r.agreement_dice.mean is not None
    ])


def seed_table(rows: Sequence[SummaryRow]) -> str:
    """Each student seed by seed: its runs' mean Dice in seed order, and against the no-KD and the
    pseudo-label students of its t (when there are such runs) the seeds it wins and the seed-level
    paired permutation test (:func:`recokd.bench.stats.seed_test`, computed by :func:`summarize`),
    Holm-corrected over the methods of the t."""
    with_pseudo = any(r.method == PSEUDO for r in rows)
    students = [r for r in rows if r.t is not None]
    seeds = sorted({s for r in students for s in r.seed_dice}, key=lambda s: (s is None, s))
    head = ["model", "t", "mean Dice at seed " + " / ".join(map(str, seeds)), "seeds > no KD", "p (seeds)",
            "p (Holm)"]
    if with_pseudo:
        head += ["seeds > pseudo-labels", "p (seeds)", "p (Holm)"]

    def cells(test: SeedTest | None, p_holm: float | None) -> list[str]:
        if test is None or not test.n_seeds:
            return ["", "", ""]
        return [f"{test.better}/{test.n_seeds}", _p(test.p_value), _p(p_holm)]

    body = []
    for r in students:
        per_seed = " / ".join(
            "–" if seed not in r.seed_dice else _f(r.seed_dice[seed], ".3f") or "n/a" for seed in seeds
        )
        line = [display_name(r.method), str(r.t), per_seed, *cells(r.seeds_vs_nokd, r.p_holm_seeds)]
        if with_pseudo:
            line += cells(r.seeds_vs_pseudo, r.p_holm_seeds_vs_pseudo)
        body.append(line)
    return _markdown_table(head, body)


def seed_conventions(with_pseudo: bool) -> str:
    """The conventions of :func:`seed_table` (in results.md when it is there)."""
    versus = "**seeds > no KD** (> pseudo-labels)" if with_pseudo else "**seeds > no KD**"
    return f"""\
- **Seed by seed**: each run's mean Dice, in seed order (–: no run of that seed); {versus}: the
  seeds at which the run beats the baseline's run of the same seed; **p (seeds)**: the exact two-sided
  paired permutation test of the mean per-seed difference (every sign flip,
  scipy.stats.permutation_test), **p (Holm)** over the methods of one t. The seed is the independent
  unit (a class a run learns or misses moves all its test cases); with n seeds p cannot go below 2/2^n
  (0.0625 at 5 seeds).
"""


#: the conventions of :func:`agreement_table` (in results.md when it is there)
AGREEMENT_CONVENTIONS = """\
- **Dice vs teacher** (agreement): the student's segmentations of the test scans scored against the
  teacher's instead of the labels (the same code and conventions as the mean Dice; the labels are not
  used), as one can measure it on unlabelled scans: how closely the student copies its teacher.
"""


#: the conventions of :func:`pseudo_table` (in results.md when it is there)
PSEUDO_CONVENTIONS = """\
- **Δ Dice vs pseudo-labels**, **p**: each method against the pseudo-label student of the same t (stock
  nnU-Net on the labelled cases + the teacher's hard segmentations of the unlabelled ones), paired as
  against the no-KD student (one pair per seed and test case); **p (Holm)** over the methods of one t.
"""


def class_table(rows: Sequence[SummaryRow], small_classes: Sequence[str] = ()) -> str:
    classes = list(rows[0].class_dice) if rows else []
    head = ["model", "t", *[f"{c} (small)" if c in small_classes else c for c in classes]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * len(classes)) + "|"]
    for r in rows:
        cells = [
            display_name(r.method),
            "" if r.t is None else str(r.t),
            *[_ms(r.class_dice[c]) for c in classes],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CONVENTIONS = """\
- Dice and HD95 are computed on the held-out test cases by `recokd evaluate`'s code
  (empty-mask convention recokd-empty-v1; HD95 NaN cases left out). A run's **mean Dice** is the
  mean over foreground classes of the per-class mean over cases (every class weighs the same);
  **small Dice** the same over the small-structure group; **HD95** the foreground mean in mm.
- **mean ± sd**: over the seeds of a (method, t); sd is the sample sd (n-1), left out for one seed.
  Per-class Dice likewise. The teacher is one model (one training run).
- **Δ Dice vs no KD**, **p**: paired against the no-KD student of the same t, one pair per (seed, test
  case) present in both, values = the case's mean Dice over foreground classes; Δ is the mean paired
  difference, p the two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences
  dropped); pairs of one case across seeds are not independent, so read p as descriptive.
  **p (Holm)**: Holm's step-down correction over the methods of one t.
- **÷ teacher**: the mean Dice over the teacher's (seed means), e.g. the share of its teacher a label-free
  student keeps. **gap rec.**: (method − no KD) / (teacher − no KD) on the seed means (mean Dice; small
  Dice); empty when the teacher is not better than the no-KD student.
- **params**, **GFLOPs/patch** (torch.utils.flop_counter, 2 FLOPs per multiply-add, one patch, batch 1) and
  **CPU s/case** (nnU-Net sliding window on the volume named under "profile" above, the first test case
  when its files are found, mirroring off, median of repeats after a warm-up; preprocessing and export
  not timed) are measured once per architecture: the students of one t share it (the first finished run
  whose weights are on the machine is profiled, the no-KD student of the first seed when it is).
"""


def results_markdown(
    rows: Sequence[SummaryRow],
    *,
    title: str,
    setup: Sequence[str],
    small_classes: Sequence[str] = (),
    missing: Sequence[str] = (),
) -> str:
    parts = [
        f"# {title}",
        "",
        *[f"- {s}" for s in setup],
        "",
        "## Mean Dice, small structures, HD95, cost",
        "",
        main_table(rows),
        "",
    ]
    with_pseudo = any(r.vs_pseudo for r in rows)
    if with_pseudo:
        parts += ["## Against the pseudo-label student", "", pseudo_table(rows), ""]
    with_seeds = any(len(r.seeds) > 1 for r in rows if r.t is not None)
    if with_seeds:
        parts += ["## Seed by seed", "", seed_table(rows), ""]
    with_agreement = any(r.agreement_dice.mean is not None for r in rows)
    if with_agreement:
        parts += [
            "## Agreement with the teacher on the test scans (labels unused)", "", agreement_table(rows), ""
        ]
    parts += [
        "## Per-class Dice (mean ± sd over seeds)",
        "",
        class_table(rows, small_classes),
        "",
        "## Conventions",
        "",
        CONVENTIONS + (PSEUDO_CONVENTIONS if with_pseudo else "")
        + (seed_conventions(with_pseudo) if with_seeds else "")
        + (AGREEMENT_CONVENTIONS if with_agreement else ""),
    ]
    if missing:
        parts += ["## Missing or failed runs (not in the tables)", "", *[f"- {m}" for m in missing], ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- charts


def plot_dice_vs_latency(rows: Sequence[SummaryRow], out_png: Path, title: str) -> Path | None:
    from recokd.evaluation.plots import dice_vs_latency

    points = [
        {
            "name": display_name(r.method) + ("" if r.t is None else f" t{r.t}"),
            "latency_s": r.latency_s,
            "dice": r.mean_dice.mean,
        }
        for r in rows
        if r.latency_s and r.latency_s > 0 and r.mean_dice.mean is not None
    ]
    if not points:
        return None
    return dice_vs_latency(
        points,
        out_png,
        title=title,
        latency_label="CPU latency per test case (s, sliding window, no mirroring, median)",
        overwrite=True,
    )


def plot_class_dice(
    rows: Sequence[SummaryRow], out_png: Path, small_classes: Sequence[str] = ()
) -> Path | None:
    """Grouped bars of per-class Dice (seed mean, sd as error bar), one panel per t (teacher in each)."""
    from recokd.evaluation.plots import new_figure, save_figure

    classes = list(rows[0].class_dice) if rows else []
    ts = sorted({r.t for r in rows if r.t is not None})
    if not classes or not ts:
        return None
    teacher = [r for r in rows if r.method == TEACHER]
    panels = [teacher + [r for r in rows if r.t == t] for t in ts]
    n_bars = max(len(p) for p in panels)
    fig = new_figure(max(7.0, 0.11 * n_bars * len(classes) + 2.5), 3.2 * len(ts) + 0.6)
    axes = fig.subplots(len(ts), 1, squeeze=False)[:, 0]
    width = 0.8 / n_bars
    for ax, t, panel in zip(axes, ts, panels, strict=True):
        for j, r in enumerate(panel):
            xs = [i - 0.4 + (j + 0.5) * width for i in range(len(classes))]
            means = [r.class_dice[c].mean or 0.0 for c in classes]
            sds = [r.class_dice[c].sd or 0.0 for c in classes]
            ax.bar(
                xs,
                means,
                width=width,
                yerr=sds,
                capsize=1.5,
                label=display_name(r.method),
                error_kw={"elinewidth": 0.6},
            )
        ax.set_xticks(
            range(len(classes)),
            [f"{c}*" if c in small_classes else c for c in classes],
            rotation=20,
            ha="right",
        )
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("Dice")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(
            f"t={t}: per-class Dice, mean ± sd over seeds" + ("; * small structure" if small_classes else ""),
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, out_png, overwrite=True)
