"""The ``recokd bench`` command line (see :mod:`recokd.bench`)."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from recokd.bench.config import (
    CONFIG_FILE,
    DEFAULT_UNLABELLED_SHARE,
    NOKD,
    PHANTOM_DATASET_ID,
    PHANTOM_DATASET_NAME,
    PSEUDO,
    RESULT_FILE,
    PhantomSpec,
    Selection,
    Study,
    check_selection,
    parse_int_list,
    parse_methods,
    plan_runs,
)
from recokd.cli_types import kd_option as _kd_option
from recokd.cli_types import non_negative_int as _non_negative_int
from recokd.cli_types import positive_int as _positive_int
from recokd.errors import UserError
from recokd.nnunet.layout import KD_TRAINER_NO_DA, SHORT_TRAINER_NO_DA, dataset_folder_name, parse_fold
from recokd.nnunet.optim import OPTIMIZER_NAMES
from recokd.nnunet.settings import SCHEDULE_NAMES

if TYPE_CHECKING:
    from recokd.bench.executors import LocalExecutor
    from recokd.bench.slurm import SlurmBench

_PHANTOM_ARGS = (
    "phantom_cases", "phantom_test_cases", "phantom_shape", "phantom_seed", "phantom_small_scale"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` sub-command."""
    d, ph = Study(dataset="", phantoms=None), PhantomSpec()
    p = subparsers.add_parser(
        "bench",
        help="benchmark every KD method against the no-KD student and the teacher over seeds (resumable)",
        description=(
            "Train and score the teacher, the no-KD student and every KD method (ReCo-KD, its ablations, the "
            "baselines) for each width exponent t and seed, each run in its own process and nnUNet_results "
            "folder; write runs.csv, summary.csv, results.md (mean and sd over seeds, per-class Dice, paired "
            "Wilcoxon test against the no-KD student, gap recovered) and charts into -o. Finished runs are "
            "never repeated: run the same command again to resume."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--dataset",
        metavar="ID_OR_NAME",
        help="an nnU-Net dataset in $nnUNet_raw, planned and preprocessed for -c in $nnUNet_preprocessed",
    )
    src.add_argument(
        "--phantoms",
        action="store_true",
        help="generate a phantom dataset inside the output folder (its own nnUNet_* folders)",
    )
    p.add_argument(
        "-c", "--configuration", default=d.configuration, help="configuration (default: %(default)s)"
    )
    p.add_argument(
        "-f", "--fold", default=d.fold, help="fold of every run and of the teacher (default: %(default)s)"
    )
    p.add_argument(
        "-p",
        "--plans",
        default=d.plans,
        help="the teacher's plans identifier the student plans derive from (default: %(default)s)",
    )
    p.add_argument(
        "-o", "--output", default="recokd_bench_output", help="bench folder (default: %(default)s)"
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated KD methods (default: every registered one, see `recokd methods`); the "
        f"no-KD student and the teacher are always included; '{PSEUDO}' adds the pseudo-label student (stock "
        "nnU-Net on the labelled cases + the teacher's hard segmentations of the unlabelled ones, made once "
        "per bench; needs --labelled-cases), compared like a method and, in its own table, against every KD "
        "method; a weight suffix weighs its own term, in multiples of --kd-weight: reco:10 (ReCo-KD at 10x), "
        "reco:10+logits (ReCo-KD at 10x + logit KD at 1x; reco+logits:10 is logit KD at 10x)",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds", type=_positive_int, default=3, metavar="N", help="seeds 0..N-1 (default: %(default)s)"
    )
    seeds.add_argument("--seed-list", default=None, metavar="S,S,...", help="explicit seeds, e.g. 0,5,7")
    p.add_argument(
        "-t",
        default="2",
        metavar="T,T,...",
        help="width exponents: student widths = teacher widths / 2**t (default: %(default)s)",
    )
    p.add_argument(
        "--c-min", type=_positive_int, default=d.c_min, help="minimum stage width (default: %(default)s)"
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="PATH",
        help="an existing teacher: nnU-Net results folder DatasetXXX_Name/Trainer__Plans__Config "
        "trained on fold -f (default: the bench trains one with stock nnU-Net); with --phantoms, a "
        "teacher trained on phantoms of the same settings (e.g. the teacher/ of an earlier bench or demo)",
    )
    p.add_argument(
        "--teacher-epochs",
        type=_positive_int,
        default=d.teacher_epochs,
        help="epochs of the teacher the bench trains (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=d.epochs,
        help="epochs of every student run (default: %(default)s; nnU-Net's own schedule is 1000)",
    )
    p.add_argument(
        "--iters-per-epoch",
        type=_positive_int,
        default=d.iters_per_epoch,
        help="training iterations per epoch, students and teacher (default: %(default)s; nnU-Net: 250)",
    )
    p.add_argument(
        "--val-iters",
        type=_positive_int,
        default=d.val_iters,
        help="validation iterations per epoch (default: %(default)s; nnU-Net: 50)",
    )
    p.add_argument(
        "--kd-weight",
        type=float,
        default=d.kd_weight,
        help="lambda_max of the KD weight for every method (default: %(default)s)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULE_NAMES,
        default=d.schedule,
        help="KD weight schedule of every KD run (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="fraction of the epochs over which the KD weight ramps up (default: %(default)s)",
    )
    p.add_argument(
        "--kd-option",
        type=_kd_option,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="KD method option (JSON value) of every KD run, repeatable, as for `recokd train`: KEY goes to "
        "every method of --methods (each must take it), METHOD.KEY to that method only; e.g. "
        "--kd-option level_weights=[0,0.7,0.3] or --kd-option reco.tau=0.5 (see `recokd methods`)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZER_NAMES,
        default=d.optimizer,
        help="optimiser of every student (default: %(default)s, nnU-Net's SGD; adam: AdamW with AMSGrad "
        "as nnU-Net's nnUNetTrainerAdam, which the CPU regime's students need)",
    )
    p.add_argument(
        "--teacher-optimizer",
        choices=OPTIMIZER_NAMES,
        default=d.teacher_optimizer,
        help="optimiser of the teacher the bench trains (default: %(default)s)",
    )
    p.add_argument(
        "--no-augmentation",
        action="store_true",
        help="train every run without data augmentation (nnU-Net's NoDA variant of our trainers: "
        f"{SHORT_TRAINER_NO_DA}, {KD_TRAINER_NO_DA})",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="training and prediction device (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--test-images",
        default=None,
        metavar="DIR",
        help="test images (nnU-Net naming; default: imagesTs of the raw dataset)",
    )
    p.add_argument(
        "--test-labels",
        default=None,
        metavar="DIR",
        help="their ground truth (default: labelsTs of the raw dataset)",
    )
    p.add_argument(
        "--small-classes",
        default=None,
        metavar="NAME,NAME,...",
        help="classes of the 'small Dice' column (default: the phantoms' small structures)",
    )
    g = p.add_argument_group(
        "labelled and unlabelled cases (the teacher knows more than the labels)",
        "With --labelled-cases K, the first K training cases (sorted by case id) keep their labels and the "
        "others become unlabelled scans: the teacher still trains on every case, the students see the labels "
        f"of the K cases only. '{NOKD}' trains on the K cases (nnU-Net's 5-fold split of them, fold -f, the "
        "same for every student), every KD run gets the other cases' images as `recokd train "
        f"--unlabelled`, '{PSEUDO}' trains on the K cases + the teacher's pseudo-labels of the others (same "
        "validation cases).",
    )
    g.add_argument(
        "--labelled-cases",
        type=_non_negative_int,
        default=None,
        metavar="K",
        help="the students see the labels of the first K training cases only (K >= 5, fewer than the "
        "training cases); default: every training case is labelled. K = 0: label-free students, none sees "
        f"a label: no '{NOKD}' student, '{PSEUDO}' trains on the teacher's pseudo-labels of the whole pool, "
        "the KD runs as `recokd train --label-free` on them (needs --warmup 0)",
    )
    g.add_argument(
        "--unlabelled-share",
        type=float,
        default=None,
        metavar="F",
        help="share of unlabelled patches in each batch of the KD runs, in (0, 1) (`recokd train "
        f"--unlabelled-share`; default: {DEFAULT_UNLABELLED_SHARE}); with --labelled-cases only",
    )
    g.add_argument(
        "--unlabelled-images",
        default=None,
        metavar="DIR",
        help="extra unlabelled scans (raw images in nnU-Net naming, CASE_0000.nii.gz, the dataset's "
        "channels; case ids other than the dataset's) that join the unlabelled pool after the dataset's own "
        f"unlabelled training cases: KD runs get them too, '{PSEUDO}' their pseudo-labels too; with "
        "--labelled-cases only",
    )
    g.add_argument(
        "--unlabelled-cases",
        type=_positive_int,
        default=None,
        metavar="U",
        help="the students get the first U scans of the unlabelled pool only (the dataset's unlabelled "
        "cases in sorted order, then those of --unlabelled-images sorted); default: the whole pool; with "
        "--labelled-cases only",
    )
    g.add_argument(
        "--pseudo-label-loss",
        action="store_true",
        help="every KD run trains with `recokd train --pseudo-label-loss`: nnU-Net's Dice+CE on the "
        "unlabelled patches against the teacher's online hard labels, besides the KD terms; with "
        "--labelled-cases only",
    )
    g = p.add_argument_group("--phantoms dataset")
    g.add_argument(
        "--phantom-cases", type=_positive_int, default=None, help=f"training cases (default: {ph.cases})"
    )
    g.add_argument(
        "--phantom-test-cases",
        type=_positive_int,
        default=None,
        help=f"test cases (default: {ph.test_cases})",
    )
    g.add_argument(
        "--phantom-shape",
        type=_positive_int,
        nargs="+",
        default=None,
        metavar="N",
        help=f"volume size, one or three numbers (default: {ph.shape[0]})",
    )
    g.add_argument("--phantom-seed", type=int, default=None, help=f"generator seed (default: {ph.seed})")
    g.add_argument(
        "--phantom-small-scale",
        type=float,
        default=None,
        metavar="S",
        help=f"radius factor of the small structures, 0.5..4 (default: {ph.small_scale:g}; 2 at 32^3 "
        "gives them their 64^3 voxel sizes)",
    )
    g = p.add_argument_group("profile")
    g.add_argument(
        "--profile-repeats",
        type=_positive_int,
        default=3,
        help="timed CPU runs per architecture (default: %(default)s)",
    )
    g.add_argument(
        "--profile-threads",
        type=_positive_int,
        default=None,
        help="torch threads for the CPU latency (default: torch's default)",
    )
    g.add_argument("--no-profile", action="store_true", help="skip parameters/FLOPs/latency")
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run the selected runs (and the teacher the bench trains) again even if finished",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the output folder's content first (also one holding another bench)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report of the runs finished so far and start none (e.g. while the bench runs in "
        "another shell or on Slurm): the unfinished runs are listed as missing, the architectures not "
        "profiled yet are left out of the cost columns",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("where the runs run (see README: Running a study on a cluster)")
    g.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: worker processes on this machine; slurm: one Slurm job per run, submitted through "
        "submitit (the bench folder must be on a filesystem the compute nodes share) (default: %(default)s)",
    )
    g.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="local: N runs at once, each on its own GPU (CUDA_VISIBLE_DEVICES) when there are GPUs, "
        "else on its share of the CPU cores (RECOKD_CPU_THREADS; default: %(default)s)",
    )
    g.add_argument("--slurm-partition", default=None, help="slurm: the partition of the jobs")
    g.add_argument(
        "--slurm-gpus-per-job", type=int, default=None, metavar="N",
        help="slurm: GPUs per job (default: 1 with --device cuda/auto, else 0)",
    )
    g.add_argument(
        "--slurm-time", default="1-00:00:00", metavar="TIME",
        help="slurm: time limit per job, minutes or [D-]HH:MM:SS; a run stopped by it is requeued and "
        "continues from its last checkpoint (default: %(default)s)",
    )
    g.add_argument("--slurm-mem", default=None, metavar="MEM", help="slurm: memory per job, e.g. 32G")
    g.add_argument("--slurm-cpus", type=_positive_int, default=None, metavar="N", help="slurm: CPUs per job")
    g.add_argument(
        "--slurm-option", action="append", default=None, metavar="KEY=VALUE",
        help="slurm: a further sbatch option of every job, repeatable, e.g. --slurm-option account=myproject "
        "--slurm-option qos=normal",
    )
    g.add_argument(
        "--no-wait", action="store_true",
        help="slurm: submit the jobs and return; the same command again waits for them and writes the report",
    )
    p.add_argument(
        "--report-dir",
        metavar="DIR",
        default=None,
        help="write the report files (runs.csv, summary.csv, results.md, charts) of this selection into "
        "DIR instead of -o, e.g. a report over more seeds of a subset of the methods that leaves the "
        "bench's main report in place (default: -o)",
    )
    p.set_defaults(func=_run)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return name


