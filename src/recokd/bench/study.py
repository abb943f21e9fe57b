"""Studies as data: a TOML study file (``benchmarks/studies/*.toml``) loaded, checked and resolved.

A study file has a ``[study]`` table (``description``, ``folder``: the study folder relative to the current
directory, ``gitignore``: lines of the folder's ``.gitignore``), ``[vars]`` (named values, substituted as
``{name}`` in every string field; ``--set NAME=VALUE`` overrides one, ``--tiny`` applies the ``[tiny]``
table), ``[env]`` (extra environment variables of every command, printed by ``--env``), ``[presets.NAME]``
(tables of ``recokd bench`` options that bench steps share) and an ordered array ``[[step]]``. Each step
entry has a ``name`` (entries sharing a name run in file order as one step), a ``kind`` (see
:mod:`recokd.bench.study_steps`), a one-line ``about`` and the fields of its kind; ``default = false`` keeps
a step out of the default selection, ``only_if = "{var}"`` skips an entry while it substitutes to "", and
``needs = {step = [paths]}`` refuses to run an entry before another step has made those paths.

Built-in variables (not settable): ``folder`` (the study folder, absolute), ``data`` (``folder/data``),
``raw``, ``preprocessed``, ``results`` (nnU-Net's three folders under ``data``) and ``trainer`` (the stock
short trainer without augmentation that ``nnunet-train`` steps run). Every refusal is a
:class:`~recokd.errors.UserError` naming the file and the field, raised before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from recokd.errors import UserError
from recokd.nnunet.layout import SHORT_TRAINER_NO_DA

#: fields every step entry may have, besides those of its kind
COMMON_FIELDS = ("name", "kind", "about", "default", "only_if", "needs", "env")
_TOP_LEVEL = ("study", "vars", "tiny", "env", "presets", "step")
_STUDY_FIELDS = ("description", "folder", "gitignore")
BUILTIN_VARS = ("folder", "data", "raw", "preprocessed", "results", "trainer")
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Step:
    """One ``[[step]]`` entry, its variables substituted and its fields checked."""

    name: str
    kind: str
    about: str
    fields: dict[str, Any]
    index: int  #: position in the file's ``[[step]]`` array (0-based)
    default: bool = True
    only_if: str | None = None
    needs: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``step 'sweep' (entry 5)``: how messages name this entry."""
        return f"step {self.name!r} (entry {self.index + 1})"


@dataclass
class StudyFile:
    """A loaded study: its folder, variables, environment and steps, in file order."""

    path: Path
    description: str
    folder: Path
    gitignore: list[str]
    variables: dict[str, Any]
    env: dict[str, str]
    steps: list[Step]

    @property
    def data(self) -> Path:
        """The study's nnU-Net data folder (``folder/data``)."""
        return self.folder / "data"

    def step_names(self) -> list[str]:
        """Step names in file order, each once."""
        return list(dict.fromkeys(s.name for s in self.steps))

    def default_steps(self) -> list[str]:
        """The names run when none is given: every step none of whose entries says ``default = false``."""
        off = {s.name for s in self.steps if not s.default}
        return [n for n in self.step_names() if n not in off]

    def select(self, names: list[str]) -> list[Step]:
        """The entries of the steps ``names`` (default: :meth:`default_steps`), in file order."""
        known = self.step_names()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(
                f"{self.path}: unknown step(s) {', '.join(unknown)}; its steps: {', '.join(known)}"
            )
        wanted = set(names or self.default_steps())
        return [s for s in self.steps if s.name in wanted]


