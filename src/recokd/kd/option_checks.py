"""Type and range checks of the KD methods' keyword options, applied when a method is built.

Options arrive from JSON (``--kd-option KEY=VALUE``, settings files), so ``compile="maybe"``,
``chunk=0`` or ``temperature="2"`` are easy to write; without a check they count as true, crash at
the first training step deep inside the loss, or leak Python's ``TypeError`` text. Each option
name has one rule (:data:`OPTION_RULES`, unless :data:`METHOD_OPTION_RULES` gives a method's own);
an option without a rule is checked against the type of
its default (bool, int, float, str).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from recokd.errors import KDError


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _number(minimum: float, strict: bool = False) -> tuple[Callable[[Any], bool], str]:
    if strict:
        return (lambda v: _is_number(v) and v > minimum), f"a number > {minimum:g}"
    return (lambda v: _is_number(v) and v >= minimum), f"a number >= {minimum:g}"


def _integer(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= minimum), f"an integer >= {minimum}"


def _choice(*values: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in values), "one of " + ", ".join(repr(x) for x in values)


_BOOL = (_is_bool, "true or false")

#: option name -> (check, what is expected)
OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "alpha": _number(0),
    "temperature": _number(0, strict=True),
    "tau": _number(0),  # ReCo-KD's exponent on the region weights (0: no size normalisation)
    "fg": _number(0),
    "bg": _number(0),
    "att": _number(0),
    "ctx": _number(0),
    "beta": _number(0),
    "gamma": _number(0),
    "distance_weight": _number(0),
    "angle_weight": _number(0),
    "grid": _integer(1),
    "chunk": _integer(1),
    "pool": _choice("max", "avg"),
    "context": _choice("gc", "affinity"),
    "ignore_label": ((lambda v: v is None or (_is_int(v) and v >= 0)), "null or a label value >= 0"),
    "level_weights": (
        (lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) > 0
                                 and all(_is_number(w) and w >= 0 for w in v))),
        "null or a list of numbers >= 0, one per tapped stage",
    ),
    **{name: _BOOL for name in ("freeze_adapters", "regions", "validate_targets", "compile", "across_batch")},
}


#: (method, option) -> rule, where a method's option of that name means something else: DIST's tau is
#: a softmax temperature (it divides the logits), ReCo-KD's an exponent that may be 0
METHOD_OPTION_RULES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("dist", "tau"): _number(0, strict=True),
}


def _rule_from_default(default: Any) -> tuple[Callable[[Any], bool], str] | None:
    if isinstance(default, bool):
        return _BOOL
    if _is_int(default):
        return (_is_int, "an integer")
    if isinstance(default, float):
        return (_is_number, "a finite number")
    if isinstance(default, str):
        return ((lambda v: isinstance(v, str)), "a string")
    return None


def check_option(method: str, name: str, value: Any, default: Any) -> None:
    """Raise :class:`~recokd.errors.KDError` naming the method, the option and what is expected if
    ``value`` is bad."""
    rule = METHOD_OPTION_RULES.get((method, name)) or OPTION_RULES.get(name) or _rule_from_default(default)
    if rule is None:
        return
    ok, expected = rule
    if not ok(value):
        raise KDError(f"option {name!r} of KD method {method!r} must be {expected}, got {value!r}")
