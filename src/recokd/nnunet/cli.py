"""``recokd train``: ReCo-KD training on nnU-Net's own machinery.

``recokd train`` creates the student plans if needed, checks teacher and student, writes the KD
settings into the fold folder and calls nnU-Net's ``run_training`` with
``-tr nnUNetTrainerReCoKD -p <student plans>`` (its DDP path for ``--num-gpus > 1``). The results
land where nnU-Net puts them:
``$nnUNet_results/DatasetXXX_Name/nnUNetTrainerReCoKD__<student plans>__<configuration>/fold_X``.

Such a model is predicted by ``recokd predict`` (:mod:`recokd.deploy.predict_cli`), or by stock
``nnUNetv2_predict`` once ``nnUNet_extTrainer`` is exported.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from recokd.cli_types import kd_option as _kd_option
from recokd.cli_types import positive_int as _positive_int
from recokd.errors import UserError
from recokd.json_files import read_json
from recokd.nnunet.devices import add_device_argument, set_nnunet_threads, torch_device
from recokd.nnunet.layout import (
    CHECKPOINT_NAMES,
    KD_TRAINER,
    KD_TRAINERS,
    SEED_ENV,
    SETTINGS_ENV,
    env_folder,
    fold_folder_name,
    model_folder,
    parse_fold,
)
from recokd.nnunet.optim import OPTIMIZER_NAMES
from recokd.nnunet.settings import SCHEDULE_NAMES, settings_defaults

#: settings field -> argparse dest; the defaults of a fresh start are :class:`KDSettings`' own (a flag left
#: at ``None`` means "not given", so that ``--c`` can tell a changed flag from the saved value)
_SETTINGS_ARGS: dict[str, str] = {
    "teacher_fold": "teacher_fold",
    "teacher_checkpoint": "teacher_checkpoint",
    "method": "method",
    "method_options": "kd_option",
    "kd_weight": "kd_weight",
    "schedule": "schedule",
    "warmup": "warmup",
    "ema_decay": "ema",
    "epochs": "epochs",
    "iters_per_epoch": "iters_per_epoch",
    "val_iters": "val_iters",
    "save_every": "save_every",
    "optimizer": "optimizer",
    "unlabelled_share": "unlabelled_share",
    "label_free": "label_free",
    "pseudo_label_loss": "pseudo_label_loss",
}
#: KDSettings' defaults, for a fresh start and the --help texts
_DEFAULTS: dict[str, Any] = settings_defaults()


# ---------------------------------------------------------------------------- argument parsing


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    t = subparsers.add_parser(
        "train",
        help="distil a trained nnU-Net teacher into a width-reduced student (nnU-Net training + KD)",
        description=(
            "Train the width-scaled student of a teacher with nnU-Net's trainer plus a feature KD loss "
            "(nnUNetTrainerReCoKD). Creates the student plans <plans>_recokd_t<t> if needed; results go to "
            "$nnUNet_results/DatasetXXX_Name/nnUNetTrainerReCoKD__<student plans>__<CONFIG>/fold_<FOLD>. "
            "KD settings are stored in that folder (recokd_settings.json); --c continues with them."
        ),
    )
    t.add_argument("dataset", metavar="DATASET", help="dataset id or name, as for nnUNetv2_train")
    t.add_argument("configuration", metavar="CONFIG", help="configuration, e.g. 3d_fullres")
    t.add_argument("fold", metavar="FOLD", help="fold (0-4 or 'all')")
    t.add_argument("--teacher", default=None,
                   help="trained teacher: nnU-Net results folder Trainer__Plans__Config, a fold_X folder "
                        "or a .pth checkpoint (required unless --c)")
    t.add_argument("--teacher-fold", default=None,
                   help=f"teacher fold (default: {_DEFAULTS['teacher_fold']})")
    t.add_argument("--teacher-folds", default=None, metavar="F,F,...|all-folds",
                   help="distil from nnU-Net's fold ensemble: soft targets and the pseudo label maps of "
                        "unlabelled patches from the mean of these folds' logits (as nnU-Net ensembles "
                        "folds), features from --teacher-fold (default: the first listed); 'all-folds': "
                        "every fold_X of the teacher folder")
    t.add_argument("--teacher-checkpoint", default=None,
                   help=f"teacher checkpoint file name (default: {_DEFAULTS['teacher_checkpoint']})")
    t.add_argument("-t", type=int, default=2, help="width reduction exponent: widths / 2**t (default: 2)")
    t.add_argument("--c-min", type=int, default=4, help="minimum stage width (default: 4)")
    t.add_argument("-tr", dest="trainer", choices=KD_TRAINERS, default=KD_TRAINER,
                   help="KD trainer: with nnU-Net's data augmentation (default) or without it "
                        "(nnUNetTrainerReCoKDNoDA, the KD counterpart of nnUNetTrainerNoDA)")
    t.add_argument("--seed", type=int, default=None,
                   help="seed the student's initialisation and the data stream (RECOKD_SEED); the teacher "
                        "and the KD modules draw from their own generators, so runs of one seed differ "
                        "only by the KD term (default: unseeded, as nnU-Net)")
    t.add_argument("-p", default="nnUNetPlans",
                   help="the teacher's plans identifier the student plans derive from (default: %(default)s)")
    t.add_argument("--method", default=None,
                   help="KD method spec, e.g. reco, reco-sard, reco+logits:0.5 "
                        f"(default: {_DEFAULTS['method']})")
    t.add_argument("--kd-option", type=_kd_option, action="append", default=None, metavar="KEY=VALUE",
                   help="KD method option (JSON value), repeatable, e.g. --kd-option alpha=0.5")
    t.add_argument("--kd-weight", type=float, default=None,
                   help=f"lambda_max of the KD weight (default: {_DEFAULTS['kd_weight']})")
    t.add_argument("--schedule", choices=SCHEDULE_NAMES, default=None,
                   help=f"KD weight schedule (default: {_DEFAULTS['schedule']})")
    t.add_argument("--warmup", type=float, default=None,
                   help=f"fraction of the epochs over which lambda ramps up (default: {_DEFAULTS['warmup']})")
    t.add_argument("--ema", type=float, nargs="?", const=0.999, default=None, metavar="DECAY",
                   help="keep an EMA of the student weights (decay 0.999 if no value) for validation and the "
                        "final checkpoint")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"epochs (default: {_DEFAULTS['epochs']})")
    t.add_argument("--iters-per-epoch", type=_positive_int, default=None,
                   help=f"training iterations per epoch (default: {_DEFAULTS['iters_per_epoch']})")
    t.add_argument("--val-iters", type=_positive_int, default=None,
                   help=f"validation iterations per epoch (default: {_DEFAULTS['val_iters']})")
    t.add_argument("--save-every", type=_positive_int, default=None,
                   help=f"write checkpoint_latest.pth every N epochs (default: {_DEFAULTS['save_every']})")
    t.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=None,
                   help="the student's optimiser: nnU-Net's SGD (default) or AdamW with AMSGrad as nnU-Net's "
                        "nnUNetTrainerAdam (same learning rate, weight decay and poly schedule); the CPU "
                        "regime's students learn far faster with adam (benchmarks/RESULTS.md)")
    t.add_argument("--unlabelled", default=None, metavar="DIR",
                   help="raw unlabelled scans in nnU-Net naming (CASE_0000.nii.gz, ...) that join the "
                        "training: preprocessed with the plans by nnU-Net's preprocessor, no label loss on "
                        "them, the teacher's prediction as the KD target (docs/method.md section 8)")
    t.add_argument("--unlabelled-share", type=float, default=None, metavar="F",
                   help="share of each batch taken from the unlabelled scans, in [0, 1) "
                        f"(default: {_DEFAULTS['unlabelled_share']}; at least one patch of each kind)")
    t.add_argument("--label-free", action="store_true", default=None,
                   help="the dataset's training labels are not ground truth (e.g. the teacher's own "
                        "segmentations): no label loss, every patch distilled as unlabelled; validation then "
                        "measures agreement with those labels (needs --warmup 0)")
    t.add_argument("--pseudo-label-loss", action="store_true", default=None,
                   help="with --unlabelled or --label-free: nnU-Net's Dice+CE on the unlabelled patches "
                        "too, against the teacher's segmentation of the same patch (hard pseudo-labels made "
                        "online), besides the KD terms")
    add_device_argument(t)
    t.add_argument("--num-gpus", "-num_gpus", type=_positive_int, default=1,
                   help="GPUs for DDP training (nnU-Net's -num_gpus)")
    t.add_argument("--c", action="store_true",
                   help="continue from the fold's latest checkpoint with its saved KD settings")
    t.add_argument("--npz", action="store_true", help="also save softmax outputs of the final validation")
    t.add_argument("--overwrite", action="store_true",
                   help="delete an existing fold folder (and replace out-of-date student plans) and "
                        "start over")
    t.set_defaults(func=_train, resume_command=train_resume_command)


# ---------------------------------------------------------------------------- helpers


def fold_folder(dataset_name: str, student_plans: str, configuration: str, fold: int | str,
                trainer: str = KD_TRAINER) -> Path:
    """``$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``."""
    results = env_folder("nnUNet_results", must_exist=False)
    return model_folder(results, dataset_name, trainer, student_plans, configuration) / fold_folder_name(fold)


def _teacher_folds(args: argparse.Namespace, given: dict[str, Any]) -> None:
    """``--teacher-folds`` -> ``teacher_fold`` (feature fold) and ``teacher_ensemble_folds`` in ``given``."""
    if args.teacher_folds is None:
        return
    text = args.teacher_folds.strip()
    if text == "all-folds":
        if not args.teacher:
            raise UserError("--teacher-folds all-folds needs --teacher (the folder whose folds to use)")
        from recokd.nnunet.model_folder import resolve_folds

        folds = [int(f) for f in resolve_folds(Path(args.teacher).expanduser(), "all")]
    else:
        try:
            folds = [int(f) for f in text.split(",") if f.strip()]
        except ValueError:
            raise UserError(f"--teacher-folds: expected fold numbers like 0,1,2,3,4 or 'all-folds', "
                            f"got {text!r}") from None
    if not folds or len(set(folds)) != len(folds) or min(folds) < 0:
        raise UserError(f"--teacher-folds: expected distinct fold numbers >= 0, got {text!r}")
    feature_fold = given.get("teacher_fold", folds[0])
    if feature_fold not in folds:
        raise UserError(f"--teacher-fold {feature_fold} (the fold whose features are distilled) is not "
                        f"one of --teacher-folds {text}")
    given["teacher_fold"] = feature_fold
    given["teacher_ensemble_folds"] = [f for f in folds if f != feature_fold]


def _explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings fields given on the command line (not left at their 'not given' value)."""
    given: dict[str, Any] = {}
    for field, dest in _SETTINGS_ARGS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if field == "method_options":
            value = dict(value)
        if field == "teacher_fold":
            value = parse_fold(value, "--teacher-fold")
        given[field] = value
    _teacher_folds(args, given)
    if args.unlabelled is not None:
        given["unlabelled"] = str(Path(args.unlabelled).expanduser().resolve())
    return given


