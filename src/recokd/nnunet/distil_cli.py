"""``recokd distil``: label-free distillation of a trained nnU-Net model on a folder of the user's own scans
(:mod:`recokd.nnunet.distil`)."""

from __future__ import annotations

import argparse
import json

from recokd.cli_types import kd_option, positive_int
from recokd.nnunet.devices import add_device_argument
from recokd.nnunet.layout import CHECKPOINT_FINAL, KD_TRAINER, KD_TRAINERS
from recokd.nnunet.optim import OPTIMIZER_NAMES

_DESCRIPTION = """\
Distil the nnU-Net model in MODEL_FOLDER (a results folder .../DatasetXXX_Name/Trainer__Plans__Configuration
with plans.json, dataset.json and one or more folds) into a student with every width / 2**t, using only
the scans in -i (raw images in nnU-Net naming, CASE_0000.nii.gz ...; no labels, none of the model's
training data). In -o it makes nnU-Net's three folders: the scans with the model's (fold-ensemble)
segmentations (nnUNet_raw), the scans preprocessed with the model's own plans (nnUNet_preprocessed) and
the student (nnUNet_results), trained by nnU-Net's trainer with KD only (no label loss). nnU-Net's 5-fold
split holds a fifth of the scans out: the student's agreement with the model there (Dice of student vs
model segmentations) is reported per epoch and at the end, and picks checkpoint_best.

The student folder takes recokd predict / export / quantize and stock nnUNetv2_predict as it is (with
nnUNet_results etc. pointing into -o). An interrupted run continues with the same command plus --c.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distil`` sub-command."""
    p = subparsers.add_parser(
        "distil", help="label-free distillation of a trained nnU-Net model on your own unlabelled scans",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_FOLDER",
                   help="nnU-Net results folder .../DatasetXXX_Name/Trainer__Plans__Configuration")
    p.add_argument("-i", dest="scans", required=True, metavar="SCANS",
                   help="folder of raw scans in nnU-Net naming (at least 5)")
    p.add_argument("-o", dest="out", required=True, metavar="OUT", help="new output folder")
    p.add_argument("-t", type=int, default=2, help="width reduction exponent: widths / 2**t (default: 2)")
    p.add_argument("-f", dest="folds", nargs="+", default=None, metavar="FOLD",
                   help="the model's folds, ensembled for the segmentations and soft targets (features of "
                        "the first); default: every fold_X with the checkpoint")
    p.add_argument("-chk", "--checkpoint", default=CHECKPOINT_FINAL,
                   help="checkpoint file name in each fold (default: %(default)s)")
    p.add_argument("--fold", type=int, default=0,
                   help="nnU-Net fold of the scans the student trains on (0-4; default: 0)")
    p.add_argument("-tr", dest="trainer", choices=KD_TRAINERS, default=KD_TRAINER,
                   help="KD trainer: with nnU-Net's data augmentation (default) or without it")
    p.add_argument("--method", default="reco+logits",
                   help="KD method spec (default: %(default)s: MS-SARD + MS-CA + logit KD soft targets)")
    p.add_argument("--kd-option", type=kd_option, action="append", default=[], metavar="KEY=VALUE",
                   help="KD method option, repeatable (e.g. logits.temperature=4)")
    p.add_argument("--kd-weight", type=float, default=1.0,
                   help="the (constant) weight of the KD loss, the only loss (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: nnU-Net's 1000)")
    p.add_argument("--iters-per-epoch", type=positive_int, default=None,
                   help="training iterations per epoch (default: 250)")
    p.add_argument("--val-iters", type=positive_int, default=None,
                   help="validation iterations per epoch (default: 50)")
    p.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default=None,
                   help="nnU-Net's SGD (default) or AdamW as nnUNetTrainerAdam")
    p.add_argument("--ema", type=float, nargs="?", const=0.999, default=None, metavar="DECAY",
                   help="EMA of the student weights for validation and the final checkpoint")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the student's initialisation and data stream")
    p.add_argument("--disable-tta", action="store_true",
                   help="the model's segmentations of the scans without mirroring (8x faster on 3d models)")
    add_device_argument(p)
    p.add_argument("--c", action="store_true", help="continue an interrupted run in -o (same arguments)")
    p.set_defaults(func=_distil)


def _train_args(args: argparse.Namespace) -> list[str]:
    """The ``recokd train`` flags this call passes on."""
    out = ["-tr", args.trainer, "--method", args.method, "--kd-weight", str(args.kd_weight),
           "--schedule", "constant", "--warmup", "0"]
    out += [a for key, value in args.kd_option for a in ("--kd-option", f"{key}={json.dumps(value)}")]
    for flag in ("epochs", "iters_per_epoch", "val_iters", "optimizer", "ema", "seed"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out


def _distil(args: argparse.Namespace) -> int:
    from recokd.nnunet.devices import torch_device
    from recokd.nnunet.distil import plan_distillation, run_distillation

    torch_device(args.device)  # a bad --device is refused before anything is written
    request = plan_distillation(args.model, args.scans, args.out, t=args.t, folds=args.folds,
                                checkpoint=args.checkpoint, fold=args.fold, train_args=_train_args(args),
                                resume=args.c, mirroring=not args.disable_tta)
    summary = run_distillation(request, args.device)
    student = request.student_folder()
    print()
    per_epoch = ", ".join(f"{d:.3f}" for d in summary["per_epoch"])
    print(f"agreement with the teacher (pseudo Dice of the validation patches) per epoch: {per_epoch}")
    classes = ", ".join(f"{k} {v:.3f}" for k, v in summary["per_class"].items())
    print(f"agreement with the teacher on {summary['held_out_scans']} held-out scans (Dice of student vs "
          f"teacher segmentation): mean {summary['final']:.3f} ({classes})")
    print(f"student: {student.parent}")
    print("predict with it (nnU-Net's folders of the distillation):")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        print(f"  export {var}={request.folder(var)}")
    print(f"  recokd predict -i INPUT -o OUTPUT -d {request.dataset_name} -c {request.model.configuration} "
          f"-f {request.fold} -p {request.student_plans} -tr {request.trainer}")
    return 0
