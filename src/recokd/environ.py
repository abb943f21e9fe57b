"""Environment variables set for one block of code (nnU-Net and our trainers read their settings
from the environment: folders, ``RECOKD_SETTINGS``, ``RECOKD_SEED``, ...)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def _apply(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def temporary_environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _apply(values)
        yield
    finally:
        _apply(saved)
