"""The package's layering, checked on the source: the torch-only core imports no integration layer, and
the module-level imports of ``src/recokd`` form no cycle (``python -m pytest tests/test_architecture.py``
is the check the developers' guide asks for)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.doc_blocks import ROOT

SRC = ROOT / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """The ``recokd``/``nnunetv2`` modules ``path`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return {m for m in out if m.split(".")[0] in ("recokd", "nnunetv2")}


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / "recokd").rglob("*.py")}


def test_the_kd_core_imports_no_integration_layer_and_no_nnunet() -> None:
    allowed = ("recokd.kd", "recokd.errors", "recokd.json_files")
    for name, path in _modules().items():
        if not name.startswith("recokd.kd"):
            continue
        bad = sorted(m for m in _imports(path, module_level_only=False)
                     if not m.startswith(allowed))
        assert not bad, f"{name} imports {bad}: recokd.kd must stay torch-only"


def test_module_level_imports_have_no_cycle() -> None:
    modules = _modules()
    graph = {name: {m for m in _imports(path, module_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    # a package's __init__ is imported before its submodules: an edge to it is real
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
