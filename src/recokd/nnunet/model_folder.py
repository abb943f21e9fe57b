"""A trained nnU-Net model folder, checked before anything is predicted or written with it.

An nnU-Net results folder ``$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration`` holds the
``plans.json`` and ``dataset.json`` of the model and one ``fold_X/checkpoint_final.pth`` per trained
fold (``fold_all`` for a model trained on every case). nnU-Net's predictor
(``nnUNetPredictor.initialize_from_trained_model_folder``) takes the plans from ``plans.json`` and the
trainer class and configuration from the *first* fold's checkpoint, then loads every fold's weights into
that one network: it fails with a bare ``KeyError``/``FileNotFoundError`` on a missing file and, worse,
ensembles without complaint folds trained with different plans (``plans.json`` is rewritten by every
training that starts, so it describes the last fold trained). :func:`check_model_folder` refuses all of
these up front, with a one-line :class:`~recokd.errors.UserError` naming the file and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recokd.errors import UserError
from recokd.json_files import read_json
from recokd.nnunet.layout import (
    CHECKPOINT_FINAL,
    fold_folder_name,
    parse_fold,
    parse_model_folder_name,
)
from recokd.nnunet.trained_model import checkpoint_plans, read_nnunet_checkpoint, resolve_checkpoint

#: ``folds`` value meaning every numbered ``fold_X`` that has the checkpoint (nnU-Net's predictor without
#: ``-f``); ``"all"`` inside a list is nnU-Net's ``fold_all``
ALL_FOLDS = "all"
#: dataset.json entries nnU-Net's predictor needs
DATASET_JSON_KEYS = ("channel_names", "labels", "file_ending")


@dataclass(frozen=True)
class ModelFolder:
    """A checked nnU-Net results folder and the folds to use from it."""

    folder: Path  #: ``.../DatasetXXX_Name/Trainer__Plans__Configuration``
    plans: dict  #: ``plans.json`` (what every requested fold was trained with)
    dataset_json: dict  #: ``dataset.json`` (``channel_names``, ``labels``, ``file_ending`` present)
    configuration: str  #: e.g. ``3d_fullres``
    trainer: str  #: the trainer class of the checkpoints (``trainer_name``)
    plans_identifier: str  #: the ``Plans`` part of the folder name
    folds: tuple[int | str, ...]  #: e.g. ``(0, 1, 2, 3, 4)`` or ``("all",)`` for ``fold_all``
    checkpoints: tuple[Path, ...]  #: one checkpoint file per fold, in the order of ``folds``
    checkpoint_name: str  #: e.g. ``checkpoint_final.pth``

    @property
    def file_ending(self) -> str:
        """The image file ending of the model's dataset (``.nii.gz``)."""
        return self.dataset_json["file_ending"]

    @property
    def channel_names(self) -> dict[str, str]:
        """dataset.json's ``{"0": "CT", ...}``: the input channels the model takes."""
        return self.dataset_json["channel_names"]


def _numbered_folds(folder: Path, checkpoint: str) -> list[int]:
    """Every ``fold_<int>`` of ``folder`` with ``checkpoint`` (nnU-Net's ``auto_detect_available_folds``)."""
    found = []
    for d in folder.glob("fold_*"):
        suffix = d.name.removeprefix("fold_")
        if d.is_dir() and suffix.isdigit() and (d / checkpoint).is_file():
            found.append(int(suffix))
    return sorted(found)


