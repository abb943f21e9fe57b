"""nnU-Net's vocabulary as reco-kd uses it, in one place: trainer and checkpoint names, the
``Trainer__Plans__Configuration`` model folders and their ``fold_X`` folders, fold arguments, the
``data_identifier`` of a configuration, and the names of the environment variables our trainers read.

Everything here is plain strings and paths (no nnunetv2 import), so every layer may use it; nothing
else in the package spells these names out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from recokd.errors import UserError

# ---- trainers (the classes live in recokd.nnunet.ext, found through nnUNet_extTrainer)

#: the KD trainer (nnU-Net's training loop + the KD loss) and its no-augmentation variant
KD_TRAINER = "nnUNetTrainerReCoKD"
KD_TRAINER_NO_DA = "nnUNetTrainerReCoKDNoDA"
#: trainers ``recokd train -tr`` accepts
KD_TRAINERS = (KD_TRAINER, KD_TRAINER_NO_DA)
#: stock nnU-Net training on a schedule from the environment (``RECOKD_SHORT_*``), with and without
#: augmentation
SHORT_TRAINER = "nnUNetTrainerShort"
SHORT_TRAINER_NO_DA = "nnUNetTrainerShortNoDA"
#: nnU-Net's default trainer
NNUNET_TRAINER = "nnUNetTrainer"


def short_trainer(augmentation: bool) -> str:
    """The stock short trainer (teacher, no-KD students) with nnU-Net's augmentation or without it."""
    return SHORT_TRAINER if augmentation else SHORT_TRAINER_NO_DA


def kd_trainer(augmentation: bool) -> str:
    """The KD trainer with nnU-Net's augmentation or without it (its ``nnUNetTrainerNoDA`` variant)."""
    return KD_TRAINER if augmentation else KD_TRAINER_NO_DA

# ---- checkpoints

CHECKPOINT_FINAL = "checkpoint_final.pth"
CHECKPOINT_LATEST = "checkpoint_latest.pth"
CHECKPOINT_BEST = "checkpoint_best.pth"
CHECKPOINT_NAMES = (CHECKPOINT_FINAL, CHECKPOINT_LATEST, CHECKPOINT_BEST)

# ---- environment variables read by our trainers (set by recokd train / bench / demo)

#: the KD settings file of a run (:mod:`recokd.nnunet.settings`)
SETTINGS_ENV = "RECOKD_SETTINGS"
#: the seed of the student's initialisation and data stream (:mod:`recokd.nnunet.seeding`)
SEED_ENV = "RECOKD_SEED"
#: tqdm progress bars over training iterations, and their label (:mod:`recokd.nnunet.progress`)
PROGRESS_ENV = "RECOKD_PROGRESS"
PROGRESS_DESC_ENV = "RECOKD_PROGRESS_DESC"
#: the schedule of the short trainers (:mod:`recokd.nnunet.short_trainer`)
SHORT_EPOCHS_ENV = "RECOKD_SHORT_EPOCHS"
SHORT_ITERS_ENV = "RECOKD_SHORT_ITERS"
SHORT_VAL_ITERS_ENV = "RECOKD_SHORT_VAL_ITERS"
#: write checkpoint_latest.pth every N epochs (nnU-Net's ``save_every``; default 50), for resumable runs
SHORT_SAVE_EVERY_ENV = "RECOKD_SHORT_SAVE_EVERY"
#: the optimiser of the short and KD trainers: ``sgd`` (nnU-Net's) or ``adam`` (:mod:`recokd.nnunet.optim`)
SHORT_OPTIMIZER_ENV = "RECOKD_SHORT_OPTIMIZER"
#: torch's CPU threads of a training or prediction (default: every core, as nnU-Net); ``bench --jobs N`` on a
#: CPU gives each of its N runs its share of the cores (:mod:`recokd.nnunet.devices`)
CPU_THREADS_ENV = "RECOKD_CPU_THREADS"
#: the schedule variables, in the order messages list them
SHORT_ENV = (SHORT_EPOCHS_ENV, SHORT_ITERS_ENV, SHORT_VAL_ITERS_ENV, SHORT_OPTIMIZER_ENV)

