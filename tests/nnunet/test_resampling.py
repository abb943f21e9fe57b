"""``--resampling torch``: nnU-Net's torch resampling in place of the plans' own, same geometry.

Reference: nnU-Net's own inference functions with the plans' default resampling
(``resample_data_or_seg_to_shape``) on an anisotropic phantom (0.7 x 0.7 x 2.5 mm, plan at 1 mm):
the class maps' export (``convert_predicted_logits_to_segmentation_with_correct_shape``) and the
image's preprocessing (``DefaultPreprocessor.run_case_npy``) must give arrays of the same shapes and
nearly the same values (issue 29's thresholds: >= 99.5% voxel agreement of the segmentations).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recokd.data.anatomy import generate_case
from recokd.errors import UserError
from recokd.nnunet.resampling import (
    TORCH_RESAMPLING,
    apply_resampling,
    torch_resampling_configuration,
    with_torch_resampling,
)

ANISOTROPIC = (2.5, 0.7, 0.7)  # (z, y, x) mm: a CT's thick slices
SHAPE = (26, 92, 92)  # about 65 mm per axis
PLAN_SPACING = (1.0, 1.0, 1.0)
CLASSES = 8


def default_configuration() -> dict:
    """The resampling entries nnU-Net's default planner writes for a 3d_fullres configuration."""
    return {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [32, 32, 32], "spacing": list(PLAN_SPACING),
        "median_image_size_in_voxels": [65.0, 65.0, 65.0],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False,
    }


def managers():
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    plans = {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": list(ANISOTROPIC),
             "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": default_configuration()}, "experiment_planner_used": "x",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 400.0, "mean": 60.0, "median": 58.0, "min": -100.0, "percentile_00_5": -30.0,
                 "percentile_99_5": 190.0, "std": 35.0}}}
    plans_manager = PlansManager(plans)
    default = plans_manager.get_configuration("3d_fullres")
    return plans_manager, default, with_torch_resampling(ConfigurationManager(default_configuration()), 2)


def test_torch_configuration_swaps_only_the_inference_resampling() -> None:
    given = default_configuration()
    kept = copy.deepcopy(given)
    out = torch_resampling_configuration(given, threads=3)
    assert given == kept  # a copy; the plans are not changed
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        assert out[key] == TORCH_RESAMPLING
        assert out[f"{key}_kwargs"] == {"is_seg": False, "force_separate_z": None,
                                        "memefficient_seg_resampling": False, "num_threads": 3}
    assert out["resampling_fn_seg"] == given["resampling_fn_seg"]
    assert {k: v for k, v in out.items() if "resampling_fn" not in k} == \
        {k: v for k, v in given.items() if "resampling_fn" not in k}
    given["resampling_fn_data_kwargs"]["force_separate_z"] = False
    assert torch_resampling_configuration(given, 1)["resampling_fn_data_kwargs"]["force_separate_z"] is False
    with pytest.raises(UserError, match="positive integer"):
        torch_resampling_configuration(given, 0)


def test_apply_resampling_replaces_the_predictor_configuration() -> None:
    class Predictor:
        configuration_manager = managers()[1]

    predictor = Predictor()
    before = predictor.configuration_manager
    apply_resampling(predictor, "nnunet")
    assert predictor.configuration_manager is before
    apply_resampling(predictor, "torch")
    assert predictor.configuration_manager.configuration["resampling_fn_probabilities"] == TORCH_RESAMPLING
    assert before.configuration["resampling_fn_probabilities"] == "resample_data_or_seg_to_shape"
    with pytest.raises(UserError, match="--resampling"):
        apply_resampling(predictor, "cubic")


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    image, label = generate_case(np.random.default_rng(3), SHAPE, ANISOTROPIC, small_scale=2)
    return image[None].astype(np.float32), label


