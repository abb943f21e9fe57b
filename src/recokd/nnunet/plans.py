"""Student plans: the teacher's nnU-Net plan with every stage width scaled (docs/method.md section 1).

A ReCo-KD student is the *same* nnU-Net plan as its teacher with every stage width scaled as
``C'_i = max(C_min, C_i // 2**t)`` (:func:`recokd.kd.widths.scale_widths`); depth, kernel sizes,
strides, patch size, batch size, deep supervision and preprocessing stay exactly as planned.

Where the widths live (nnunetv2 >= 2.4 plans format): a configuration's
``architecture = {"network_class_name", "arch_kwargs", "_kw_requires_import"}``. Width-carrying
``arch_kwargs`` are listed in :data:`WIDTH_KWARGS`:

- ``PlainConvUNet`` and ``ResidualEncoderUNet`` (dynamic_network_architectures): both build
  ``UNetDecoder(self.encoder, ...)``, and ``UNetDecoder`` takes every decoder width (transposed
  convs, conv blocks, segmentation heads' inputs) from ``encoder.output_channels``, which *is*
  ``features_per_stage`` (checked in dynamic_network_architectures 0.4.4,
  ``building_blocks/unet_decoder.py``). There is no separate decoder-width kwarg, so scaling
  ``features_per_stage`` scales the decoder too.
- ``ResidualEncoderUNet`` additionally accepts ``stem_channels`` (``None`` -> ``features_per_stage[0]``)
  and ``bottleneck_channels`` (only used by ``BottleneckD`` blocks). nnU-Net's ResEnc planners do
  not write them; when a plans file sets them they are scaled with the same rule.

Inherited configurations (``inherits_from``): nnU-Net resolves inheritance with a *shallow*
``dict.update``, so a configuration's ``architecture`` is the whole entry of the nearest
configuration in its inheritance chain that defines one. :func:`scale_plans` scales that entry
*where it is defined* (e.g. asking for ``3d_cascade_fullres`` scales ``3d_fullres``'s
architecture). Every configuration that shares that entry therefore becomes the student too;
:func:`configurations_sharing_architecture` lists them. Other configurations are copied unchanged.

Preprocessed data is reused: nnU-Net's trainer reads its data from
``$nnUNet_preprocessed/<dataset>/<data_identifier>`` (``nnUNetTrainer.__init__``), and
``data_identifier`` (e.g. ``nnUNetPlans_3d_fullres``) is a key of the configuration that the
student plans keep unchanged. So ``nnUNetv2_train``/``recokd`` with the student plans train on
the teacher's preprocessed data; do not run ``nnUNetv2_preprocess`` for the student plans (it
would delete and rewrite the teacher's folder with identical content). For a cascade
(``3d_cascade_fullres``), the previous stage's segmentations are looked up under
``<Trainer>__<student plans>__3d_lowres``: train the student's ``3d_lowres`` with the same student
plans first.

Paths: ``$nnUNet_preprocessed`` is read from ``os.environ`` at call time (never cached at import),
so callers and tests may set it any time before calling. A dataset given as an id is resolved by
nnU-Net's ``maybe_convert_to_dataset_name``; in the installed nnunetv2 (2.8.1) ``nnunetv2.paths``
holds lazy ``_EnvPath`` objects that also read the environment at call time (older releases
read it once at import).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recokd.errors import UserError
from recokd.json_files import read_json, write_json_atomic
from recokd.kd.widths import scale_width, scale_widths
from recokd.nnunet.layout import data_identifier, env_folder

if TYPE_CHECKING:
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
    from torch import nn

#: C_min used when none is given (docs/method.md section 1 [choice])
DEFAULT_C_MIN = 4

#: network class (last component of ``network_class_name``) -> ``arch_kwargs`` holding channel counts
WIDTH_KWARGS: dict[str, tuple[str, ...]] = {
    "PlainConvUNet": ("features_per_stage",),
    "ResidualEncoderUNet": ("features_per_stage", "stem_channels", "bottleneck_channels"),
}

#: JSON files in a preprocessed dataset folder that are not plans
NON_PLANS_JSON = frozenset({"dataset.json", "dataset_fingerprint.json", "splits_final.json"})


@dataclass(frozen=True)
class StudentPlans:
    """What :func:`make_student_plans` wrote (or found already up to date)."""

    path: Path  #: the student plans file
    identifier: str  #: student plans identifier (file stem and ``plans_name``)
    teacher_identifier: str
    dataset_name: str
    configuration: str
    network_class: str  #: e.g. ``PlainConvUNet``
    t: int
    c_min: int
    teacher_params: int
    student_params: int
    teacher_widths: list[int]
    student_widths: list[int]
    #: configurations of the student plans whose architecture was scaled (the requested one and
    #: every configuration sharing its architecture entry through ``inherits_from``)
    scaled_configurations: list[str]
    #: the folder nnU-Net trains this configuration on (same as the teacher's, see module doc)
    preprocessed_data: Path
    #: False when an identical file already existed and was left untouched (or ``dry_run``)
    written: bool
    #: the student plans (what is, or would be, in ``path``)
    plans: dict = dataclasses.field(default_factory=dict, repr=False)
    #: True when ``path`` holds another configuration's student plans and ``plans`` only adds this
    #: configuration's scaled architecture to it (:func:`merge_student_configuration`): writing
    #: ``plans`` there loses nothing and needs no ``--overwrite``
    merges_into_existing: bool = False

    def write(self, overwrite: bool = False) -> bool:
        """Write :attr:`plans` to :attr:`path` (after a ``dry_run``): a merge into the existing
        file needs no ``overwrite``, any other different content does. True if written."""
        return write_json_no_clobber(self.path, self.plans, overwrite=overwrite or self.merges_into_existing)

    @property
    def param_ratio(self) -> float:
        """``student_params / teacher_params``."""
        return self.student_params / self.teacher_params

    def saturation_note(self) -> str | None:
        """A sentence when some stage widths hit ``c_min`` instead of ``teacher / 2**t`` (else None)."""
        clamped = [i for i, w in enumerate(self.teacher_widths) if w / 2**self.t < self.c_min]
        if not clamped:
            return None
        return (f"note: {len(clamped)} of {len(self.teacher_widths)} stage widths saturate at c_min "
                f"{self.c_min} (teacher width / 2**{self.t} < {self.c_min}, stages {clamped}); a larger -t "
                "shrinks the student no further there")


# --------------------------------------------------------------------------- validation helpers


def _check_t_c_min(t: Any, c_min: Any) -> None:
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise UserError(f"t (width reduction exponent) must be a non-negative integer, got {t!r}")
    if isinstance(c_min, bool) or not isinstance(c_min, int) or c_min < 1:
        raise UserError(f"c_min (minimum stage width) must be a positive integer, got {c_min!r}")


def _check_identifier(identifier: Any, what: str) -> None:
    bad = not isinstance(identifier, str) or not identifier.strip() or identifier in (".", "..")
    if bad or any(sep and sep in identifier for sep in ("/", "\\", os.sep, os.altsep)):
        raise UserError(f"{what} must be a plain file name stem (no path separators), got {identifier!r}")


def _configurations(plans: dict, where: str) -> dict:
    configs = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configs, dict):
        raise UserError(f"{where}: not an nnU-Net plans file (expected a 'configurations' mapping)")
    return configs


def _check_configuration(plans: dict, configuration: str, where: str) -> None:
    configs = _configurations(plans, where)
    if configuration not in configs:
        raise UserError(
            f"{where}: unknown configuration {configuration!r}; available configurations: "
            f"{', '.join(sorted(configs)) or '(none)'}"
        )


# --------------------------------------------------------------------------- pure plans logic


def student_plans_identifier(teacher_plans_identifier: str, t: int, c_min: int = DEFAULT_C_MIN) -> str:
    """Default identifier of a student plans: ``<teacher>_recokd_t<t>`` (+ ``_cmin<c_min>`` if not 4).

    >>> student_plans_identifier("nnUNetPlans", 2)
    'nnUNetPlans_recokd_t2'
    >>> student_plans_identifier("nnUNetResEncUNetMPlans", 3, c_min=8)
    'nnUNetResEncUNetMPlans_recokd_t3_cmin8'
    """
    _check_identifier(teacher_plans_identifier, "teacher plans identifier")
    _check_t_c_min(t, c_min)
    identifier = f"{teacher_plans_identifier}_recokd_t{t}"
    if c_min != DEFAULT_C_MIN:
        identifier += f"_cmin{c_min}"
    return identifier


def architecture_source(plans: dict, configuration: str) -> str:
    """Name of the configuration whose ``architecture`` entry ``configuration`` effectively uses.

    Follows ``inherits_from`` like nnU-Net's ``PlansManager`` (nearest definition wins).
    Raises :class:`UserError` for unknown configurations, broken or circular inheritance and for
    plans in the pre-2.4 format (no ``architecture`` entry).
    """
    configs = _configurations(plans, "plans")
    _check_configuration(plans, configuration, "plans")
    name, visited = configuration, [configuration]
    while True:
        config = configs[name]
        if "architecture" in config:
            return name
        if "UNet_class_name" in config:
            raise UserError(
                f"plans configuration {name!r} uses the old (nnunetv2 < 2.4) plans format without an "
                "'architecture' entry; re-run nnUNetv2_plan_experiment with the installed nnU-Net"
            )
        parent = config.get("inherits_from")
        if parent is None:
            raise UserError(
                f"plans configuration {configuration!r} has no 'architecture' entry "
                f"(inheritance chain: {' -> '.join(visited)})"
            )
        if parent not in configs:
            raise UserError(
                f"plans configuration {name!r} inherits from unknown configuration {parent!r}; "
                f"available configurations: {', '.join(sorted(configs))}"
            )
        if parent in visited:
            raise UserError(f"circular 'inherits_from' in plans: {' -> '.join([*visited, parent])}")
        visited.append(parent)
        name = parent


def configurations_sharing_architecture(plans: dict, configuration: str) -> list[str]:
    """All configurations whose effective architecture entry is the one ``configuration`` uses."""
    source = architecture_source(plans, configuration)
    shared = []
    for name in _configurations(plans, "plans"):
        try:
            if architecture_source(plans, name) == source:
                shared.append(name)
        except UserError:  # an unrelated broken configuration does not concern us
            continue
    return shared


def previous_stage(plans: dict, configuration: str) -> str | None:
    """The configuration a cascade stage takes its input segmentations from (nnU-Net's
    ``previous_stage``, e.g. ``3d_lowres`` for ``3d_cascade_fullres``), else ``None``. Follows
    ``inherits_from`` like nnU-Net's ``PlansManager`` (the nearest definition wins)."""
    configs = _configurations(plans, "plans")
    name, visited = configuration, set()
    while isinstance(configs.get(name), dict) and name not in visited:
        visited.add(name)
        if "previous_stage" in configs[name]:
            return configs[name]["previous_stage"]
        name = configs[name].get("inherits_from")
    return None


