"""A trained nnU-Net network ready for inference, and the sidecar that describes an exported one.

Every deployment backend (ONNX Runtime, OpenVINO fp32, OpenVINO int8) starts from the same
:class:`InferenceModel`: the network nnU-Net's predictor runs (the configuration's network with deep
supervision *off*, a single full-resolution logits output, eval mode, float32, weights from the
checkpoint) plus the plans, dataset.json and mirroring axes the predictor needs. An exported model
carries those as a JSON *sidecar* (:func:`model_description`), so the exported file and its sidecar
are all inference needs: no checkpoint, no results folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recokd.errors import UserError
from recokd.json_files import json_ready
from recokd.nnunet.layout import CHECKPOINT_FINAL

if TYPE_CHECKING:
    from torch import nn

    from recokd.nnunet.trained_model import LoadedModel

#: sidecar format version (shared by every backend's sidecar)
SIDECAR_FORMAT = 1
#: fields every sidecar has, whatever the backend
SIDECAR_REQUIRED = ("plans", "dataset_json", "configuration", "patch_size", "num_classes",
                    "num_input_channels")


@dataclass(frozen=True)
class InferenceModel:
    """A trained network ready for inference, and what nnU-Net's predictor needs to run it."""

    loaded: LoadedModel  #: network with deep supervision switched off
    mirror_axes: tuple[int, ...] | None  #: ``inference_allowed_mirroring_axes`` of the checkpoint

    @property
    def network(self) -> nn.Module:
        return self.loaded.network

    @property
    def patch_size(self) -> list[int]:
        return [int(p) for p in self.loaded.configuration_manager.patch_size]

    @property
    def num_classes(self) -> int:
        return int(self.loaded.label_manager.num_segmentation_heads)

    @property
    def num_input_channels(self) -> int:
        return int(self.loaded.num_input_channels)

    @property
    def patch_input_shape(self) -> tuple[int, ...]:
        """``(1, channels, *patch)``: one tile as nnU-Net's sliding window feeds it."""
        return (1, self.num_input_channels, *self.patch_size)


def disable_deep_supervision(network: nn.Module) -> nn.Module:
    """Switch deep supervision off the way nnU-Net's trainer does (``network.decoder.deep_supervision``)."""
    decoder = getattr(network, "decoder", None)
    if decoder is None or not hasattr(decoder, "deep_supervision"):
        raise UserError(
            f"network {type(network).__name__} has no decoder.deep_supervision switch; only nnU-Net's "
            "dynamic_network_architectures UNets (PlainConvUNet, ResidualEncoderUNet, ...) are supported"
        )
    decoder.deep_supervision = False
    return network


