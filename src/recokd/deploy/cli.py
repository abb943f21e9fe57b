"""``recokd export`` (ONNX export + check) and ``recokd predict-onnx`` (CPU inference on ONNX Runtime)."""

from __future__ import annotations

import argparse

from recokd.cli_types import positive_int as _positive_int
from recokd.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``predict-onnx`` sub-commands."""
    from recokd.deploy.onnx_export import DEFAULT_OPSET, DEFAULT_TOLERANCE, EXPORTERS

    e = subparsers.add_parser(
        "export",
        help="export a trained nnU-Net/ReCo-KD model to ONNX (checked against PyTorch)",
        description=(
            "Export the network of a trained nnU-Net model (deep supervision off, dynamic batch and spatial "
            "axes) to ONNX, check it against PyTorch with ONNX Runtime on a random patch-sized input, and "
            "write OUT.onnx.json next to it (plans, dataset.json, patch size, classes, check result): the "
            ".onnx file and its sidecar are all 'recokd predict-onnx' needs."
        ),
    )
    e.add_argument("model", metavar="MODEL_DIR",
                   help="nnU-Net results folder Trainer__Plans__Configuration, a fold_X folder or a .pth "
                        "checkpoint")
    e.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    e.add_argument("--fold", "-f", default="0", help="fold (default: %(default)s; 'all' for fold_all)")
    e.add_argument("--checkpoint", "-chk", default="checkpoint_final.pth",
                   help="checkpoint file name (default: %(default)s)")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    e.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torch.onnx exporter: dynamo (needs onnxscript), torchscript (legacy, deprecated in "
                        "torch), auto = dynamo if onnxscript is installed (default: %(default)s)")
    e.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="fail if max |onnx - torch| > TOLERANCE x max(1, max |logits|) "
                        "(default: %(default)s)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing OUT.onnx and its sidecar")
    e.set_defaults(func=_export)

    p = subparsers.add_parser(
        "predict-onnx",
        help="segment images on the CPU with an exported ONNX model (nnU-Net's predictor, ONNX Runtime)",
        description=(
            "nnU-Net's predictor (preprocessing, sliding window, mirroring, export) with the network call "
            "run by ONNX Runtime on the CPU. Input: a folder of images in nnU-Net naming "
            "(CASE_0000.nii.gz, ...)."
        ),
    )
    p.add_argument("-i", dest="input", required=True, help="input folder (nnU-Net file naming)")
    p.add_argument("-o", dest="output", required=True, help="output folder")
    p.add_argument("--onnx", required=True,
                   help="ONNX file written by 'recokd export' (its .json sidecar beside it)")
    p.add_argument("--model", default=None, metavar="MODEL_DIR",
                   help="optional nnU-Net results folder to take plans.json/dataset.json from (default: the "
                        "sidecar's copies)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="ONNX Runtime intra-op threads and torch threads (default: the libraries' defaults)")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding window step size (default: 0.5)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("-npp", type=int, default=3, help="preprocessing processes (default: 3)")
    p.add_argument("-nps", type=int, default=3, help="segmentation export processes (default: 3)")
    p.add_argument("--sequential", action="store_true",
                   help="preprocess and export in this process (no worker processes; lighter on memory)")
    p.add_argument("--save-probabilities", action="store_true", help="also save probabilities (.npz)")
    p.add_argument("--continue-prediction", action="store_true",
                   help="skip cases whose output exists already")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_predict_onnx)


def _export(args: argparse.Namespace) -> int:
    from recokd.deploy.onnx_export import export_onnx

    result = export_onnx(args.model, args.onnx, fold=args.fold, checkpoint=args.checkpoint, opset=args.opset,
                         exporter=args.exporter, tolerance=args.tolerance, overwrite=args.overwrite)
    print(f"exported:  {result.onnx_path} ({result.exporter} exporter, opset {result.opset})")
    print(f"sidecar:   {result.sidecar_path}")
    print(f"network:   {result.num_input_channels} input channel(s) -> {result.num_classes} classes, "
          f"patch {'x'.join(map(str, result.patch_size))}, dynamic batch and spatial axes")
    print(f"check:     max |onnx - torch| = {result.max_abs_diff:.3g} (max |logits| "
          f"{result.max_abs_logit:.3g}) on a random patch-sized input, ONNX Runtime CPU")
    return 0


def _predict_onnx(args: argparse.Namespace) -> int:
    from recokd.deploy.onnx_predictor import predict_folder

    if not 0 < args.step_size <= 1:
        raise UserError(f"--step-size must be in (0, 1], got {args.step_size}")
    if args.npp < 1 or args.nps < 1:
        raise UserError("-npp and -nps must be positive (use --sequential for no worker processes)")
    cases = predict_folder(args.input, args.output, args.onnx, model_dir=args.model, step_size=args.step_size,
                           mirroring=not args.disable_tta, threads=args.threads, overwrite=args.overwrite,
                           continue_prediction=args.continue_prediction, num_processes_preprocessing=args.npp,
                           num_processes_export=args.nps, sequential=args.sequential,
                           save_probabilities=args.save_probabilities)
    print(f"predicted {len(cases)} case(s) with {args.onnx} (ONNX Runtime, CPU) into {args.output}")
    return 0
