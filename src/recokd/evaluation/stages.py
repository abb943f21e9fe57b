"""One case through nnU-Net's prediction stages, each timed on its own: read, preprocess, export.

nnU-Net's predictor (``nnUNetPredictor.predict_from_files``) does per case: read the image
(``image_reader_writer.read_images``), preprocess it (``DefaultPreprocessor.run_case_npy``: crop to
the non-zero box, normalise, resample to the plan's spacing with ``resampling_fn_data``), run the
sliding window (timed by :mod:`recokd.evaluation.profile`), and export
(``convert_predicted_logits_to_segmentation_with_correct_shape``: resample the logits back with
``resampling_fn_probabilities``, argmax, revert the crop and transpose; then the writer). The
functions here are those calls, unchanged, so their times are what ``recokd predict`` spends
outside the network; :func:`measure` adds wall time and peak memory
(:class:`recokd.evaluation.profile.PeakMemory`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recokd.errors import UserError


@dataclass
class StageTiming:
    seconds: float
    peak_memory_bytes: int  #: high-water mark above the stage's start (see PeakMemory)


def measure(memory: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, StageTiming]:
    """``(fn(*args, **kwargs), its StageTiming)``; ``memory`` is a ``PeakMemory``."""
    memory.set_baseline()
    memory.start()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, StageTiming(time.perf_counter() - t0, memory.peak())


def read_case(plans_manager: Any, files: list[str] | tuple[str, ...]) -> tuple[Any, dict]:
    """The image (one file per channel) as nnU-Net's reader of the plans reads it: ``(data (C, z, y, x)
    float32, properties)``."""
    return plans_manager.image_reader_writer_class().read_images(list(files))


def preprocess_case(data: Any, properties: dict, plans_manager: Any, configuration_manager: Any,
                    dataset_json: dict) -> tuple[torch.Tensor, dict]:
    """nnU-Net's preprocessing of one read case (crop, normalisation, resampling) with the
    configuration's preprocessor: ``(volume (C, *plan-space shape) float32, properties for export)``."""
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    try:
        volume, _, props = preprocessor.run_case_npy(data.copy(), None, dict(properties), plans_manager,
                                                     configuration_manager, dataset_json)
    except Exception as e:
        raise UserError(f"nnU-Net's preprocessing failed ({type(e).__name__}: {e})") from e
    return torch.from_numpy(volume).float(), props


def export_case(logits: torch.Tensor, plans_manager: Any, configuration_manager: Any, dataset_json: dict,
                properties: dict, target: str | Path) -> None:
    """nnU-Net's export of one case's logits ``(classes, *plan-space shape)`` as ``recokd predict``
    runs it: resampled back to the image, argmax, crop and transpose reverted, written to ``target``
    (with the dataset's file ending) by the plans' writer
    (:func:`recokd.nnunet.prediction_export.write_segmentation`)."""
    from recokd.nnunet.prediction_export import write_segmentation

    write_segmentation(logits, dict(properties), configuration_manager, plans_manager, dataset_json, target)
