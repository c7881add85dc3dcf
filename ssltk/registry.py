"""Typed registries: components by kind and name, created from validated parameters.

>>> registry = get_registry()
>>> registry.names("backbones", "resnet*")
['resnet10', 'resnet18', 'resnet34', 'resnet50']
>>> net = registry.build("backbones", {"name": "resnet18", "out_dim": 128}, "backbone",
...                      in_channels=1, spatial_dims=3)

:meth:`Registry.build` is the one way from a spec (a TOML table, a dict or a
:class:`~ssltk.specs.ComponentSpec`) to a component: the engine, the augmentation pipeline and
plugins that build other components (multitask, Genesis, y-Aware) all go through it, so every
error names its TOML path the same way. :meth:`Registry.validate` is its checking half, which
``ssltk validate`` runs before anything is built.
"""

from __future__ import annotations

import fnmatch
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from ssltk.errors import ConfigError, PluginError, did_you_mean
from ssltk.interfaces import KINDS
from ssltk.plugins import (
    PluginInfo,
    disabled_from_env,
    get_plugin_manager,
    load_plugins,
    one_line,
)
from ssltk.specs import ComponentSpec, ObjectiveSpec


def singular(kind: str) -> str:
    """``objectives`` -> ``objective`` (for messages)."""
    return kind[:-1]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[X]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _allowed_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the (sub)model that holds the key at ``loc``."""
    for part in loc[:-1]:
        if model is None:
            return []
        if isinstance(part, str):
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def format_validation_error(exc: ValidationError, prefix: str = "",
                            model: type[BaseModel] | None = None) -> str:
    """``path.to[1].field: message`` for the first pydantic error, on one line.

    With ``model`` (the validated class), a misspelled key gets a did-you-mean hint.
    """
    errors = exc.errors()
    # A misspelled key also makes the real key "missing": report the typo, it is the cause.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = prefix
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    nested = (err.get("ctx") or {}).get("error")
    if isinstance(nested, NestedSpecError):  # a component spec checked inside a model
        return f"{path}.{nested}" if path else str(nested)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"])
        msg = f"unknown key.{did_you_mean(str(err['loc'][-1]), allowed)}"
        if allowed:
            msg += f" Allowed: {', '.join(allowed)}"
    return f"{path}: {msg}" if path else msg


class NestedSpecError(ValueError):
    """A component spec's error raised inside a pydantic validator, relative to the model it
    validates (``name: unknown optimizer 'adam'...``, ``base.rho: ...``):
    :func:`format_validation_error` puts the model's own TOML path in front."""


_MARK = "\x00"


def check_in_model(check: Callable[[str], Any]) -> Any:
    """Run ``check(path)`` (a registry validation) inside a pydantic validator.

    ``check`` gets a placeholder path; a ConfigError it raises becomes a
    :class:`NestedSpecError` relative to the model being validated, so that the error of a
    whole TOML names the full path (``pretrain.optimizer.base.momentum: ...``).
    """
    try:
        return check(_MARK)
    except ConfigError as exc:
        raise NestedSpecError(str(exc).replace(_MARK + ".", "").replace(_MARK, "")) from None


@functools.cache
def _installed_registry(disabled: frozenset[str]) -> Registry:
    return get_registry(disabled=set(disabled))


def default_registry() -> Registry:
    """The registry of installed plugins minus ``SSLTK_DISABLE_PLUGINS``, built once per process.

    What a model validates component names against when it is built without a registry in its
    validation context (``Model.model_validate(data, context={"registry": registry})``).
    """
    return _installed_registry(frozenset(disabled_from_env()))


def context_registry(info: Any) -> Registry:
    """The ``registry`` of a pydantic validator's context, else :func:`default_registry`."""
    context = getattr(info, "context", None) or {}
    return context.get("registry") or default_registry()


@dataclass(frozen=True)
class Entry:
    cls: type
    plugin: str


