"""``recokd methods``: list the registered KD methods, their descriptions and their options."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from recokd.json_files import json_ready

_DESCRIPTION = """\
List every registered KD method with its one-line description and its options (with defaults).
Methods combine with weights as NAME[:WEIGHT][+NAME[:WEIGHT]...], e.g. reco+logits:0.5. Options are
set with `recokd train --kd-option KEY=VALUE`: a bare KEY goes to every term of the spec that takes
it, METHOD.KEY to that term only (e.g. logits.temperature=4).
"""

_WIDTH = 100
_NAME_COLUMN = 16


def register(subparsers: Any) -> None:
    """Add the ``methods`` sub-command to ``subparsers`` (an argparse sub-parser action)."""
    p = subparsers.add_parser(
        "methods",
        help="list the registered KD methods and their options",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: {name: {description, options}}")
    p.set_defaults(func=run)


def method_table() -> dict[str, dict[str, Any]]:
    """``{name: {"description": str, "options": {option: default}}}`` in registration order,
    defaults made JSON-compatible (tuples -> lists, other objects -> their ``repr``)."""
    from recokd.kd.registry import available_methods

    return {
        name: {
            "description": info.description,
            "options": json_ready(info.options(), fallback=repr),
        }
        for name, info in available_methods().items()
    }


def run(args: argparse.Namespace) -> int:
    """Print the table (text or ``--json``); returns the exit code."""
    table = method_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    indent = " " * _NAME_COLUMN
    for name, entry in table.items():
        print(f"{name:<{_NAME_COLUMN - 1}} {entry['description']}")
        options = ", ".join(f"{k}={_format(v)}" for k, v in entry["options"].items()) or "(none)"
        print(textwrap.fill(f"options: {options}", width=_WIDTH, initial_indent=indent,
                            subsequent_indent=indent + "  ", break_on_hyphens=False))
    print()
    print("combine: NAME[:WEIGHT]+NAME[:WEIGHT] (e.g. reco+logits:0.5); options: --kd-option KEY=VALUE "
          "or METHOD.KEY=VALUE")
    return 0


def _format(value: Any) -> str:
    """An option default as one would type it for ``--kd-option`` (JSON)."""
    return json.dumps(value)
