"""``recokd demo``: the whole ReCo-KD workflow on generated data, on a CPU, in minutes.

The demo is a small preset of ``recokd bench`` (:mod:`recokd.bench`), run by the bench's own
runner: one width (t=2), one seed. By default every student sees the labels the teacher saw (ReCo-KD
against the same student without KD); with ``--labelled-cases K`` it tells the clinic's story
instead: a trained model, a few labelled scans and many unlabelled ones (the students see the labels
of K training cases, the others are their unlabelled scans). Its steps (each a real component,
nothing mocked):

1. write a CT-like phantom dataset in nnU-Net raw format (:mod:`recokd.data`) and plan and
   preprocess it with nnU-Net (``3d_fullres``);
2. train a teacher on every training case with stock nnU-Net training (``nnUNetTrainerShortNoDA``:
   nnU-Net's trainer on a short schedule, without data augmentation, with nnU-Net's
   ``nnUNetTrainerAdam`` optimiser by default: ``--optimizer``), or reuse one (``--teacher``: the
   teacher of an earlier demo, only predicted and evaluated here);
3. train the t=2 students on the same schedule and seed (:mod:`recokd.nnunet.seeding`), so that
   they differ only by what they learn from: by default the student without KD (stock nnU-Net on
   the student plans) and the same student distilled with ReCo-KD (``recokd train``); with
   ``--labelled-cases``, the student on the labelled cases only, the student on the labelled cases
   + the teacher's hard pseudo-labels of the unlabelled scans (stock nnU-Net, the baseline every
   nnU-Net user has), and the student distilled on labelled + unlabelled scans with ReCo-KD + soft
   targets and the pseudo-label loss (``recokd train --unlabelled --pseudo-label-loss``, at the
   weights the unlabelled study chose on its validation phantoms, benchmarks/RESULTS.md);
4. predict the held-out cases with nnU-Net's predictor, evaluate (Dice, HD95, NSD) and profile
   (parameters, FLOPs, CPU latency);
5. print one compact table (with the gap each student recovers) and save it, with the bench's full
   report, its CSVs and plots, in the output folder.

The output folder is a bench folder (``recokd bench``'s layout: ``teacher/``, ``runs/t2/...``, each
run with its nnU-Net folders, predictions, evaluation and ``run.log``): the user's own
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` are never touched, and an interrupted
demo resumes when the same command is run again. The regime (grid, small-structure size, no
augmentation, AdamW, KD weights) is the CPU regime of ``benchmarks/RESULTS.md`` ("Choosing the
regime"; with ``--labelled-cases``, "Few labels, many unlabelled scans"), scaled down to fit in about
15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from recokd.bench.config import (
    CONFIG_FILE,
    DEFAULT_UNLABELLED_SHARE,
    MIN_LABELLED_CASES,
    NOKD,
    PSEUDO,
    TEACHER,
    PhantomSpec,
    Selection,
    Study,
    method_weights_text,
)
from recokd.bench.report import SummaryRow
from recokd.errors import UserError
from recokd.nnunet import layout
from recokd.nnunet.layout import dataset_folder_name, model_folder_name
from recokd.nnunet.optim import OPTIMIZER_NAMES, OPTIMIZER_TEXT, check_optimizer_name

DATASET_ID = 990
DATASET_NAME = "DemoPhantoms"
DATASET = dataset_folder_name(DATASET_ID, DATASET_NAME)
CONFIGURATION = "3d_fullres"
#: the KD method of the distilled student when every case is labelled (ReCo-KD at the KD weight) ...
KD_METHOD = "reco"
#: ... and with unlabelled scans (``--labelled-cases``): ReCo-KD at 100 x the KD weight + soft targets at
#: 1 x (the weights the unlabelled study chose on its validation phantoms)
UNLABELLED_KD_METHOD = "reco:100+logits"
#: the demo's names of the bench's rows
ROW_NAMES = {TEACHER: "teacher", NOKD: "student, no KD", KD_METHOD: "student, ReCo-KD"}
UNLABELLED_ROW_NAMES = {
    TEACHER: "teacher",
    NOKD: "student, labels only",
    PSEUDO: "student, pseudo-labels",
    UNLABELLED_KD_METHOD: "student, ReCo-KD",
}
#: the full bench report (the demo's own table is results.md)
BENCH_REPORT = "bench_results.md"


@dataclass
class DemoConfig:
    """Sizes and schedules of the demo (the defaults fit in about 15 minutes on 2 CPU cores; see
    benchmarks/RESULTS.md, "Choosing the regime")."""

    cases: int = 40
    test_cases: int = 8
    #: the students see the labels of the first ``labelled_cases`` training cases, the others are their
    #: unlabelled scans (None: every training case is labelled, as for the teacher)
    labelled_cases: int | None = None
    shape: tuple[int, int, int] = (32, 32, 32)
    seed: int = 0
    small_scale: float = 2.0
    t: int = 2
    teacher_epochs: int = 10
    student_epochs: int = 5
    iters_per_epoch: int = 50
    val_iters: int = 2
    kd_weight: float = 0.01
    warmup: float = 0.2
    augmentation: bool = False
    #: optimiser of the teacher and the students (:mod:`recokd.nnunet.optim`)
    optimizer: str = "adam"
    threads: int | None = None
    teacher: str | None = None  #: a teacher model folder to reuse instead of training one

    def validate(self) -> None:
        from recokd.bench.runner import check_teacher_folder

        if self.cases < 5 or self.test_cases < 1:
            raise UserError("the demo needs --cases >= 5 (nnU-Net's 5-fold split) and --test-cases >= 1")
        if self.labelled_cases is not None and not MIN_LABELLED_CASES <= self.labelled_cases < self.cases:
            raise UserError(
                f"--labelled-cases must be >= {MIN_LABELLED_CASES} (nnU-Net's 5-fold split of the labelled "
                f"cases) and < --cases ({self.cases}, so that some are left as unlabelled scans), got "
                f"{self.labelled_cases}"
            )
        for name in ("teacher_epochs", "student_epochs", "iters_per_epoch", "val_iters"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.kd_weight >= 0:
            raise UserError(f"--kd-weight must be >= 0, got {self.kd_weight}")
        if not 0 <= self.warmup <= 1:
            raise UserError(f"--warmup must be in [0, 1], got {self.warmup}")
        check_optimizer_name(self.optimizer, "--optimizer")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.teacher is not None:
            check_teacher_folder(self.teacher, CONFIGURATION, "0")

    def study(self) -> Study:
        """The bench study of this demo (what every run shares; recorded in ``bench_config.json``)."""
        from recokd.bench.runner import check_teacher_folder

        teacher = str(check_teacher_folder(self.teacher, CONFIGURATION, "0")) if self.teacher else None
        phantoms = PhantomSpec(
            cases=self.cases, test_cases=self.test_cases, shape=list(self.shape), seed=self.seed,
            small_scale=self.small_scale,
        )
        study = Study(
            dataset=DATASET,
            phantoms=asdict(phantoms),
            configuration=CONFIGURATION,
            teacher=teacher,
            teacher_epochs=None if teacher else self.teacher_epochs,
            teacher_seed=None if teacher else self.seed,
            epochs=self.student_epochs,
            iters_per_epoch=self.iters_per_epoch,
            val_iters=self.val_iters,
            kd_weight=self.kd_weight,
            schedule="linear",
            warmup=self.warmup,
            augmentation=self.augmentation,
            optimizer=self.optimizer,
            teacher_optimizer=self.optimizer,
        )
        if self.unlabelled:
            study = replace(study, labelled_cases=self.labelled_cases,
                            unlabelled_share=DEFAULT_UNLABELLED_SHARE, pseudo_label_loss=True)
        study.validate()
        return study

    @property
    def unlabelled(self) -> bool:
        """``--labelled-cases``: the students see a few labels and the other cases as unlabelled scans."""
        return self.labelled_cases is not None

    @property
    def kd_method(self) -> str:
        """The distilled student's KD method spec."""
        return UNLABELLED_KD_METHOD if self.unlabelled else KD_METHOD

    @property
    def row_names(self) -> dict[str, str]:
        """The demo's names of the bench's rows."""
        return UNLABELLED_ROW_NAMES if self.unlabelled else ROW_NAMES

    def selection(self) -> Selection:
        """One width, one seed: the no-KD student (implied) and ReCo-KD; with ``--labelled-cases``, the
        labelled-only student (the no-KD run), pseudo-labels and ReCo-KD."""
        methods = [PSEUDO, self.kd_method] if self.unlabelled else [self.kd_method]
        return Selection(methods=methods, ts=[self.t], seeds=[self.seed])


