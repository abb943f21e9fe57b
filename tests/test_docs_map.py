"""docs/method.md's map ("Where each section is implemented") names files and functions that exist, so
that it cannot drift from the code."""

from __future__ import annotations

import importlib
import re

from tests.doc_blocks import ROOT


def _rows() -> list[tuple[str, list[str], list[str]]]:
    text = (ROOT / "docs/method.md").read_text(encoding="utf-8")
    section = text.split("## Where each section is implemented", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("section", "---") or set(cells[0]) <= {"-"}:
            continue
        files = re.findall(r"`(src/[^`]+)`", cells[1])
        names = re.findall(r"`([A-Za-z_][\w.]*)`", cells[2])
        rows.append((cells[0], files, names))
    return rows


def test_every_mapped_file_exists_and_defines_the_mapped_names() -> None:
    rows = _rows()
    assert len(rows) >= 10, rows
    for section, files, names in rows:
        assert files, section
        modules = []
        for f in files:
            path = ROOT / f
            assert path.exists(), f"{section}: {f} does not exist"
            if path.is_file():
                modules.append(importlib.import_module(f[len("src/"):-len(".py")].replace("/", ".")))
            else:
                modules.append(importlib.import_module(f[len("src/"):].rstrip("/").replace("/", ".")))
        for name in names:
            head, _, attr = name.partition(".")
            owner = next((getattr(m, head) for m in modules if hasattr(m, head)), None)
            assert owner is not None, f"{section}: {head} is in none of {files}"
            if attr:
                assert hasattr(owner, attr), f"{section}: {head} has no {attr}"
