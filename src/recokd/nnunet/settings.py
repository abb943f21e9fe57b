"""KD settings of a ReCo-KD training run, and how the trainer finds them.

nnU-Net builds trainers by class name with a fixed signature ``(plans, configuration, fold,
dataset_json, device)`` -- in ``nnUNetv2_train``/``run_training``, in every DDP worker and (for the
network builder only) in ``nnUNetv2_predict`` -- so the KD settings cannot be constructor
arguments. They live in a JSON file instead:

- ``recokd train`` writes ``<fold folder>/recokd_settings.json`` and points the environment
  variable ``RECOKD_SETTINGS`` at it before handing over to nnU-Net's ``run_training``;
- the trainer reads, on a fresh start (no ``--c``), the file named by ``RECOKD_SETTINGS`` and
  copies it into its fold folder; on ``--c`` it reads the copy in its fold folder (the settings
  the run was started with), falling back to ``RECOKD_SETTINGS``;
- without settings (``nnUNetv2_predict``, ``nnUNetv2_train --val``) the trainer is an ordinary
  nnU-Net trainer of the student network: inference and validation never need the teacher.

So a user may also run ``RECOKD_SETTINGS=my.json nnUNetv2_train D 3d_fullres 0 -tr
nnUNetTrainerReCoKD -p <student plans>`` directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recokd.errors import UserError
from recokd.json_files import read_json, write_json_atomic
from recokd.nnunet.layout import CHECKPOINT_FINAL, SETTINGS_ENV, parse_fold
from recokd.nnunet.optim import OPTIMIZER_NAMES

#: name of the settings file in a fold folder (a fresh training reads the file SETTINGS_ENV names)
SETTINGS_FILE = "recokd_settings.json"
#: version of the settings format
SETTINGS_VERSION = 1
#: the KD weight schedules (:data:`recokd.kd.schedules.SCHEDULES`, spelled here so that the CLI need not
#: import torch; tests/nnunet/test_trainer_settings.py checks that they agree)
SCHEDULE_NAMES = ("constant", "linear", "cosine")


@dataclass
class KDSettings:
    """Everything the ReCo-KD trainer needs beyond nnU-Net's own arguments.

    Defaults follow the spec (section 5) and nnU-Net (1000 epochs of 250 iterations, 50 validation
    iterations, a checkpoint every 50 epochs).
    """

    #: teacher: an nnU-Net results folder ``Trainer__Plans__Config``, a ``fold_X`` folder or a ``.pth``
    teacher: str
    teacher_fold: int | str = 0
    teacher_checkpoint: str = CHECKPOINT_FINAL
    #: KD method spec for :func:`recokd.kd.registry.build_kd_method` (e.g. ``"reco"``)
    method: str = "reco"
    #: keyword options for the KD method (routed by the registry)
    method_options: dict[str, Any] = field(default_factory=dict)
    #: lambda_max of the KD weight schedule
    kd_weight: float = 0.01
    schedule: str = "linear"
    #: fraction of the epochs over which lambda ramps up
    warmup: float = 0.6
    #: EMA decay of the student weights; ``None``: no EMA
    ema_decay: float | None = None
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    #: write ``checkpoint_latest.pth`` every this many epochs (nnU-Net: 50)
    save_every: int = 50
    #: ``"sgd"`` (nnU-Net's default) or ``"adam"`` (nnU-Net's ``nnUNetTrainerAdam``),
    #: see :mod:`recokd.nnunet.optim`
    optimizer: str = "sgd"
    #: the teacher's further folds (nnU-Net's fold ensemble): soft targets and the label maps of unlabelled
    #: patches come from the mean of the logits of ``teacher_fold`` and these; features from ``teacher_fold``
    teacher_ensemble_folds: list[int] = field(default_factory=list)
    #: a folder of raw unlabelled scans (nnU-Net naming) that joins the training stream, or ``None``
    unlabelled: str | None = None
    #: share of each batch taken from the unlabelled scans
    #: (:func:`recokd.nnunet.unlabelled.unlabelled_batch_size`)
    unlabelled_share: float = 0.5
    #: the dataset's training labels are not ground truth (e.g. the teacher's own segmentations, written by
    #: ``recokd distil``): no label loss, every training patch is distilled as unlabelled; they still decide
    #: nnU-Net's foreground sampling, and validation measures agreement with them
    label_free: bool = False
    #: on unlabelled patches, nnU-Net's Dice+CE against the teacher's segmentation of the same augmented
    #: patch (hard pseudo-labels made online), besides the KD terms
    pseudo_label_loss: bool = False
    #: informational: how the student plans were derived (``recokd train`` fills these)
    t: int | None = None
    c_min: int | None = None
    teacher_plans: str | None = None
    version: int = SETTINGS_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "settings") -> KDSettings:
        """Validate ``data`` (e.g. loaded JSON) field by field; :class:`UserError` names the bad field."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object with the KD settings, "
                            f"got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                            f"known fields: {', '.join(sorted(known))}")
        if "teacher" not in data:
            raise UserError(f"{where}: field 'teacher' (path of the teacher model) is missing")
        settings = cls(**data)
        settings.validate(where)
        return settings

    def validate(self, where: str = "settings") -> None:
        """Raise :class:`UserError` naming ``where`` and the field if any value is invalid."""

        def bad(name: str, expected: str) -> UserError:
            return UserError(f"{where}: field '{name}' must be {expected}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

        if not isinstance(self.teacher, str) or not self.teacher:
            raise bad("teacher", "a non-empty path")
        try:
            fold = parse_fold(self.teacher_fold)
        except UserError:
            raise bad("teacher_fold", "a non-negative integer or 'all'") from None
        if not isinstance(self.teacher_checkpoint, str) or not self.teacher_checkpoint:
            raise bad("teacher_checkpoint", "a checkpoint file name such as checkpoint_final.pth")
        if not isinstance(self.method, str) or not self.method.strip():
            raise bad("method", "a KD method spec such as 'reco'")
        options = self.method_options
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise bad("method_options", "an object of option name -> value")
        if not is_num(self.kd_weight) or self.kd_weight < 0:
            raise bad("kd_weight", "a number >= 0")
        if self.schedule not in SCHEDULE_NAMES:
            raise bad("schedule", f"one of {', '.join(SCHEDULE_NAMES)}")
        if not is_num(self.warmup) or not 0 <= self.warmup <= 1:
            raise bad("warmup", "a fraction in [0, 1]")
        if self.ema_decay is not None and (not is_num(self.ema_decay) or not 0 < self.ema_decay < 1):
            raise bad("ema_decay", "null (no EMA) or a number in (0, 1), e.g. 0.999")
        folds = self.teacher_ensemble_folds
        if not isinstance(folds, list) or not all(is_int(f) and f >= 0 for f in folds) \
                or len(set(folds)) != len(folds) or fold in folds:
            raise bad("teacher_ensemble_folds", "a list of distinct fold numbers >= 0 without teacher_fold")
        if self.unlabelled is not None and (not isinstance(self.unlabelled, str) or not self.unlabelled):
            raise bad("unlabelled", "null or the path of a folder of raw scans")
        if not is_num(self.unlabelled_share) or not 0 <= self.unlabelled_share < 1:
            raise bad("unlabelled_share", "a fraction in [0, 1)")
        if not isinstance(self.label_free, bool):
            raise bad("label_free", "true or false")
        if not isinstance(self.pseudo_label_loss, bool):
            raise bad("pseudo_label_loss", "true or false")
        if self.pseudo_label_loss and self.unlabelled is None and not self.label_free:
            raise bad("pseudo_label_loss", "false without unlabelled scans (give unlabelled or label_free)")
        if self.label_free and self.unlabelled is not None:
            raise bad("unlabelled", "null when label_free is true (every training case is then unlabelled)")
        if self.label_free and (self.kd_weight <= 0 or (self.warmup > 0 and self.schedule != "constant")):
            raise UserError(f"{where}: label-free training has no label loss, so the KD weight must be > 0 "
                            f"from the first epoch: kd_weight > 0 and warmup 0 (or schedule 'constant'); got "
                            f"kd_weight {self.kd_weight}, schedule {self.schedule!r}, warmup {self.warmup}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise bad("optimizer", f"one of {', '.join(OPTIMIZER_NAMES)}")
        # val_iters >= 1: nnU-Net's on_validation_epoch_end cannot collate zero batches
        for name in ("epochs", "iters_per_epoch", "val_iters", "save_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("t", "c_min"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                raise bad(name, "null or a non-negative integer")
        if self.version != SETTINGS_VERSION:
            raise bad("version", f"{SETTINGS_VERSION} (this reco-kd reads settings format "
                                 f"{SETTINGS_VERSION})")
        self.teacher_fold = fold


def settings_defaults() -> dict[str, Any]:
    """``{field: default}`` of every :class:`KDSettings` field that has one (the command lines' defaults)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(KDSettings):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def read_settings(path: str | Path) -> KDSettings:
    """Load and validate a settings file."""
    path = Path(path)
    data = read_json(path, "KD settings file")
    return KDSettings.from_dict(data, where=f"KD settings file {path}")


def write_settings(settings: KDSettings, path: str | Path) -> Path:
    """Write ``settings`` as JSON (atomically: temporary file + rename); returns the path."""
    settings.validate(where="KD settings")
    path = write_json_atomic(path, settings.to_dict(), indent=4)
    return path


def resolve_settings(
    fold_folder: str | Path | None, continue_training: bool
) -> tuple[KDSettings | None, Path | None]:
    """The settings a trainer instance should use, and the file they came from.

    - ``continue_training`` (``--c``): ``<fold_folder>/recokd_settings.json`` if it exists, else
      the file named by ``$RECOKD_SETTINGS``;
    - fresh start: the file named by ``$RECOKD_SETTINGS``;
    - ``(None, None)`` if there is none (inference / validation-only use of the trainer).
    """
    local = Path(fold_folder) / SETTINGS_FILE if fold_folder is not None else None
    if continue_training and local is not None and local.is_file():
        return read_settings(local), local
    env = os.environ.get(SETTINGS_ENV)
    if env:
        return read_settings(env), Path(env)
    return None, None
