"""Channel-width scaling of a student (docs/method.md section 1)."""

from __future__ import annotations

from collections.abc import Sequence

from recokd.errors import KDError


def scale_width(width: int, t: int, c_min: int = 4) -> int:
    """Return ``max(c_min, width // 2**t)`` (docs/method.md section 1: ``C'_i = max(C_min, C_i / 2**t)``).

    Widths that are not divisible by ``2**t`` are rounded down; the floor ``c_min`` is never
    exceeded downwards. ``t = 0`` returns ``width`` unchanged (but never below ``c_min``... unless
    the teacher itself is narrower, in which case the teacher width is kept).
    """
    if not isinstance(t, int) or t < 0:
        raise KDError(f"width reduction exponent t must be a non-negative integer, got {t!r}")
    if c_min < 1:
        raise KDError(f"c_min must be >= 1, got {c_min!r}")
    if width < 1:
        raise KDError(f"widths must be positive integers, got {width!r}")
    # a student is never wider than its teacher, even if the teacher is below the floor
    return min(width, max(c_min, width // (2**t)))


def scale_widths(widths: Sequence[int], t: int, c_min: int = 4) -> list[int]:
    """Scale every stage width: ``[max(c_min, C_i // 2**t) for C_i in widths]`` (docs/method.md section 1).

    >>> scale_widths([32, 64, 128, 256, 320, 320], t=2)
    [8, 16, 32, 64, 80, 80]
    >>> scale_widths([32, 64, 128], t=3, c_min=8)
    [8, 8, 16]
    """
    return [scale_width(int(w), t, c_min) for w in widths]