def refuse_cascade(plans: dict, configuration: str, who: str, where: str) -> None:
    """:class:`UserError` when ``configuration`` of ``plans`` (read from ``where``) is a cascade stage,
    which ``who`` (e.g. ``"recokd train"``) does not support: nothing in reco-kd trains the student's
    previous stage or feeds its segmentations to the network (README, "nnU-Net configurations")."""
    previous = previous_stage(plans, configuration)
    if previous is None:
        return
    raise UserError(
        f"{where}: configuration {configuration!r} is a cascade stage (its network also takes the "
        f"segmentations of the {previous!r} stage), which {who} does not support; use a "
        "single-stage configuration (3d_fullres, 3d_lowres or 2d), or nnU-Net's own nnUNetv2_train / "
        "nnUNetv2_predict -prev_stage_predictions for a cascade"
    )


def network_class_short_name(plans: dict, configuration: str) -> str:
    """Last component of the configuration's ``network_class_name`` (e.g. ``PlainConvUNet``)."""
    arch = plans["configurations"][architecture_source(plans, configuration)]["architecture"]
    name = arch.get("network_class_name") if isinstance(arch, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"plans configuration {configuration!r}: architecture has no 'network_class_name'")
    return name.rsplit(".", 1)[-1]


def _arch_kwargs(plans: dict, configuration: str) -> dict:
    source = architecture_source(plans, configuration)
    kwargs = plans["configurations"][source]["architecture"].get("arch_kwargs")
    if not isinstance(kwargs, dict):
        raise UserError(f"plans configuration {source!r}: architecture has no 'arch_kwargs' mapping")
    return kwargs


