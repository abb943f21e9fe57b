"""``recokd export`` (ONNX / OpenVINO export + check), ``recokd quantize`` (int8 with NNCF) and
``recokd predict-onnx`` (CPU inference on ONNX Runtime)."""

from __future__ import annotations

import argparse

from recokd.cli_types import positive_int as _positive_int
from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export``, ``quantize`` and ``predict-onnx`` sub-commands."""
    from recokd.deploy.onnx_export import DEFAULT_OPSET, DEFAULT_TOLERANCE, EXPORTERS
    from recokd.deploy.quantize import DEFAULT_CALIBRATION_CASES, DEFAULT_TILES_PER_CASE, PRESETS

    e = subparsers.add_parser(
        "export",
        help="export a trained nnU-Net/ReCo-KD model to ONNX and/or OpenVINO (checked against PyTorch)",
        description=(
            "Export the network of a trained nnU-Net model (deep supervision off, dynamic batch and spatial "
            "axes) to ONNX (--onnx OUT.onnx, checked with ONNX Runtime; OUT.onnx.json written next to it) "
            "and/or OpenVINO IR (--openvino DIR: model.xml, model.bin, recokd.json; fp32 weights, checked "
            "with OpenVINO's CPU plugin in float32), on a random patch-sized input. The exported model and "
            "its sidecar (plans, dataset.json, patch size, classes, check result) are all 'recokd predict "
            "--backend onnxruntime|openvino' needs."
        ),
    )
    e.add_argument("model", metavar="MODEL_DIR",
                   help="nnU-Net results folder Trainer__Plans__Configuration, a fold_X folder or a .pth "
                        "checkpoint")
    e.add_argument("--onnx", default=None, metavar="OUT.onnx", help="ONNX file to write")
    e.add_argument("--openvino", default=None, metavar="DIR",
                   help="folder to write the OpenVINO model into (needs the openvino package: the deploy "
                        "extra)")
    e.add_argument("--fold", "-f", default="0", help="fold (default: %(default)s; 'all' for fold_all)")
    e.add_argument("--checkpoint", "-chk", default=CHECKPOINT_FINAL,
                   help="checkpoint file name (default: %(default)s)")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    e.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="torch.onnx exporter: dynamo (needs onnxscript), torchscript (legacy, deprecated in "
                        "torch), auto = dynamo if onnxscript is installed (default: %(default)s)")
    e.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="fail if max |exported - torch| > TOLERANCE x max(1, max |logits|) "
                        "(default: %(default)s)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT.onnx and its sidecar / the model in DIR")
    e.set_defaults(func=_export)

    q = subparsers.add_parser(
        "quantize",
        help="int8 OpenVINO model of a trained nnU-Net/ReCo-KD model (NNCF post-training quantization)",
        description=(
            "Post-training int8 quantization with NNCF of a trained model's network, calibrated on tiles of "
            "the dataset's own preprocessed training cases "
            "($nnUNet_preprocessed/<dataset>/<data_identifier>, "
            "the fold's training cases of splits_final.json; half of the tiles centred on foreground). "
            "Writes an OpenVINO model folder for 'recokd predict --backend openvino --openvino DIR'. Measure "
            "what it costs with 'recokd evaluate' on held-out cases, fp32 vs int8."
        ),
    )
    q.add_argument("model", metavar="MODEL_DIR",
                   help="nnU-Net results folder Trainer__Plans__Configuration, a fold_X folder or a .pth "
                        "checkpoint")
    q.add_argument("-o", dest="output", required=True, metavar="DIR", help="folder for the int8 model")
    q.add_argument("--calibration-cases", type=_positive_int, default=DEFAULT_CALIBRATION_CASES, metavar="N",
                   help="preprocessed training cases to calibrate on (default: %(default)s)")
    q.add_argument("--tiles-per-case", type=_positive_int, default=DEFAULT_TILES_PER_CASE, metavar="K",
                   help="patch-sized tiles cut from each case (default: %(default)s)")
    q.add_argument("--fold", "-f", default="0", help="fold (default: %(default)s; 'all' for fold_all)")
    q.add_argument("--checkpoint", "-chk", default=CHECKPOINT_FINAL,
                   help="checkpoint file name (default: %(default)s)")
    q.add_argument("--preset", choices=PRESETS, default="performance",
                   help="NNCF preset: performance (symmetric activations) or mixed (asymmetric activations) "
                        "(default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="seed of the tile choice (default: %(default)s)")
    q.add_argument("--overwrite", action="store_true", help="replace a model already in DIR")
    q.set_defaults(func=_quantize)

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
    p.add_argument("--onnx", required=True, nargs="+", metavar="FILE.onnx",
                   help="ONNX file written by 'recokd export' (its .json sidecar beside it); several, one "
                        "per fold: their ensemble (mean of the folds' logits, as nnU-Net)")
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
    if args.onnx is None and args.openvino is None:
        raise UserError("say what to write: --onnx OUT.onnx and/or --openvino DIR")
    if args.onnx is not None:
        from recokd.deploy.onnx_export import export_onnx

        result = export_onnx(args.model, args.onnx, fold=args.fold, checkpoint=args.checkpoint,
                             opset=args.opset, exporter=args.exporter, tolerance=args.tolerance,
                             overwrite=args.overwrite)
        print(f"exported:  {result.onnx_path} ({result.exporter} exporter, opset {result.opset})")
        print(f"sidecar:   {result.sidecar_path}")
        print(f"network:   {result.num_input_channels} input channel(s) -> {result.num_classes} classes, "
              f"patch {'x'.join(map(str, result.patch_size))}, dynamic batch and spatial axes")
        print(f"check:     max |onnx - torch| = {result.max_abs_diff:.3g} (max |logits| "
              f"{result.max_abs_logit:.3g}) on a random patch-sized input, ONNX Runtime CPU")
    if args.openvino is not None:
        from recokd.deploy.openvino_backend import MODEL_XML, SIDECAR_FILE, export_openvino

        ov = export_openvino(args.model, args.openvino, fold=args.fold,
                             checkpoint=args.checkpoint, tolerance=args.tolerance, overwrite=args.overwrite)
        print(f"exported:  {ov.folder / MODEL_XML} (OpenVINO IR, fp32 weights; sidecar {SIDECAR_FILE})")
        print(f"network:   {ov.num_input_channels} input channel(s) -> {ov.num_classes} classes, "
              f"patch {'x'.join(map(str, ov.patch_size))}, dynamic batch and spatial axes")
        print(f"check:     max |openvino - torch| = {ov.max_abs_diff:.3g} (max |logits| "
              f"{ov.max_abs_logit:.3g}), "
              f"argmax agreement {ov.argmax_agreement:.4%} on a random patch-sized input, OpenVINO CPU f32")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from recokd.deploy.quantize import quantize_model

    result = quantize_model(args.model, args.output, calibration_cases=args.calibration_cases,
                            tiles_per_case=args.tiles_per_case, fold=args.fold,
                            checkpoint=args.checkpoint, preset=args.preset, seed=args.seed,
                            overwrite=args.overwrite)
    cal = result.calibration
    print(f"quantized: {result.folder} (OpenVINO IR, int8 by NNCF, preset {args.preset})")
    print(f"calibration: {len(cal.tiles)} tile(s) from {len(cal.cases)} case(s) ({cal.split}) in "
          f"{cal.folder}")
    print(f"check:     on the calibration tiles, max |int8 - fp32 torch| = {result.max_abs_diff:.3g}, argmax "
          f"agreement {result.argmax_agreement:.4%}; measure Dice with 'recokd evaluate' on held-out cases")
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
    models = " + ".join(args.onnx)
    print(f"predicted {len(cases)} case(s) with {models} (ONNX Runtime, CPU) into {args.output}")
    return 0
