"""Code blocks of the project's Markdown documents, for the tests that run them as written."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_blocks(document: str | Path, heading: str, language: str) -> list[str]:
    """Every fenced ``language`` block of ``document`` (relative to the clone's root) in the section that
    starts at the Markdown heading ``heading`` (e.g. ``"## Exact commands"``) and ends at the next heading of
    the same or a higher level (``#`` lines inside fences are code, not headings). Fails when the heading
    or the blocks are missing, so a renamed section cannot make a test pass vacuously."""
    level = len(heading) - len(heading.lstrip("#"))
    blocks: list[str] = []
    inside = found = False
    fence: str | None = None  # the language of the open fence, None outside fences
    body: list[str] = []
    for line in (ROOT / document).read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, body = line[3:].strip(), []
            else:
                if inside and fence == language:
                    blocks.append("\n".join(body) + "\n")
                fence = None
            continue
        if fence is not None:
            body.append(line)
            continue
        if line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            if line.rstrip() == heading:
                inside = found = True
            elif inside and hashes <= level:
                inside = False
    assert found, f"{document}: no heading {heading!r}"
    assert blocks, f"{document}, {heading!r}: no ```{language} block"
    return blocks