def build_study(args: argparse.Namespace) -> Study:
    """The :class:`Study` of the command line (checks the dataset and the teacher)."""
    from recokd.bench.runner import check_teacher_folder, check_test_folders, resolve_user_dataset

    fold = str(parse_fold(args.fold, "-f"))
    small = [c.strip() for c in args.small_classes.split(",") if c.strip()] if args.small_classes else None
    test_images = str(Path(args.test_images).expanduser().resolve()) if args.test_images else None
    test_labels = str(Path(args.test_labels).expanduser().resolve()) if args.test_labels else None
    if args.phantoms:
        if test_images or test_labels:
            raise UserError(
                "--test-images/--test-labels apply to --dataset; --phantoms uses its generated test cases"
            )
        spec = PhantomSpec()
        if args.phantom_cases is not None:
            spec.cases = args.phantom_cases
        if args.phantom_test_cases is not None:
            spec.test_cases = args.phantom_test_cases
        if args.phantom_shape is not None:
            if len(args.phantom_shape) not in (1, 3):
                raise UserError("--phantom-shape: give one or three sizes")
            spec.shape = list(args.phantom_shape) * (3 if len(args.phantom_shape) == 1 else 1)
        if args.phantom_seed is not None:
            spec.seed = args.phantom_seed
        if args.phantom_small_scale is not None:
            spec.small_scale = float(args.phantom_small_scale)
        spec.validate()
        dataset, phantoms = dataset_folder_name(PHANTOM_DATASET_ID, PHANTOM_DATASET_NAME), asdict(spec)
    else:
        given = [f"--{a.replace('_', '-')}" for a in _PHANTOM_ARGS if getattr(args, a) is not None]
        if given:
            raise UserError(f"{', '.join(given)} apply to --phantoms only")
        dataset, raw, _pre = resolve_user_dataset(args.dataset, args.plans, args.configuration)
        phantoms = None
        check_test_folders(
            Path(test_images) if test_images else raw / dataset / "imagesTs",
            Path(test_labels) if test_labels else raw / dataset / "labelsTs",
            test_images is not None,
        )
    teacher = str(check_teacher_folder(args.teacher, args.configuration, fold)) if args.teacher else None
    study = Study(
        dataset=dataset,
        phantoms=phantoms,
        configuration=args.configuration,
        fold=fold,
        plans=args.plans,
        c_min=args.c_min,
        teacher=teacher,
        teacher_epochs=None if teacher else args.teacher_epochs,
        teacher_seed=None if teacher else 0,
        epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch,
        val_iters=args.val_iters,
        kd_weight=args.kd_weight,
        schedule=args.schedule,
        warmup=args.warmup,
        augmentation=not args.no_augmentation,
        optimizer=args.optimizer,
        teacher_optimizer=args.teacher_optimizer,
        test_images=test_images,
        test_labels=test_labels,
        small_classes=small,
        kd_options=dict(args.kd_option or []),
        labelled_cases=args.labelled_cases,
        unlabelled_share=(
            args.unlabelled_share if args.unlabelled_share is not None or args.labelled_cases in (None, 0)
            else DEFAULT_UNLABELLED_SHARE
        ),
        unlabelled_images=(
            str(Path(args.unlabelled_images).expanduser().resolve()) if args.unlabelled_images else None
        ),
        unlabelled_cases=args.unlabelled_cases,
        pseudo_label_loss=args.pseudo_label_loss,
    )
    study.validate()
    if study.labelled_cases is not None:
        check_unlabelled_pool(study, None if phantoms is not None else raw / dataset)
    return study