def teacher_help_path() -> str:
    """Where an earlier demo keeps its teacher, relative to its output folder (for ``--teacher``)."""
    trainer = layout.short_trainer(DemoConfig.augmentation)
    return f"teacher/nnUNet_results/{DATASET}/{model_folder_name(trainer, 'nnUNetPlans', CONFIGURATION)}"


def run_demo(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo's bench into ``out`` (resuming an interrupted demo there); returns the results
    table (also written to ``out``)."""
    from recokd.bench.config import check_or_write_config
    from recokd.bench.runner import BenchRunner

    started = time.perf_counter()
    cfg.validate()
    study, selection = cfg.study(), cfg.selection()
    resumed = check_or_write_config(out, study, selection)
    if cfg.threads:  # the workers' torch (training, prediction) and the profile
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    print(f"{'resuming the' if resumed else 'new'} demo in {out}")
    if cfg.teacher:
        print(f"reusing the teacher {cfg.teacher}: it is only predicted and evaluated here")
    else:
        students = (f"three students that see the labels of {cfg.labelled_cases} of them" if cfg.unlabelled
                    else "both students")
        print(f"training the teacher on all {cfg.cases} training cases (stock nnU-Net, "
              f"{cfg.teacher_epochs} x {cfg.iters_per_epoch} iterations), then {students} "
              f"({cfg.student_epochs} x {cfg.iters_per_epoch} iterations each); every run's nnU-Net log is "
              "the run.log in its folder")
    runner = BenchRunner(
        out, study, selection, device="cpu", profile_threads=cfg.threads, training_progress=True,
        report_file=BENCH_REPORT, print_table=False, profile_on_test_case=False,
    )
    if runner.run() != 0:
        raise UserError("the demo failed: " + "; ".join(runner.failures))
    table = demo_table(runner.rows, cfg.row_names)
    _write_outputs(out, table, runner.profiles, cfg, time.perf_counter() - started)
    return table


def demo_table(rows: list[SummaryRow], names: dict[str, str]) -> dict[str, Any]:
    """The demo's compact table from the bench's summary rows: one row per model (the teacher, the
    student without KD, then the others: pseudo-labels and ReCo-KD, named by ``names``), each of the
    others with the gap it recovers, ``(student - no KD) / (teacher - no KD)`` (None for the teacher
    and the no-KD student, or when the teacher is not above that student)."""
    out = []
    for r in rows:
        out.append(
            {
                "method": r.method,
                "model": names[r.method],
                "parameters": r.parameters,
                "flops_per_patch": r.flops_per_patch,
                "cpu_latency_s": r.latency_s,
                "mean_dice": r.mean_dice.mean,
                "small_dice": r.small_dice.mean,
                "hd95_mm": r.hd95_mm.mean,
                "gap_recovered_dice": r.gap_dice,
                "gap_recovered_small": r.gap_small,
            }
        )
    return {"rows": out}


def _fmt(v: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if v is None else format(v / scale, spec) + unit


def format_table(table: dict[str, Any]) -> str:
    """The table as the terminal and ``results.md`` show it; the gap columns are percentages."""
    head = (
        f"{'model':<24}{'params':>9}{'GFLOPs/patch':>14}{'CPU s/case':>12}{'mean Dice':>11}"
        f"{'small Dice':>12}{'HD95 mm':>9}{'gap Dice':>10}{'gap small':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in table["rows"]:
        lines.append(
            f"{r['model']:<24}{_fmt(r['parameters'], '.2f', 1e6, 'M'):>9}"
            f"{_fmt(r['flops_per_patch'], '.1f', 1e9):>14}{_fmt(r['cpu_latency_s'], '.2f'):>12}"
            f"{_fmt(r['mean_dice'], '.3f'):>11}{_fmt(r['small_dice'], '.3f'):>12}"
            f"{_fmt(r['hd95_mm'], '.1f'):>9}{_gap(r, 'gap_recovered_dice'):>10}"
            f"{_gap(r, 'gap_recovered_small'):>11}"
        )
    lines.append("gap: the share of the teacher's lead over the student without KD that a student recovers, "
                 "(student - no KD) / (teacher - no KD)")
    return "\n".join(lines)


def _gap(row: dict[str, Any], key: str) -> str:
    if row["method"] in (TEACHER, NOKD):
        return ""
    v = row.get(key)
    return "n/a" if v is None else f"{100 * v:+.0f}%"


def _latency_text(profiles: dict[str, dict[str, Any]]) -> str:
    prof = next(iter(profiles.values()), None)
    if prof is None:
        return "CPU latency: not measured (the profile failed; see profile/*.log)."
    p = prof["profile"]
    shape = "x".join(map(str, p["volume_shape"]))
    volume = (
        f"the first held-out case ({shape} voxels preprocessed" if p["volume_source"].startswith("case")
        else f"one volume of twice the patch size per axis ({shape} voxels, as a scan larger than a patch"
    )
    return (
        f"CPU latency: nnU-Net sliding window on {volume}; {p['n_tiles']} tiles at step 0.5), no mirroring, "
        f"per-layer oneDNN choice as in recokd predict, {p['threads']} torch thread(s), median of "
        f"{prof['settings']['repeats']} after warm-up."
    )


def _write_outputs(
    out: Path, table: dict[str, Any], profiles: dict[str, dict[str, Any]], cfg: DemoConfig, elapsed: float
) -> None:
    text = format_table(table)
    augmentation = "nnU-Net's data augmentation" if cfg.augmentation else "no data augmentation (NoDA)"
    teacher = (
        f"reused from {cfg.teacher}" if cfg.teacher
        else f"{cfg.teacher_epochs} x {cfg.iters_per_epoch} iterations"
    )
    notes = (
        "FLOPs: torch.utils.flop_counter, 2 per multiply-add, one patch, batch 1. "
        f"{_latency_text(profiles)} Dice/HD95: "
        f"{cfg.test_cases} held-out phantoms ({'x'.join(map(str, cfg.shape))}, small structures x"
        f"{cfg.small_scale:g}), mean over foreground classes; small = the small structures (vessel, "
        "adrenal, lesion); empty-mask convention recokd-empty-v1 (HD95 NaN left out of means). "
        f"{_data_text(cfg)} "
        f"Schedules: teacher {teacher}; every student {cfg.student_epochs} x {cfg.iters_per_epoch} "
        f"iterations, seed {cfg.seed} (paired: same initialisation and data stream); {augmentation}; "
        f"optimiser {OPTIMIZER_TEXT[cfg.optimizer]}. "
        f"One seed on {cfg.test_cases} cases: the study over seeds, with the spread and the paired tests, is "
        f"benchmarks/RESULTS.md. The bench's full report: {BENCH_REPORT}."
    )
    (out / "results.md").write_text(
        f"# recokd demo\n\n```\n{text}\n```\n\n{notes}\n\nwall time: {elapsed:.0f} s\n"
    )
    (out / "results.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "table": table, "wall_time_s": elapsed, "notes": notes},
            indent=2,
            default=str,
        )
    )
    print("\n" + text + "\n\n" + notes)
    print(f"\nwall time {elapsed:.0f} s; everything is in {out} (results.md, {BENCH_REPORT}, "
          "dice_vs_latency.png, per_class_dice.png)")


def _data_text(cfg: DemoConfig) -> str:
    """What each student learns from, and the KD terms with their weights and warm-up, in words."""
    weights = method_weights_text([cfg.kd_method], cfg.kd_weight)
    terms = weights.split(": ", 1)[-1] if weights else f"lambda_max {cfg.kd_weight:g}"
    kd = f"{terms}, linear warm-up over {cfg.warmup:.0%} of the epochs"
    if not cfg.unlabelled:
        return (f"Data: the teacher and both students trained on the same {cfg.cases} labelled phantoms; "
                f"ReCo-KD {kd}.")
    assert cfg.labelled_cases is not None
    return (
        f"Data: the teacher trained on all {cfg.cases} training phantoms; every student sees the labels of "
        f"the first {cfg.labelled_cases} only (nnU-Net's fold 0 split of them into training and validation "
        f"cases) and the other {cfg.cases - cfg.labelled_cases} as unlabelled scans: 'labels only' is "
        "stock nnU-Net on the labelled cases, 'pseudo-labels' stock nnU-Net on the labelled cases + the "
        "teacher's hard segmentations of the unlabelled ones; 'ReCo-KD' is `recokd train --unlabelled "
        f"--pseudo-label-loss` ({kd}; half of each batch unlabelled patches, nnU-Net's Dice+CE on them "
        "against the teacher's hard labels besides the KD terms)."
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole workflow on generated phantoms (teacher, ReCo-KD student, no-KD student; with "
        "--labelled-cases: few labels and many unlabelled scans)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "-o", "--output", default="recokd_demo_output", help="output folder (default: %(default)s)"
    )
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing output folder first (without it, the folder of an interrupted "
                        "demo with the same settings is resumed)")
    d = DemoConfig()
    p.add_argument("--cases", type=int, default=d.cases, help="training phantoms (default: %(default)s)")
    p.add_argument(
        "--test-cases", type=int, default=d.test_cases, help="held-out phantoms (default: %(default)s)"
    )
    p.add_argument("--labelled-cases", type=int, default=d.labelled_cases,
                   help="few labels, many unlabelled scans: the students see the labels of the first K "
                        "training phantoms only, the others are their unlabelled scans (the teacher trains "
                        "on all), and a student on the teacher's pseudo-labels joins them (default: every "
                        "case labelled)")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs,
                   help="teacher epochs (default: %(default)s)")
    p.add_argument("--student-epochs", type=int, default=d.student_epochs,
                   help="epochs of each student (default: %(default)s)")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch,
                   help="training iterations per epoch (default: %(default)s)")
    p.add_argument("--val-iters", type=int, default=d.val_iters, help="validation iterations per epoch")
    p.add_argument("--kd-weight", type=float, default=d.kd_weight,
                   help="the KD weight lambda_max of ReCo-KD (with --labelled-cases the distilled student "
                        f"is {UNLABELLED_KD_METHOD}: ReCo-KD at 100 x and soft targets at 1 x it; default: "
                        "%(default)s)")
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help="fraction of the epochs over which the KD weight ramps up (default: %(default)s)")
    p.add_argument("--teacher", default=None, metavar="MODEL_FOLDER",
                   help="reuse a trained teacher instead of training one: the teacher model folder of an "
                        f"earlier demo (<its -o>/{teacher_help_path()}), only predicted and evaluated here; "
                        "it must have been trained on the same phantoms (same --cases)")
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=d.optimizer,
                   help="optimiser of the teacher and the students (default: %(default)s: AdamW as "
                        "nnU-Net's nnUNetTrainerAdam; sgd: nnU-Net's default, far slower for the narrow "
                        "students)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        cases=args.cases,
        test_cases=args.test_cases,
        labelled_cases=args.labelled_cases,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        iters_per_epoch=args.iters_per_epoch,
        val_iters=args.val_iters,
        kd_weight=args.kd_weight,
        warmup=args.warmup,
        optimizer=args.optimizer,
        threads=args.threads,
        teacher=str(Path(args.teacher).expanduser().resolve()) if args.teacher else None,
    )
    cfg.validate()  # before touching the output folder
    out = Path(args.output).expanduser().resolve()
    if args.overwrite and out.exists():
        if not (out / CONFIG_FILE).is_file() and any(out.iterdir()):
            print(f"--overwrite: {out} is not a demo folder; deleting its content")
        shutil.rmtree(out)
    run_demo(out, cfg)
    return 0
