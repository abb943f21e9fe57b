"""``recokd demo``: the whole ReCo-KD workflow on generated data, on a CPU, in minutes.

Steps (each a real component, nothing mocked):

1. write a CT-like phantom dataset in nnU-Net raw format (:mod:`recokd.data`);
2. plan and preprocess it with nnU-Net (``3d_fullres``);
3. train a teacher with stock nnU-Net training (``nnUNetTrainerShortNoDA``: nnU-Net's trainer on a
   short schedule, without data augmentation, with nnU-Net's ``nnUNetTrainerAdam`` optimiser by
   default: ``--optimizer``), or reuse one (``--teacher``: a teacher folder of an earlier demo,
   copied into this one);
4. distil a t=2 student with ReCo-KD (``recokd train``) and train the same student without KD
   (stock nnU-Net training on the student plans, same schedule, same seed: the two runs differ
   only by the KD term, see :mod:`recokd.nnunet.seeding`);
5. predict the held-out cases with nnU-Net's predictor, evaluate (Dice, HD95, NSD) and profile
   (parameters, FLOPs, CPU latency);
6. print one table and save it, with its plots, in the output folder.

All nnU-Net folders live inside the output folder: the user's own ``nnUNet_raw`` /
``nnUNet_preprocessed`` / ``nnUNet_results`` are never touched (the environment variables are
set for this process only). The regime (grid, small-structure size, no augmentation, schedules,
KD weight) is the CPU regime of ``benchmarks/RESULTS.md`` ("Choosing the regime"), scaled down to
fit in about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recokd.bench.stats import gap_recovered
from recokd.errors import UserError
from recokd.nnunet import layout
from recokd.nnunet.layout import (
    CHECKPOINT_FINAL,
    PROGRESS_DESC_ENV,
    PROGRESS_ENV,
    SEED_ENV,
    SETTINGS_ENV,
    SHORT_EPOCHS_ENV,
    SHORT_ITERS_ENV,
    SHORT_OPTIMIZER_ENV,
    SHORT_VAL_ITERS_ENV,
    fold_folder_name,
    model_folder_name,
    parse_model_folder_name,
)
from recokd.nnunet.optim import OPTIMIZER_NAMES, OPTIMIZER_TEXT, check_optimizer_name
from recokd.nnunet.preprocess import plan_and_preprocess

DATASET_ID = 990
DATASET_NAME = "DemoPhantoms"
CONFIGURATION = "3d_fullres"
#: trainers of the teacher / no-KD student and of the KD student, by ``DemoConfig.augmentation``
TEACHER_CHECKPOINT = CHECKPOINT_FINAL
#: files of an nnU-Net model folder a reused teacher needs (besides fold_0/checkpoint_final.pth)
_MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")


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
        if self.teacher is not None:
            check_teacher_folder(Path(self.teacher))

    @property
    def stock_trainer(self) -> str:
        return layout.short_trainer(self.augmentation)

    @property
    def kd_trainer(self) -> str:
        return layout.kd_trainer(self.augmentation)


def check_teacher_folder(folder: Path) -> None:
    """A teacher to reuse: an nnU-Net model folder ``Trainer__Plans__3d_fullres`` with fold 0 trained,
    e.g. ``<earlier demo>/nnUNet_results/Dataset990_DemoPhantoms/<trainer>__nnUNetPlans__3d_fullres``."""
    name = parse_model_folder_name(folder.name)
    if not folder.is_dir() or name is None or name.configuration != CONFIGURATION:
        raise UserError(
            f"--teacher {folder}: expected an nnU-Net model folder Trainer__Plans__{CONFIGURATION}, e.g. "
            f"<earlier demo output>/nnUNet_results/Dataset{DATASET_ID:03d}_{DATASET_NAME}/"
            f"{model_folder_name(layout.short_trainer(False), 'nnUNetPlans', CONFIGURATION)}"
        )
    needed = (*_MODEL_FILES, f"{fold_folder_name(0)}/{TEACHER_CHECKPOINT}")
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise UserError(f"--teacher {folder}: {', '.join(missing)} missing (a trained fold 0 is needed)")


class _Stage:
    """Runs the numbered stages: a header, the stage's own output (nnU-Net's logs) sent to
    ``logs/<n>_<name>.log`` so that only headers and progress bars reach the terminal, the wall
    time; on failure, the log's last lines and its path."""

    def __init__(self, total: int, log_dir: Path):
        self.total = total
        self.index = 0
        self.started = time.perf_counter()
        self.log_dir = log_dir

    def __call__(self, title: str, fn: Callable[[], Any], progress: str | None = None) -> Any:
        """``progress``: label of the training progress bar of this stage (``RECOKD_PROGRESS``)."""
        self.index += 1
        print(f"\n[{self.index}/{self.total}] {title} ...", flush=True)
        log = self.log_dir / f"{self.index}_{_slug(title.split(' (')[0])}.log"
        t0 = time.perf_counter()
        os.environ[PROGRESS_DESC_ENV] = progress or title
        try:
            with _stdout_to(log):
                result = fn()
        except BaseException:
            lines = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
            print("\n".join(lines) + f"\n[{self.index}/{self.total}] {title}: FAILED (full log: {log})",
                  flush=True)
            raise
        print(f"[{self.index}/{self.total}] {title}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        return result

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@contextlib.contextmanager
def _stdout_to(path: Path):
    """Redirect file descriptor 1 (this process and the worker processes it starts) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(fd)
        os.close(saved)


def _set_environment(out: Path, cfg: DemoConfig) -> dict[str, Path]:
    from recokd.nnunet import add_ext_trainer_dir_to_env

    dirs = {
        "raw": out / "nnUNet_raw",
        "preprocessed": out / "nnUNet_preprocessed",
        "results": out / "nnUNet_results",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_raw"] = str(dirs["raw"])
    os.environ["nnUNet_preprocessed"] = str(dirs["preprocessed"])
    os.environ["nnUNet_results"] = str(dirs["results"])
    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # augmentation in the main process: 2-core machines
    os.environ.setdefault("nnUNet_compile", "0")
    os.environ.setdefault("nnUNet_wandb_enabled", "0")
    os.environ.pop(SETTINGS_ENV, None)
    os.environ[PROGRESS_ENV] = "1"  # tqdm bars over training iterations (recokd.nnunet.progress)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # torch deprecation notices in workers
    add_ext_trainer_dir_to_env()
    return dirs


def _train_stock(plans: str, epochs: int, cfg: DemoConfig) -> None:
    import torch
    from nnunetv2.run.run_training import run_training


    os.environ[SHORT_EPOCHS_ENV] = str(epochs)
    os.environ[SHORT_ITERS_ENV] = str(cfg.iters_per_epoch)
    os.environ[SHORT_VAL_ITERS_ENV] = str(cfg.val_iters)
    os.environ[SHORT_OPTIMIZER_ENV] = cfg.optimizer
    os.environ[SEED_ENV] = str(cfg.seed)
    run_training(str(DATASET_ID), CONFIGURATION, 0, cfg.stock_trainer, plans, device=torch.device("cpu"))


def _copy_teacher(source: Path, results: Path) -> Path:
    """Copy a trained teacher (its fold 0 final checkpoint and model files) into this demo's results."""
    target = results / source.name
    (target / "fold_0").mkdir(parents=True, exist_ok=True)
    for name in _MODEL_FILES:
        shutil.copy2(source / name, target / name)
    shutil.copy2(source / "fold_0" / TEACHER_CHECKPOINT, target / "fold_0" / TEACHER_CHECKPOINT)
    print(f"copied {source} -> {target}")
    return target


def _run_cli(argv: list[str]) -> None:
    from recokd.cli import main

    rc = main(argv)
    if rc != 0:
        raise UserError(f"`recokd {' '.join(argv)}` failed with exit code {rc}")


def run_demo(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Run every step into ``out``; returns the results table (also written to ``out``)."""
    cfg.validate()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    dirs = _set_environment(out, cfg)
    dataset = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    student_plans = f"nnUNetPlans_recokd_t{cfg.t}"
    results = dirs["results"] / dataset
    stock_teacher = model_folder_name(cfg.stock_trainer, "nnUNetPlans", CONFIGURATION)
    teacher_name = Path(cfg.teacher).name if cfg.teacher else stock_teacher
    models = {
        "teacher": results / teacher_name,
        "student (no KD)": results / model_folder_name(cfg.stock_trainer, student_plans, CONFIGURATION),
        "student (ReCo-KD)": results / model_folder_name(cfg.kd_trainer, student_plans, CONFIGURATION),
    }
    stage = _Stage(total=8, log_dir=out / "logs")
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch deprecation notices

    from recokd.data.phantoms import write_phantom_dataset

    raw = stage(
        f"writing {cfg.cases}+{cfg.test_cases} phantoms of {'x'.join(map(str, cfg.shape))} voxels",
        lambda: write_phantom_dataset(
            DATASET_ID,
            num_cases=cfg.cases,
            num_test_cases=cfg.test_cases,
            seed=cfg.seed,
            shape=cfg.shape,
            small_scale=cfg.small_scale,
            name=DATASET_NAME,
            raw_dir=dirs["raw"],
            progress=True,
        ),
    )
    stage("nnU-Net planning and preprocessing (3d_fullres)",
          lambda: plan_and_preprocess(DATASET_ID, CONFIGURATION))
    if cfg.teacher:
        stage(f"reusing the teacher {cfg.teacher}", lambda: _copy_teacher(Path(cfg.teacher), results))
    else:
        stage(
            f"training the teacher (stock nnU-Net, {cfg.teacher_epochs} x {cfg.iters_per_epoch} iterations)",
            lambda: _train_stock("nnUNetPlans", cfg.teacher_epochs, cfg),
            progress="teacher",
        )
    stage(
        f"student plans t={cfg.t}",
        lambda: _run_cli(
            ["student-plans", str(DATASET_ID), "-p", "nnUNetPlans", "-c", CONFIGURATION, "-t", str(cfg.t)]
        ),
    )
    # KD first: a reused teacher that does not fit this demo's data is refused before anything trains
    stage(
        f"distilling the student with ReCo-KD ({cfg.student_epochs} x {cfg.iters_per_epoch} iterations)",
        lambda: _run_cli(
            [
                "train", str(DATASET_ID), CONFIGURATION, "0",
                "--teacher", str(models["teacher"]), "-t", str(cfg.t), "-tr", cfg.kd_trainer,
                "--seed", str(cfg.seed),
                "--epochs", str(cfg.student_epochs), "--iters-per-epoch", str(cfg.iters_per_epoch),
                "--val-iters", str(cfg.val_iters),
                "--kd-weight", str(cfg.kd_weight), "--warmup", str(cfg.warmup),
                "--optimizer", cfg.optimizer, "--device", "cpu",
            ]
        ),
        progress="student, ReCo-KD",
    )
    stage(
        f"training the student without KD ({cfg.student_epochs} x {cfg.iters_per_epoch} iterations)",
        lambda: _train_stock(student_plans, cfg.student_epochs, cfg),
        progress="student, no KD",
    )

    predictions = out / "predictions"
    evaluations: dict[str, dict[str, Any]] = {}

    def predict_and_evaluate() -> None:
        from tqdm import tqdm

        from recokd.evaluation.evaluate import evaluate_folders

        for name, folder in tqdm(models.items(), desc="models", unit="model", file=sys.stderr):
            trainer, plans, _ = parse_model_folder_name(folder.name)
            pred = predictions / _slug(name)
            _run_cli(
                [
                    "predict",
                    "-i",
                    str(raw / "imagesTs"),
                    "-o",
                    str(pred),
                    "-d",
                    str(DATASET_ID),
                    "-c",
                    CONFIGURATION,
                    "-f",
                    "0",
                    "-tr",
                    trainer,
                    "-p",
                    plans,
                    "--device",
                    "cpu",
                    "--disable-tta",
                    "-npp",
                    "1",
                    "-nps",
                    "1",
                    "--overwrite",
                ]
            )
            result = evaluate_folders(pred, raw / "labelsTs", dataset_json=raw / "dataset.json")
            result.write(out / "evaluation" / _slug(name), overwrite=True)
            evaluations[name] = result.summary()

    stage("predicting and evaluating the held-out cases", predict_and_evaluate)

    def profile():
        from recokd.evaluation.profile import ModelSpec, ProfileSettings, profile_models

        settings = ProfileSettings(
            device="cpu",
            threads=cfg.threads,
            repeats=3,
            mirroring=("off",),
            volume_shape=None,  # twice the patch per axis: several sliding-window tiles, as on real scans
        )
        return profile_models([ModelSpec(str(p), name) for name, p in models.items()], settings)

    report = stage("profiling (parameters, FLOPs, CPU latency)", profile)
    table = _table(models, evaluations, report)
    _write_outputs(out, table, evaluations, report, cfg, stage.elapsed())
    return table


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def _group_dice(summary: dict[str, Any], group: str) -> float | None:
    groups = summary.get("groups") or {}
    entry = groups.get(group) or {}
    dice = entry.get("dice") if isinstance(entry, dict) else None
    if isinstance(dice, dict):
        return dice.get("mean")
    return dice


def _table(models: dict[str, Path], evaluations: dict[str, dict[str, Any]], report) -> dict[str, Any]:
    rows = []
    by_label = {m.label: m for m in report.models}
    for name in models:
        prof = by_label[name]
        summ = evaluations[name]
        fg = summ["foreground_mean"]
        rows.append(
            {
                "model": name,
                "parameters": prof.parameters,
                "flops_per_patch": prof.flops_per_patch,
                "cpu_latency_s": prof.timings["off"].median_s,
                "mean_dice": _mean(fg.get("dice")),
                "small_dice": _group_dice(summ, "small"),
                "hd95_mm": _mean(fg.get("hd95_mm")),
            }
        )
    by_model = {r["model"]: r for r in rows}
    gap = {
        key: gap_recovered(
            by_model["student (ReCo-KD)"][key], by_model["student (no KD)"][key], by_model["teacher"][key]
        )
        for key in ("mean_dice", "small_dice")
    }
    return {"rows": rows, "gap_recovered": gap}


def _mean(value: Any) -> float | None:
    if isinstance(value, dict):
        return value.get("mean")
    return value


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_table(table: dict[str, Any]) -> str:
    head = (
        f"{'model':<20}{'params':>10}{'GFLOPs/patch':>14}{'CPU s/case':>12}{'mean Dice':>11}"
        f"{'small Dice':>12}{'HD95 mm':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in table["rows"]:
        lines.append(
            f"{r['model']:<20}{r['parameters'] / 1e6:>9.2f}M{r['flops_per_patch'] / 1e9:>14.1f}"
            f"{r['cpu_latency_s']:>12.2f}{_fmt(r['mean_dice'], '.3f'):>11}{_fmt(r['small_dice'], '.3f'):>12}"
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


def _write_outputs(out: Path, table, evaluations, report, cfg: DemoConfig, elapsed: float) -> None:
    from recokd.evaluation.plots import dice_vs_latency

    text = format_table(table)
    augmentation = "nnU-Net's data augmentation" if cfg.augmentation else "no data augmentation (NoDA)"
    teacher = (
        f"reused from {cfg.teacher}" if cfg.teacher
        else f"{cfg.teacher_epochs} x {cfg.iters_per_epoch} iterations"
    )
    notes = (
        "FLOPs: torch.utils.flop_counter, 2 per multiply-add, one patch, batch 1. CPU latency: nnU-Net "
        "sliding window on one volume of twice the patch size per axis (27 tiles at step 0.5), no "
        "mirroring, per-layer oneDNN choice as in recokd predict, median of 3 after warm-up. Dice/HD95: "
        f"{cfg.test_cases} held-out phantoms ({'x'.join(map(str, cfg.shape))}, small structures x"
        f"{cfg.small_scale:g}), mean over foreground classes; small = the small structures (vessel, "
        "adrenal, lesion); empty-mask convention recokd-empty-v1 (HD95 NaN left out of means). "
        f"Schedules: teacher {teacher}; both students {cfg.student_epochs} x {cfg.iters_per_epoch} "
        f"iterations, seed {cfg.seed} (paired: same initialisation and data stream); {augmentation}; "
        f"optimiser {OPTIMIZER_TEXT[cfg.optimizer]}; "
        f"ReCo-KD lambda_max {cfg.kd_weight:g}, linear warm-up over {cfg.warmup:.0%} of the epochs. "
        "One seed: the study over seeds, with the spread, is benchmarks/RESULTS.md."
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
    points = [
        {"name": r["model"], "latency_s": r["cpu_latency_s"], "dice": r["mean_dice"]}
        for r in table["rows"]
        if r["mean_dice"] is not None
    ]
    if points:
        dice_vs_latency(points, out / "dice_vs_latency.png", title="recokd demo (CPU)", overwrite=True)
    print("\n" + text + "\n\n" + notes)
    print(f"\nwall time {elapsed:.0f} s; everything is in {out}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole workflow on generated phantoms (teacher, ReCo-KD student, no-KD student)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "-o", "--output", default="recokd_demo_output", help="output folder (default: %(default)s)"
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing output folder first")
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
                        "earlier demo (<its -o>/nnUNet_results/Dataset990_DemoPhantoms/"
                        "nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres), copied into this output folder; "
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
    out = Path(args.output).resolve()
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise UserError(
                f"output folder {out} exists and is not empty; pass --overwrite to replace it "
                "or -o to choose another folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    run_demo(out, cfg)
    return 0