def _as_width_list(value: Any, field: str, n_stages: int | None) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if n_stages is None:
            raise UserError(f"arch_kwargs.{field} is a single integer but arch_kwargs.n_stages is missing")
        value = [value] * n_stages
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise UserError(f"arch_kwargs.{field} must be a list of positive integers, got {value!r}")
    return [int(v) for v in value]


def get_widths(plans: dict, configuration: str) -> list[int]:
    """The per-stage widths (``features_per_stage``) the configuration's network is built with."""
    kwargs = _arch_kwargs(plans, configuration)
    if "features_per_stage" not in kwargs:
        raise UserError(f"plans configuration {configuration!r}: arch_kwargs has no 'features_per_stage'")
    return _as_width_list(kwargs["features_per_stage"], "features_per_stage", kwargs.get("n_stages"))


def _scale_width_value(value: Any, field: str, t: int, c_min: int) -> Any:
    """Scale an int or a list of ints; keeps the JSON shape (int stays int, list stays list)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UserError(f"arch_kwargs.{field} must be positive, got {value!r}")
        return scale_width(value, t, c_min)
    return scale_widths(_as_width_list(value, field, None), t, c_min)


def scale_plans(
    plans: dict,
    configuration: str,
    t: int,
    c_min: int = DEFAULT_C_MIN,
    *,
    new_identifier: str | None = None,
) -> dict:
    """Return a deep copy of ``plans`` that describes the width-scaled student.

    - ``plans_name`` becomes ``new_identifier`` (default: :func:`student_plans_identifier` of the
      teacher's ``plans_name``);
    - in the architecture entry that ``configuration`` effectively uses (see
      :func:`architecture_source`), every width in :data:`WIDTH_KWARGS` is scaled with
      ``max(c_min, C // 2**t)`` (never above the teacher's width);
    - nothing else changes (``data_identifier``, patch size, strides, kernels, block counts, ...).

    Raises :class:`UserError` for unknown configurations, unsupported network classes (only
    ``PlainConvUNet`` and ``ResidualEncoderUNet``) and malformed widths. ``plans`` is not modified.
    """
    _check_t_c_min(t, c_min)
    _check_configuration(plans, configuration, "plans")
    if new_identifier is None:
        teacher_name = plans.get("plans_name")
        if not isinstance(teacher_name, str):
            raise UserError("plans have no 'plans_name'; pass new_identifier explicitly")
        new_identifier = student_plans_identifier(teacher_name, t, c_min)
    _check_identifier(new_identifier, "student plans identifier")

    student = copy.deepcopy(plans)
    class_name = network_class_short_name(student, configuration)
    if class_name not in WIDTH_KWARGS:
        source = architecture_source(student, configuration)
        full_name = student["configurations"][source]["architecture"]["network_class_name"]
        raise UserError(
            f"plans configuration {configuration!r}: network class {full_name!r} is not supported "
            f"(width scaling knows: {', '.join(sorted(WIDTH_KWARGS))})"
        )
    get_widths(student, configuration)  # validates features_per_stage
    kwargs = _arch_kwargs(student, configuration)
    for field in WIDTH_KWARGS[class_name]:
        if kwargs.get(field) is not None:
            kwargs[field] = _scale_width_value(kwargs[field], field, t, c_min)
    student["plans_name"] = new_identifier
    return student


# --------------------------------------------------------------------------- networks


def build_network(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    dataset_json: dict,
    *,
    deep_supervision: bool = True,
    allow_init: bool = True,
) -> nn.Module:
    """Build the configuration's network with nnU-Net's own builder (CPU, fresh weights).

    Uses ``nnunetv2.utilities.get_network_from_plans.get_network_from_plans``, which is what
    ``nnUNetTrainer.build_network_architecture`` calls, with the input/output channel counts the
    trainer uses (``determine_num_input_channels`` and the label manager's
    ``num_segmentation_heads``).
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_outputs,
        allow_init=allow_init,
        deep_supervision=deep_supervision,
    )


def count_parameters(plans: dict, configuration: str, dataset_json: dict, *, where: str = "plans") -> int:
    """Number of parameters of the configuration's network (instantiated on CPU, no init)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        plans_manager = PlansManager(copy.deepcopy(plans))
        configuration_manager = plans_manager.get_configuration(configuration)
        network = build_network(plans_manager, configuration_manager, dataset_json, allow_init=False)
    except UserError:
        raise
    except Exception as e:  # nnU-Net raises bare asserts/ImportErrors/TypeErrors on bad plans
        raise UserError(
            f"{where}: could not build the network of configuration {configuration!r} with nnU-Net "
            f"({type(e).__name__}: {e})"
        ) from e
    return sum(p.numel() for p in network.parameters())


# --------------------------------------------------------------------------- files


def resolve_dataset_name(dataset: str | int) -> str:
    """``DatasetXXX_Name`` for a dataset given as id (``3``, ``"3"``) or name, like nnU-Net commands."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if isinstance(dataset, bool) or not isinstance(dataset, (str, int)):
        raise UserError(f"dataset must be an id or a DatasetXXX_Name, got {dataset!r}")
    try:
        return str(maybe_convert_to_dataset_name(dataset))
    except (ValueError, RuntimeError, AssertionError) as e:
        raise UserError(f"dataset {dataset!r}: {e}") from e


def preprocessed_root() -> Path:
    """``$nnUNet_preprocessed`` as read from the environment now."""
    return env_folder("nnUNet_preprocessed")


def preprocessed_dataset_folder(dataset: str | int) -> Path:
    """``$nnUNet_preprocessed/<DatasetXXX_Name>``; :class:`UserError` if it does not exist."""
    root = preprocessed_root()
    name = resolve_dataset_name(dataset)
    folder = root / name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("Dataset"))
        raise UserError(
            f"no preprocessed data for {name}: {folder} does not exist (run "
            f"nnUNetv2_plan_and_preprocess for it first). Datasets in {root}: "
            f"{', '.join(present) or '(none)'}"
        )
    return folder


