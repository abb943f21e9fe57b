"""Load a trained nnU-Net v2 network from its checkpoint: the frozen ReCo-KD teacher (docs/method.md
section 1), and any trained model ``recokd export/quantize/profile/predict`` work on.

nnU-Net checkpoints (``nnUNetTrainer.save_checkpoint``, nnunetv2 2.8) are dicts with
``network_weights`` (state dict of the un-wrapped network), ``init_args`` (the trainer's
``__init__`` arguments: ``plans``, ``configuration``, ``fold``, ``dataset_json``, ``device``),
``trainer_name``, ``optimizer_state``, ``grad_scaler_state``, ``logging``, ``_best_ema``,
``current_epoch`` and ``inference_allowed_mirroring_axes``. Everything needed to rebuild the
network is in the checkpoint itself, so a bare ``.pth`` file is enough; the plans and dataset.json
are taken from ``init_args`` (the exact ones the weights were trained with).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recokd.atomic_files import atomic_path
from recokd.errors import UserError
from recokd.nnunet.layout import CHECKPOINT_FINAL, fold_folder_name, parse_fold

if TYPE_CHECKING:
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

#: keys a checkpoint must have to be loadable as a teacher
REQUIRED_CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name")
#: keys ``init_args`` must have
REQUIRED_INIT_ARGS = ("plans", "configuration", "dataset_json")
#: prefixes that wrappers add to state-dict keys (DDP / DataParallel, torch.compile)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    """A trained nnU-Net network, frozen, and everything nnU-Net knows about how it was trained."""

    network: nn.Module  #: eval mode, ``requires_grad=False``, on the requested device, deep supervision on
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    configuration_name: str
    dataset_json: dict
    trainer_name: str
    checkpoint_path: Path
    label_manager: LabelManager  #: ``plans_manager.get_label_manager(dataset_json)``
    num_input_channels: int  #: as nnU-Net's ``determine_num_input_channels``
    fold: int | str | None  #: ``init_args["fold"]`` (``None`` if the checkpoint does not say)


def _listing(folder: Path, pattern: str) -> str:
    names = sorted(p.name for p in folder.glob(pattern))
    return ", ".join(names) if names else "(none)"


def resolve_checkpoint(
    path: str | Path, fold: int | str = 0, checkpoint: str = CHECKPOINT_FINAL, role: str = "teacher"
) -> Path:
    """The checkpoint file ``path`` designates.

    ``path`` may be a ``.pth`` file, an nnU-Net results folder ``.../Trainer__Plans__Configuration``
    (-> ``fold_<fold>/<checkpoint>``) or a ``fold_X`` folder inside one (-> ``<checkpoint>``).
    Raises :class:`UserError` naming what is missing and listing what exists; ``role`` names the
    model in the messages ("teacher", "model", ...).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{role} path {path} does not exist")
    if path.is_file():
        return path
    if not checkpoint or "/" in checkpoint or "\\" in checkpoint:
        raise UserError(f"checkpoint must be a file name such as checkpoint_final.pth, got {checkpoint!r}")
    if re.fullmatch(r"fold_(\d+|all)", path.name) and not any(path.glob("fold_*")):
        fold_dir = path
    else:
        fold_dir = path / fold_folder_name(parse_fold(fold))
        if not fold_dir.is_dir():
            raise UserError(
                f"{role} folder {path} has no {fold_dir.name}/ (expected an nnU-Net results folder "
                f".../DatasetXXX_Name/Trainer__Plans__Configuration); folds present: "
                f"{_listing(path, 'fold_*')}"
            )
    file = fold_dir / checkpoint
    if not file.is_file():
        raise UserError(f"{role} checkpoint {file} does not exist; checkpoints in {fold_dir}: "
                        f"{_listing(fold_dir, '*.pth')}")
    return file


