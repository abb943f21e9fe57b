"""Check that a student nnU-Net setup can be distilled from a given teacher.

ReCo-KD feeds the *same* batch to teacher and student and compares features level by level
(docs/method.md sections 1 and 3), so both must see identically preprocessed data (spacing, orientation,
normalisation, channels), have the same number of stages and the same strides and kernels (the
per-level feature maps must have the same spatial size), use the same patch size, and mean the same
thing by each output channel (labels/regions, ignore label). Only the widths may differ; that is
what ``recokd student-plans`` produces.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from recokd.errors import UserError
from recokd.json_files import json_ready

if TYPE_CHECKING:
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    from recokd.nnunet.trained_model import LoadedModel


def _plain(value: Any) -> Any:
    """Nested tuples/lists -> nested lists, numpy scalars -> python, for comparing and printing."""
    return json_ready(value, fallback=lambda v: v)


def _close(a: Any, b: Any, rel: float = 1e-6) -> bool:
    """Structural equality with a relative tolerance on floats."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


def _labels(dataset_json: dict) -> dict:
    """``labels`` (name -> value or region) without the ignore entry, tuples as lists."""
    labels = dataset_json.get("labels") or {}
    return {k: _plain(v) for k, v in labels.items() if k != "ignore"}


def _channel_names(dataset_json: dict) -> Any:
    return _plain(dataset_json.get("channel_names", dataset_json.get("modality")))


def _arch_kwargs(configuration_manager: ConfigurationManager) -> dict:
    try:
        return configuration_manager.network_arch_init_kwargs or {}
    except KeyError:
        return {}


def _n_stages(configuration_manager: ConfigurationManager) -> Any:
    kwargs = _arch_kwargs(configuration_manager)
    if "n_stages" in kwargs:
        return kwargs["n_stages"]
    strides = kwargs.get("strides")
    return len(strides) if strides is not None else None


def describe_mismatches(
    teacher: LoadedModel,
    student_plans_manager: PlansManager,
    student_configuration_manager: ConfigurationManager,
    student_dataset_json: dict,
    student_num_input_channels: int | None = None,
) -> list[str]:
    """Every property that differs between teacher and student, one line each (empty: compatible).

    Compared: labels (names -> values; regions), region class order, ignore label, input channels
    (number and ``channel_names``), patch size, number of stages, pool op kernel sizes (strides),
    conv kernel sizes, target spacing, ``transpose_forward``, normalisation schemes (and
    ``use_mask_for_norm``; for CT normalisation also the intensity statistics it uses).
    """
    t_pm, t_cm, t_ds = teacher.plans_manager, teacher.configuration_manager, teacher.dataset_json
    s_pm, s_cm, s_ds = student_plans_manager, student_configuration_manager, student_dataset_json
    out: list[str] = []

    def differ(what: str, t_value: Any, s_value: Any, close: bool = False) -> None:
        same = _close(t_value, s_value) if close else _plain(t_value) == _plain(s_value)
        if not same:
            out.append(f"{what}: teacher {_plain(t_value)!r}, student {_plain(s_value)!r}")

    differ("labels", _labels(t_ds), _labels(s_ds))
    differ("regions_class_order", t_ds.get("regions_class_order"), s_ds.get("regions_class_order"))
    differ("ignore label", (t_ds.get("labels") or {}).get("ignore"), (s_ds.get("labels") or {}).get("ignore"))

    if student_num_input_channels is None:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        student_num_input_channels = determine_num_input_channels(s_pm, s_cm, s_ds)
    differ("number of input channels", teacher.num_input_channels, student_num_input_channels)
    differ("input channel names (channel_names)", _channel_names(t_ds), _channel_names(s_ds))

    differ("patch size", t_cm.patch_size, s_cm.patch_size)
    differ("number of stages", _n_stages(t_cm), _n_stages(s_cm))
    differ("pool op kernel sizes (strides)", t_cm.pool_op_kernel_sizes, s_cm.pool_op_kernel_sizes)
    kernels = "kernel_sizes"
    differ("conv kernel sizes", _arch_kwargs(t_cm).get(kernels), _arch_kwargs(s_cm).get(kernels))
    differ("spacing", t_cm.spacing, s_cm.spacing, close=True)
    differ("transpose_forward", t_pm.transpose_forward, s_pm.transpose_forward)
    differ("normalization schemes", t_cm.normalization_schemes, s_cm.normalization_schemes)
    differ("use_mask_for_norm", t_cm.use_mask_for_norm, s_cm.use_mask_for_norm)
    if "CTNormalization" in (t_cm.normalization_schemes or []):
        differ(
            "foreground intensity properties (used by CTNormalization)",
            t_pm.foreground_intensity_properties_per_channel,
            s_pm.foreground_intensity_properties_per_channel,
            close=True,
        )
    return out


def check_teacher_student_compatible(
    teacher: LoadedModel,
    student_plans_manager: PlansManager,
    student_configuration_manager: ConfigurationManager,
    student_dataset_json: dict,
    student_num_input_channels: int | None = None,
) -> None:
    """Raise one :class:`UserError` listing every mismatch (see :func:`describe_mismatches`)."""
    mismatches = describe_mismatches(
        teacher, student_plans_manager, student_configuration_manager, student_dataset_json,
        student_num_input_channels,
    )
    if not mismatches:
        return
    t_plans = teacher.plans_manager.plans_name
    dataset = teacher.plans_manager.dataset_name
    lines = "\n".join(f"  - {m}" for m in mismatches)
    raise UserError(
        f"the student does not match the teacher {teacher.checkpoint_path} (plans {t_plans}, "
        f"configuration {teacher.configuration_name}); student plans "
        f"{student_plans_manager.plans_name}. {len(mismatches)} mismatch(es):\n{lines}\n"
        "The student must be the teacher's nnU-Net plan with only the stage widths changed, trained "
        "on the teacher's dataset: create the student plans from the teacher's plans with "
        f"`recokd student-plans {dataset} -p {t_plans} -c {teacher.configuration_name} -t 2` "
        "and use the teacher's dataset.json."
    )
