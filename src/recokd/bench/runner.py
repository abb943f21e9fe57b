"""The parent side of ``recokd bench``: dataset, student plans, the runs (one subprocess each), profiles,
and the report. Light on imports: nnU-Net and torch run in the workers (:mod:`recokd.bench.worker`).

Folder layout (``OUT`` = ``-o``)::

    OUT/bench_config.json            the study (compared on resume) and every selection asked for
    OUT/teacher_weights.json         the digest of the teacher's weights (compared on resume:
                                     :mod:`recokd.bench.teacher_identity`)
    OUT/nnUNet_raw, nnUNet_preprocessed   --phantoms only: the generated dataset
    OUT/teacher/                     the teacher run: nnUNet_results (unless --teacher), predictions,
                                     evaluation, job.json, run.log, result.json
    OUT/runs/t<T>/<method>/seed<S>/  a student run: the same files, and agreement/ (its segmentations
                                     scored against the teacher's: :mod:`recokd.bench.agreement`)
    OUT/profile/<teacher|t<T>>.json  parameters, FLOPs, CPU latency per architecture
    OUT/labelled/, OUT/pseudo/       --labelled-cases only: the students' views of the dataset and the
                                     pseudo-label dataset (:mod:`recokd.bench.labelled`)
    OUT/runs.csv, summary.csv, results.md, dice_vs_latency.png, per_class_dice.png

A run is finished when its ``result.json`` exists (written after its evaluation); finished runs
are never repeated (unless ``--rerun``). An unfinished run is resumed: a fold with ``checkpoint_final.pth``
is only predicted and evaluated, one with ``checkpoint_latest.pth`` continues its training from it, any
other fold folder is deleted (``recokd train --overwrite``) and trained again. The runs are executed by
:mod:`recokd.bench.executors` (local worker processes, ``--jobs N`` at once) or :mod:`recokd.bench.slurm`
(one Slurm job per run); a run in flight is claimed (:mod:`recokd.bench.claims`), so that two commands
on one folder never run it twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recokd.bench import report
from recokd.bench.agreement import AGREEMENT_DIR, write_agreement
from recokd.bench.claims import CLAIM_FILE, bench_lock, describe, read_claim
from recokd.bench.config import (
    NOKD,
    PREDICTIONS_DIR,
    PSEUDO,
    RESULT_FILE,
    TEACHER,
    RunSpec,
    Selection,
    Study,
    method_weights_text,
    plan_runs,
)
from recokd.bench.executors import LocalExecutor, claim_alive, launch
from recokd.bench.labelled import (
    LabelledSplit,
    check_label_free_pool,
    extra_scans,
    split_cases,
    unlabelled_pool,
    write_labelled_views,
)
from recokd.bench.teacher_identity import TEACHER_WEIGHTS_FILE, check_teacher_identity
from recokd.environ import temporary_environ
from recokd.errors import UserError
from recokd.nnunet.layout import (
    CHECKPOINT_FINAL,
    PROGRESS_DESC_ENV,
    PROGRESS_ENV,
    SEED_ENV,
    SETTINGS_ENV,
    SHORT_ENV,
    SHORT_EPOCHS_ENV,
    SHORT_ITERS_ENV,
    SHORT_OPTIMIZER_ENV,
    SHORT_VAL_ITERS_ENV,
    data_identifier,
    env_folder,
    fold_folder_name,
    model_folder,
    parse_dataset_folder_name,
    parse_model_folder_name,
)
from recokd.report_paths import shown_path, shown_source

if TYPE_CHECKING:
    from recokd.bench.slurm import SlurmBench

#: CPU-friendly nnU-Net settings (set unless the environment has them): augmentation in the main
#: process, one export process, no torch.compile
CPU_ENV = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "0"}
PREPARED_FILE = "prepared.json"
#: in OUT/labelled: the student plans the unlabelled scans are preprocessed with (--labelled-cases)
UNLABELLED_PREPARED_FILE = "unlabelled_prepared.json"
#: files of an nnU-Net model folder a teacher given by --teacher needs, besides its fold's checkpoint
TEACHER_MODEL_FILES = ("plans.json", "dataset.json")
OUTPUT_FILES = ("runs.csv", "summary.csv", "results.md", "dice_vs_latency.png", "per_class_dice.png")


# ---------------------------------------------------------------------------- dataset


@dataclass
class Layout:
    out: Path
    dataset: str
    raw_root: Path
    preprocessed_root: Path
    test_images: Path
    test_labels: Path
    teacher_model: Path  #: Trainer__Plans__Configuration folder of the teacher
    student_plans: dict[int, str] = field(default_factory=dict)
    #: ``--labelled-cases``: the labelled/unlabelled split and its views (None: every case is labelled)
    split: LabelledSplit | None = None

    @property
    def raw_folder(self) -> Path:
        return self.raw_root / self.dataset

    @property
    def dataset_json(self) -> Path | None:
        p = self.raw_folder / "dataset.json"
        return p if p.is_file() else None


#: what the bench suggests when nnU-Net's folders are missing
_DATASET_HINT = "--dataset needs them; or use --phantoms for a generated dataset"


def resolve_user_dataset(dataset: str, plans: str, configuration: str) -> tuple[str, Path, Path]:
    """``(DatasetXXX_Name, nnUNet_raw, nnUNet_preprocessed)`` of ``--dataset``, checked to be planned and
    preprocessed for ``configuration``."""
    raw = env_folder("nnUNet_raw", _DATASET_HINT)
    pre = env_folder("nnUNet_preprocessed", _DATASET_HINT)
    from recokd.nnunet.plans import resolve_dataset_name

    with temporary_environ(nnUNet_results=None):  # the user's trained models play no part
        name = resolve_dataset_name(dataset)
    did = name[len("Dataset") : len("Dataset") + 3]
    hint = f"nnUNetv2_plan_and_preprocess -d {int(did) if did.isdigit() else name} -c {configuration}"
    if plans != "nnUNetPlans":
        hint += " -p <planner> (for plans " + plans + ")"
    plans_file = pre / name / f"{plans}.json"
    if not plans_file.is_file():
        raise UserError(
            f"--dataset {dataset}: {plans_file} does not exist, the dataset is not planned; run "
            f"`{hint}` first"
        )
    try:
        content = json.loads(plans_file.read_text(encoding="utf-8"))
        if configuration not in content["configurations"]:
            raise KeyError(configuration)
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"--dataset {dataset}: {plans_file} has no configuration {configuration!r}; run `{hint}` first"
        ) from None
    identifier = data_identifier(content, configuration)
    data = pre / name / str(identifier)
    if identifier is None or not data.is_dir() or not any(data.iterdir()):
        raise UserError(
            f"--dataset {dataset}: no preprocessed data in {data} for configuration {configuration}; "
            f"run `{hint}` first"
        )
    return name, raw, pre


def check_teacher_folder(path: str, configuration: str, fold: str) -> Path:
    """An existing teacher: nnU-Net's ``.../DatasetXXX_Name/Trainer__Plans__Configuration`` (or a fold
    folder in it)."""
    p = Path(path).expanduser().resolve()
    if p.name.startswith("fold_"):
        p = p.parent
    name = parse_model_folder_name(p.name)
    if not p.is_dir() or name is None or not p.parent.name.startswith("Dataset"):
        raise UserError(
            f"--teacher {path}: expected an nnU-Net results folder "
            "$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration"
        )
    if name.configuration != configuration:
        raise UserError(
            f"--teacher {path}: trained for configuration {name.configuration!r}, the bench uses "
            f"{configuration!r} (-c)"
        )
    needed = (*TEACHER_MODEL_FILES, f"{fold_folder_name(fold)}/{CHECKPOINT_FINAL}")
    missing = [n for n in needed if not (p / n).is_file()]
    if missing:
        raise UserError(
            f"--teacher {path}: {', '.join(missing)} missing in {p} (a teacher trained on the bench's "
            f"fold {fold}, -f, is needed)"
        )
    return p


def check_teacher_labels(teacher: Path, dataset_json: Path) -> None:
    """A teacher given to a ``--phantoms`` bench must segment the generated dataset's classes: its
    ``dataset.json`` labels must be those of ``dataset_json`` (else its outputs would be scored against
    other classes)."""
    def labels(path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads(path.read_text(encoding="utf-8"))["labels"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--teacher: cannot read the labels of {path} ({e})") from None

    own, generated = labels(teacher / "dataset.json"), labels(dataset_json)
    if own != generated:
        raise UserError(
            f"--teacher {teacher}: trained for the labels {own}, the generated phantoms have {generated}; "
            "reuse a teacher trained on phantoms of the same settings"
        )


def check_test_folders(images: Path, labels: Path, explicit: bool) -> None:
    how = (
        ""
        if explicit
        else " (default: imagesTs/labelsTs of the raw dataset; give --test-images DIR --test-labels DIR)"
    )
    for what, folder in (("test images", images), ("test labels", labels)):
        if not folder.is_dir():
            raise UserError(f"{what}: {folder} does not exist{how}")
        if not any(folder.iterdir()):
            raise UserError(f"{what}: {folder} is empty{how}")


def first_case_files(images: Path, dataset_json: Path | None) -> list[str] | None:
    """The channel files of the first test case (for the latency profile), or None if unsure."""
    if dataset_json is None:
        return None
    try:
        dj = json.loads(dataset_json.read_text(encoding="utf-8"))
        ending = dj["file_ending"]
        channels = len(dj.get("channel_names") or dj["modality"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    suffix = f"_0000{ending}"
    cases = sorted(p.name[: -len(suffix)] for p in images.glob(f"*{suffix}"))
    if not cases:
        return None
    files = [images / f"{cases[0]}_{c:04d}{ending}" for c in range(channels)]
    return [str(f) for f in files] if all(f.is_file() for f in files) else None


# ---------------------------------------------------------------------------- runner


class BenchRunner:
    """Runs a bench into ``out`` (see the module doc); :meth:`run` returns the exit code."""

    def __init__(
        self,
        out: Path,
        study: Study,
        selection: Selection,
        *,
        device: str = "cpu",
        rerun: bool = False,
        profile: bool = True,
        profile_repeats: int = 3,
        profile_threads: int | None = None,
        progress: bool = True,
        training_progress: bool = False,
        report_file: str = "results.md",
        report_dir: Path | None = None,
        print_table: bool = True,
        profile_on_test_case: bool = True,
        echo: Callable[[str], None] = print,
        executor: LocalExecutor | SlurmBench | None = None,
        report_only: bool = False,
    ):
        """``progress``: a bar over the runs; ``training_progress``: instead, each training run's own bar
        over its iterations (:mod:`recokd.nnunet.progress`) on this process's stderr, the workers'
        stderr shown rather than logged (``recokd demo``); ``report_file``: name of the Markdown report;
        ``report_dir``: where the report files go (default ``out``; e.g. a report over a subset of the
        bench's runs that leaves the main report in place); ``print_table``: print the main table at
        the end; ``profile_on_test_case``: time the sliding window on the first test case (False: on a
        synthetic volume of twice the patch per axis, i.e. several tiles, when the test cases are no
        larger than one patch); ``report_only``: start no run and profile nothing, write the report of the
        runs finished so far (the others listed as not finished)."""
        self.out = out
        self.study = study
        self.selection = selection
        self.device = device
        self.rerun = rerun
        self.profile = profile and not report_only
        self.report_only = report_only
        self.profile_repeats = profile_repeats
        self.profile_threads = profile_threads
        self.progress = progress and not training_progress
        self.training_progress = training_progress
        self.report_file = report_file
        self.report_dir = report_dir if report_dir is not None else out
        self.print_table = print_table
        self.profile_on_test_case = profile_on_test_case
        self.echo = echo
        self.executor = executor if executor is not None else LocalExecutor()
        self.failures: list[str] = []
        #: why a run is not done (exit code or job state, and its logs), for the report
        self.details: dict[RunSpec, str] = {}
        self._lock = threading.Lock()
        self._prefix: dict[RunSpec, str] = {}
        #: prints a line (run_all: above its progress bar)
        self._write: Callable[[str], None] = echo
        #: filled by :meth:`run`: the layout, every run's status, the profiles and the summary rows
        self.layout: Layout | None = None
        self.status: dict[RunSpec, str] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.rows: list[report.SummaryRow] = []

    # ------------------------------------------------------------------ environment and jobs

    def env(
        self,
        layout: Layout,
        results_root: Path,
        short_epochs: int | None = None,
        optimizer: str = "sgd",
        roots: tuple[Path, Path] | None = None,
    ) -> dict[str, str]:
        """A worker's environment; ``roots``: its ``(nnUNet_raw, nnUNet_preprocessed)`` when not the bench
        dataset's (the students' views of ``--labelled-cases``)."""
        from recokd.nnunet import add_ext_trainer_dir_to_env

        raw, pre = roots if roots is not None else (layout.raw_root, layout.preprocessed_root)
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(raw),
            nnUNet_preprocessed=str(pre),
            nnUNet_results=str(results_root),
            nnUNet_wandb_enabled="0",
            PYTHONUNBUFFERED="1",
        )
        if self.device == "cpu":
            for k, v in CPU_ENV.items():
                env.setdefault(k, v)
        env.pop(SETTINGS_ENV, None)
        env.pop(SEED_ENV, None)
        for k in SHORT_ENV:
            env.pop(k, None)
        if short_epochs is not None:
            env.update(
                **{SHORT_EPOCHS_ENV: str(short_epochs), SHORT_ITERS_ENV: str(self.study.iters_per_epoch),
                   SHORT_VAL_ITERS_ENV: str(self.study.val_iters)},
            )
            env[SHORT_OPTIMIZER_ENV] = optimizer
        add_ext_trainer_dir_to_env(env)
        return env

    def _launch(
        self, job: dict[str, Any], job_file: Path, log: Path, env: dict[str, str], show_stderr: bool = False
    ) -> int:
        """Run ``job`` in a worker on this machine (:func:`recokd.bench.executors.launch`)."""
        return launch(job, job_file, log, env, show_stderr=show_stderr)

    # ------------------------------------------------------------------ dataset and plans

    def prepare(self) -> Layout:
        study, out = self.study, self.out
        if study.phantoms is not None:
            raw, pre = out / "nnUNet_raw", out / "nnUNet_preprocessed"
            marker = out / PREPARED_FILE
            if not marker.is_file():
                for d in (raw, pre):
                    d.mkdir(parents=True, exist_ok=True)
                layout = Layout(out, study.dataset, raw, pre, raw, raw, out)
                job = {
                    "kind": "prepare",
                    "phantoms": study.phantoms,
                    "dataset_id": parse_dataset_folder_name(study.dataset)[0],
                    "dataset_name": study.dataset.split("_", 1)[1],
                    "raw_root": str(raw),
                    "preprocessed_folder": str(pre / study.dataset),
                    "configuration": study.configuration,
                    "marker": str(marker),
                }
                spec = study.phantoms
                self.echo(
                    f"writing {spec['cases']}+{spec['test_cases']} phantoms of "
                    f"{'x'.join(map(str, spec['shape']))} voxels and planning/preprocessing them with "
                    f"nnU-Net ({study.configuration}) ..."
                )
                t0 = time.perf_counter()
                log = out / "prepare.log"
                env = self.env(layout, out / TEACHER / "nnUNet_results")
                rc = self._launch(job, out / "prepare_job.json", log, env)
                if rc != 0 or not marker.is_file():
                    raise UserError(f"preparing the phantom dataset failed (exit code {rc}); see {log}")
                self.echo(f"dataset ready in {time.perf_counter() - t0:.0f} s")
        else:
            raw = env_folder("nnUNet_raw", _DATASET_HINT)
            pre = env_folder("nnUNet_preprocessed", _DATASET_HINT)
        images = Path(study.test_images) if study.test_images else raw / study.dataset / "imagesTs"
        labels = Path(study.test_labels) if study.test_labels else raw / study.dataset / "labelsTs"
        check_test_folders(images, labels, study.test_images is not None)
        if study.teacher:
            teacher = Path(study.teacher)
            if study.phantoms is not None:
                check_teacher_labels(teacher, raw / study.dataset / "dataset.json")
        else:
            teacher = model_folder(
                out / TEACHER / "nnUNet_results", study.dataset, study.stock_trainer, study.plans,
                study.configuration,
            )
        layout = Layout(out, study.dataset, raw, pre, images, labels, teacher)
        layout.student_plans = self.student_plans(layout)
        if study.labelled_cases is not None:
            layout.split = self.labelled_split(layout, study.labelled_cases)
        return layout

    def labelled_split(self, layout: Layout, k: int) -> LabelledSplit:
        """``--labelled-cases K``: the split, its views (:func:`recokd.bench.labelled.write_labelled_views`)
        and the unlabelled scans preprocessed with every student plans (a worker job, once per plans)."""
        split = self.split_of(layout, k)
        write_labelled_views(
            split, layout.raw_folder, layout.preprocessed_root / layout.dataset, self.study.fold
        )
        plans = [layout.student_plans[t] for t in self.selection.ts]
        marker = split.root / UNLABELLED_PREPARED_FILE
        done = json.loads(marker.read_text(encoding="utf-8"))["plans"] if marker.is_file() else []
        if self.selection.kd_methods and not split.label_free and not set(plans) <= set(done):
            self.echo(
                f"labelled cases: {len(split.labelled)} of {split.training_cases}; "
                f"preprocessing the {len(split.pool)} unlabelled scan(s) for the KD runs ..."
            )
            job = {
                "kind": "unlabelled",
                "scans": str(split.scans),
                "preprocessed_dataset": str(split.preprocessed_root / layout.dataset),
                "plans": sorted(set(plans) | set(done)),
                "configuration": self.study.configuration,
                "marker": str(marker),
            }
            log = split.root / "unlabelled.log"
            env = self.env(layout, self.out / TEACHER / "nnUNet_results",
                           roots=(split.raw_root, split.preprocessed_root))
            rc = self._launch(job, split.root / "unlabelled_job.json", log, env)
            if rc != 0 or not marker.is_file():
                raise UserError(f"preprocessing the unlabelled scans failed (exit code {rc}); see {log}")
        return split

    def split_of(self, layout: Layout, k: int) -> LabelledSplit:
        """The labelled cases and the unlabelled pool (``--unlabelled-images``, ``--unlabelled-cases``) of
        the bench dataset."""
        labelled, unlabelled = split_cases(layout.raw_folder, k)
        folder = Path(self.study.unlabelled_images) if self.study.unlabelled_images else None
        extra: list[str] = []
        if folder is not None:
            dataset_json = json.loads((layout.raw_folder / "dataset.json").read_text(encoding="utf-8"))
            extra = list(extra_scans(folder, dataset_json, [*labelled, *unlabelled]))
        n_training = len(labelled) + len(unlabelled)
        unlabelled, extra = unlabelled_pool(unlabelled, extra, self.study.unlabelled_cases)
        if k == 0:
            check_label_free_pool(len(unlabelled) + len(extra))
        return LabelledSplit(self.out, layout.dataset, labelled, unlabelled, extra, folder, n_training)

    def student_plans(self, layout: Layout) -> dict[int, str]:
        """Create the student plans of every t once, before any run (runs only read them)."""
        from recokd.nnunet.plans import make_student_plans

        out = {}
        with temporary_environ(
            nnUNet_raw=str(layout.raw_root),
            nnUNet_preprocessed=str(layout.preprocessed_root),
            nnUNet_results=None,
        ):
            for t in self.selection.ts:
                sp = make_student_plans(
                    layout.dataset, self.study.plans, self.study.configuration, t, c_min=self.study.c_min
                )
                out[t] = sp.identifier
                self.echo(
                    f"student plans t={t}: {sp.identifier} (widths {sp.student_widths}, "
                    f"{sp.student_params:,} parameters = 1/{sp.teacher_params / sp.student_params:.1f} "
                    "of the teacher)"
                )
        return out

    # ------------------------------------------------------------------ runs

    def model_folder(self, layout: Layout, spec: RunSpec) -> Path:
        study = self.study
        if spec.method == TEACHER:
            return layout.teacher_model
        trainer = study.stock_trainer if spec.method in (NOKD, PSEUDO) else study.kd_trainer
        return model_folder(
            spec.folder(self.out) / "nnUNet_results", layout.dataset, trainer, layout.student_plans[spec.t],
            study.configuration,
        )

    def run_job(self, layout: Layout, spec: RunSpec) -> tuple[dict[str, Any], dict[str, str]]:
        """The worker job of ``spec`` and its environment."""
        study, folder = self.study, spec.folder(self.out)
        model = self.model_folder(layout, spec)
        trainer, plans, _ = parse_model_folder_name(model.name)
        fold_folder = model / fold_folder_name(study.fold)
        short_epochs: int | None = None
        optimizer = study.optimizer
        train: dict[str, Any] | None
        seed = spec.seed
        if spec.method == TEACHER:
            seed = None if study.teacher else study.teacher_seed
            train = None if study.teacher else {"type": "stock", "plans": study.plans}
            short_epochs = None if study.teacher else study.teacher_epochs
            optimizer = study.teacher_optimizer
        elif spec.method in (NOKD, PSEUDO):
            train = {"type": "stock", "plans": plans}
            short_epochs = study.epochs
        else:
            train = {"type": "recokd", "argv": [
                "train", layout.dataset, study.configuration, study.fold,
                "--teacher", str(layout.teacher_model), "--teacher-fold", study.fold,
                "-t", str(spec.t), "-p", study.plans, "--c-min", str(study.c_min), "--method", spec.method,
                "-tr", trainer, "--seed", str(seed),
                "--epochs", str(study.epochs), "--iters-per-epoch", str(study.iters_per_epoch),
                "--val-iters", str(study.val_iters), "--kd-weight", str(study.kd_weight),
                "--schedule", study.schedule, "--warmup", str(study.warmup), "--optimizer", study.optimizer,
                "--device", self.device,
                *(arg for key, value in study.kd_options_for(spec.method).items()
                  for arg in ("--kd-option", f"{key}={json.dumps(value)}")),
            ]}
            if layout.split is not None:
                split = layout.split
                train["argv"] += ["--label-free"] if split.label_free else [
                    "--unlabelled", str(split.scans), "--unlabelled-share", str(study.unlabelled_share)
                ]
                if study.pseudo_label_loss:
                    train["argv"].append("--pseudo-label-loss")
        if train is not None and train["type"] == "stock":
            train.update(
                dataset=layout.dataset,
                configuration=study.configuration,
                fold=study.fold,
                trainer=trainer,
                device=self.device,
            )
        n_proc = "0" if self.device == "cpu" else "1"  # no worker processes for CPU inference
        job = {
            "kind": "run",
            "seed": seed,
            "train": train,
            "fold_folder": str(fold_folder),
            "predict_argv": [
                "predict", "-i", str(layout.test_images), "-o", str(folder / PREDICTIONS_DIR),
                "-d", model.parent.name, "-c", study.configuration, "-f", study.fold,
                "-tr", trainer, "-p", plans,
                "--device", self.device, "--disable-tta", "-npp", n_proc, "-nps", n_proc, "--overwrite",
            ],
            "predictions": str(folder / PREDICTIONS_DIR),
            "test_labels": str(layout.test_labels),
            "dataset_json": str(layout.dataset_json) if layout.dataset_json else None,
            "class_groups": self.class_groups(),
            "evaluation": str(folder / "evaluation"),
            "teacher_predictions": None if spec.method == TEACHER else str(self.teacher_predictions()),
            "agreement": str(folder / AGREEMENT_DIR),
            "result": str(folder / RESULT_FILE),
            "record": {
                "method": spec.method,
                "t": spec.t,
                "seed": seed,
                "device": self.device,
                "trainer": trainer,
                "plans": plans,
            },
        }
        roots = None
        split = layout.split
        if split is not None and (spec.method == PSEUDO or (split.label_free and spec.method != TEACHER)):
            # the pseudo-label dataset: the pseudo runs' and, label-free, every student's (its labels are the
            # teacher's segmentations, as `recokd train --label-free` takes them)
            roots = (split.pseudo_raw_root, split.pseudo_preprocessed_root)
            job["pseudo"] = self.pseudo_job(layout, split, plans)
        elif split is not None and spec.method != TEACHER:
            roots = (split.raw_root, split.preprocessed_root)
        env = self.env(layout, model.parent.parent, short_epochs, optimizer, roots)
        if seed is not None:  # seeds the student's initialisation and data stream (recokd.nnunet.seeding)
            env[SEED_ENV] = str(seed)
        return job, env

    def pseudo_job(self, layout: Layout, split: LabelledSplit, plans: str) -> dict[str, Any]:
        """What a run needs to make the bench's pseudo-label dataset (:func:`recokd.bench.pseudo.
        ensure_pseudo_dataset`; the first run makes it, the others find it), with the student plans
        ``plans``."""
        study = self.study
        return {
            "teacher": str(layout.teacher_model),
            "fold": study.fold,
            "scans": str(split.scans),
            "labelled": None if split.label_free else str(split.raw_root / layout.dataset),
            "raw_root": str(split.pseudo_raw_root),
            "preprocessed_root": str(split.pseudo_preprocessed_root),
            "dataset": layout.dataset,
            "source_preprocessed": str(layout.preprocessed_root / layout.dataset),
            "plans": [study.plans, plans],
            "configuration": study.configuration,
            "splits": split.pseudo_splits(),
            "device": self.device,
        }

    def run_all(self, layout: Layout) -> dict[RunSpec, str]:
        """Every planned run not finished yet, through the executor; returns ``spec -> "done" | "failed" |
        "in flight"`` (:attr:`details` says why a run is not done)."""
        from tqdm import tqdm

        runs = plan_runs(self.selection, nokd=not self.study.label_free)
        if self.rerun and any(s.method == TEACHER for s in runs):  # every run again, with today's teacher
            (self.out / TEACHER_WEIGHTS_FILE).unlink(missing_ok=True)
        finished = sum(s.method != TEACHER and (s.folder(self.out) / RESULT_FILE).is_file() for s in runs)
        self.check_teacher(layout, 0 if self.rerun else finished)
        self.status = status = {}
        self._prefix = {spec: f"[{i}/{len(runs)}] {spec.label}" for i, spec in enumerate(runs, 1)}
        self._bar = tqdm(
            total=len(runs), desc="bench", unit="run", disable=not self.progress, dynamic_ncols=True
        )
        self._write = tqdm.write if self.progress else self.echo
        pending = []
        for spec in runs:
            folder = spec.folder(self.out)
            if self.rerun and folder.exists():
                with bench_lock(self.out):
                    claim = read_claim(folder)
                    if claim is None or not claim_alive(claim):
                        shutil.rmtree(folder)
            if (folder / RESULT_FILE).is_file():
                (folder / CLAIM_FILE).unlink(missing_ok=True)  # left by a job this command did not wait for
                self._write(f"{self._prefix[spec]}: skip (done)")
                self._resolve(spec, "done")
            else:
                pending.append(spec)
        self.executor.execute(self, layout, pending)
        for spec in pending:
            if spec not in status:  # submitted, not waited for (--no-wait)
                status[spec] = "in flight"
        self._bar.close()
        return {spec: status[spec] for spec in runs}

    def finished_so_far(self) -> dict[RunSpec, str]:
        """``--report-only``: every planned run, ``"done"`` where its result is written, else ``"not
        finished"`` (nothing is started)."""
        runs = plan_runs(self.selection, nokd=not self.study.label_free)
        status = {s: "done" if (s.folder(self.out) / RESULT_FILE).is_file() else "not finished" for s in runs}
        done = sum(v == "done" for v in status.values())
        self.echo(f"report only: {done} of {len(runs)} runs finished")
        return status

    # the executor's events (recokd.bench.executors.RunEvents)

    def _resolve(self, spec: RunSpec, state: str, detail: str | None = None) -> None:
        with self._lock:
            self.status[spec] = state
            if detail is not None:
                self.details[spec] = detail
            self._bar.update()

    def note(self, spec: RunSpec, text: str) -> None:
        """A line about ``spec`` (``[i/n] label: text``)."""
        self._write(f"{self._prefix[spec]}: {text}")

    def teacher_checkpoint(self, layout: Layout) -> Path:
        """The teacher's final checkpoint (the one every KD and pseudo-label run reads)."""
        return layout.teacher_model / fold_folder_name(self.study.fold) / CHECKPOINT_FINAL

    def teacher_missing(self, layout: Layout) -> Path | None:
        """The teacher's final checkpoint if it does not exist (KD runs cannot start), else None."""
        ckpt = self.teacher_checkpoint(layout)
        return None if ckpt.is_file() else ckpt

    def check_teacher(self, layout: Layout, finished_runs: int = 0, lock: bool = True) -> None:
        """Refuse a teacher other than the one this bench's runs distilled; record it when none is recorded
        (:mod:`recokd.bench.teacher_identity`). ``lock``: under the bench lock (not where the caller may
        hold it already, e.g. the Slurm executor reporting a run)."""
        ckpt = self.teacher_checkpoint(layout)
        with bench_lock(self.out) if lock else contextlib.nullcontext():
            line = check_teacher_identity(self.out, ckpt, finished_runs)
        if line is not None:
            self._write(line)

    def no_teacher(self, spec: RunSpec, checkpoint: Path) -> None:
        self.note(spec, f"FAILED: no teacher ({checkpoint} is missing; see the teacher run above)")
        self.failures.append(f"{spec.label}: not run, the teacher is missing")
        self._resolve(spec, "failed", "not run, the teacher is missing")

    def claimed_elsewhere(self, spec: RunSpec, claim: dict[str, Any]) -> None:
        path = spec.folder(self.out) / CLAIM_FILE
        self.note(spec, f"being run by {describe(claim)} (claim {path}): not started here")
        self.failures.append(
            f"{spec.label}: being run by {describe(claim)}; run the bench again when it is over"
        )
        self._resolve(spec, "in flight", f"being run by {describe(claim)}")

    def worker_options(self, spec: RunSpec, env: dict[str, str]) -> bool:
        """Adds the training-progress variables to a run's ``env`` (``training_progress``); returns whether
        the worker's stderr goes to the terminal rather than to its log."""
        if self.training_progress:
            self._write(f"{self._prefix[spec]} ...")
            env[PROGRESS_ENV] = "1"
            env[PROGRESS_DESC_ENV] = spec.label
            env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # torch deprecation notices
        return self.training_progress

    def finished(self, spec: RunSpec, seconds: float | None, detail: str, logs: list[Path]) -> None:
        """A run's worker or job ended (after ``seconds``, if known): done if it wrote ``result.json``, else
        failed (``detail``: exit code or job state, and ``logs`` named in the messages and the report)."""
        folder = spec.folder(self.out)
        after = f" in {seconds:.0f} s" if seconds is not None else ""
        if (folder / RESULT_FILE).is_file():
            res = report.load_run_result(folder)
            self.note(spec, f"done{after} (mean Dice {res.mean_dice:.3f})")
            recorded = (self.out / TEACHER_WEIGHTS_FILE).is_file()  # by run_all, when the teacher existed
            if spec.method == TEACHER and self.layout is not None and not recorded:  # one this bench trained
                self.check_teacher(self.layout, lock=False)  # one command runs the teacher: no lock needed
            self._resolve(spec, "done")
            return
        named = f"; log: {', '.join(map(str, logs))}" if logs else ""
        where = detail + named
        took = f" after {seconds:.0f} s" if seconds is not None else ""
        self.note(spec, f"FAILED ({detail}){took}{named}")
        self.failures.append(f"{spec.label}: failed ({where})")
        self._resolve(spec, "failed", where)

    # ------------------------------------------------------------------ profiles

    def profiled_models(self, layout: Layout, status: dict[RunSpec, str]) -> list[tuple[str, Path | None]]:
        """The model folder to profile for the teacher and for each width t of a finished run: the first
        finished run of that width (the no-KD student's first) whose weights are on this machine, None where
        none has them (a bench resumed on a clone: only the runs' results are committed)."""
        archs: list[tuple[str, Path | None]] = []
        done = [s for s, v in status.items() if v == "done"]
        if any(s.method == TEACHER for s in done):
            archs.append((TEACHER, layout.teacher_model))
        weights = f"{fold_folder_name(self.study.fold)}/{CHECKPOINT_FINAL}"
        for t in self.selection.ts:
            of_t = sorted((s for s in done if s.t == t), key=lambda s: (s.method != NOKD, s.seed))
            models = [self.model_folder(layout, s) for s in of_t]
            if models:
                archs.append((f"t{t}", next((m for m in models if (m / weights).is_file()), None)))
        return archs

    def profile_all(self, layout: Layout, status: dict[RunSpec, str]) -> dict[str, dict[str, Any]]:
        """Parameters, FLOPs and CPU latency of the teacher and of each t's student architecture (the models
        of :meth:`profiled_models`; a width with no weights on this machine is not profiled)."""
        archs = self.profiled_models(layout, status)
        case = None
        if self.profile_on_test_case:
            case = first_case_files(layout.test_images, layout.dataset_json)
        profiles: dict[str, dict[str, Any]] = {}
        folder = self.out / "profile"
        for label, model in archs:
            out_file = folder / f"{label}.json"
            if self.rerun and out_file.is_file():
                out_file.unlink()
            if model is None:
                if not out_file.is_file() and self.profile:
                    self.echo(f"not profiled: {label} (no finished run of this width has its weights on this "
                              "machine)")
            elif not out_file.is_file() and self.profile:
                self.echo(f"profiling {label} ({model.name}) on the CPU ...")
                job = {
                    "kind": "profile",
                    "model": str(model),
                    "label": label,
                    "fold": self.study.fold,
                    "case_files": case,
                    "repeats": self.profile_repeats,
                    "threads": self.profile_threads,
                    "out": str(out_file),
                }
                log = folder / f"{label}.log"
                rc = self._launch(
                    job, folder / f"{label}_job.json", log, self.env(layout, model.parent.parent)
                )
                if rc != 0 or not out_file.is_file():
                    self.echo(f"profiling {label} FAILED (exit code {rc}); log: {log}")
                    self.failures.append(f"profile {label}: failed (exit code {rc}); log: {log}")
            if out_file.is_file():
                profiles[label] = json.loads(out_file.read_text(encoding="utf-8"))
        return profiles

    # ------------------------------------------------------------------ report

    def class_groups(self) -> dict[str, list[str]] | None:
        """The evaluation's class groups: ``--small-classes`` as the group ``small`` (None: the phantoms' size
        groups, from their dataset.json)."""
        return {"small": self.study.small_classes} if self.study.small_classes else None

    def teacher_predictions(self) -> Path:
        """The teacher run's segmentations of the test scans (the reference of the students' agreement)."""
        return RunSpec(TEACHER, None, None).folder(self.out) / PREDICTIONS_DIR

    def backfill_agreement(self, layout: Layout, status: dict[RunSpec, str]) -> None:
        """The agreement with the teacher (:mod:`recokd.bench.agreement`) of finished students that lack it
        (finished before it was measured), where their predictions and the teacher's are on disk."""
        teacher = self.teacher_predictions()
        todo = [s for s, v in status.items() if v == "done" and s.method != TEACHER
                and not (s.folder(self.out) / AGREEMENT_DIR / "summary.json").is_file()
                and (s.folder(self.out) / PREDICTIONS_DIR).is_dir()]
        if not todo or not teacher.is_dir():
            return
        self.echo(f"agreement with the teacher of {len(todo)} finished run(s) ...")
        for spec in todo:
            folder = spec.folder(self.out)
            write_agreement(folder / PREDICTIONS_DIR, teacher, folder / AGREEMENT_DIR,
                            dataset_json=layout.dataset_json, class_groups=self.class_groups())

    def write_report(
        self, layout: Layout, status: dict[RunSpec, str], profiles: dict[str, dict[str, Any]]
    ) -> list[report.SummaryRow]:
        self.backfill_agreement(layout, status)
        results = [report.load_run_result(s.folder(self.out)) for s, v in status.items() if v == "done"]
        rows = report.summarize(results, self.selection.methods, self.selection.ts, profiles)
        small = next((r.small_classes for r in results if r.small_classes), [])
        self.report_dir.mkdir(parents=True, exist_ok=True)
        (self.report_dir / "runs.csv").write_text(report.runs_csv(results, self.report_dir), encoding="utf-8")
        (self.report_dir / "summary.csv").write_text(report.summary_csv(rows), encoding="utf-8")
        missing = [f"{s.label}: {v}" + (f" ({self.details[s]})" if s in self.details else "")
                   for s, v in status.items() if v != "done"]
        setup = self.setup_lines(layout, results, profiles)
        text = report.results_markdown(
            rows, title=f"recokd bench: {layout.dataset}", setup=setup, small_classes=small, missing=missing
        )
        (self.report_dir / self.report_file).write_text(text, encoding="utf-8")
        prof = next(iter(profiles.values()), None)
        threads = prof["profile"]["threads"] if prof else "?"
        try:
            report.plot_dice_vs_latency(
                rows,
                self.report_dir / "dice_vs_latency.png",
                f"{layout.dataset}: mean Dice vs CPU latency ({threads} threads)",
            )
            report.plot_class_dice(rows, self.report_dir / "per_class_dice.png", small)
        except UserError as e:  # e.g. matplotlib missing: the tables are still written
            self.echo(f"charts not written: {e}")
        if self.print_table:
            self.echo("\n" + report.main_table(rows))
        return rows

    def setup_lines(
        self, layout: Layout, results: list[report.RunResult], profiles: dict[str, dict[str, Any]]
    ) -> list[str]:
        study = self.study
        n_cases = max((len(r.case_dice) for r in results), default=0)

        def shown(path: str | Path) -> str:  # paths relative to the report's folder (recokd.report_paths)
            return shown_path(path, self.report_dir)

        source = (
            f"phantoms generated by --phantoms ({study.phantoms})"
            if study.phantoms
            else shown(layout.raw_folder)
        )
        devices = sorted({r.device for r in results if r.device})
        lines = [
            f"dataset: {layout.dataset} ({source}); configuration {study.configuration}, fold {study.fold}, "
            f"plans {study.plans}",
            f"test set: {n_cases} cases, {shown(layout.test_images)} scored against "
            f"{shown(layout.test_labels)}",
            f"schedule: {study.schedule_text(shown(study.teacher) if study.teacher else None)}",
            *filter(None, [method_weights_text(self.selection.methods, study.kd_weight)]),
            f"student widths: teacher widths / 2^t (c_min {study.c_min}); "
            f"t = {', '.join(map(str, self.selection.ts))}; seeds {', '.join(map(str, self.selection.seeds))}"
            " (python random, numpy and torch seeded per run)",
            f"training device(s): {', '.join(devices) or 'n/a'}; prediction without test-time mirroring",
        ]
        if layout.split is not None:
            lines.append(self.split_line(layout.split, shown))
        prof = next(iter(profiles.values()), None)
        if prof:
            p = prof["profile"]
            lines.append(
                f"profile: CPU {prof['environment'].get('platform', '')}, {p['threads']} torch threads, "
                f"volume {'x'.join(map(str, p['volume_shape']))} "
                f"({shown_source(p['volume_source'], self.report_dir)}), "
                f"median of {prof['settings']['repeats']} runs"
            )
        lines.append("paths: relative to the folder of this report")
        return lines

    def pool_text(self, split: LabelledSplit, shown: Callable[[str | Path], str]) -> str:
        """The unlabelled pool in words (the dataset's cases, --unlabelled-images, --unlabelled-cases)."""
        study, k, n = self.study, len(split.labelled), split.training_cases
        if split.extra_folder is None and study.unlabelled_cases is None:
            return f"the other {len(split.unlabelled)} are unlabelled scans"
        extra = (
            f" + {len(split.extra)} extra scan(s) of --unlabelled-images {shown(split.extra_folder)}"
            if split.extra_folder is not None else ""
        )
        first = (
            f", the first {study.unlabelled_cases} of the pool (--unlabelled-cases; the dataset's cases "
            "first, then the extra scans, each in sorted order)"
            if study.unlabelled_cases is not None else ""
        )
        other = f"the {n} training cases" if k == 0 else f"the other {n - k} training cases"
        return f"unlabelled scans: {len(split.unlabelled)} of {other}{extra}, {len(split.pool)} in all{first}"

    def split_line(self, split: LabelledSplit, shown: Callable[[str | Path], str]) -> str:
        """The setup line of ``--labelled-cases``: labelled cases, the unlabelled pool, what each student
        gets."""
        study, fold = self.study, split.record(self.study.fold)
        k, n = len(split.labelled), split.training_cases
        n_train, n_val = len(fold["train"]), len(fold["val"])
        loss = (
            ", with --pseudo-label-loss: nnU-Net's Dice+CE on the unlabelled patches against the teacher's "
            "online hard labels besides the KD terms" if study.pseudo_label_loss else ""
        )
        where = f"split: {shown(split.root / 'split.json')}"
        if split.label_free:
            return (
                f"label-free students (--labelled-cases 0): the teacher trained on all {n} training "
                f"cases, no student sees a label; {self.pool_text(split, shown)}; '{PSEUDO}': stock "
                "nnU-Net on the teacher's hard pseudo-labels of them (no mirroring); KD runs: `recokd "
                f"train --label-free` on the same pseudo-label dataset (no label loss{loss}); both "
                "validate on agreement with the teacher: nnU-Net's 5-fold split of the pool, fold "
                f"{study.fold}, {n_train} training + {n_val} validation scans. There is no '{NOKD}' "
                f"student (no label to train it on): every method is compared with '{PSEUDO}' only, the "
                f"columns against no KD stay empty; {where}"
            )
        return (
            f"labelled cases (--labelled-cases {k}): the teacher trained on all {n} training "
            f"cases, every student sees the labels of the first {k} (sorted ids) only: {n_train} "
            f"training + {n_val} validation cases (nnU-Net's 5-fold split of them, fold {study.fold}); "
            f"{self.pool_text(split, shown)} (KD runs: `recokd train --unlabelled`, share "
            f"{study.unlabelled_share} of each batch{loss}; '{PSEUDO}': stock nnU-Net on the labelled "
            "training cases + the teacher's hard pseudo-labels of the unlabelled ones, no mirroring, same "
            f"validation cases); {where}"
        )

    def run(self) -> int:
        started = time.perf_counter()
        with bench_lock(self.out):  # one command at a time writes the dataset and the student plans
            self.layout = layout = self.prepare()
        self.status = status = self.finished_so_far() if self.report_only else self.run_all(layout)
        flying = [spec for spec, state in status.items() if state == "in flight"]
        if flying and not self.failures:  # --no-wait: the jobs were submitted
            self.echo(
                f"\n{len(flying)} run(s) in flight, {sum(v == 'done' for v in status.values())} done; run "
                "the same command again to wait for them and write the report"
            )
            return 0
        self.profiles = profiles = self.profile_all(layout, status)
        self.rows = self.write_report(layout, status, profiles)
        names = [self.report_file if n == "results.md" else n for n in OUTPUT_FILES]
        written = [n for n in names if (self.report_dir / n).exists()]
        elapsed = time.perf_counter() - started
        self.echo(f"\nwritten: {', '.join(written)} in {self.report_dir} ({elapsed:.0f} s)")
        if self.failures:
            self.echo(f"\n{len(self.failures)} failure(s):\n" + "\n".join(f"  {f}" for f in self.failures))
            return 1
        return 0
