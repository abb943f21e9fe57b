"""argparse value types shared by the ``recokd`` sub-commands."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    """``text`` as an integer >= ``minimum``, else argparse's usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1, else argparse's usage error naming the value."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0, else argparse's usage error naming the value."""
    return _int_at_least(text, 0, "an integer >= 0")


def kd_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--kd-option`` -> ``(KEY, VALUE)``: VALUE read as JSON (``0.5``, ``[1, 0]``,
    ``true``), else kept as a plain string (``context=affinity`` needs no JSON quotes)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value
