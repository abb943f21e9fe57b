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
