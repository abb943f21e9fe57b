"""Reading the JSON files users hand us (plans, dataset.json, settings, evaluation summaries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
