"""Which resampling nnU-Net's predictor runs: the plans' own, or nnU-Net's torch resampling.

nnU-Net resamples twice per case at inference: the image from its own spacing to the plan's before
the network (``resampling_fn_data``: by default ``resample_data_or_seg_to_shape``, scipy/skimage
spline order 3, for anisotropic spacings order 3 in-plane and nearest along the thick axis), and
the network's logits back to the image's spacing after it, one map per class
(``resampling_fn_probabilities``: the same function at order 1 / nearest). On a CT of 512x512x200
voxels on two CPU cores that costs about a minute, as much as a small student's network.

nnU-Net ships a faster implementation, ``resample_torch_fornnunet``
(``nnunetv2.preprocessing.resampling.resample_torch``, the resampling of its ``*_torchres``
planners): ``torch.nn.functional.interpolate`` in (bi/tri)linear mode; for anisotropic spacings
(the same rule, ``determine_do_sep_z_and_axis``) linear in-plane, then nearest along the thick
axis. :func:`with_torch_resampling` returns a copy of a configuration that uses it for the image
and for the logits; the segmentation resampling (training only) is left as planned. Only the
interpolation differs (linear instead of cubic for the image): shapes, crop, spacing and the
written geometry are nnU-Net's own. ``recokd predict --resampling torch`` applies it;
``benchmarks/resampling_accuracy.py`` measures what it changes.
"""

from __future__ import annotations

import copy
from typing import Any

from recokd.errors import UserError

#: ``recokd predict --resampling`` choices: the plans' own functions, or nnU-Net's torch resampling
RESAMPLING_CHOICES = ("nnunet", "torch")
TORCH_RESAMPLING = "resample_torch_fornnunet"
#: the configuration entries swapped (the image before the network, the logits after it)
INFERENCE_RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_probabilities")


def torch_resampling_configuration(configuration: dict[str, Any], threads: int) -> dict[str, Any]:
    """A copy of an nnU-Net plans configuration (``plans["configurations"][name]``, a dict) whose
    image and probability resampling is ``resample_torch_fornnunet`` with ``threads`` torch
    threads; the plans' ``force_separate_z`` (None: nnU-Net decides per case) is kept."""
    if threads < 1:
        raise UserError(f"resampling threads must be a positive integer, got {threads}")
    out = copy.deepcopy(configuration)
    for key in INFERENCE_RESAMPLING_KEYS:
        planned = configuration.get(f"{key}_kwargs") or {}
        out[key] = TORCH_RESAMPLING
        out[f"{key}_kwargs"] = {"is_seg": False, "force_separate_z": planned.get("force_separate_z"),
                                "memefficient_seg_resampling": False, "num_threads": int(threads)}
    return out


def with_torch_resampling(configuration_manager: Any, threads: int) -> Any:
    """A new nnU-Net ``ConfigurationManager`` for :func:`torch_resampling_configuration` of
    ``configuration_manager``'s configuration (a new object: nnU-Net caches each manager's
    resampling functions on first use)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    return ConfigurationManager(torch_resampling_configuration(configuration_manager.configuration, threads))


def apply_resampling(predictor: Any, resampling: str) -> None:
    """Set an initialised nnU-Net predictor's resampling: ``"nnunet"`` leaves the plans' functions,
    ``"torch"`` installs :func:`with_torch_resampling` with the process's torch threads."""
    if resampling not in RESAMPLING_CHOICES:
        raise UserError(f"--resampling: expected one of {', '.join(RESAMPLING_CHOICES)}, got {resampling!r}")
    if resampling == "torch":
        import torch

        predictor.configuration_manager = with_torch_resampling(predictor.configuration_manager,
                                                                torch.get_num_threads())


def uses_torch_resampling(configuration_manager: Any) -> bool:
    """Whether the configuration resamples the class maps with nnU-Net's torch resampling."""
    return configuration_manager.configuration.get("resampling_fn_probabilities") == TORCH_RESAMPLING


def segmentation_from_logits(logits: Any, plans_manager: Any, configuration_manager: Any, label_manager: Any,
                             properties: dict, num_threads_torch: int) -> Any:
    """The segmentation nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape``
    returns (logits ``(classes, *plan-space shape)`` -> labels in the image's shape and axis order).

    With the torch resampling of :func:`with_torch_resampling` and label (not region) outputs, the
    same result class by class: each class map is resampled back on its own and a running maximum
    keeps the first class with the largest value, which is ``argmax`` over all resampled maps (linear
    and nearest interpolation act on each channel independently; ties go to the lower class, as
    ``torch.argmax``). Memory: two resampled maps instead of all of them (16 classes on a
    512x512x200 CT: about 0.4 GB instead of several). Otherwise nnU-Net's function, unchanged.
    """
    import numpy as np
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    if not uses_torch_resampling(configuration_manager) or label_manager.has_regions:
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, plans_manager, configuration_manager, label_manager, properties,
            num_threads_torch=num_threads_torch)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads_torch)
    try:
        shape = properties["shape_after_cropping_and_before_resampling"]
        target_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
        plan_spacing = configuration_manager.spacing
        current_spacing = plan_spacing if len(plan_spacing) == len(shape) else \
            [target_spacing[0], *plan_spacing]
        resample = configuration_manager.resampling_fn_probabilities
        logits = torch.as_tensor(logits)
        best = labels = None
        for c in range(logits.shape[0]):
            m = torch.as_tensor(resample(logits[c:c + 1], shape, current_spacing, target_spacing))[0].float()
            if best is None:
                best, labels = m, torch.zeros(m.shape, dtype=torch.int16)
                continue
            better = m > best
            labels[better] = c
            best = torch.where(better, m, best)
        segmentation = labels.numpy()
    finally:
        torch.set_num_threads(old_threads)
    dtype = np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16
    full = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    full = insert_crop_into_image(full, segmentation.astype(dtype), properties["bbox_used_for_cropping"])
    return full.transpose(plans_manager.transpose_backward)
