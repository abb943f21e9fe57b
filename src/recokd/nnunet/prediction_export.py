"""nnU-Net's prediction export, made atomic, and the one place reco-kd runs nnU-Net's predictor on a folder.

nnU-Net's predictor writes each case with ``export_prediction_from_logits`` (resampling back, argmax,
then the dataset's image writer; ``.npz`` + ``.pkl`` with probabilities), straight to
``OUT/CASE<file_ending>``, in a pool of export worker processes (or in this process for
``predict_from_files_sequential``). A run killed during a write leaves a truncated file there, and
``--continue-prediction`` (nnU-Net's ``overwrite=False``: skip cases whose file exists) trusts it.

:func:`export_prediction_atomically` is nnU-Net's function writing under partial names
(:mod:`recokd.atomic_files`) and renaming when complete, the segmentation last (the file nnU-Net
checks), after reading it back (SimpleITK's writer reports no error on a full disk: it leaves an
empty file). :func:`predict_folder_atomically` installs it for the duration of one prediction as the
export nnU-Net's predictor module calls (the module's ``export_prediction_from_logits`` name, looked
up at each call by ``predict_from_data_iterator`` and ``predict_from_files_sequential``; the workers
receive the function by reference, so they import it from here), with nnU-Net's JSON files beside
the predictions written the same way, removes partial files of killed runs, and turns a full disk
into one line naming the output folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recokd.atomic_files import (
    DiskFullError,
    atomic_path,
    atomic_paths,
    looks_full,
    partial_path,
    remove_stale_partials,
    writing_into,
)
from recokd.errors import UserError
from recokd.nnunet.resampling import segmentation_from_logits, uses_torch_resampling


def export_prediction_atomically(predicted_array_or_file: Any, properties_dict: dict,
                                 configuration_manager: Any, plans_manager: Any,
                                 dataset_json_dict_or_file: dict | str, output_file_truncated: str,
                                 save_probabilities: bool = False,
                                 num_threads_torch: int | None = None) -> None:
    """nnU-Net's ``export_prediction_from_logits`` (same arguments) writing ``OUT.npz``/``OUT.pkl``
    (with ``save_probabilities``) and ``OUT<file_ending>`` under partial names, renamed in that
    order once all were written."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    if isinstance(dataset_json_dict_or_file, str):
        dataset_json_dict_or_file = load_json(dataset_json_dict_or_file)
    out = Path(output_file_truncated)
    suffixes = [".npz", ".pkl"] if save_probabilities else []
    targets = [out.with_name(out.name + s) for s in [*suffixes, dataset_json_dict_or_file["file_ending"]]]
    extra = {} if num_threads_torch is None else {"num_threads_torch": num_threads_torch}
    with atomic_paths(*targets) as partials:
        # nnU-Net appends the endings to the partial name of OUT: the partial names atomic_paths renames
        truncated = partial_path(out)
        if save_probabilities or not uses_torch_resampling(configuration_manager):
            export_prediction_from_logits(predicted_array_or_file, properties_dict, configuration_manager,
                                          plans_manager, dataset_json_dict_or_file, str(truncated),
                                          save_probabilities, **extra)
        else:  # --resampling torch: the same segmentation, class by class (recokd.nnunet.resampling)
            write_segmentation(predicted_array_or_file, properties_dict, configuration_manager, plans_manager,
                               dataset_json_dict_or_file, partials[-1], num_threads_torch)
        check_readable(plans_manager.image_reader_writer_class(), partials[-1], targets[-1])


def write_segmentation(logits: Any, properties: dict, configuration_manager: Any, plans_manager: Any,
                       dataset_json: dict, target: str | Path, num_threads_torch: int | None = None) -> None:
    """What nnU-Net's ``export_prediction_from_logits`` does without probabilities (segmentation in
    the image's geometry, written by the dataset's writer to ``target``), with
    :func:`recokd.nnunet.resampling.segmentation_from_logits` for the conversion."""
    import torch

    label_manager = plans_manager.get_label_manager(dataset_json)
    threads = torch.get_num_threads() if num_threads_torch is None else num_threads_torch
    segmentation = segmentation_from_logits(logits, plans_manager, configuration_manager, label_manager,
                                            properties, threads)
    plans_manager.image_reader_writer_class().write_seg(segmentation, str(target), properties)


def check_readable(reader_writer: Any, written: Path, target: Path) -> None:
    """Read the segmentation just written to ``written`` (the partial name of ``target``) back with
    the dataset's reader. SimpleITK's writer reports no error when the disk fills (ITK 2.5 leaves an
    empty or truncated file and returns): this is what catches it, as a :class:`DiskFullError` when
    the disk is full, else a :class:`UserError` naming ``target``."""
    try:
        reader_writer.read_seg(str(written))
    except Exception as e:  # noqa: BLE001 - any reader failure means the file is not what was written
        if looks_full(target.parent):
            raise DiskFullError(target.parent) from None
        raise UserError(f"{target}: the segmentation nnU-Net's writer wrote cannot be read back "
                        f"({type(e).__name__}: {str(e).strip()[:200]})") from None


def save_json_atomically(obj: Any, file: str, indent: int = 4, sort_keys: bool = True) -> None:
    """batchgenerators' ``save_json`` (nnU-Net writes the prediction's ``dataset.json``, ``plans.json``
    and ``predict_from_raw_data_args.json`` with it) through a partial file."""
    import json

    with atomic_path(file) as partial, open(partial, "w") as f:
        json.dump(obj, f, sort_keys=sort_keys, indent=indent)


@contextlib.contextmanager
def atomic_nnunet_export() -> Iterator[None]:
    """Within the block, nnU-Net's predictor exports with :func:`export_prediction_atomically` and
    writes its JSON files with :func:`save_json_atomically`."""
    import nnunetv2.inference.predict_from_raw_data as predict_module

    originals = predict_module.export_prediction_from_logits, predict_module.save_json
    predict_module.export_prediction_from_logits = export_prediction_atomically
    predict_module.save_json = save_json_atomically
    try:
        yield
    finally:
        predict_module.export_prediction_from_logits, predict_module.save_json = originals


def predict_folder_atomically(predictor: Any, in_dir: Path, out_dir: Path, *, continue_prediction: bool,
                              save_probabilities: bool, sequential: bool, num_processes_preprocessing: int,
                              num_processes_export: int) -> None:
    """Run nnU-Net's ``predictor`` (an initialised ``nnUNetPredictor`` or subclass) on every case of
    ``in_dir`` into ``out_dir``, each file written atomically (see the module doc): in this process
    (``sequential``: ``predict_from_files_sequential``) or with nnU-Net's worker pools. Existing
    outputs are skipped with ``continue_prediction``, else replaced."""
    remove_stale_partials(out_dir)
    with writing_into(out_dir), atomic_nnunet_export():
        if sequential:
            predictor.predict_from_files_sequential(str(in_dir), str(out_dir),
                                                    save_probabilities=save_probabilities,
                                                    overwrite=not continue_prediction)
        else:
            predictor.predict_from_files(str(in_dir), str(out_dir), save_probabilities=save_probabilities,
                                         overwrite=not continue_prediction,
                                         num_processes_preprocessing=num_processes_preprocessing,
                                         num_processes_segmentation_export=num_processes_export)