def check_unlabelled_pool(study: Study, raw_dataset: Path | None) -> None:
    """Some training cases are left unlabelled; the extra scans of ``--unlabelled-images`` fit the dataset
    (file ending, channels, no case id of its training cases); the pool holds ``--unlabelled-cases`` scans.
    ``raw_dataset``: the user's dataset (None: the phantoms, not generated yet)."""
    from recokd.bench.labelled import check_label_free_pool, extra_scans, split_cases, unlabelled_pool

    k = study.labelled_cases
    assert k is not None
    if raw_dataset is None:
        assert study.phantoms is not None
        n = study.phantoms["cases"]
        if k >= n:
            raise UserError(
                f"--labelled-cases {k}: the phantoms have {n} training cases (--phantom-cases); give fewer, "
                "so that some are left as unlabelled scans"
            )
        ids = [f"{PHANTOM_DATASET_NAME}_{i:03d}" for i in range(n)]  # recokd.data.phantoms' case ids
        labelled, unlabelled = ids[:k], ids[k:]
        dataset_json: dict = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}  # the phantoms'
    else:
        labelled, unlabelled = split_cases(raw_dataset, k)
        dataset_json = json.loads((raw_dataset / "dataset.json").read_text(encoding="utf-8"))
    extra: list[str] = []
    if study.unlabelled_images is not None:
        extra = list(extra_scans(Path(study.unlabelled_images), dataset_json, [*labelled, *unlabelled]))
    unlabelled, extra = unlabelled_pool(unlabelled, extra, study.unlabelled_cases)
    if study.label_free:
        check_label_free_pool(len(unlabelled) + len(extra))


