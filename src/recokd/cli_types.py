"""argparse value types shared by the ``recokd`` sub-commands."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1, else argparse's usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