def list_plans_files(folder: Path) -> list[str]:
    """Identifiers of the plans files in a preprocessed dataset folder (sorted)."""
    return sorted(p.stem for p in folder.glob("*.json") if p.name not in NON_PLANS_JSON)


def check_json_no_clobber(path: Path, data: Any, overwrite: bool = False) -> bool:
    """True if :func:`write_json_no_clobber` would write ``data`` to ``path``; raises like it would."""
    if not path.exists():
        return True
    try:
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    except (OSError, ValueError):
        existing = None
    if existing == data:
        return False
    if not overwrite:
        raise UserError(
            f"{path} already exists with different content; pass --overwrite to replace it, or choose "
            "another identifier with --name"
        )
    return True


def write_json_no_clobber(path: Path, data: Any, overwrite: bool = False) -> bool:
    """Write ``data`` as JSON (nnU-Net's layout: indent 4, key order kept) to ``path``.

    If ``path`` exists with the same content, nothing is written and False is returned. If it
    exists with different (or unreadable) content, :class:`UserError` is raised unless
    ``overwrite``. Writes go through a temporary file and an atomic rename.
    """
    if not check_json_no_clobber(path, data, overwrite):
        return False
    write_json_atomic(path, data, indent=4)
    return True


def _without_architectures(plans: Any) -> Any:
    """``plans`` without its name and the configurations' ``architecture`` entries (for comparing
    plans that differ only in which configurations were width-scaled)."""
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        return None
    out = {k: v for k, v in plans.items() if k not in ("plans_name", "configurations")}
    out["configurations"] = {
        name: {k: v for k, v in c.items() if k != "architecture"} if isinstance(c, dict) else c
        for name, c in plans["configurations"].items()
    }
    return out


