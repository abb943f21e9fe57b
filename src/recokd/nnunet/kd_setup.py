"""Build the KD method of a training from its settings and the two real networks.

One function for the trainer (:class:`recokd.nnunet.trainer.nnUNetTrainerReCoKD`) and for the
up-front check of ``recokd train``, which runs it on the CPU before anything is deleted or
written: a method or option that does not fit these networks (e.g. ``level_weights`` with another
number of entries than the student has taps) is refused there, not after ``--overwrite`` has
removed a trained fold.

Option routing: the user's ``method_options`` as given, plus the dataset's ``ignore_label`` and
region mode for the methods that accept them (:func:`recokd.kd.registry.accepted_options`), unless
the user set them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from recokd.errors import KDError, UserError


@dataclass
class BuiltKD:
    """A KD method built for a (student, teacher) pair, with what it was built from."""

    method: nn.Module
    student_taps: list[str]
    teacher_taps: list[str]
    student_channels: list[int]
    teacher_channels: list[int]
    options: dict[str, Any]


def kd_options(
    method: str,
    method_options: dict[str, Any],
    ignore_label: int | None,
    has_regions: bool,
    warn: Callable[[str], None] = print,
    where: str = "KD settings",
) -> dict[str, Any]:
    """The options a method is built with: ``method_options`` plus the dataset's automatic ones."""
    from recokd.kd.registry import accepted_options

    try:
        accepted = accepted_options(method)
    except KDError as e:
        raise UserError(f"{where}: field 'method': {e}") from e
    options = dict(method_options)
    if "ignore_label" in options and options["ignore_label"] != ignore_label:
        raise UserError(
            f"{where}: option ignore_label={options['ignore_label']!r} contradicts the dataset's ignore "
            f"label ({ignore_label!r}, from dataset.json); leave the option out, the dataset's is used "
            "automatically"
        )
    for key, value in {"ignore_label": ignore_label, "regions": bool(has_regions)}.items():
        if key in options or value in (None, False):
            continue
        if key in accepted:
            options[key] = value
        else:
            warn(f"WARNING: the dataset has {key}={value!r} but KD method {method!r} does not take it")
    return options


def build_kd_for(
    method: str,
    options: dict[str, Any],
    student: nn.Module,
    teacher: nn.Module,
    num_classes: int,
    input_shape: Sequence[int],
    where: str = "KD settings",
) -> BuiltKD:
    """Tap both networks (``default_nnunet_taps``), measure the tap channels with one forward of a
    zero input of ``input_shape`` ``(1, C_in, *patch)``, and build ``method`` with ``options``."""
    from recokd.kd.partial import tap_channels
    from recokd.kd.registry import build_kd_method
    from recokd.kd.taps import default_nnunet_taps

    student_taps = default_nnunet_taps(student)
    teacher_taps = default_nnunet_taps(teacher)
    student_channels = tap_channels(student, student_taps, input_shape)
    teacher_channels = tap_channels(teacher, teacher_taps, input_shape)
    try:
        built = build_kd_method(method, student_channels, teacher_channels, num_classes, **options)
    except (KDError, TypeError) as e:
        raise UserError(
            f"{where}: cannot build KD method {method!r} with options {options} for these networks "
            f"({len(student_taps)} tapped stages, student channels {student_channels}, teacher channels "
            f"{teacher_channels}): {e}"
        ) from e
    return BuiltKD(built, student_taps, teacher_taps, student_channels, teacher_channels, options)