def build_selection(args: argparse.Namespace) -> Selection:
    seeds = parse_int_list(args.seed_list, "--seed-list") if args.seed_list else list(range(args.seeds))
    selection = Selection(
        methods=parse_methods(args.methods), ts=parse_int_list(args.t, "-t"), seeds=seeds
    )
    selection.validate()
    return selection


def build_executor(args: argparse.Namespace) -> tuple[LocalExecutor | SlurmBench, str]:
    """The executor of ``--executor`` with its options (checked) and the training device."""
    from recokd.bench.executors import LocalExecutor, SlurmSettings, parse_sbatch_option, parse_slurm_time

    slurm_given = [
        f"--{name.replace('_', '-')}" for name in ("slurm_partition", "slurm_gpus_per_job", "slurm_mem",
                                                  "slurm_cpus", "slurm_option")
        if getattr(args, name) is not None
    ] + (["--no-wait"] if args.no_wait else [])
    if args.executor == "local":
        if slurm_given:
            raise UserError(f"{', '.join(slurm_given)} apply to --executor slurm only")
        device = _device(args.device)
        gpus: list[str] = []
        if device == "cuda":
            from recokd.bench.executors import visible_gpus

            gpus = visible_gpus()
        return LocalExecutor(jobs=args.jobs, gpus=gpus), device
    if args.jobs != 1:
        raise UserError("--jobs applies to --executor local; Slurm runs as many jobs at once as it can")
    try:
        from recokd.bench.slurm import SlurmBench, check_slurm
    except ImportError as e:
        raise UserError(
            f"--executor slurm needs submitit ({e}); install it with: pip install 'reco-kd[cluster]'"
        ) from None

    check_slurm()
    gpus_per_job = args.slurm_gpus_per_job
    if gpus_per_job is not None and gpus_per_job < 0:
        raise UserError(f"--slurm-gpus-per-job must be >= 0, got {gpus_per_job}")
    # the device is the compute nodes', not this login node's
    if args.device == "cpu":
        device = "cpu"
        gpus_per_job = gpus_per_job or 0
    else:
        if gpus_per_job == 0:
            raise UserError(
                f"--device {args.device} with --slurm-gpus-per-job 0: give --device cpu or some GPUs"
            )
        device, gpus_per_job = "cuda", gpus_per_job or 1
    settings = SlurmSettings(
        partition=args.slurm_partition,
        gpus_per_job=gpus_per_job,
        time_min=parse_slurm_time(args.slurm_time),
        mem=args.slurm_mem,
        cpus=args.slurm_cpus,
        options=dict(parse_sbatch_option(o) for o in args.slurm_option or []),
        wait=not args.no_wait,
    )
    return SlurmBench(settings), device


