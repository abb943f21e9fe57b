"""Hard pseudo-labels: a trained nnU-Net model's segmentations of unlabelled scans, written as a new nnU-Net
raw dataset that stock nnU-Net trains a student on (issue 26, item 5).

This is what any nnU-Net user can do by hand (``nnUNetv2_predict`` on the scans, the predictions copied
into ``labelsTr``), and so the baseline every distillation result must beat. The segmentations are
nnU-Net's own: ``nnUNetPredictor`` (preprocessing with the model's plans, sliding window with Gaussian
weighting, mirroring, export with the scan's geometry). With several folds, nnU-Net's predictor averages
the folds' logits (``predict_logits_from_preprocessed_data``) and takes the argmax of their softmax, as
``nnUNetv2_predict -f 0 1 ...`` does.

The dataset ``DatasetXXX_Name`` holds ``imagesTr`` (copies of the scans, and optionally of the cases of
a labelled raw dataset), ``labelsTr`` (the model's segmentations; the real labels of the labelled cases)
and nnU-Net's ``dataset.json`` with the model's channels, labels and file ending, ``numTraining``, and
under ``reco_kd_pseudo_labels`` which model, folds and cases made it.

Everything is checked before anything is written (:func:`plan_pseudo_labels`). The dataset is built in
a hidden folder next to its destination (``.tmp-DatasetXXX_Name-partial``) and renamed into place when
complete, so a killed run never leaves a dataset that looks complete; each segmentation is written to a
scratch folder and moved into ``labelsTr`` whole, so a second run of the same request continues where
the first stopped (a different request starts afresh).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recokd.data.raw_dataset import check_dataset_destination, move_into_place
from recokd.errors import UserError
from recokd.json_files import json_ready, read_json, write_json_atomic
from recokd.nnunet.layout import CHECKPOINT_FINAL, env_folder, parse_dataset_folder_name
from recokd.nnunet.model_folder import ModelFolder, check_model_folder
from recokd.nnunet.scans import check_scan_folder, labelled_cases

#: dataset.json entry recording how the dataset was made
PROVENANCE_KEY = "reco_kd_pseudo_labels"
#: in the partial folder: the request it belongs to (a run resumes only the same request)
REQUEST_FILE = ".recokd_request.json"
#: in the partial folder: where nnU-Net's predictor writes before a segmentation is moved to labelsTr
SCRATCH = ".predicting"


@dataclass(frozen=True)
class PseudoLabelPlan:
    """A checked pseudo-labelling request: nothing has been written yet."""

    model: ModelFolder
    scans: dict[str, list[Path]]  #: case id -> channel files, to be pseudo-labelled
    labelled: dict[str, tuple[list[Path], Path]]  #: case id -> (channel files, label file), copied as is
    labelled_from: Path | None  #: the labelled raw dataset folder
    target: Path  #: ``.../DatasetXXX_Name``
    tile_step_size: float = 0.5
    mirroring: bool = True

    @property
    def partial(self) -> Path:
        """The hidden folder the dataset is built in."""
        return self.target.parent / f".tmp-{self.target.name}-partial"

    def provenance(self) -> dict[str, Any]:
        """What made the dataset (the ``reco_kd_pseudo_labels`` entry of its dataset.json)."""
        return {
            "model": str(self.model.folder.resolve()),
            "folds": list(self.model.folds),
            "checkpoint": self.model.checkpoint_name,
            "trainer": self.model.trainer,
            "ensembling": "mean of the folds' logits (nnUNetPredictor)" if len(self.model.folds) > 1
            else None,
            "tile_step_size": self.tile_step_size,
            "mirroring": self.mirroring,
            "pseudo_labelled_cases": sorted(self.scans),
            "labelled_cases": sorted(self.labelled),
            "labelled_from": None if self.labelled_from is None else str(self.labelled_from.resolve()),
        }

    def request(self) -> dict[str, Any]:
        """:meth:`provenance` plus each input file's size and modification time: a partial folder is
        resumed only for an identical request."""
        files = [p for paths in self.scans.values() for p in paths]
        files += [p for images, label in self.labelled.values() for p in (*images, label)]
        stamps = {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
        return json_ready({**self.provenance(), "files": stamps})


def resolve_target(dataset: str | Path) -> Path:
    """The dataset folder ``-o`` names: a bare ``DatasetXXX_Name`` goes to ``$nnUNet_raw``; a path must end in
    such a name."""
    text = str(dataset)
    path = Path(text).expanduser()
    if parse_dataset_folder_name(path.name) is None:
        raise UserError(f"-o {text}: the dataset folder must be named DatasetXXX_Name (nnU-Net's naming, "
                        "XXX a 3-digit id, e.g. Dataset501_PseudoLabels)")
    if os.sep not in text and "/" not in text:
        return env_folder("nnUNet_raw", hint="or give -o as a path") / path.name
    return path


def _resolve_labelled(labelled: str | Path) -> Path:
    """A labelled raw dataset given as a folder, or as an id or name in ``$nnUNet_raw``."""
    path = Path(labelled).expanduser()
    if path.is_dir():
        return path
    from recokd.nnunet.plans import resolve_dataset_name

    return env_folder("nnUNet_raw") / resolve_dataset_name(str(labelled))


def _check_labelled_fits(model: ModelFolder, folder: Path) -> None:
    ds = read_json(folder / "dataset.json", "--labelled dataset.json")
    for key in ("labels", "file_ending"):
        if json_ready(ds.get(key)) != json_ready(model.dataset_json[key]):
            raise UserError(f"--labelled {folder / 'dataset.json'}: {key} {ds.get(key)} differ from the "
                            f"model's {model.dataset_json[key]} ({model.folder / 'dataset.json'})")
    if len(ds.get("channel_names", {})) != len(model.channel_names):
        raise UserError(f"--labelled {folder / 'dataset.json'}: {len(ds.get('channel_names', {}))} input "
                        f"channel(s), the model takes {len(model.channel_names)} ({model.channel_names})")


def plan_pseudo_labels(model_folder: str | Path | ModelFolder, scans: str | Path, dataset: str | Path,
                       *, folds: Sequence[int | str] | str | None = None, checkpoint: str = CHECKPOINT_FINAL,
                       labelled: str | Path | None = None, overwrite: bool = False,
                       tile_step_size: float = 0.5, mirroring: bool = True) -> PseudoLabelPlan:
    """Check a pseudo-labelling request; write nothing.

    ``model_folder``: nnU-Net results folder (:func:`~recokd.nnunet.model_folder.check_model_folder`;
    ``folds`` None = every fold with ``checkpoint``), or a :class:`ModelFolder` checked already (its folds
    and checkpoint are used; ``folds``/``checkpoint`` are then ignored). ``scans``: raw images in
    nnU-Net naming (:func:`~recokd.nnunet.scans.check_scan_folder`), whose ids must not repeat those of
    ``labelled`` (a raw dataset folder, id or name, with the model's labels and file ending).
    ``dataset``: the new ``DatasetXXX_Name`` (:func:`resolve_target`; replaced only with ``overwrite``;
    its id must be free).
    """
    if not 0 < tile_step_size <= 1:
        raise UserError(f"--step-size must be in (0, 1], got {tile_step_size}")
    target = resolve_target(dataset)
    model = model_folder if isinstance(model_folder, ModelFolder) else \
        check_model_folder(model_folder, folds, checkpoint, role="model")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    previous = PlansManager(model.plans).get_configuration(model.configuration).previous_stage_name
    if previous:
        raise UserError(f"{model.folder}: configuration {model.configuration} is a cascade stage (it needs "
                        f"the predictions of {previous}); pseudo-label with a single-stage configuration")
    labelled_folder = None
    cases: dict[str, tuple[list[Path], Path]] = {}
    if labelled is not None:
        labelled_folder = _resolve_labelled(labelled)
        cases = labelled_cases(labelled_folder, what="--labelled")
        _check_labelled_fits(model, labelled_folder)
    found = check_scan_folder(scans, model.dataset_json, exclude_case_ids=cases, plans=model.plans, what="-i")
    dataset_id, name = parse_dataset_folder_name(target.name)
    if labelled_folder is not None and labelled_folder.resolve() == target.resolve():
        raise UserError(f"-o {target} is the --labelled dataset: write the pseudo-labels to a new dataset")
    for source, what in ((Path(scans), "-i"), (model.folder, "the model folder")):
        if target.resolve() in (source.resolve(), *source.resolve().parents):
            raise UserError(f"-o {target} contains {what} {source}: choose another dataset folder")
    check_dataset_destination(target.parent, dataset_id, name, overwrite, flag="-o")
    return PseudoLabelPlan(model, found, cases, labelled_folder, target, tile_step_size, mirroring)


def make_predictor(model: ModelFolder, device, tile_step_size: float = 0.5, mirroring: bool = True):
    """nnU-Net's ``nnUNetPredictor`` for the checked model folder and its folds, on ``device``."""
    from recokd.nnunet import add_ext_trainer_dir_to_env

    add_ext_trainer_dir_to_env()  # reco-kd's own trainers (students) are found by name
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's notices ("only supported for cuda", ...)
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        try:
            predictor.initialize_from_trained_model_folder(str(model.folder), list(model.folds),
                                                           checkpoint_name=model.checkpoint_name)
        except Exception as e:  # the trainer class not found, weights that do not fit the plans, ...
            raise UserError(f"nnU-Net could not load {model.folder} (folds {list(model.folds)}): "
                            f"{type(e).__name__}: {e}") from e
    return predictor


def _copy(source: Path, destination: Path) -> None:
    """Copy a file whole (through a temporary name), unless a previous run already did."""
    if destination.exists():
        return
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def _open_partial(plan: PseudoLabelPlan) -> Path:
    """The partial folder of ``plan``, resumed if it belongs to the same request, else made afresh."""
    work, request = plan.partial, plan.request()
    if work.exists():
        try:
            same = read_json(work / REQUEST_FILE, "request record") == request
        except UserError:
            same = False
        if not same:
            print(f"{work} belongs to another request: starting afresh")
            shutil.rmtree(work)
    for sub in ("imagesTr", "labelsTr", SCRATCH):
        (work / sub).mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / REQUEST_FILE, request)
    return work


