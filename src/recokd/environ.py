"""Environment variables set for one block of code (nnU-Net and our trainers read their settings
from the environment: folders, ``RECOKD_SETTINGS``, ``RECOKD_SEED``, ...)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def temporary_environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
