"""argparse value types shared by the ``recokd`` sub-commands."""

from __future__ import annotations

import argparse
import json
from typing import Any


def positive_int(text: str) -> int:
    """An integer >= 1, else argparse's usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0, else argparse's usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


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
