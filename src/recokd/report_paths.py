"""Paths as a written report shows them: relative to the report's own folder, so that a committed report
names no developer's machine and its paths resolve from where the report lies (bench reports, profile
reports)."""

from __future__ import annotations

import os
from pathlib import Path


def shown_path(path: str | Path, base: str | Path | None) -> str:
    """``path`` relative to ``base`` (the report's folder); unchanged without ``base`` or when no
    relative path exists (another drive)."""
    if base is None:
        return str(path)
    try:
        return os.path.relpath(Path(path).absolute(), Path(base).absolute())
    except ValueError:
        return str(path)


def shown_source(source: str, base: str | Path | None) -> str:
    """A profile's ``volume_source`` (``"synthetic ..."`` or ``"case: FILE, FILE"``) with the case
    files as :func:`shown_path` shows them."""
    prefix = "case: "
    if not source.startswith(prefix):
        return source
    return prefix + ", ".join(shown_path(f, base) for f in source[len(prefix):].split(", "))
