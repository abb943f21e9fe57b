"""``recokd profile``: parameters, FLOPs, peak memory and full-volume latency of trained models."""

from __future__ import annotations

import argparse
import sys

from recokd.cli_types import positive_int as _positive_int
from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL, parse_fold


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``profile`` sub-command."""
    p = subparsers.add_parser(
        "profile",
        help="parameters, FLOPs, peak memory and full-volume inference time of trained models, side by side",
        description=(
            "Profile trained nnU-Net models (e.g. a teacher and its ReCo-KD students): parameters, FLOPs per "
            "patch (torch.utils.flop_counter, 2 FLOPs per multiply-add), peak memory, and wall time of "
            "nnU-Net's full-volume sliding-window inference with and without mirroring (median of repeats "
            "after warm-up), on one or several backends (--backends: eager PyTorch, oneDNN, ONNX Runtime, "
            "OpenVINO fp32/int8) with the achieved GFLOP/s next to the machine's matmul rate. Ratios are "
            "against the first model. Each model runs in its own process."
        ),
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="nnU-Net results folder Trainer__Plans__Configuration, fold_X folder or .pth "
                        "checkpoint; LABEL=PATH names it (default label: the results folder name)")
    p.add_argument("--fold", "-f", default="0", help="fold (default: %(default)s)")
    p.add_argument("--checkpoint", "-chk", default=CHECKPOINT_FINAL,
                   help="checkpoint file name (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: %(default)s)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads (default: torch's default for this machine)")
    p.add_argument("--repeats", type=_positive_int, default=3,
                   help="timed runs per mode (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up runs per mode (default: %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--volume-shape", type=_positive_int, nargs="+", metavar="N",
                     help="synthetic volume size in preprocessed space, e.g. 128 128 128 (default: twice "
                          "the first model's patch size; a 2d model: 8 slices of twice its patch)")
    src.add_argument("--case", nargs="+", metavar="FILE",
                     help="a real image (one file per input channel): read and preprocessed by each "
                          "model's nnU-Net reader and preprocessor, its sliding window and nnU-Net's export "
                          "(resampling back, argmax, writing) timed too: the per-stage split recokd predict "
                          "spends on it")
    p.add_argument("--resampling", choices=("nnunet", "torch"), default="nnunet",
                   help="with --case: the resampling of the image and the class maps, as recokd predict "
                        "--resampling (default: %(default)s, the plans' own)")
    p.add_argument("--step-size", type=float, default=0.5,
                   help="sliding window tile step (default: %(default)s)")
    mirror = p.add_mutually_exclusive_group()
    mirror.add_argument("--mirroring", choices=("both", "on", "off"), default="both",
                        help="time with mirroring TTA on, off or both (default: %(default)s)")
    mirror.add_argument("--no-mirroring", dest="mirroring", action="store_const", const="off",
                        help="same as --mirroring off")
    p.add_argument("--eval-json", action="append", default=[], metavar="LABEL=FILE",
                   help="evaluation summary of a model (summary.json of recokd evaluate or nnU-Net, or "
                        "{'mean_dice': x}); repeatable; adds Dice to the table and draws "
                        "dice_vs_latency.png in -o")
    p.add_argument("-o", "--output", default=None, metavar="OUT_DIR",
                   help="folder for profile.json, profile.csv (and dice_vs_latency.png)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    backends = p.add_mutually_exclusive_group()
    backends.add_argument("--backends", default=None, metavar="LIST",
                          help="who runs the network, side by side: 'all' or a comma-separated list of "
                               "torch, torch-onednn, onnxruntime, openvino, openvino-int8 (default: "
                               "torch-onednn on the CPU, torch on CUDA); a backend whose package is missing "
                               "is skipped with a note")
    backends.add_argument("--stock-cpu-convs", action="store_true",
                          help="same as --backends torch: PyTorch's default 3D convolution kernels (stock "
                               "nnU-Net) instead of the per-layer oneDNN choice that recokd predict uses")
    p.add_argument("--calibration-cases", type=_positive_int, default=8, metavar="N",
                   help="openvino-int8: preprocessed training cases to calibrate on, 4 tiles each (default: "
                        "%(default)s; synthetic tiles, for timing only, where $nnUNet_preprocessed has none)")
    p.add_argument("--no-isolate", action="store_true",
                   help="profile all models in this process (faster start; peak memory less clean)")
    p.set_defaults(func=_profile)


def _parse_eval_json(entries: list[str], labels: list[str], paths: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, file = entry.partition("=")
        if not sep or not key or not file:
            raise UserError(f"--eval-json expects LABEL=FILE, got {entry!r}")
        if key in labels:
            label = key
        elif key in paths:
            label = labels[paths.index(key)]
        else:
            raise UserError(f"--eval-json {entry!r}: {key!r} is not a model label; labels: "
                            f"{', '.join(labels)}")
        out[label] = file
    return out


def _backends(args: argparse.Namespace) -> tuple[str, ...] | None:
    from recokd.deploy.backends import parse_backends

    if args.stock_cpu_convs:
        return ("torch",)
    return None if args.backends is None else parse_backends(args.backends)


def _profile(args: argparse.Namespace) -> int:
    from recokd.evaluation.profile import ModelSpec, ProfileSettings, profile_models
    from recokd.evaluation.profile_report import format_table, read_mean_dice, write_report

    specs = [ModelSpec.parse(m) for m in args.models]
    eval_files = _parse_eval_json(args.eval_json, [s.label for s in specs], [s.path for s in specs])
    dice = {label: read_mean_dice(f) for label, f in eval_files.items()}  # fail early on bad files
    if dice and args.output is None:
        raise UserError("--eval-json draws dice_vs_latency.png into the -o folder: give -o OUT_DIR")
    fold = parse_fold(args.fold, "--fold")
    settings = ProfileSettings(
        device=args.device, threads=args.threads, repeats=args.repeats, warmup=args.warmup,
        step_size=args.step_size, mirroring=("off", "on") if args.mirroring == "both" else (args.mirroring,),
        volume_shape=tuple(args.volume_shape) if args.volume_shape else None,
        case_files=tuple(args.case) if args.case else None, fold=fold, checkpoint=args.checkpoint,
        isolate=not args.no_isolate, backends=_backends(args), calibration_cases=args.calibration_cases,
        resampling=args.resampling,
    )
    settings.validate()
    if args.output is not None:  # refuse early, not after minutes of timing
        from pathlib import Path

        from recokd.evaluation.profile_report import OUTPUT_FILES

        existing = [str(Path(args.output) / n) for k, n in OUTPUT_FILES.items()
                    if (k != "png" or dice) and (Path(args.output) / n).exists()]
        if existing and not args.overwrite:
            raise UserError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    report = profile_models(specs, settings, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_table(report, dice))
    if args.output is not None:
        written = write_report(report, args.output, dice, overwrite=args.overwrite)
        print()
        for path in written.values():
            print(f"wrote {path}")
    return 0