def _run(args: argparse.Namespace) -> int:
    from recokd.bench.config import check_or_write_config
    from recokd.bench.runner import BenchRunner

    selection = build_selection(args)
    executor, device = build_executor(args)
    out = Path(args.output).expanduser().resolve()
    report_dir = Path(args.report_dir).expanduser().resolve() if args.report_dir else None
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise UserError(f"--report-dir {report_dir}: exists and is not a folder")
    study = build_study(args)
    check_selection(study, selection)
    study.check_kd_options(selection.kd_methods)
    if args.report_only:
        check_report_only(args, out)
    if args.overwrite and out.exists():
        from recokd.bench.claims import CLAIM_FILE, describe, read_claim
        from recokd.bench.executors import claim_alive

        claims = [c for c in (read_claim(p.parent) for p in out.rglob(CLAIM_FILE)) if c and claim_alive(c)]
        if claims:
            raise UserError(
                f"--overwrite: {out} has runs in flight ({', '.join(describe(c) for c in claims)}); cancel "
                "them (scancel) or let them finish before starting the bench over"
            )
        if not (out / CONFIG_FILE).is_file() and any(out.iterdir()):
            print(f"--overwrite: {out} is not a bench folder; deleting its content")
        shutil.rmtree(out)
    resumed = check_or_write_config(out, study, selection, record=not args.report_only)
    n = len(plan_runs(selection, nokd=not study.label_free))
    print(
        f"{'resuming the' if resumed else 'new'} bench in {out}: {n} runs (teacher, then for t in "
        f"{selection.ts} and seeds {selection.seeds}: {'' if study.label_free else 'no KD + '}"
        f"{', '.join(selection.methods)}); "
        f"device {device}; {executor.summary()}"
    )
    runner = BenchRunner(
        out,
        study,
        selection,
        device=device,
        rerun=args.rerun,
        profile=not args.no_profile,
        profile_repeats=args.profile_repeats,
        profile_threads=args.profile_threads,
        progress=not args.no_progress,
        report_dir=report_dir,
        executor=executor,
        report_only=args.report_only,
    )
    return runner.run()


def check_report_only(args: argparse.Namespace, out: Path) -> None:
    """``--report-only`` needs a bench folder with a finished run, and starts nothing over."""
    if args.overwrite or args.rerun:
        raise UserError("--report-only starts no run: leave out --overwrite and --rerun")
    if not (out / CONFIG_FILE).is_file():
        raise UserError(f"--report-only: {out} holds no bench ({CONFIG_FILE} missing): run the bench first")
    if not any(out.glob(f"**/{RESULT_FILE}")):
        raise UserError(f"--report-only: no run of the bench in {out} has finished yet (no {RESULT_FILE})")