def _predict_case(predictor, case: str, files: list[Path], work: Path, file_ending: str) -> None:
    scratch = work / SCRATCH
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            predictor.predict_from_files_sequential([[str(p) for p in files]], [str(scratch / case)],
                                                    save_probabilities=False, overwrite=True)
    except Exception as e:  # a scan nnU-Net cannot read, resample or predict
        raise UserError(f"nnU-Net could not pseudo-label case {case} ({', '.join(str(p) for p in files)}): "
                        f"{type(e).__name__}: {str(e).strip()[:300]}; the cases done so far are kept in "
                        f"{work}: fix or remove the scan and run the same command again") from e
    os.replace(scratch / f"{case}{file_ending}", work / "labelsTr" / f"{case}{file_ending}")


def write_pseudo_label_dataset(plan: PseudoLabelPlan, device="cpu", progress: bool = True) -> Path:
    """Write the dataset of a checked ``plan`` (:func:`plan_pseudo_labels`) and return its folder.

    Predicts each scan with nnU-Net's predictor (all of ``plan.model.folds`` ensembled) on ``device``, one
    case at a time (a tqdm bar over the cases with ``progress``), copies the scans and the labelled cases,
    writes dataset.json with nnU-Net's ``generate_dataset_json``, and moves the finished folder into place.
    """
    import torch
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    from recokd.nnunet.devices import set_nnunet_threads

    device = torch.device(device)
    model, ending = plan.model, plan.model.file_ending
    threads = torch.get_num_threads()
    set_nnunet_threads(device)
    try:
        predictor = make_predictor(model, device, plan.tile_step_size, plan.mirroring)
        work = _open_partial(plan)
        images, labels = work / "imagesTr", work / "labelsTr"
        for case, (files, label) in plan.labelled.items():
            for c, file in enumerate(files):
                _copy(file, images / f"{case}_{c:04d}{ending}")
            _copy(label, labels / f"{case}{ending}")
        pending = [case for case in plan.scans if not (labels / f"{case}{ending}").exists()]
        if len(pending) < len(plan.scans):
            print(f"continuing in {work}: {len(plan.scans) - len(pending)} of {len(plan.scans)} scans are "
                  "pseudo-labelled already")
        for case in tqdm(pending, desc="pseudo-labelling", unit="case", disable=not progress):
            for c, file in enumerate(plan.scans[case]):
                _copy(file, images / f"{case}_{c:04d}{ending}")
            _predict_case(predictor, case, plan.scans[case], work, ending)
    finally:
        torch.set_num_threads(threads)
    ds = model.dataset_json
    optional = {k: ds[k] for k in ("regions_class_order", "overwrite_image_reader_writer") if k in ds}
    generate_dataset_json(str(work), dict(model.channel_names), dict(ds["labels"]),
                          len(plan.scans) + len(plan.labelled), ending,
                          dataset_name=plan.target.name,
                          description=f"pseudo-labels of {model.folder.name} (folds "
                                      f"{', '.join(map(str, model.folds))}) made by recokd pseudo-label",
                          converted_by="recokd pseudo-label", **optional,
                          **{PROVENANCE_KEY: json_ready(plan.provenance())})
    shutil.rmtree(work / SCRATCH)
    (work / REQUEST_FILE).unlink()
    return move_into_place(work, plan.target)