def _fail(path: Path, where: str, message: str) -> UserError:
    return UserError(f"{path}: {where}: {message}")


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def parse_set(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` of ``--set``: VALUE read as a TOML value (``3``, ``0.2``, ``true``, ``[2, 3]``,
    ``"x"``), or else as a plain string (``:10``, ``reco``)."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise UserError(f"--set {text!r}: expected NAME=VALUE")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return name.strip(), parsed


def _check_override(path: Path, what: str, name: str, value: Any, variables: dict[str, Any]) -> None:
    if name not in variables:
        raise _fail(path, what, f"unknown variable {name!r}; the study's variables: {', '.join(variables)}")
    old = variables[name]
    same = type(value) is type(old) or (isinstance(old, float) and type(value) is int)
    if isinstance(old, str) and not isinstance(value, (list, dict)):
        same = True  # a string variable takes any scalar, as text
    if not same:
        raise _fail(path, what, f"variable {name!r} is {_type_name(old)} ({old!r}), got {value!r}")


def _as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class _Resolver:
    """Substitutes ``{name}`` in strings: a string that is exactly ``{name}`` takes the variable's value
    (with its type: an integer stays an integer), otherwise its text."""

    def __init__(self, path: Path, variables: dict[str, Any]) -> None:
        self.path, self.raw, self.done = path, variables, {}

    def var(self, name: str, where: str, stack: tuple[str, ...] = ()) -> Any:
        if name in self.done:
            return self.done[name]
        if name not in self.raw:
            raise _fail(self.path, where, f"undefined variable {{{name}}}; defined: {', '.join(self.raw)}")
        if name in stack:
            raise _fail(
                self.path,
                f"[vars] {name}",
                f"variables refer to each other in a loop: {' -> '.join((*stack, name))}",
            )
        value = self.value(self.raw[name], f"[vars] {name}", (*stack, name))
        self.done[name] = value
        return value

    def value(self, value: Any, where: str, stack: tuple[str, ...] = ()) -> Any:
        if isinstance(value, list):
            return [self.value(v, where, stack) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v, where, stack) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        whole = _VAR.fullmatch(value)
        if whole:
            return self.var(whole.group(1), where, stack)

        def text(m: re.Match[str]) -> str:
            got = self.var(m.group(1), where, stack)
            if isinstance(got, (list, dict)):
                raise _fail(
                    self.path,
                    where,
                    f"{{{m.group(1)}}} is {_type_name(got)}; only a field that is "
                    "exactly that variable can take it",
                )
            return _as_text(got)

        return _VAR.sub(text, value)


def _table(path: Path, doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise _fail(path, f"[{key}]", f"expected a table, got {_type_name(value)}")
    return value


def load_study(
    path: str | Path,
    tiny: bool = False,
    sets: list[str] | None = None,
    folder: str | Path | None = None,
    cwd: Path | None = None,
) -> StudyFile:
    """Read and check a study file: variables ([tiny] with ``tiny``, then ``sets``), substitution, every
    step's kind and fields (:mod:`recokd.bench.study_steps`). ``folder`` replaces ``[study] folder``;
    relative folders are taken from ``cwd`` (default: the current directory)."""
    from recokd.bench.study_steps import check_step

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read the study file ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    unknown = [k for k in doc if k not in _TOP_LEVEL]
    if unknown:
        raise _fail(path, f"[{unknown[0]}]", f"unknown table; expected {', '.join(_TOP_LEVEL)}")
    study = _table(path, doc, "study")
    for key in study:
        if key not in _STUDY_FIELDS:
            raise _fail(path, f"[study] {key}", f"unknown field; expected {', '.join(_STUDY_FIELDS)}")
    if not isinstance(study.get("folder"), str) and folder is None:
        raise _fail(
            path,
            "[study] folder",
            "missing (a string: the study folder, relative to the current directory), or give --folder",
        )
    base = cwd or Path.cwd()
    root = (base / Path(folder if folder is not None else study["folder"]).expanduser()).resolve()

    variables = dict(_table(path, doc, "vars"))
    for name in variables:
        if name in BUILTIN_VARS:
            raise _fail(path, f"[vars] {name}", f"a built-in variable ({', '.join(BUILTIN_VARS)})")
    tiny_values = _table(path, doc, "tiny")
    for name, value in tiny_values.items():  # checked whether applied or not
        _check_override(path, f"[tiny] {name}", name, value, variables)
    if tiny:
        variables.update(tiny_values)
    for text in sets or []:
        name, value = parse_set(text)
        _check_override(path, f"--set {text}", name, value, variables)
        variables[name] = value
    data = root / "data"
    builtins = {
        "folder": str(root),
        "data": str(data),
        "raw": str(data / "nnUNet_raw"),
        "preprocessed": str(data / "nnUNet_preprocessed"),
        "results": str(data / "nnUNet_results"),
        "trainer": SHORT_TRAINER_NO_DA,
    }
    resolver = _Resolver(path, {**variables, **builtins})
    resolved = {name: resolver.var(name, f"[vars] {name}") for name in variables}

    env = {k: _as_text(resolver.value(v, f"[env] {k}")) for k, v in _table(path, doc, "env").items()}
    presets = _table(path, doc, "presets")
    for name, preset in presets.items():
        if not isinstance(preset, dict):
            raise _fail(
                path,
                f"[presets] {name}",
                f"expected a table of recokd bench options, got {_type_name(preset)}",
            )
    entries = doc.get("step", [])
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "[[step]]", "missing: the study's steps, an array of tables [[step]]")
    steps = [
        _step(path, i, entry, resolver, {k: resolver.value(v, f"[presets] {k}") for k, v in presets.items()})
        for i, entry in enumerate(entries)
    ]
    names = {s.name for s in steps}
    for s in steps:
        for needed in s.needs:
            if needed not in names:
                raise _fail(path, f"{s.where} field 'needs'", f"unknown step {needed!r}")
        check_step(path, s)
    gitignore = study.get("gitignore", [])
    if not (isinstance(gitignore, list) and all(isinstance(x, str) for x in gitignore)):
        raise _fail(path, "[study] gitignore", "expected a list of strings")
    return StudyFile(path, str(study.get("description", "")), root, gitignore, resolved, env, steps)


def _step(path: Path, index: int, entry: Any, resolver: _Resolver, presets: dict[str, Any]) -> Step:
    where = f"[[step]] entry {index + 1}"
    if not isinstance(entry, dict):
        raise _fail(path, where, "expected a table")
    for key in ("name", "kind", "about"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise _fail(path, f"{where} field {key!r}", "missing (a non-empty string)")
    where = f"step {entry['name']!r} (entry {index + 1})"
    values = {k: resolver.value(v, f"{where} field {k!r}") for k, v in entry.items()}
    default = values.get("default", True)
    if not isinstance(default, bool):
        raise _fail(path, f"{where} field 'default'", f"expected a boolean, got {default!r}")
    only_if = values.get("only_if")
    if only_if is not None and not isinstance(only_if, str):
        raise _fail(path, f"{where} field 'only_if'", f"expected a string, got {only_if!r}")
    needs = values.get("needs", {})
    if not (
        isinstance(needs, dict)
        and all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in needs.values())
    ):
        raise _fail(path, f"{where} field 'needs'", "expected a table: step name = [paths it makes]")
    env = values.get("env", {})
    if not isinstance(env, dict):
        raise _fail(path, f"{where} field 'env'", f"expected a table of variables, got {_type_name(env)}")
    fields = {k: v for k, v in values.items() if k not in COMMON_FIELDS}
    if "presets" in fields:  # bench steps: the shared option tables, by name
        names = fields["presets"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise _fail(path, f"{where} field 'presets'", "expected a list of preset names")
        missing = [n for n in names if n not in presets]
        if missing:
            raise _fail(
                path,
                f"{where} field 'presets'",
                f"unknown preset(s) {', '.join(missing)}; [presets] has {', '.join(presets) or 'none'}",
            )
        fields["presets"] = {n: presets[n] for n in names}
    return Step(
        entry["name"],
        entry["kind"],
        entry["about"],
        fields,
        index,
        default,
        only_if,
        {k: list(v) for k, v in needs.items()},
        {k: _as_text(v) for k, v in env.items()},
    )
