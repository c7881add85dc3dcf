"""Plugin discovery: entry points in the ``ssltk`` group, loaded in isolation.

A plugin that fails to import, raises in a hook, registers something that is not a valid
component, or takes a name another plugin already has is marked *broken* with a one-line error;
the others load as usual. Plugins named in ``SSLTK_DISABLE_PLUGINS`` (comma separated) or
passed as ``disabled`` are never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy

from ssltk import hookspecs

ENTRY_POINT_GROUP = "ssltk"
DISABLE_ENV = "SSLTK_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "ssltk"

Status = Literal["ok", "broken", "disabled"]


@dataclass
class PluginInfo:
    """What ``ssltk list-plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    status: Status = "ok"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "hooks": self.hooks,
            "components": self.components,
        }


def one_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` – how a broken plugin's error is shown."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def disabled_from_env() -> set[str]:
    """Plugin names listed in ``SSLTK_DISABLE_PLUGINS``."""
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def get_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows ssltk's hook specifications and no plugin yet."""
    pm = pluggy.PluginManager("ssltk")
    pm.add_hookspecs(hookspecs)
    return pm


def _entry_points() -> list[EntryPoint]:
    """Entry points of the group, built-in distribution first, then by name; duplicates dropped."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            unique.append(ep)

    def key(ep: EntryPoint) -> tuple[bool, str]:
        dist = ep.dist.name if ep.dist is not None else ""
        return (dist != BUILTIN_DISTRIBUTION, ep.name)

    return sorted(unique, key=key)


def load_plugins(
    pm: pluggy.PluginManager,
    disabled: set[str] | None = None,
    extra: dict[str, object] | None = None,
) -> list[PluginInfo]:
    """Import every entry-point plugin not disabled and register it with ``pm``.

    Args:
        pm: from :func:`get_plugin_manager`.
        disabled: plugin names to skip, in addition to ``SSLTK_DISABLE_PLUGINS``.
        extra: in-process plugins (name -> module or object with hookimpls), e.g. for a
            notebook or a test; they are registered after the entry points.

    Returns:
        One :class:`PluginInfo` per plugin seen, broken and disabled ones included.
    """
    skip = disabled_from_env() | set(disabled or ())
    infos = []
    for ep in _entry_points():
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=ep.dist.name if ep.dist is not None else None,
            version=ep.dist.version if ep.dist is not None else None,
        )
        infos.append(info)
        if ep.name in skip:
            info.status = "disabled"
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must never stop the others
            info.status, info.error = "broken", one_line(exc)
    for name, obj in (extra or {}).items():
        info = PluginInfo(name=name, module=getattr(obj, "__name__", repr(obj)))
        infos.append(info)
        if name in skip:
            info.status = "disabled"
            continue
        try:
            pm.register(obj, name=name)
        except Exception as exc:
            info.status, info.error = "broken", one_line(exc)
    _reject_unknown_hooks(pm, infos)
    for info in infos:
        plugin = pm.get_plugin(info.name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return infos


def _reject_unknown_hooks(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
    """Mark broken every plugin with a hookimpl that matches no hookspec (a misspelled hook)."""
    by_name = {info.name: info for info in infos}
    for _ in range(len(infos) + 1):
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            bad = pm.get_name(exc.plugin)
            by_name[bad].status, by_name[bad].error = "broken", one_line(exc)
            pm.unregister(name=bad)