def read_mirror_axes(checkpoint_file: Path) -> tuple[int, ...] | None:
    """``inference_allowed_mirroring_axes`` of an nnU-Net checkpoint (``None`` if it has none).

    Memory-maps the checkpoint where possible so that the weights are not read a second time.
    """
    import torch

    try:
        ckpt = torch.load(checkpoint_file, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # old (non-zip) serialisation cannot be memory-mapped
        ckpt = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    axes = ckpt.get("inference_allowed_mirroring_axes") if isinstance(ckpt, dict) else None
    return None if axes is None else tuple(int(a) for a in axes)


def load_inference_model(
    path: str | Path, fold: int | str = 0, checkpoint: str = CHECKPOINT_FINAL, device: str = "cpu"
) -> InferenceModel:
    """Load a trained nnU-Net model (results folder, ``fold_X`` folder or ``.pth``) for inference.

    Uses :func:`recokd.nnunet.trained_model.load_trained_model` (the trainer's own network builder, strict
    weight loading, eval mode, no gradients) after adding reco-kd's trainer folder to
    ``nnUNet_extTrainer`` so that ReCo-KD students are built by their own trainer class; then turns
    deep supervision off, as nnU-Net's predictor does.
    """
    from recokd.nnunet import add_ext_trainer_dir_to_env
    from recokd.nnunet.trained_model import load_trained_model

    add_ext_trainer_dir_to_env()
    loaded = load_trained_model(path, fold=fold, checkpoint=checkpoint, device=device, role="model")
    disable_deep_supervision(loaded.network)
    return InferenceModel(loaded=loaded, mirror_axes=read_mirror_axes(loaded.checkpoint_path))


def model_description(model: InferenceModel) -> dict[str, Any]:
    """The backend-independent part of a sidecar: where the network came from and everything
    nnU-Net's predictor needs to run it (plans, dataset.json, configuration, mirroring axes)."""
    loaded = model.loaded
    return {
        "format": SIDECAR_FORMAT,
        "plans_identifier": loaded.plans_manager.plans_name,
        "dataset_name": loaded.plans_manager.dataset_name,
        "configuration": loaded.configuration_name,
        "trainer_name": loaded.trainer_name,
        "fold": loaded.fold,
        "source_checkpoint": str(loaded.checkpoint_path.resolve()),
        "network_class": loaded.configuration_manager.network_arch_class_name,
        "patch_size": model.patch_size,
        "num_classes": model.num_classes,
        "num_input_channels": model.num_input_channels,
        "inference_allowed_mirroring_axes": None if model.mirror_axes is None else list(model.mirror_axes),
        "deep_supervision": False,
        "plans": json_ready(loaded.plans_manager.plans),  # as loaded: tuples, numpy scalars
        "dataset_json": json_ready(loaded.dataset_json),
        "preprocessing": preprocessing_fingerprint(loaded.plans_manager.plans, loaded.dataset_json,
                                                   loaded.configuration_name),
    }


#: configuration entries of the plans that decide what the network is fed (and how its output is
#: written back): a model run through another dataset's or plans' values sees different inputs
FINGERPRINT_CONFIGURATION_KEYS = ("spacing", "patch_size", "normalization_schemes", "use_mask_for_norm",
                                  "preprocessor_name", "resampling_fn_data", "resampling_fn_data_kwargs",
                                  "resampling_fn_seg", "resampling_fn_seg_kwargs",
                                  "resampling_fn_probabilities", "resampling_fn_probabilities_kwargs")
#: plans-level entries (CT normalisation reads the intensity properties)
FINGERPRINT_PLANS_KEYS = ("dataset_name", "transpose_forward", "transpose_backward",
                          "foreground_intensity_properties_per_channel")
#: dataset.json entries (input channels and their order, output labels)
FINGERPRINT_DATASET_KEYS = ("channel_names", "labels", "regions_class_order")


def preprocessing_fingerprint(plans: dict, dataset_json: dict, configuration: str) -> dict[str, Any]:
    """What must match for an exported network to be run through a results folder's preprocessing:
    the dataset name, the configuration's target spacing, patch size, normalisation schemes,
    resampling, the axis transposition and intensity statistics of the plans, and dataset.json's
    channels and labels (JSON-ready; ``None`` for an entry that is absent). Written into every
    exported model's sidecar (``preprocessing``) by ``recokd export`` and ``recokd quantize``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        config = PlansManager(plans).get_configuration(configuration).configuration
    except Exception as e:  # nnU-Net raises bare KeyErrors/asserts on malformed plans
        raise UserError(f"plans {plans.get('plans_name')!r}: could not read configuration {configuration!r} "
                        f"({type(e).__name__}: {e})") from e
    fingerprint = {k: plans.get(k) for k in FINGERPRINT_PLANS_KEYS}
    fingerprint.update({k: config.get(k) for k in FINGERPRINT_CONFIGURATION_KEYS})
    fingerprint.update({k: dataset_json.get(k) for k in FINGERPRINT_DATASET_KEYS})
    return json.loads(json.dumps(json_ready(fingerprint)))  # tuples -> lists, as read back from a file


def check_same_preprocessing(sidecar: dict[str, Any], source: Path, plans: dict, dataset_json: dict,
                             model_dir: Path) -> None:
    """:class:`UserError` naming both datasets and the first entries that differ when the exported
    model ``source`` (its ``sidecar``) was not made for the preprocessing of ``model_dir`` (its
    ``plans``/``dataset_json``). A sidecar written before the fingerprint existed is checked on the
    fingerprint of the plans and dataset.json it carries (every sidecar has them)."""
    configuration = sidecar["configuration"]
    exported = sidecar.get("preprocessing") or preprocessing_fingerprint(
        sidecar["plans"], sidecar["dataset_json"], configuration)
    here = preprocessing_fingerprint(plans, dataset_json, configuration)
    differ = [k for k in dict.fromkeys([*exported, *here]) if exported.get(k) != here.get(k)]
    if not differ:
        return
    listed = [k for k in differ if k != "dataset_name"]  # the names are in the message already
    shown = "; ".join(f"{k} {exported.get(k)} vs {here.get(k)}" for k in listed[:3])
    more = f" (and {len(listed) - 3} more)" if len(listed) > 3 else ""
    other = f" with other preprocessing ({configuration}: {shown}{more})" if listed else ""
    raise UserError(
        f"{source} was exported from dataset {exported.get('dataset_name')} but {model_dir} is dataset "
        f"{here.get('dataset_name')}{other}; export the model of {model_dir} instead"
    )


def read_sidecar_file(file: Path, written_by: str) -> dict[str, Any]:
    """A sidecar's content; :class:`UserError` naming ``file`` if it is missing or malformed.
    ``written_by`` completes "it is written by ..." in the error for a missing file."""
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise UserError(f"{file} does not exist: it is written by {written_by} and holds the plans needed "
                        "for inference") from e
    except (OSError, ValueError) as e:
        raise UserError(f"{file} could not be read as JSON: {e}") from e
    missing = [k for k in SIDECAR_REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserError(f"{file} is not a recokd model sidecar: missing {', '.join(missing)}")
    return data
