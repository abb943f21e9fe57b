"""nnU-Net's own predictor with the network call handed to another runtime (ONNX Runtime, OpenVINO).

:class:`nnUNetRuntimePredictor` is nnU-Net's ``nnUNetPredictor`` (nnunetv2 2.8) with exactly one
thing replaced: the network. ``self.network`` is a parameter-free ``nn.Module`` whose ``forward``
runs the exported model (:class:`recokd.deploy.onnx_predictor.OnnxNetwork`,
:class:`recokd.deploy.openvino_backend.OpenVINONetwork`). Everything else is nnU-Net's code,
unchanged: reading and preprocessing (resampling, normalisation, cropping), padding, sliding-window
tiling with the Gaussian importance map, mirroring test-time augmentation
(``_internal_maybe_mirror_and_predict`` calls ``self.network`` for every flip), fp16 accumulation
of the tiles, and the export (resampling back, argmax, writing the image with the source's
geometry). So a segmentation differs from nnU-Net's PyTorch prediction only where the runtime's
kernels round differently from PyTorch's *and* that flips the argmax.

Why a module and not an override of ``_internal_maybe_mirror_and_predict``: nnU-Net calls the
network in that method and nowhere else during inference, but also moves it (``.to(device)``),
switches it to eval mode and loads each fold's state dict into it
(``predict_logits_from_preprocessed_data``); an ``nn.Module`` with no parameters takes all of that
(loading the empty state dict ``{}`` is a no-op) with no further overrides, and mirroring stays
nnU-Net's own code.

Several folds: one exported model is one fold; :meth:`nnUNetRuntimePredictor.add_folds` puts the
folds' runtime networks behind one :class:`FoldEnsemble` module whose "state dict" is the index of
the fold to run, and sets ``list_of_parameters`` to one such entry per fold. nnU-Net's own
``predict_logits_from_preprocessed_data`` then does what it does for PyTorch folds: load each
fold's entry, run the sliding window, and average the folds' logits (nnU-Net's fold ensemble; the
softmax/argmax follows in its export).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recokd.errors import UserError
from recokd.json_files import read_json


class FoldEnsemble(nn.Module):
    """The runtime networks of several folds as one module for nnU-Net's predictor: ``forward`` runs
    the fold selected by the buffer ``fold``, which nnU-Net's ``load_state_dict({"fold": i})`` sets
    before each fold's sliding window (see the module doc)."""

    def __init__(self, networks: list[nn.Module]):
        super().__init__()
        self.folds = nn.ModuleList(networks)
        self.register_buffer("fold", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.folds[int(self.fold)](x)

    def fold_states(self) -> list[dict[str, torch.Tensor]]:
        """One "state dict" per fold, for nnU-Net's ``list_of_parameters``."""
        return [{"fold": torch.tensor(i)} for i in range(len(self.folds))]


#: sidecar entries that must agree between the folds of one ensemble
ENSEMBLE_KEYS = ("plans_identifier", "configuration", "num_classes", "num_input_channels",
                 "inference_allowed_mirroring_axes", "plans", "dataset_json")


def _nnunet_predictor_class():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return nnUNetPredictor


class nnUNetRuntimePredictor(_nnunet_predictor_class()):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net's predictor running an exported network on a CPU runtime.

    ``threads``: the runtime's threads and torch threads (for nnU-Net's tensor work around the
    network: flips, Gaussian weighting, accumulation); ``None`` keeps the libraries' defaults.
    Subclasses load a model and call :meth:`initialize_from_sidecar`.
    """

    def __init__(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 threads: int | None = None, verbose: bool = False, allow_tqdm: bool = False):
        if not 0 < tile_step_size <= 1:
            raise UserError(f"tile step size must be in (0, 1], got {tile_step_size}")
        if threads is not None and threads < 1:
            raise UserError(f"threads must be a positive integer, got {threads}")
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's "only supported for cuda" notice
            super().__init__(tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                             use_mirroring=use_mirroring, perform_everything_on_device=False,
                             device=torch.device("cpu"), verbose=verbose, verbose_preprocessing=verbose,
                             allow_tqdm=allow_tqdm)
        self.threads = threads
        self.sidecar: dict[str, Any] | None = None
        if threads is not None:
            torch.set_num_threads(threads)

    def initialize_from_sidecar(self, sidecar: dict[str, Any], source: Path, network: nn.Module,
                                model_dir: str | Path | None = None) -> None:
        """Set up the predictor for ``network`` (the exported model ``source``) from its sidecar.

        Plans and dataset.json come from the sidecar (what the network was trained with); with
        ``model_dir`` (an nnU-Net results folder) they are read from its ``plans.json``/
        ``dataset.json`` instead, which must describe the same plans identifier, configuration,
        classes and input channels as the sidecar.
        """
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans, dataset_json = plans_for_exported_model(sidecar, source, model_dir)
        try:
            plans_manager = PlansManager(plans)
            configuration_manager = plans_manager.get_configuration(sidecar["configuration"])
            label_manager = plans_manager.get_label_manager(dataset_json)
            num_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        except Exception as e:  # nnU-Net raises bare KeyErrors/asserts on malformed plans
            raise UserError(f"plans/dataset.json for {source}: could not set up configuration "
                            f"{sidecar['configuration']!r} ({type(e).__name__}: {e})") from e
        n_in, n_out = sidecar["num_input_channels"], sidecar["num_classes"]
        if label_manager.num_segmentation_heads != n_out or num_inputs != n_in:
            raise UserError(
                f"{source} has {n_in} input channel(s) and {n_out} outputs, but the plans/dataset.json "
                f"describe {num_inputs} and {label_manager.num_segmentation_heads}"
            )
        self.sidecar = sidecar
        self.plans_manager = plans_manager
        self.configuration_manager = configuration_manager
        self.label_manager = label_manager
        self.dataset_json = dataset_json
        self.trainer_name = sidecar.get("trainer_name", "nnUNetTrainer")
        axes = sidecar.get("inference_allowed_mirroring_axes")
        self.allowed_mirroring_axes = None if axes is None else tuple(int(a) for a in axes)
        self.network = network
        self.list_of_parameters = [{}]  # one "fold"; its (empty) state dict loads into the network
        self.sources = [source]

    def add_folds(self, models: list[tuple[dict[str, Any], Path, nn.Module]]) -> None:
        """Ensemble the model set up by :meth:`initialize_from_sidecar` with more folds, given as
        ``(sidecar, source, network)``: each must describe the same plans, configuration,
        dataset.json, classes, channels and mirroring axes (:data:`ENSEMBLE_KEYS`)."""
        if not models:
            return
        first = self.sources[0]
        for sidecar, source, _network in models:
            differ = [k for k in ENSEMBLE_KEYS if sidecar.get(k) != self.sidecar.get(k)]
            if differ:
                raise UserError(f"{source} and {first} cannot be ensembled: their {', '.join(differ)} differ "
                                "(export the folds of one trained model)")
        self.network = FoldEnsemble([self.network, *(network for _, _, network in models)])
        self.list_of_parameters = self.network.fold_states()
        self.sources += [source for _, source, _ in models]


def plans_for_exported_model(sidecar: dict[str, Any], source: Path,
                             model_dir: str | Path | None = None) -> tuple[dict, dict]:
    """The plans and dataset.json to run the exported model ``source`` (its ``sidecar``) with: the
    sidecar's copies, or those of the results folder ``model_dir``, which must be the same plans
    identifier and the same preprocessing (:func:`recokd.deploy.model.check_same_preprocessing`).
    A cascade stage is refused (nothing here feeds it the previous stage's segmentations)."""
    from recokd.deploy.model import check_same_preprocessing
    from recokd.nnunet.plans import refuse_cascade

    plans, dataset_json = sidecar["plans"], sidecar["dataset_json"]
    if model_dir is not None:
        model_dir = Path(model_dir).expanduser()
        if not model_dir.is_dir():
            raise UserError(f"--model {model_dir} is not a folder (expected an nnU-Net results folder "
                            "Trainer__Plans__Configuration with plans.json and dataset.json)")
        plans = read_json(model_dir / "plans.json", "plans file")
        dataset_json = read_json(model_dir / "dataset.json", "dataset.json")
        if plans.get("plans_name") != sidecar.get("plans_identifier"):
            raise UserError(f"{model_dir / 'plans.json'} is plans {plans.get('plans_name')!r} but "
                            f"{source} was exported from plans {sidecar.get('plans_identifier')!r}")
        check_same_preprocessing(sidecar, source, plans, dataset_json, model_dir)
    refuse_cascade(plans, sidecar["configuration"], "recokd's ONNX Runtime / OpenVINO prediction",
                   str(source))
    return plans, dataset_json


def predict_folder_with(
    predictor: nnUNetRuntimePredictor,
    load: Callable[[], None],
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    continue_prediction: bool = False,
    num_processes_preprocessing: int = 3,
    num_processes_export: int = 3,
    sequential: bool = False,
    save_probabilities: bool = False,
    resampling: str = "nnunet",
) -> list[str]:
    """Segment every case of ``input_dir`` (nnU-Net naming ``CASE_0000<ext>``) into ``output_dir``
    with ``predictor``, which ``load()`` initialises (it loads the exported model) once the request
    itself has been checked, so that a bad request fails before any model is read.

    Existing outputs are only replaced with ``overwrite`` (or skipped with
    ``continue_prediction``). ``sequential`` runs preprocessing and export in this process
    (``predict_from_files_sequential``) instead of nnU-Net's worker pools. ``resampling``: the
    plans' own (``"nnunet"``) or nnU-Net's torch resampling (``"torch"``,
    :mod:`recokd.nnunet.resampling`). Returns the case ids.
    """
    from recokd.nnunet.inputs import (
        check_output_folder_writable,
        check_output_outside_input,
        prediction_cases,
    )
    from recokd.nnunet.prediction_export import predict_folder_atomically
    from recokd.nnunet.resampling import apply_resampling

    if overwrite and continue_prediction:
        raise UserError("--overwrite and --continue-prediction exclude each other")
    in_dir, out_dir = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    check_output_outside_input(in_dir, out_dir)
    if not in_dir.is_dir():
        raise UserError(f"input folder {in_dir} does not exist")
    load()
    apply_resampling(predictor, resampling)
    file_ending = predictor.dataset_json["file_ending"]
    cases = prediction_cases(in_dir, file_ending, predictor.dataset_json["channel_names"])
    existing = [c for c in cases if (out_dir / f"{c}{file_ending}").exists()]
    if existing and not (overwrite or continue_prediction):
        raise UserError(f"{out_dir} already holds predictions for {len(existing)} case(s) (e.g. "
                        f"{existing[0]}{file_ending}); pass --overwrite to replace them or "
                        "--continue-prediction to skip them")
    check_output_folder_writable(out_dir)
    predict_folder_atomically(predictor, in_dir, out_dir, continue_prediction=continue_prediction,
                              save_probabilities=save_probabilities, sequential=sequential,
                              num_processes_preprocessing=num_processes_preprocessing,
                              num_processes_export=num_processes_export)
    return list(cases)