def test_torch_export_agrees_with_nnunets_default_export_on_an_anisotropic_case() -> None:
    """Logits on the plan's 1 mm grid (a smoothed one-hot of the phantom's label resampled there)
    exported back to 0.7 x 0.7 x 2.5 mm by both paths: same shape, >= 99.5% identical voxels."""
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape as export,
    )
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from scipy.ndimage import gaussian_filter, zoom

    plans_manager, default, fast = managers()
    _, label = _phantom()
    plan_shape = compute_new_shape(SHAPE, ANISOTROPIC, PLAN_SPACING)
    on_plan = zoom(label, [n / o for n, o in zip(plan_shape, SHAPE, strict=True)], order=0)
    assert on_plan.shape == tuple(plan_shape)
    logits = np.stack([gaussian_filter((on_plan == c).astype(np.float32) * 10, 1.0) for c in range(CLASSES)])
    properties = {"spacing": list(ANISOTROPIC), "shape_before_cropping": SHAPE,
                  "bbox_used_for_cropping": [[0, s] for s in SHAPE],
                  "shape_after_cropping_and_before_resampling": SHAPE}
    dataset_json = {"labels": {"background": 0, **{f"c{c}": c for c in range(1, CLASSES)}}}
    label_manager = plans_manager.get_label_manager(dataset_json)
    segs = [export(torch.from_numpy(logits.copy()), plans_manager, manager, label_manager, dict(properties),
                   num_threads_torch=2) for manager in (default, fast)]
    assert segs[0].shape == segs[1].shape == SHAPE
    agreement = float((segs[0] == segs[1]).mean())
    assert agreement >= 0.995, agreement
    # every class the default path finds, the torch path finds too, of a similar size
    for c in range(1, CLASSES):
        a, b = int((segs[0] == c).sum()), int((segs[1] == c).sum())
        assert a > 0 and abs(a - b) <= 0.1 * a, (c, a, b)


def test_torch_image_resampling_gives_nnunets_shape_and_nearly_its_values() -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    plans_manager, default, fast = managers()
    image, _ = _phantom()
    out = []
    for manager in (default, fast):
        properties = {"spacing": list(ANISOTROPIC)}
        data, _, props = DefaultPreprocessor(verbose=False).run_case_npy(image.copy(), None, properties,
                                                                        plans_manager, manager, {})
        out.append((data, props))
    (a, pa), (b, pb) = out
    assert a.shape == b.shape
    for key in ("shape_before_cropping", "bbox_used_for_cropping",
                "shape_after_cropping_and_before_resampling"):
        assert pa[key] == pb[key]
    # cubic (nnU-Net) vs linear (torch) in-plane, both nearest along z: the same image up to interpolation
    assert float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) > 0.99


def test_class_by_class_export_equals_nnunets_export_with_torch_resampling() -> None:
    """The streamed conversion (one class map resampled at a time, running argmax) returns exactly
    nnU-Net's segmentation for the same torch resampling: cropped case, ties included."""
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape as export,
    )

    from recokd.nnunet.resampling import segmentation_from_logits

    plans_manager, default, fast = managers()
    cropped = (20, 80, 84)  # the case's non-zero box inside SHAPE
    bbox = [[3, 23], [5, 85], [4, 88]]
    plan_shape = (50, 56, 59)
    logits = torch.randn(CLASSES, *plan_shape, generator=torch.Generator().manual_seed(0)).half()
    logits[2, :5] = logits[3, :5] = 9.0  # ties: the lower class wins in both
    properties = {"spacing": list(ANISOTROPIC), "shape_before_cropping": SHAPE,
                  "bbox_used_for_cropping": bbox, "shape_after_cropping_and_before_resampling": cropped}
    label_manager = plans_manager.get_label_manager(
        {"labels": {"background": 0, **{f"c{c}": c for c in range(1, CLASSES)}}})
    reference = export(logits.clone(), plans_manager, fast, label_manager, dict(properties),
                       num_threads_torch=2)
    streamed = segmentation_from_logits(logits.clone(), plans_manager, fast, label_manager,
                                        dict(properties), 2)
    assert streamed.shape == reference.shape == SHAPE and streamed.dtype == reference.dtype
    assert np.array_equal(streamed, reference)
    assert (streamed == 2).any()
    # nnU-Net's own resampling: nnU-Net's function is used as it is
    assert np.array_equal(segmentation_from_logits(logits.clone(), plans_manager, default, label_manager,
                                                   dict(properties), 2),
                          export(logits.clone(), plans_manager, default, label_manager, dict(properties),
                                 num_threads_torch=2))