def _present_folds(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    return ", ".join(names) if names else "(none)"


def resolve_folds(folder: Path, folds: Sequence[int | str] | str | None, checkpoint: str = CHECKPOINT_FINAL,
                  what: str = "-f") -> tuple[int | str, ...]:
    """The folds ``folds`` designates in ``folder``.

    ``None`` or ``"all"`` (a string, not in a list): every numbered ``fold_X`` that holds ``checkpoint``
    (nnU-Net's predictor without ``-f``). A list: those folds, each a non-negative integer or ``"all"``
    (nnU-Net's ``fold_all``), without repeats, each of which must exist (all missing ones are named at once).
    """
    if folds is None or folds == ALL_FOLDS:
        found = _numbered_folds(folder, checkpoint)
        if not found:
            raise UserError(f"model folder {folder} has no fold_X/{checkpoint} (folds present: "
                            f"{_present_folds(folder)})")
        return tuple(found)
    if isinstance(folds, str | int):
        folds = [folds]
    parsed = [parse_fold(f, what) for f in folds]
    if not parsed:
        raise UserError(f"{what}: no fold given")
    repeated = sorted({str(f) for f in parsed if parsed.count(f) > 1})
    if repeated:
        raise UserError(f"{what}: fold(s) {', '.join(repeated)} given more than once")
    missing = [f for f in parsed if not (folder / fold_folder_name(f)).is_dir()]
    if missing:
        raise UserError(f"{what}: model folder {folder} has no "
                        f"{', '.join(fold_folder_name(f) for f in missing)} (folds present: "
                        f"{_present_folds(folder)})")
    return tuple(parsed)


def _normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples -> lists, ...), so a checkpoint's plans compare equal
    to the ``plans.json`` nnU-Net wrote from them."""
    return json.loads(json.dumps(value, default=str))


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted path of the first entry where ``a`` and ``b`` differ (``""`` for the top level), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key}".lstrip(".")
            inner = first_difference(a[key], b[key], f"{path}.{key}")
            if inner is not None:
                return inner
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            inner = first_difference(x, y, f"{path}[{i}]")
            if inner is not None:
                return inner
        return None
    return None if a == b else (path.lstrip(".") or "(top level)")


def _check_dataset_json(folder: Path, plans: dict, dataset_json: Any, configuration: str) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    file = folder / "dataset.json"
    if not isinstance(dataset_json, dict):
        raise UserError(f"{file} holds a {type(dataset_json).__name__}, expected nnU-Net's dataset.json")
    missing = [k for k in DATASET_JSON_KEYS if k not in dataset_json]
    if missing:
        raise UserError(f"{file} has no {', '.join(missing)} (nnU-Net's dataset.json of the model's dataset "
                        f"has {', '.join(DATASET_JSON_KEYS)})")
    if not isinstance(plans, dict) or configuration not in (plans.get("configurations") or {}):
        found = ", ".join(sorted((plans.get("configurations") or {}) if isinstance(plans, dict) else [])) \
            or "(none)"
        raise UserError(f"{folder / 'plans.json'} has no configuration {configuration!r} (the folder name's "
                        f"configuration); configurations: {found}")
    try:
        plans_manager = PlansManager(plans)
        plans_manager.get_configuration(configuration)
        plans_manager.get_label_manager(dataset_json)
    except Exception as e:  # nnU-Net raises bare KeyErrors/asserts on malformed plans or labels
        raise UserError(f"{folder}: nnU-Net cannot set up configuration {configuration!r} from plans.json "
                        f"and dataset.json ({type(e).__name__}: {e})") from e


def _check_fold_checkpoint(file: Path, folder: Path, plans: dict, dataset_json: dict, configuration: str,
                           role: str) -> str:
    """Check that the checkpoint ``file`` was trained with the folder's plans, configuration and labels;
    return its trainer class name."""
    ckpt = read_nnunet_checkpoint(file, role)
    init_args = ckpt["init_args"]
    if init_args["configuration"] != configuration:
        raise UserError(f"{file} was trained with configuration {init_args['configuration']!r}, but "
                        f"{folder.name} is configuration {configuration!r}")
    where = first_difference(_normalised(checkpoint_plans(ckpt)), _normalised(plans))
    if where is not None:
        raise UserError(f"{file} was trained with other plans than {folder / 'plans.json'} (they differ in "
                        f"{where}); ensembling folds needs one plans file: retrain the fold with these plans "
                        "or leave it out with -f")
    ckpt_ds = init_args["dataset_json"]
    for key in ("channel_names", "labels"):
        if _normalised(ckpt_ds.get(key)) != _normalised(dataset_json[key]):
            raise UserError(f"{file} was trained with other {key} than {folder / 'dataset.json'}: "
                            f"{ckpt_ds.get(key)} vs {dataset_json[key]}")
    return str(ckpt["trainer_name"])


def check_model_folder(folder: str | Path, folds: Sequence[int | str] | str | None = ALL_FOLDS,
                       checkpoint: str = CHECKPOINT_FINAL, *, role: str = "model", what: str = "-f"
                       ) -> ModelFolder:
    """Check an nnU-Net results folder ``Trainer__Plans__Configuration`` and the folds to use from it.

    Checks, before anything is written: the folder exists and is named ``Trainer__Plans__Configuration``;
    ``plans.json`` and ``dataset.json`` are readable, describe the folder's configuration and have
    ``channel_names``/``labels``/``file_ending``; every requested fold (``folds``: see
    :func:`resolve_folds`; ``what`` names the option in messages) has ``checkpoint``, readable as an nnU-Net
    checkpoint, trained with the folder's configuration, plans (the checkpoint's ``init_args["plans"]``
    equal to ``plans.json``), input channels and labels, by one trainer class. Every checkpoint is read
    once (``torch.load``). ``role`` names the model in messages ("teacher", "model").
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{role} folder {folder} does not exist (expected an nnU-Net results folder "
                        ".../DatasetXXX_Name/Trainer__Plans__Configuration)")
    name = parse_model_folder_name(folder.name)
    if name is None:
        raise UserError(f"{role} folder {folder} is not named Trainer__Plans__Configuration (nnU-Net's "
                        "results folder, e.g. nnUNetTrainer__nnUNetPlans__3d_fullres)")
    plans = read_json(folder / "plans.json", f"{role} plans file")
    dataset_json = read_json(folder / "dataset.json", f"{role} dataset.json")
    _check_dataset_json(folder, plans, dataset_json, name.configuration)
    resolved = resolve_folds(folder, folds, checkpoint, what)
    files = tuple(resolve_checkpoint(folder, f, checkpoint, role) for f in resolved)
    trainers = {}
    for fold, file in zip(resolved, files, strict=True):
        trainers[fold] = _check_fold_checkpoint(file, folder, plans, dataset_json, name.configuration, role)
    if len(set(trainers.values())) > 1:
        listed = ", ".join(f"{fold_folder_name(f)}: {t}" for f, t in trainers.items())
        raise UserError(f"the folds of {folder} were trained by different trainer classes ({listed}); "
                        "nnU-Net ensembles folds of one trainer: choose folds with -f")
    return ModelFolder(folder=folder, plans=plans, dataset_json=dataset_json,
                       configuration=name.configuration, trainer=trainers[resolved[0]],
                       plans_identifier=name.plans, folds=resolved, checkpoints=files,
                       checkpoint_name=checkpoint)
