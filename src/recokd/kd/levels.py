"""Feature-level bookkeeping shared by every multi-level KD loss: channel lists and level weights
(docs/method.md section 5)."""

from __future__ import annotations

from collections.abc import Sequence

from recokd.errors import KDError


def default_level_weights(num_levels: int, alpha: float = 0.4) -> list[float]:
    """``w_l ∝ r**l`` with ``r = 2**(-3 alpha)``, normalised to sum 1 (docs/method.md section 5).

    Level 0 is the highest resolution; with ``alpha > 0`` it dominates (a level with 8x fewer
    voxels weighs ``2**(-3 alpha)`` as much).
    """
    r = 2.0 ** (-3.0 * alpha)
    raw = [r**level for level in range(num_levels)]
    total = sum(raw)
    return [w / total for w in raw]


def resolve_levels(
    student_channels: Sequence[int],
    teacher_channels: Sequence[int],
    num_classes: int,
    alpha: float,
    level_weights: Sequence[float] | None,
) -> tuple[list[int], list[int], list[float]]:
    """Checked ``(student_channels, teacher_channels, weights)``: one entry per distilled level.

    ``weights`` are :func:`default_level_weights` of ``alpha`` unless ``level_weights`` is given
    (used as given, not renormalised). Raises :class:`~recokd.errors.KDError` naming the bad argument.
    """
    student = [int(c) for c in student_channels]
    teacher = [int(c) for c in teacher_channels]
    if len(student) != len(teacher) or not student:
        raise KDError(
            f"student_channels {student} and teacher_channels {teacher} must name the same, non-empty "
            "list of levels"
        )
    if any(c < 1 for c in student + teacher):
        raise KDError(f"channel counts must be >= 1, got {student} / {teacher}")
    if num_classes < 1:
        raise KDError(f"num_classes must be >= 1, got {num_classes}")
    n = len(student)
    if level_weights is None:
        return student, teacher, default_level_weights(n, alpha)
    weights = [float(w) for w in level_weights]
    if len(weights) != n:
        raise KDError(f"level_weights has {len(weights)} entries for {n} levels")
    return student, teacher, weights