def strip_wrapper_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def read_nnunet_checkpoint(file: Path, role: str = "teacher") -> dict:
    """``torch.load`` of an nnU-Net v2 checkpoint file, checked to hold :data:`REQUIRED_CHECKPOINT_KEYS` and
    :data:`REQUIRED_INIT_ARGS`; a :class:`UserError` naming ``file`` (and ``role``) otherwise."""
    try:
        # weights_only=False: an nnU-Net checkpoint is not a plain tensor dict. ``init_args`` holds
        # the plans/dataset.json and a torch.device, ``logging`` holds python/numpy values; the
        # safe unpickler of torch >= 2.6 (weights_only=True) refuses those, and nnU-Net itself
        # loads its checkpoints this way. Unpickling runs code: only load checkpoints you trust.
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # not a torch file, truncated, pickled classes that do not import
        raise UserError(f"{role} checkpoint {file} could not be read by torch.load: {e}") from e
    if not isinstance(ckpt, dict):
        raise UserError(f"{file} is not an nnU-Net checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in REQUIRED_CHECKPOINT_KEYS if k not in ckpt]
    init_args = ckpt.get("init_args")
    if isinstance(init_args, dict):
        missing += [f"init_args.{k}" for k in REQUIRED_INIT_ARGS if k not in init_args]
    elif "init_args" in ckpt:
        missing.append("init_args (not a dict)")
    if missing:
        raise UserError(
            f"{file} is not an nnU-Net v2 checkpoint: missing {', '.join(missing)} "
            f"(keys present: {', '.join(sorted(map(str, ckpt))) or '(none)'})"
        )
    return ckpt


#: what only *continuing* a training needs: nnU-Net's optimiser (AdamW: twice the weights' size) and AMP state
TRAINING_STATE_KEYS = ("optimizer_state", "grad_scaler_state")


def drop_training_state(file: Path) -> bool:
    """Rewrite the nnU-Net checkpoint ``file`` without :data:`TRAINING_STATE_KEYS`, keeping everything that
    inference, KD and ``recokd evaluate`` read (weights, ``init_args``, ``trainer_name``, mirroring axes,
    ``logging``). An AdamW checkpoint shrinks to about a third, small enough to commit a teacher so that every
    run of a study, on any machine, distils the same weights. The file is replaced atomically
    (:func:`~recokd.atomic_files.atomic_path`: a full disk is one line); ``True`` if it
    changed, ``False`` if it held no training state. nnU-Net can no longer *continue* (``--c``) or re-validate
    (``--val``) from it: both load the optimiser."""
    ckpt = read_nnunet_checkpoint(file, role="trained")
    if not any(k in ckpt for k in TRAINING_STATE_KEYS):
        return False
    for key in TRAINING_STATE_KEYS:
        ckpt.pop(key, None)
    with atomic_path(file) as partial:
        torch.save(ckpt, partial)
    return True


def weights_digest(file: Path) -> str:
    """SHA-256 (hex) of the network weights of the nnU-Net checkpoint ``file``: every ``network_weights``
    entry's name, dtype, shape and bytes, in name order, wrapper prefixes removed. Two checkpoints of the same
    weights give the same digest whatever else they hold (:func:`drop_training_state` keeps it); a re-trained
    model of the same recipe gives another (nnU-Net training is not bit-identical across CPUs or thread
    counts)."""
    import hashlib

    weights = strip_wrapper_prefixes(read_nnunet_checkpoint(file, role="trained")["network_weights"])
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = weights[name]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{file}: network_weights[{name!r}] is not a tensor ({type(value).__name__})")
        tensor = value.detach().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_plans(ckpt: dict) -> dict:
    """The plans a checkpoint was trained with (``init_args["plans"]``, without the ``continue_training``
    flag that ``run_training`` adds and ``nnUNetTrainer.__init__`` pops)."""
    plans = dict(ckpt["init_args"]["plans"])
    plans.pop("continue_training", None)
    return plans


def _trainer_class(trainer_name: str, role: str = "teacher") -> type:
    """The trainer class named in the checkpoint; falls back to ``nnUNetTrainer`` if not importable."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if trainer_name == "nnUNetTrainer":
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search of nnUNet_extTrainer
            return recursive_find_trainer_class_by_name(trainer_name)
    except (RuntimeError, AssertionError, ImportError) as e:
        warnings.warn(
            f"trainer class {trainer_name!r} of the {role} checkpoint was not found ({e}); building the "
            "network with nnUNetTrainer's default builder instead",
            stacklevel=3,
        )
        return nnUNetTrainer


def build_trainer_network(
    trainer_class: type,
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    num_input_channels: int,
    num_outputs: int,
    enable_deep_supervision: bool = True,
) -> nn.Module:
    """Build the network exactly as nnU-Net does for ``trainer_class`` (new and old builder signatures)."""
    builder = trainer_class.build_network_architecture
    if "plans_manager" in inspect.signature(builder).parameters:
        return builder(plans_manager, configuration_manager, num_input_channels, num_outputs,
                       enable_deep_supervision=enable_deep_supervision)
    return builder(  # nnunetv2 < 2.6 signature, as nnU-Net's predictor still supports
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_outputs,
        enable_deep_supervision=enable_deep_supervision,
    )


def load_trained_model(
    path: str | Path,
    fold: int | str = 0,
    checkpoint: str = CHECKPOINT_FINAL,
    device: torch.device | str = "cpu",
    role: str = "teacher",
) -> LoadedModel:
    """Load a trained nnU-Net v2 network, frozen, as a ReCo-KD teacher.

    ``path``: an nnU-Net results folder ``.../DatasetXXX_Name/Trainer__Plans__Configuration``
    (the checkpoint is ``fold_<fold>/<checkpoint>``; ``fold`` may be ``"all"``; ``checkpoint`` may
    be e.g. ``checkpoint_best.pth``), a ``fold_X`` folder, or a checkpoint file.

    The network is rebuilt from the checkpoint's own plans/configuration/dataset.json with the
    builder of the trainer class that trained it (``build_network_architecture``, deep supervision
    enabled as in training), gets the checkpoint weights (``module.``/``_orig_mod.`` prefixes
    stripped, strict loading), and is returned in eval mode with ``requires_grad=False`` on
    ``device``. ``role`` names the model in error messages (students and exported models are
    loaded the same way: ``"model"``).
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"device: {device!r} is not a torch device ({e})") from e
    file = resolve_checkpoint(path, fold, checkpoint, role)
    ckpt = read_nnunet_checkpoint(file, role)
    init_args = ckpt["init_args"]
    plans = checkpoint_plans(ckpt)
    configuration_name = init_args["configuration"]
    dataset_json = init_args["dataset_json"]
    trainer_name = str(ckpt["trainer_name"])
    try:
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration_name)
        label_manager = plans_manager.get_label_manager(dataset_json)
        num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        network = build_trainer_network(
            _trainer_class(trainer_name, role), plans_manager, configuration_manager,
            num_input_channels, label_manager.num_segmentation_heads, enable_deep_supervision=True,
        )
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"{role} checkpoint {file}: could not build configuration {configuration_name!r} "
            f"of trainer {trainer_name} from its plans ({type(e).__name__}: {e})"
        ) from e

    weights = ckpt["network_weights"]
    if not isinstance(weights, dict):
        raise UserError(f"{file}: network_weights is a {type(weights).__name__}, expected a state dict")
    try:
        network.load_state_dict(strip_wrapper_prefixes(weights), strict=True)
    except RuntimeError as e:
        raise UserError(
            f"{role} checkpoint {file}: network_weights do not fit the network that trainer "
            f"{trainer_name} builds from the checkpoint's plans: {e}"
        ) from e

    try:
        network.to(device)
    except (RuntimeError, AssertionError) as e:  # e.g. CUDA requested but not available
        raise UserError(f"device: cannot move the {role} to {device} ({e})") from e
    network.eval()
    network.requires_grad_(False)
    return LoadedModel(
        network=network,
        plans_manager=plans_manager,
        configuration_manager=configuration_manager,
        configuration_name=configuration_name,
        dataset_json=dataset_json,
        trainer_name=trainer_name,
        checkpoint_path=file,
        label_manager=label_manager,
        num_input_channels=num_input_channels,
        fold=init_args.get("fold"),
    )
