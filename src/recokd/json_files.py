"""JSON files in and out: reading the files users hand us (plans, dataset.json, settings, evaluation
summaries) with clear errors, writing ours atomically, and turning values into plain JSON types."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recokd.atomic_files import atomic_path
from recokd.errors import UserError


def read_json(path: str | Path, what: str) -> Any:
    """``json.load`` of ``path``; a missing or unreadable file is a :class:`UserError` that starts
    with ``what`` (e.g. ``"plans file"``) and names the path."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise UserError(f"{what} {path} does not exist") from e
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {path} could not be read as JSON: {e}") from e


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2) -> Path:
    """Write ``data`` (made :func:`json_ready`) as JSON to ``path`` through a partial file renamed
    into place (:func:`recokd.atomic_files.atomic_path`), so that a reader never sees half a file and
    a crash leaves the old one. Creates the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as f:
        json.dump(json_ready(data), f, indent=indent, allow_nan=False)
        f.write("\n")
    return path


def json_ready(value: Any, fallback: Callable[[Any], Any] = str) -> Any:
    """``value`` in plain JSON types: mappings -> dicts with string keys, lists and tuples -> lists,
    numpy arrays and scalars -> Python values (``tolist``), non-finite floats -> None (JSON has no
    NaN), anything else -> ``fallback(value)`` (``str`` by default; pass ``lambda v: v`` to keep it)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_ready(v, fallback) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v, fallback) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_ready(value.tolist(), fallback)
    return fallback(value)