class Registry:
    """Components registered by plugins, by kind (``backbones``, ``augmentations``, ...)."""

    def __init__(self, plugins: list[PluginInfo] | None = None):
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.plugins: list[PluginInfo] = plugins or []

    @property
    def disabled(self) -> frozenset[str]:
        """Names of the plugins this registry left out: what a worker process must leave out too
        (``get_registry(disabled=registry.disabled)``)."""
        return frozenset(p.name for p in self.plugins if p.status == "disabled")

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager, infos: list[PluginInfo]) -> Registry:
        """Call every plugin's ``register_<kind>`` hooks, one plugin at a time.

        A plugin whose hook raises, or that registers an invalid class or a name already taken,
        is marked broken and none of its components are kept.
        """
        registry = cls(infos)
        for info in infos:
            plugin = pm.get_plugin(info.name) if info.status == "ok" else None
            if plugin is None:
                continue
            try:
                staged = registry._collect(pm, info.name)
            except Exception as exc:
                info.status, info.error = "broken", one_line(exc)
                continue
            for kind, klass in staged:
                registry._entries[kind][klass.name] = Entry(klass, info.name)
                info.components.setdefault(kind, []).append(klass.name)
        return registry

    def _collect(self, pm: pluggy.PluginManager, plugin_name: str) -> list[tuple[str, type]]:
        staged: list[tuple[str, type]] = []
        for kind in KINDS:
            for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue

                def register(klass: type, _kind: str = kind) -> None:
                    self._check_new(_kind, klass, staged)
                    staged.append((_kind, klass))

                impl.function(**{arg: register for arg in impl.argnames})
        return staged

    def _check_new(self, kind: str, klass: Any, staged: list[tuple[str, type]]) -> None:
        base = KINDS[kind]
        if not (isinstance(klass, type) and issubclass(klass, base)):
            raise PluginError(f"register_{kind} got {klass!r}, which is not a {base.__name__}")
        name = getattr(klass, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{klass.__name__} has no 'name' class attribute")
        config = getattr(klass, "Config", None)
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise PluginError(f"{klass.__name__}.Config is not a pydantic model")
        if name in self._entries[kind]:
            owner = self._entries[kind][name].plugin
            raise PluginError(
                f"{singular(kind)} '{name}' is already registered by plugin '{owner}'; "
                f"disable one of them (SSLTK_DISABLE_PLUGINS)"
            )
        if any(k == kind and c.name == name for k, c in staged):
            raise PluginError(f"{singular(kind)} '{name}' registered twice")

    def add(self, kind: str, klass: type, plugin: str = "__main__") -> None:
        """Register ``klass`` directly (notebooks, tests)."""
        self._check_new(kind, klass, [])
        self._entries[kind][klass.name] = Entry(klass, plugin)

    # -- lookup ----------------------------------------------------------------------------
    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching the fnmatch ``pattern``."""
        return sorted(n for n in self._kind(kind) if fnmatch.fnmatch(n, pattern))

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name``; unknown names raise with a did-you-mean hint."""
        entries = self._kind(kind)
        if name not in entries:
            available = ", ".join(sorted(entries)) or "none (is a plugin disabled or broken?)"
            hint = did_you_mean(name, entries)
            raise ConfigError(f"unknown {singular(kind)} '{name}'.{hint} Available: {available}")
        return entries[name].cls

    def config(self, kind: str, name: str, params: Mapping[str, Any] | None = None,
               path: str = "") -> BaseModel:
        """Validate ``params`` against the component's ``Config``; errors name ``path.field``."""
        klass = self.get(kind, name)
        try:
            return klass.Config(**dict(params or {}))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, path, klass.Config)) from None

    def validate(self, kind: str, spec: Mapping[str, Any] | ComponentSpec,
                 path: str = "") -> BaseModel:
        """Check a spec found at TOML ``path`` without building it; return its validated Config.

        Checks the name, the parameters, an objective's nested components
        (:meth:`~ssltk.interfaces.Objective.check_nested`) and its anchor.

        Raises:
            ConfigError: ``{path}.name: unknown ...``, ``{path}.field: ...`` and so on.
        """
        spec = as_spec(kind, spec, path)
        try:
            klass = self.get(kind, spec.name)
        except ConfigError as exc:
            raise ConfigError(f"{path}.name: {exc}" if path else str(exc)) from None
        config = self.config(kind, spec.name, spec.params(), path)
        if hasattr(klass, "check_nested"):  # objectives and optimizers
            klass.check_nested(config, self, path or spec.name)
        if kind == "objectives":
            if spec.anchor is not None:
                if not klass.uses_anchor:
                    raise ConfigError(f"{path}.anchor: objective '{spec.name}' takes no anchor; "
                                      "remove it")
                self.validate("anchors", spec.anchor, f"{path}.anchor")
        return config

    def build(self, kind: str, spec: Mapping[str, Any] | ComponentSpec, path: str = "",
              **context: Any) -> Any:
        """Validate a spec (see :meth:`validate`) and build the component.

        Args:
            kind: ``backbones``, ``augmentations``, ``anchors`` or ``objectives``.
            spec: ``{"name": ..., **params}`` or a :class:`~ssltk.specs.ComponentSpec`; an
                objective's may carry an ``anchor`` spec, built here and passed to it.
            path: where the spec sits in the TOML, for error messages.
            context: the kind's construction context (``in_channels``/``spatial_dims`` for
                backbones, ``backbone`` for objectives; see :mod:`ssltk.interfaces`). Objectives
                and optimizers also get ``registry=self``.
        """
        spec = as_spec(kind, spec, path)
        config = self.validate(kind, spec, path)
        if kind == "objectives":
            anchor = None if spec.anchor is None else \
                self.build("anchors", spec.anchor, f"{path}.anchor")
            context = {"anchor": anchor, "registry": self, **context}
        elif kind == "optimizers":
            context = {"registry": self, **context}
        return self.get(kind, spec.name)(config, **context)

    def create(self, kind: str, name: str, params: Mapping[str, Any] | None = None,
               path: str = "", **context: Any) -> Any:
        """``build(kind, {"name": name, **params}, path, **context)``: a shorthand for code."""
        return self.build(kind, {**dict(params or {}), "name": name}, path, **context)

    def _kind(self, kind: str) -> dict[str, Entry]:
        if kind not in self._entries:
            raise ValueError(f"unknown kind '{kind}'; kinds are {', '.join(self._entries)}")
        return self._entries[kind]


def as_spec(kind: str, spec: Mapping[str, Any] | ComponentSpec, path: str = "") -> ComponentSpec:
    """A spec as a :class:`ComponentSpec` (an :class:`ObjectiveSpec` for objectives).

    Raises:
        ConfigError: the spec has no ``name`` (``{path}: missing 'name'``).
    """
    model = ObjectiveSpec if kind == "objectives" else ComponentSpec
    if isinstance(spec, model):
        return spec
    if isinstance(spec, ComponentSpec):
        return model(name=spec.name, **spec.params())
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}missing 'name' (e.g. {{name = \"flip\"}})")
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, model)) from None


def get_registry(disabled: set[str] | None = None,
                 extra: dict[str, object] | None = None) -> Registry:
    """Discover installed plugins (minus ``disabled`` and ``SSLTK_DISABLE_PLUGINS``) and return a
    fresh registry of them."""
    pm = get_plugin_manager()
    infos = load_plugins(pm, disabled=disabled, extra=extra)
    return Registry.from_plugin_manager(pm, infos)
