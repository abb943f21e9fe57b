"""Registry of KD methods, and method specs such as ``"reco"`` or ``"reco+logits:0.5"``.

A spec is ``NAME[:WEIGHT][+NAME[:WEIGHT]...]``. Each registered factory is called as
``factory(student_channels, teacher_channels, num_classes, **options)`` and returns a
:class:`~recokd.kd.base.KDMethod`. Options are routed by name: ``"logits.temperature"`` goes to
the ``logits`` term only; a bare ``"temperature"`` goes to every term whose factory accepts it
(an option no term accepts is an error, so typos do not pass silently). Every option value is
type- and range-checked (:mod:`recokd.kd.option_checks`) before a factory sees it.

The registry imports no method at import time: :mod:`recokd.kd.methods` registers ReCo-KD, its
ablations and the baselines, and the registry loads that module the first time it is asked for a
method (:func:`available_methods`, :func:`parse_method_spec` and what builds on them), so that
importing a light module of the core (``recokd.kd.widths``) does not import every method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recokd.errors import KDError
from recokd.kd.base import KDMethod
from recokd.kd.option_checks import check_option

Factory = Callable[..., KDMethod]


@dataclass(frozen=True)
class MethodInfo:
    """A registered KD method: its factory, one-line description and default options."""

    name: str
    factory: Factory
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Keyword options of the factory with their defaults (after ``self.defaults``); for a class,
        collected along its hierarchy (see :func:`keyword_options`)."""
        return {**keyword_options(self.factory), **self.defaults}


def keyword_options(factory: Factory) -> dict[str, Any]:
    """``{name: default}`` of the keyword-only parameters of ``factory``. For a class, its
    ``__init__``'s, then, as long as an ``__init__`` passes ``**options`` on, its bases' (a subclass
    of :class:`~recokd.kd.base.FeatureKD` takes ``alpha`` / ``level_weights`` that way)."""
    inits = [vars(c)["__init__"] for c in inspect.getmro(factory) if "__init__" in vars(c)] \
        if isinstance(factory, type) else [factory]
    levels: list[dict[str, Any]] = []  # subclass first
    for init in inits:
        params = inspect.signature(init).parameters.values()
        levels.append({p.name: p.default for p in params
                       if p.kind is p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty})
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    out: dict[str, Any] = {}
    for options in reversed(levels):  # listed base first; a subclass's default wins
        out.update(options)
    return out


_REGISTRY: dict[str, MethodInfo] = {}


def register_kd_method(name: str, description: str, **defaults: Any) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory`` under ``name`` (with ``defaults`` overriding its own)."""

    def decorate(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise KDError(f"KD method {name!r} is already registered")
        _REGISTRY[name] = MethodInfo(name, factory, description, dict(defaults))
        return factory

    return decorate


def _register_package_methods() -> None:
    """Load :mod:`recokd.kd.methods` (it registers the package's methods; Python imports it once)."""
    import recokd.kd.methods  # noqa: F401


def available_methods() -> dict[str, MethodInfo]:
    """All registered methods, by name."""
    _register_package_methods()
    return dict(_REGISTRY)


def accepted_options(spec: str) -> set[str]:
    """Names of the options any term of ``spec`` accepts (raises :class:`~recokd.errors.KDError` on a
    bad spec)."""
    out: set[str] = set()
    for name, _ in parse_method_spec(spec):
        out |= set(_REGISTRY[name].options())
    return out


def parse_method_spec(spec: str) -> list[tuple[str, float]]:
    """``"reco+logits:0.5"`` -> ``[("reco", 1.0), ("logits", 0.5)]`` (names checked)."""
    _register_package_methods()
    terms: list[tuple[str, float]] = []
    for raw in spec.split("+"):
        raw = raw.strip()
        name, _, weight = raw.partition(":")
        name = name.strip()
        if name not in _REGISTRY:
            raise KDError(
                f"unknown KD method {name!r} in {spec!r}; available: {', '.join(sorted(_REGISTRY))}"
            )
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise KDError(f"bad weight {weight!r} for KD method {name!r} in {spec!r}") from None
        if any(n == name for n, _ in terms):
            raise KDError(f"KD method {name!r} appears twice in {spec!r}")
        terms.append((name, w))
    return terms


class CombinedKD(KDMethod):
    """A weighted sum of KD methods: ``loss = sum_i w_i loss_i``; logs keyed ``"name:key"``."""

    def __init__(self, methods: dict[str, KDMethod], weights: dict[str, float]):
        super().__init__()
        self.methods = nn.ModuleDict(methods)
        self.term_weights = dict(weights)
        self.uses_features = any(m.uses_features for m in methods.values())
        self.uses_logits = any(m.uses_logits for m in methods.values())
        self.uses_target = any(m.uses_target for m in methods.values())

    def forward(self, student_feats, teacher_feats, target=None, *, student_logits=None, teacher_logits=None):
        total: torch.Tensor | None = None
        logs: dict[str, float] = {}
        for name, method in self.methods.items():
            out = method(
                student_feats,
                teacher_feats,
                target,
                student_logits=student_logits,
                teacher_logits=teacher_logits,
            )
            term = self.term_weights[name] * out["loss"]
            total = term if total is None else total + term
            logs[f"{name}:loss"] = float(out["loss"].detach())
            logs.update({f"{name}:{k}": v for k, v in out.items() if k != "loss"})
        return {"loss": total, **logs}


def build_kd_method(
    spec: str,
    student_channels: Sequence[int],
    teacher_channels: Sequence[int],
    num_classes: int,
    **options: Any,
) -> KDMethod:
    """Build the KD method named by ``spec`` (see module docstring for option routing)."""
    terms = parse_method_spec(spec)
    per_term: dict[str, dict[str, Any]] = {name: dict(_REGISTRY[name].defaults) for name, _ in terms}
    for key, value in options.items():
        target_name, dot, opt = key.partition(".")
        if dot:
            if target_name not in per_term:
                raise KDError(f"option {key!r} names KD method {target_name!r}, not in {spec!r}")
            if opt not in _REGISTRY[target_name].options():
                raise KDError(_unknown_option(target_name, opt))
            per_term[target_name][opt] = value
            continue
        takers = [name for name in per_term if key in _REGISTRY[name].options()]
        if not takers:
            raise KDError(
                f"option {key!r} is not accepted by " + ", ".join(_unknown_option(n, key) for n in per_term)
            )
        for name in takers:
            per_term[name][key] = value
    for name, values in per_term.items():
        defaults = _REGISTRY[name].options()
        for opt, value in values.items():
            check_option(name, opt, value, defaults.get(opt))
    methods = {
        name: _REGISTRY[name].factory(
            list(student_channels), list(teacher_channels), num_classes, **per_term[name]
        )
        for name, _ in terms
    }
    if len(terms) == 1 and terms[0][1] == 1.0:
        return methods[terms[0][0]]
    return CombinedKD(methods, dict(terms))


def _unknown_option(name: str, opt: str) -> str:
    known = ", ".join(sorted(_REGISTRY[name].options()))
    return f"KD method {name!r} (no option {opt!r}; options: {known})"