def merge_student_configuration(existing: Any, student: dict, teacher: dict,
                                configuration: str) -> dict | None:
    """Student plans that keep ``existing``'s scaled configurations and add ``configuration``'s.

    One student plans identifier (``nnUNetPlans_recokd_t2``) serves every configuration, but
    :func:`scale_plans` scales one at a time; without this, writing the 2d student's plans would
    reset a 3d student's widths to the teacher's (and the other way round). Returns ``None`` when
    ``existing`` is not the same teacher's student plans apart from architectures (then the usual
    no-clobber rules apply), or when it already holds ``configuration``'s architecture scaled
    differently from ``student`` (e.g. another ``c_min``: a real conflict).
    """
    if not isinstance(existing, dict) or existing.get("plans_name") != student.get("plans_name"):
        return None
    if _without_architectures(existing) != _without_architectures(teacher):
        return None
    source = architecture_source(teacher, configuration)
    theirs = existing["configurations"].get(source, {}).get("architecture")
    if theirs not in (teacher["configurations"][source].get("architecture"),
                      student["configurations"][source].get("architecture")):
        return None
    merged = copy.deepcopy(existing)
    scaled = student["configurations"][source]["architecture"]
    merged["configurations"][source]["architecture"] = copy.deepcopy(scaled)
    return merged


