"""``recokd demo``: the whole ReCo-KD workflow on generated data, on a CPU, in minutes.

The demo is a small preset of ``recokd bench`` (:mod:`recokd.bench`), run by the bench's own
runner: one width (t=2), one seed, ReCo-KD against the same student without KD. Its steps (each a
real component, nothing mocked):

1. write a CT-like phantom dataset in nnU-Net raw format (:mod:`recokd.data`) and plan and
   preprocess it with nnU-Net (``3d_fullres``);
2. train a teacher with stock nnU-Net training (``nnUNetTrainerShortNoDA``: nnU-Net's trainer on a
   short schedule, without data augmentation, with nnU-Net's ``nnUNetTrainerAdam`` optimiser by
   default: ``--optimizer``), or reuse one (``--teacher``: the teacher of an earlier demo, only
   predicted and evaluated here);
3. train the t=2 student without KD (stock nnU-Net training on the student plans) and distil the
   same student with ReCo-KD (``recokd train``), same schedule, same seed: the two runs differ only
   by the KD term (:mod:`recokd.nnunet.seeding`);
4. predict the held-out cases with nnU-Net's predictor, evaluate (Dice, HD95, NSD) and profile
   (parameters, FLOPs, CPU latency);
5. print one compact table (with the gap recovered) and save it, with the bench's full report, its
   CSVs and plots, in the output folder.

The output folder is a bench folder (``recokd bench``'s layout: ``teacher/``, ``runs/t2/...``, each
run with its nnU-Net folders, predictions, evaluation and ``run.log``): the user's own
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` are never touched, and an interrupted
demo resumes when the same command is run again. The regime (grid, small-structure size, no
augmentation, schedules, KD weight) is the CPU regime of ``benchmarks/RESULTS.md`` ("Choosing the
regime"), scaled down to fit in about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recokd.bench.config import CONFIG_FILE, NOKD, TEACHER, PhantomSpec, Selection, Study
from recokd.bench.report import SummaryRow
from recokd.errors import UserError
from recokd.nnunet import layout
from recokd.nnunet.layout import dataset_folder_name, model_folder_name
from recokd.nnunet.optim import OPTIMIZER_NAMES, OPTIMIZER_TEXT, check_optimizer_name

DATASET_ID = 990
DATASET_NAME = "DemoPhantoms"
DATASET = dataset_folder_name(DATASET_ID, DATASET_NAME)
CONFIGURATION = "3d_fullres"
#: the KD method of the demo's student, and the demo's names of the bench's rows
KD_METHOD = "reco"
ROW_NAMES = {TEACHER: "teacher", NOKD: "student (no KD)", KD_METHOD: "student (ReCo-KD)"}
#: the full bench report (the demo's own table is results.md)
BENCH_REPORT = "bench_results.md"


@dataclass
class DemoConfig:
    """Sizes and schedules of the demo (the defaults fit in about 15 minutes on 2 CPU cores: the
    teacher's 500 iterations take ~8 of them; see benchmarks/RESULTS.md, "Choosing the regime")."""

    cases: int = 40
    test_cases: int = 8
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
    #: optimiser of the teacher and both students (:mod:`recokd.nnunet.optim`)
    optimizer: str = "adam"
    threads: int | None = None
    teacher: str | None = None  #: a teacher model folder to reuse instead of training one

    def validate(self) -> None:
        from recokd.bench.runner import check_teacher_folder

        if self.cases < 5 or self.test_cases < 1:
            raise UserError("the demo needs --cases >= 5 (nnU-Net's 5-fold split) and --test-cases >= 1")
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
        study.validate()
        return study

    def selection(self) -> Selection:
        """One width, one seed: the no-KD student (implied) and ReCo-KD."""
        return Selection(methods=[KD_METHOD], ts=[self.t], seeds=[self.seed])


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
        print(f"training the teacher (stock nnU-Net, {cfg.teacher_epochs} x {cfg.iters_per_epoch} "
              f"iterations), then both students ({cfg.student_epochs} x {cfg.iters_per_epoch} iterations "
              "each); every run's nnU-Net log is the run.log in its folder")
    runner = BenchRunner(
        out, study, selection, device="cpu", profile_threads=cfg.threads, training_progress=True,
        report_file=BENCH_REPORT, print_table=False, profile_on_test_case=False,
    )
    if runner.run() != 0:
        raise UserError("the demo failed: " + "; ".join(runner.failures))
    table = demo_table(runner.rows)
    _write_outputs(out, table, runner.profiles, cfg, time.perf_counter() - started)
    return table


def demo_table(rows: list[SummaryRow]) -> dict[str, Any]:
    """The demo's compact table from the bench's summary rows: one row per model (teacher, no-KD
    student, ReCo-KD student) and the gap ReCo-KD recovers, ``(KD - no KD) / (teacher - no KD)``."""
    out, gap = [], {"mean_dice": None, "small_dice": None}
    for r in rows:
        out.append(
            {
                "model": ROW_NAMES[r.method],
                "parameters": r.parameters,
                "flops_per_patch": r.flops_per_patch,
                "cpu_latency_s": r.latency_s,
                "mean_dice": r.mean_dice.mean,
                "small_dice": r.small_dice.mean,
                "hd95_mm": r.hd95_mm.mean,
            }
        )
        if r.method == KD_METHOD:
            gap = {"mean_dice": r.gap_dice, "small_dice": r.gap_small}
    return {"rows": out, "gap_recovered": gap}


def _fmt(v: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "n/a" if v is None else format(v / scale, spec) + unit


def format_table(table: dict[str, Any]) -> str:
    head = (
        f"{'model':<20}{'params':>10}{'GFLOPs/patch':>14}{'CPU s/case':>12}{'mean Dice':>11}"
        f"{'small Dice':>12}{'HD95 mm':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in table["rows"]:
        lines.append(
            f"{r['model']:<20}{_fmt(r['parameters'], '.2f', 1e6, 'M'):>10}"
            f"{_fmt(r['flops_per_patch'], '.1f', 1e9):>14}{_fmt(r['cpu_latency_s'], '.2f'):>12}"
            f"{_fmt(r['mean_dice'], '.3f'):>11}{_fmt(r['small_dice'], '.3f'):>12}"
            f"{_fmt(r['hd95_mm'], '.1f'):>9}"
        )
    gap = table.get("gap_recovered") or {}
    pct = {k: "n/a (teacher not above the no-KD student)" if v is None else f"{100 * v:+.0f}%"
           for k, v in gap.items()}
    if pct:
        lines.append(
            f"gap recovered by ReCo-KD, (KD - no KD) / (teacher - no KD): mean Dice {pct['mean_dice']}, "
            f"small Dice {pct['small_dice']}"
        )
    return "\n".join(lines)


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
        f"Schedules: teacher {teacher}; both students {cfg.student_epochs} x {cfg.iters_per_epoch} "
        f"iterations, seed {cfg.seed} (paired: same initialisation and data stream); {augmentation}; "
        f"optimiser {OPTIMIZER_TEXT[cfg.optimizer]}; "
        f"ReCo-KD lambda_max {cfg.kd_weight:g}, linear warm-up over {cfg.warmup:.0%} of the epochs. "
        f"One seed: the study over seeds, with the spread, is benchmarks/RESULTS.md. The bench's full "
        f"report: {BENCH_REPORT}."
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole workflow on generated phantoms (teacher, ReCo-KD student, no-KD student)",
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
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs,
                   help="teacher epochs (default: %(default)s)")
    p.add_argument("--student-epochs", type=int, default=d.student_epochs,
                   help="epochs of each student (default: %(default)s)")
    p.add_argument("--iters-per-epoch", type=int, default=d.iters_per_epoch,
                   help="training iterations per epoch (default: %(default)s)")
    p.add_argument("--val-iters", type=int, default=d.val_iters, help="validation iterations per epoch")
    p.add_argument("--kd-weight", type=float, default=d.kd_weight,
                   help="ReCo-KD lambda_max (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=d.warmup,
                   help="fraction of the epochs over which the KD weight ramps up (default: %(default)s)")
    p.add_argument("--teacher", default=None, metavar="MODEL_FOLDER",
                   help="reuse a trained teacher instead of training one: the teacher model folder of an "
                        f"earlier demo (<its -o>/{teacher_help_path()}), only predicted and evaluated here; "
                        "it must have been trained on the same phantoms (same --cases)")
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=d.optimizer,
                   help="optimiser of the teacher and both students (default: %(default)s: AdamW as "
                        "nnU-Net's nnUNetTrainerAdam; sgd: nnU-Net's default, far slower for the narrow "
                        "students)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        cases=args.cases,
        test_cases=args.test_cases,
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