def _fresh_settings(args: argparse.Namespace, given: dict[str, Any]):
    from recokd.nnunet.settings import KDSettings

    if not args.teacher:
        raise UserError("--teacher is required to start a training (it may only be left out with --c)")
    values = {field: _DEFAULTS[field] for field in _SETTINGS_ARGS}
    values.update(given)
    settings = KDSettings(teacher=str(Path(args.teacher).expanduser().resolve()), t=args.t, c_min=args.c_min,
                          teacher_plans=args.p, **values)
    settings.validate("command line")
    return settings


def _check_resume_flags(saved, args: argparse.Namespace, given: dict[str, Any], where: Path) -> None:
    """With --c, flags that contradict the saved settings are an error (nothing is silently ignored)."""
    diffs = []
    for field, value in given.items():
        if getattr(saved, field) != value:
            diffs.append(f"{field}: given {value!r}, saved {getattr(saved, field)!r}")
    if args.teacher and Path(args.teacher).expanduser().resolve() != Path(saved.teacher).resolve():
        diffs.append(f"teacher: given {args.teacher!r}, saved {saved.teacher!r}")
    if diffs:
        raise UserError(
            f"--c continues with the KD settings saved in {where}; these flags differ: " + "; ".join(diffs)
            + ". Leave them out to continue, or start over with --overwrite."
        )