def make_student_plans(
    dataset: str | int,
    plans_identifier: str,
    configuration: str,
    t: int,
    c_min: int = DEFAULT_C_MIN,
    new_identifier: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
) -> StudentPlans:
    """Write the student plans file next to the teacher's and report widths and parameter counts.

    Reads ``$nnUNet_preprocessed/<DatasetXXX_Name>/<plans_identifier>.json`` and
    ``.../dataset.json``, scales ``configuration`` with :func:`scale_plans`, counts the parameters
    of both networks with nnU-Net's builder (CPU) and writes ``<new_identifier>.json`` in the same
    folder (default identifier: :func:`student_plans_identifier`). An existing file with
    identical content is left alone; a different one is only replaced with ``overwrite=True``.
    The teacher's own plans file can never be the target. ``dry_run``: compute and check
    everything (a different existing file without ``overwrite`` is still an error) but write
    nothing, e.g. to validate a training before its plans are written.
    """
    _check_identifier(plans_identifier, "plans identifier")
    _check_t_c_min(t, c_min)
    folder = preprocessed_dataset_folder(dataset)
    plans_file = folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        present = list_plans_files(folder)
        raise UserError(
            f"plans file {plans_file} does not exist; plans in {folder}: {', '.join(present) or '(none)'}"
        )
    plans = read_json(plans_file, "plans file")
    _check_configuration(plans, configuration, f"plans file {plans_file}")
    if new_identifier is None:
        new_identifier = student_plans_identifier(plans_identifier, t, c_min)
    _check_identifier(new_identifier, "student plans identifier")
    if new_identifier == plans_identifier:
        raise UserError(
            f"student plans identifier {new_identifier!r} is the teacher's; choose another with --name"
        )
    dataset_json = read_json(folder / "dataset.json", "dataset.json")

    student = scale_plans(plans, configuration, t, c_min, new_identifier=new_identifier)
    out_file = folder / f"{new_identifier}.json"
    merges = False
    if out_file.is_file():  # another configuration's student may live in the same file: keep it
        try:
            existing = json.loads(out_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        merged = merge_student_configuration(existing, student, plans, configuration)
        if merged is not None:  # adds this configuration's widths and loses nothing: no --overwrite needed
            student, merges = merged, True
    teacher_params = count_parameters(plans, configuration, dataset_json, where=f"plans file {plans_file}")
    student_params = count_parameters(student, configuration, dataset_json, where="student plans")

    if dry_run:
        check_json_no_clobber(out_file, student, overwrite=overwrite or merges)
        written = False
    else:
        written = write_json_no_clobber(out_file, student, overwrite=overwrite or merges)
    identifier = data_identifier(student, configuration)
    return StudentPlans(
        path=out_file,
        identifier=new_identifier,
        teacher_identifier=plans_identifier,
        dataset_name=folder.name,
        configuration=configuration,
        network_class=network_class_short_name(plans, configuration),
        t=t,
        c_min=c_min,
        teacher_params=teacher_params,
        student_params=student_params,
        teacher_widths=get_widths(plans, configuration),
        student_widths=get_widths(student, configuration),
        scaled_configurations=configurations_sharing_architecture(student, configuration),
        preprocessed_data=folder / identifier if identifier else folder,
        written=written,
        plans=student,
        merges_into_existing=merges,
    )