# ---- folders

#: nnU-Net's three folders, as environment variables
NNUNET_FOLDER_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def env_folder(name: str, hint: str = "", must_exist: bool = True) -> Path:
    """The folder an nnU-Net environment variable (``nnUNet_raw``, ...) names, read now; a
    :class:`~recokd.errors.UserError` naming the variable if it is unset (or, with ``must_exist``, not a
    directory). ``hint`` (e.g. "or use --phantoms") is appended to the message."""
    value = os.environ.get(name)
    more = f"; {hint}" if hint else ""
    if not value:
        raise UserError(f"environment variable {name} is not set: it must point to nnU-Net's {name[7:]} "
                        f"folder (see nnU-Net's documentation/setting_up_paths.md){more}")
    path = Path(value).expanduser()
    if must_exist and not path.is_dir():
        raise UserError(f"{name}={value} is not a directory{more}")
    return path



class ModelFolderName(NamedTuple):
    """The three parts of an nnU-Net model folder name ``Trainer__Plans__Configuration``."""

    trainer: str
    plans: str
    configuration: str

    def __str__(self) -> str:
        return model_folder_name(self.trainer, self.plans, self.configuration)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name``, nnU-Net's dataset folder name (``Dataset004_Hippocampus``)."""
    return f"Dataset{dataset_id:03d}_{name}"


def parse_dataset_folder_name(folder_name: str) -> tuple[int, str] | None:
    """``(id, name)`` of ``DatasetXXX_Name``, or None when ``folder_name`` is not such a name."""
    head, _, name = folder_name.partition("_")
    digits = head[len("Dataset"):]
    if not head.startswith("Dataset") or len(digits) != 3 or not digits.isdigit() or not name:
        return None
    return int(digits), name


def model_folder_name(trainer: str, plans: str, configuration: str) -> str:
    """``Trainer__Plans__Configuration``, nnU-Net's model folder name
    (``nnUNetTrainer__nnUNetPlans__3d_fullres``)."""
    return f"{trainer}__{plans}__{configuration}"


def parse_model_folder_name(name: str) -> ModelFolderName | None:
    """The parts of ``Trainer__Plans__Configuration``, or None when ``name`` is not such a name."""
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        return None
    return ModelFolderName(*parts)


def model_folder(
    results: str | Path, dataset_name: str, trainer: str, plans: str, configuration: str
) -> Path:
    """``<results>/<DatasetXXX_Name>/Trainer__Plans__Configuration``."""
    return Path(results) / dataset_name / model_folder_name(trainer, plans, configuration)


def fold_folder_name(fold: int | str) -> str:
    """``fold_<fold>`` (``fold_0``, ``fold_all``)."""
    return f"fold_{fold}"


def parse_fold(value: int | str, what: str = "fold") -> int | str:
    """A fold as nnU-Net takes it: a non-negative integer (``"3"`` -> 3) or ``"all"``.

    Raises :class:`~recokd.errors.UserError` naming ``what`` (the flag or field) otherwise.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        text = value.strip()
        if text == "all":
            return text
        if text.isdigit():
            return int(text)
    raise UserError(f"{what} must be a non-negative integer or 'all', got {value!r}")


def data_identifier(plans: dict[str, Any], configuration: str) -> str | None:
    """``data_identifier`` of ``configuration`` in a plans dict, following ``inherits_from`` (the folder
    ``$nnUNet_preprocessed/<dataset>/<data_identifier>`` holds its preprocessed cases); None if unset."""
    configurations = plans.get("configurations") or {}
    name: str | None = configuration
    seen: set[str] = set()
    while name is not None and name in configurations and name not in seen:
        seen.add(name)
        config = configurations[name]
        if config.get("data_identifier") is not None:
            return config["data_identifier"]
        name = config.get("inherits_from")
    return None