def _check_before_training(settings, student_plans: dict, configuration: str, dataset_folder: Path):
    """Everything the trainer will build, built once on the CPU before anything is written or deleted:
    the teacher and its ensemble folds (checked against the student plans), the KD method on the real
    networks' taps, and the unlabelled scans (checked against the dataset; returned as
    :class:`recokd.nnunet.unlabelled.UnlabelledScans`, or ``None``)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from recokd.nnunet.compat import check_teacher_student_compatible
    from recokd.nnunet.kd_setup import build_kd_for, kd_options
    from recokd.nnunet.plans import build_network
    from recokd.nnunet.trained_model import load_trained_model

    teacher = load_trained_model(settings.teacher, fold=settings.teacher_fold,
                           checkpoint=settings.teacher_checkpoint, device="cpu")
    with open(dataset_folder / "dataset.json", encoding="utf-8") as f:
        dataset_json = json.load(f)
    pm = PlansManager(student_plans)
    cm = pm.get_configuration(configuration)
    student = build_network(pm, cm, dataset_json)
    channels = determine_num_input_channels(pm, cm, dataset_json)
    check_teacher_student_compatible(teacher, pm, cm, dataset_json, student_num_input_channels=channels)
    print(f"teacher:        {teacher.checkpoint_path} ({teacher.trainer_name}, {teacher.configuration_name}) "
          "- compatible with the student plans")
    if settings.teacher_ensemble_folds:
        from recokd.nnunet.model_folder import check_model_folder

        folds = [settings.teacher_fold, *settings.teacher_ensemble_folds]
        # every fold trained with the teacher fold's plans, labels, channels and trainer: as compatible
        check_model_folder(settings.teacher, folds, checkpoint=settings.teacher_checkpoint)
        print(f"teacher folds:  {folds} (ensemble: mean of their logits; features of fold "
              f"{settings.teacher_fold})")
    lm = pm.get_label_manager(dataset_json)
    where = "--method / --kd-option"
    options = kd_options(settings.method, settings.method_options, lm.ignore_label, bool(lm.has_regions),
                         warn=lambda _msg: None, where=where)
    built = build_kd_for(settings.method, options, student, teacher.network, lm.num_segmentation_heads,
                         (1, channels, *cm.patch_size), where=where)
    print(f"KD method:      {settings.method} on {len(built.student_taps)} tapped stages (student channels "
          f"{built.student_channels}, teacher {built.teacher_channels})")
    if settings.unlabelled is None:
        return None
    from recokd.nnunet.unlabelled import find_unlabelled_scans, unlabelled_batch_size

    scans = find_unlabelled_scans(settings.unlabelled, dataset_folder, student_plans, configuration,
                                  dataset_json)
    n_u = unlabelled_batch_size(cm.batch_size, settings.unlabelled_share)
    print(f"unlabelled:     {len(scans.cases)} scans from {scans.source}, {n_u} of {cm.batch_size} patches "
          "per batch")
    return scans


# ---------------------------------------------------------------------------- train


def train_resume_command(args: argparse.Namespace) -> str:
    """The ``recokd train ... --c`` command that continues the run ``args`` started (or continued)."""
    import shlex

    parts = ["recokd", "train", args.dataset, args.configuration, args.fold, "-t", str(args.t)]
    if args.p != "nnUNetPlans":
        parts += ["-p", args.p]
    if args.c_min != 4:
        parts += ["--c-min", str(args.c_min)]
    if args.trainer != KD_TRAINER:
        parts += ["-tr", args.trainer]
    if args.seed is not None:
        parts += ["--seed", str(args.seed)]
    parts += ["--device", args.device]
    if args.num_gpus != 1:
        parts += ["--num-gpus", str(args.num_gpus)]
    return shlex.join([*parts, "--c"])


def _train(args: argparse.Namespace) -> int:
    from recokd.nnunet import add_ext_trainer_dir_to_env, ext_trainer_dir
    from recokd.nnunet.plans import (
        make_student_plans,
        refuse_cascade,
        resolve_dataset_name,
        student_plans_identifier,
    )
    from recokd.nnunet.settings import SETTINGS_FILE, read_settings, write_settings

    env_folder("nnUNet_preprocessed", must_exist=False)
    env_folder("nnUNet_results", must_exist=False)
    fold = parse_fold(args.fold, "FOLD")
    device = torch_device(args.device, args.num_gpus)
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be an integer >= 0, got {args.seed}")
    if args.c and args.overwrite:
        raise UserError("--c (continue) and --overwrite (start over) exclude each other")
    dataset_name = resolve_dataset_name(args.dataset)
    student_id = student_plans_identifier(args.p, args.t, args.c_min)
    out = fold_folder(dataset_name, student_id, args.configuration, fold, args.trainer)
    settings_path = out / SETTINGS_FILE
    checkpoints = [n for n in CHECKPOINT_NAMES if (out / n).is_file()]
    given = _explicit_settings(args)
    # nnU-Net resolves trainer classes (ours, and e.g. a teacher's nnUNetTrainerShort) through this
    add_ext_trainer_dir_to_env()

    resume = args.c
    if args.c:
        if settings_path.is_file():
            settings = read_settings(settings_path)
            _check_resume_flags(settings, args, given, settings_path)
        elif checkpoints:
            raise UserError(f"--c: {out} has {', '.join(checkpoints)} but no {SETTINGS_FILE}; it was not "
                            "started by recokd train. Start over with --overwrite and --teacher.")
        elif args.teacher:
            print(f"--c: nothing to continue in {out}; starting a new training")
            settings, resume = _fresh_settings(args, given), False
        else:
            raise UserError(f"--c: nothing to continue in {out} (no checkpoint, no {SETTINGS_FILE}); "
                            "start a training with --teacher")
    else:
        if checkpoints and not args.overwrite:
            raise UserError(
                f"{out} already holds {', '.join(checkpoints)}: pass --c to continue that training or "
                "--overwrite to delete the fold folder and start over"
            )
        settings = _fresh_settings(args, given)
    # every check first (nothing is written before this line)
    sp = make_student_plans(dataset_name, args.p, args.configuration, args.t, c_min=args.c_min,
                            overwrite=args.overwrite, dry_run=True)
    refuse_cascade(sp.plans, args.configuration, "recokd train", f"plans file {sp.path.parent / args.p}.json")
    print(f"student plans:  {sp.identifier} ({sp.path}; widths {sp.student_widths}, "
          f"{sp.student_params:,} parameters = 1/{sp.teacher_params / sp.student_params:.1f} of the teacher)")
    if note := sp.saturation_note():
        print(f"                {note}")
    unlabelled = _check_before_training(settings, sp.plans, args.configuration, sp.path.parent)
    if unlabelled is not None:  # writes only below $nnUNet_preprocessed/<dataset>/unlabelled; resumable
        unlabelled.preprocess(sp.plans, args.configuration,
                             read_json(sp.path.parent / "dataset.json", "preprocessed dataset.json"))

    sp.write(overwrite=args.overwrite)  # a merge of this configuration into the file needs no --overwrite
    if not resume:
        if args.overwrite and out.exists():
            shutil.rmtree(out)
            print(f"--overwrite: removed {out}")
        write_settings(settings, settings_path)
    print(f"KD settings:    {settings_path}")
    print(f"output folder:  {out}")

    from nnunetv2.run.run_training import run_training

    from recokd.atomic_files import writing_into
    from recokd.environ import temporary_environ

    set_nnunet_threads(device)
    env = {SETTINGS_ENV: str(settings_path)}  # read by the trainer (and by every DDP worker)
    if args.seed is not None:
        env[SEED_ENV] = str(args.seed)
    with temporary_environ(**env), writing_into(out):
        run_training(dataset_name, args.configuration, fold, args.trainer, student_id, num_gpus=args.num_gpus,
                     export_validation_probabilities=args.npz, continue_training=resume, device=device)

    model_folder = out.parent
    print()
    print(f"Done. Student model: {model_folder}")
    print("To predict with stock nnU-Net, let it find the trainer class:")
    print(f"  export nnUNet_extTrainer={ext_trainer_dir()}")
    print(f"  nnUNetv2_predict -i INPUT -o OUTPUT -d {dataset_name} -c {args.configuration} -f {fold} "
          f"-tr {args.trainer} -p {student_id}")
    tr = "" if args.trainer == KD_TRAINER else f" -tr {args.trainer}"
    print(f"or: recokd predict -i INPUT -o OUTPUT -d {dataset_name} -c {args.configuration} -f {fold} "
          f"-p {student_id}{tr}")
    return 0
