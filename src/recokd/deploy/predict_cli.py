"""``recokd predict``: nnU-Net's predictor (``nnUNetPredictor``: preprocessing, sliding window, Gaussian
weighting, export) on a model in ``$nnUNet_results``, with the network run by PyTorch (each CPU convolution
on its fastest kernel, :mod:`recokd.deploy.cpu_conv`), ONNX Runtime or OpenVINO (``--backend``).
Equivalent to ``nnUNetv2_predict`` with ``nnUNet_extTrainer`` set, for the torch backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from recokd.cli_types import positive_int as _positive_int
from recokd.errors import UserError
from recokd.nnunet.devices import add_device_argument, set_nnunet_threads, torch_device
from recokd.nnunet.layout import (
    CHECKPOINT_FINAL,
    KD_TRAINER,
    env_folder,
    fold_folder_name,
    model_folder,
    parse_fold,
    parse_model_folder_name,
)
from recokd.nnunet.resampling import RESAMPLING_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    p = subparsers.add_parser(
        "predict",
        help="predict with a trained student (nnU-Net's predictor)",
        description=(
            "Run nnU-Net's nnUNetPredictor on a folder of images (nnU-Net naming: CASE_0000.nii.gz) with a "
            "model in $nnUNet_results. Equivalent to nnUNetv2_predict with nnUNet_extTrainer set."
        ),
    )
    p.add_argument("-i", dest="input", required=True, help="input folder (nnU-Net file naming)")
    p.add_argument("-o", dest="output", required=True, help="output folder")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-c", dest="configuration", default="3d_fullres",
                   help="configuration (default: %(default)s)")
    p.add_argument("-f", dest="folds", nargs="+", default=None,
                   help="folds to ensemble (default: every fold with the checkpoint)")
    p.add_argument("-tr", dest="trainer", default=KD_TRAINER, help="trainer class (default: %(default)s)")
    p.add_argument("-p", dest="plans", default=None,
                   help="plans identifier (default: the only one trained with this trainer/configuration)")
    p.add_argument("-chk", dest="checkpoint", default=CHECKPOINT_FINAL,
                   help="checkpoint file name (default: %(default)s)")
    add_device_argument(p)
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--step-size", type=float, default=0.5, help="sliding window step size (default: 0.5)")
    p.add_argument("-npp", type=int, default=3,
                   help="preprocessing processes (default: 3; -npp 0 -nps 0: no worker processes)")
    p.add_argument("-nps", type=int, default=3, help="segmentation export processes (default: 3)")
    p.add_argument("--save-probabilities", action="store_true", help="also save probabilities (.npz)")
    p.add_argument("--continue-prediction", action="store_true",
                   help="skip cases whose output exists already")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--stock-cpu-convs", action="store_true",
                   help="CPU: keep PyTorch's default 3D convolution kernels (by default each layer uses "
                        "oneDNN where that is faster: recokd.deploy.cpu_conv)")
    p.add_argument("--resampling", choices=RESAMPLING_CHOICES, default="nnunet",
                   help="resampling of the image before the network and of the class maps after it: nnunet "
                        "(the plans' own functions, as nnUNetv2_predict; default) or torch (nnU-Net's "
                        "resample_torch_fornnunet, linear: much faster on large anisotropic scans; what it "
                        "changes is measured in README 'CPU inference')")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"), default="torch",
                   help="who runs the network: torch (nnU-Net's predictor, default), onnxruntime or openvino "
                        "(CPU; nnU-Net's preprocessing, sliding window, fold ensemble and export with the "
                        "network call on ONNX Runtime / OpenVINO)")
    p.add_argument("--onnx", default=None, nargs="+", metavar="FILE.onnx",
                   help="with --backend onnxruntime: model(s) exported by 'recokd export --onnx', one per "
                        "fold (several: their ensemble) (default: export the checkpoint of each fold of -f "
                        "to a temporary file first)")
    p.add_argument("--openvino", default=None, nargs="+", metavar="DIR",
                   help="with --backend openvino: model folder(s) written by 'recokd export --openvino' "
                        "(fp32) or 'recokd quantize' (int8), one per fold (several: their ensemble) "
                        "(default: convert the checkpoint of each fold of -f to fp32 first)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="with --backend onnxruntime/openvino: the runtime's threads and torch threads "
                        "(default: the libraries' defaults)")
    p.set_defaults(func=_predict)


def _find_plans(dataset_folder: Path, trainer: str, configuration: str) -> str:
    names = [parse_model_folder_name(p.name) for p in dataset_folder.glob("*__*__*") if p.is_dir()]
    found = sorted(n.plans for n in names if n and n.trainer == trainer and n.configuration == configuration)
    if len(found) == 1:
        return found[0]
    if not found:
        present = sorted(p.name for p in dataset_folder.iterdir() if p.is_dir()) if dataset_folder.is_dir() \
            else []
        raise UserError(f"no model trained with {trainer} and configuration {configuration} in "
                        f"{dataset_folder} (present: {', '.join(present) or 'none'})")
    raise UserError(f"several plans trained with {trainer}/{configuration} in {dataset_folder}: "
                    f"{', '.join(found)}; choose one with -p")


def _predict(args: argparse.Namespace) -> int:
    from recokd.nnunet import add_ext_trainer_dir_to_env
    from recokd.nnunet.inputs import check_output_outside_input
    from recokd.nnunet.plans import resolve_dataset_name

    check_output_outside_input(Path(args.input), Path(args.output))
    results = env_folder("nnUNet_results", must_exist=False)
    dataset_name = resolve_dataset_name(args.dataset)
    dataset_folder = results / dataset_name
    plans = args.plans or _find_plans(dataset_folder, args.trainer, args.configuration)
    model = model_folder(results, dataset_name, args.trainer, plans, args.configuration)
    if not model.is_dir():
        raise UserError(f"model folder {model} does not exist")
    folds: list[int | str] | None = None
    if args.folds is not None:
        folds = [parse_fold(f, "-f") for f in args.folds]
        for f in folds:
            if not (model / fold_folder_name(f) / args.checkpoint).is_file():
                raise UserError(f"-f {f}: {model / fold_folder_name(f) / args.checkpoint} does not exist")
    elif not any(model.glob(f"fold_*/{args.checkpoint}")):
        raise UserError(f"no fold of {model} has {args.checkpoint}")
    if args.overwrite and args.continue_prediction:
        raise UserError("--overwrite and --continue-prediction exclude each other")
    if args.npp < 0 or args.nps < 0:
        raise UserError("-npp and -nps must be >= 0")
    if not 0 < args.step_size <= 1:
        raise UserError(f"--step-size must be in (0, 1], got {args.step_size}")

    from recokd.json_files import read_json
    from recokd.nnunet.inputs import check_output_folder_writable, prediction_cases
    from recokd.nnunet.plans import refuse_cascade

    refuse_cascade(read_json(model / "plans.json", "plans file"), args.configuration, "recokd predict",
                   str(model / "plans.json"))
    in_dir, out_dir = Path(args.input), Path(args.output)
    dataset_json = read_json(model / "dataset.json", "dataset.json")
    for key in ("file_ending", "channel_names"):
        if key not in dataset_json:
            raise UserError(f"{model / 'dataset.json'} has no {key!r} entry (it is nnU-Net's dataset.json "
                            "of the model's dataset)")
    file_ending = dataset_json["file_ending"]
    cases = prediction_cases(in_dir, file_ending, dataset_json["channel_names"])
    existing = [c for c in cases if (out_dir / f"{c}{file_ending}").exists()]
    if existing and not (args.overwrite or args.continue_prediction):
        raise UserError(f"{out_dir} already holds predictions for {len(existing)} case(s) (e.g. "
                        f"{existing[0]}{file_ending}); pass --overwrite to replace them or "
                        "--continue-prediction to skip them")
    if args.backend != "torch":
        _check_runtime_flags(args)
        _check_exported_models(args, model)
    else:
        runtime_only = (("--onnx", args.onnx, "onnxruntime"), ("--openvino", args.openvino, "openvino"),
                        ("--threads", args.threads, "onnxruntime or openvino"))
        for flag, value, needs in runtime_only:
            if value is not None:
                raise UserError(f"{flag} needs --backend {needs}")
    check_output_folder_writable(out_dir)

    if args.backend != "torch":
        return _predict_runtime(args, model, folds, in_dir, out_dir, len(cases))

    add_ext_trainer_dir_to_env()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from recokd.nnunet.resampling import apply_resampling

    device = torch_device(args.device)
    set_nnunet_threads(device)
    predictor = nnUNetPredictor(tile_step_size=args.step_size, use_gaussian=True,
                                use_mirroring=not args.disable_tta,
                                perform_everything_on_device=device.type == "cuda",
                                device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), folds, checkpoint_name=args.checkpoint)
    apply_resampling(predictor, args.resampling)
    if device.type == "cpu" and not args.stock_cpu_convs:
        import torch

        from recokd.deploy.cpu_conv import use_fastest_cpu_conv3d

        patch = tuple(predictor.configuration_manager.patch_size)
        channels = len(predictor.dataset_json["channel_names"])
        use_fastest_cpu_conv3d(predictor.network, torch.zeros(1, channels, *patch))
    from recokd.nnunet.prediction_export import predict_folder_atomically

    predict_folder_atomically(predictor, in_dir, out_dir, continue_prediction=args.continue_prediction,
                              save_probabilities=args.save_probabilities,
                              sequential=args.npp == 0 and args.nps == 0,  # as nnUNetv2_predict: all here
                              num_processes_preprocessing=max(1, args.npp),
                              num_processes_export=max(1, args.nps))
    print(f"predicted {len(cases)} case(s) with {model} into {out_dir}")
    return 0


def _check_runtime_flags(args: argparse.Namespace) -> None:
    """The options of ``--backend onnxruntime|openvino``, checked before anything is written."""
    backend = args.backend
    own_flag, other_flag = ("--onnx", "--openvino") if backend == "onnxruntime" else ("--openvino", "--onnx")
    if getattr(args, other_flag.removeprefix("--")) is not None:
        other = "openvino" if other_flag == "--openvino" else "onnxruntime"
        raise UserError(f"{other_flag} needs --backend {other}, not --backend {backend}")
    if args.stock_cpu_convs:
        raise UserError(f"--stock-cpu-convs chooses PyTorch's kernels: it applies to --backend torch, not "
                        f"--backend {backend}")
    if args.device != "cpu":
        raise UserError(f"--backend {backend} runs on the CPU: pass --device cpu")
    for given in getattr(args, own_flag.removeprefix("--")) or []:
        if not Path(given).exists():
            raise UserError(f"{own_flag} {given} does not exist (write it with 'recokd export {own_flag}')")


def _check_exported_models(args: argparse.Namespace, model: Path) -> None:
    """Every given ``--onnx``/``--openvino`` model must have been exported for ``model``'s plans and
    preprocessing (their sidecars are read, before the output folder is made)."""
    from recokd.deploy.runtime_predictor import plans_for_exported_model

    if args.backend == "onnxruntime" and args.onnx is not None:
        from recokd.deploy.onnx_export import read_sidecar

        for file in args.onnx:
            plans_for_exported_model(read_sidecar(file), Path(file), model)
    elif args.backend == "openvino" and args.openvino is not None:
        from recokd.deploy.model import read_sidecar_file
        from recokd.deploy.openvino_backend import SIDECAR_FILE

        made_by = "'recokd export --openvino' / 'recokd quantize'"
        for folder in map(Path, args.openvino):
            plans_for_exported_model(read_sidecar_file(folder / SIDECAR_FILE, made_by), folder, model)


def _predict_runtime(args: argparse.Namespace, model: Path, folds: list[int | str] | None, in_dir: Path,
                     out_dir: Path, num_cases: int) -> int:
    """``recokd predict --backend onnxruntime|openvino``: nnU-Net's predictor with the network call on
    the runtime, from ``--onnx``/``--openvino`` or a fresh export of each fold's checkpoint (checked
    against PyTorch); several folds are ensembled as nnU-Net does (mean of the folds' logits)."""
    import tempfile

    backend = args.backend
    if folds is None:  # as nnU-Net's predictor: every fold with the checkpoint
        folds = [parse_fold(p.parent.name.removeprefix("fold_"))
                 for p in sorted(model.glob(f"fold_*/{args.checkpoint}"))]
    kwargs = dict(model_dir=model, step_size=args.step_size, mirroring=not args.disable_tta,
                  threads=args.threads, overwrite=args.overwrite,
                  continue_prediction=args.continue_prediction,
                  num_processes_preprocessing=max(1, args.npp), num_processes_export=max(1, args.nps),
                  sequential=args.npp == 0 and args.nps == 0, save_probabilities=args.save_probabilities,
                  resampling=args.resampling)
    if backend == "onnxruntime":
        from recokd.deploy.onnx_export import export_onnx as export
        from recokd.deploy.onnx_export import read_sidecar
        from recokd.deploy.onnx_predictor import predict_folder

        given, runtime = args.onnx, "ONNX Runtime"
    else:
        from recokd.deploy.openvino_backend import export_openvino as export
        from recokd.deploy.openvino_backend import predict_folder, read_sidecar

        given, runtime = args.openvino, "OpenVINO"
    if given is not None:
        exported = [Path(g) for g in given]
        predict_folder(in_dir, out_dir, exported, **kwargs)
        sidecars = [read_sidecar(e) for e in exported]  # checked by the prediction: only their labels here
        folds = [s.get("fold", "?") for s in sidecars]
        if backend == "openvino":
            runtime += " " + "/".join(dict.fromkeys(s.get("precision", "fp32") for s in sidecars))
    else:
        with tempfile.TemporaryDirectory(prefix=f"recokd_{backend}_") as tmp:
            exported = []
            for fold in folds:
                target = Path(tmp) / (f"fold_{fold}.onnx" if backend == "onnxruntime" else f"fold_{fold}")
                result = export(model, target, fold=fold, checkpoint=args.checkpoint)
                print(f"exported fold {fold} for {runtime} (max |{backend} - torch| = "
                      f"{result.max_abs_diff:.3g})")
                exported.append(target)
            predict_folder(in_dir, out_dir, exported, **kwargs)
        if backend == "openvino":
            runtime += " fp32"
    which = f"fold {folds[0]}" if len(folds) == 1 else f"ensemble of folds {', '.join(map(str, folds))}"
    print(f"predicted {num_cases} case(s) with {model} ({which}, {runtime}, CPU) into {out_dir}")
    return 0
