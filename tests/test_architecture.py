"""The import structure docs/architecture.md promises, checked on the source with ``ast``.

* the modules of ``ssltk/`` form layers (the table of docs/architecture.md, read here): a
  module imports only from its own layer or lower ones, and the import graph has no cycle;
* the core never imports a plugin, and plugins never import each other;
* a pretraining or finetuning run is constructed in one module only (the one path from a TOML
  to runs).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "ssltk"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package ``__init__``) for every module of ``ssltk/``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = modules()


def imported_names(name: str) -> set[str]:
    """Every name ``name`` imports, at module level or inside a function, made absolute."""
    path, is_package = MODULES[name]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            # ``from a import b`` imports module a.b when b is one, else (a name of) a
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                    for a in node.names}
    return out


def owner(name: str) -> str | None:
    """The ssltk module that ``name`` (a module, or a name inside one) resolves to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def edges() -> dict[str, set[str]]:
    """Module -> the ssltk modules it imports (not its own ancestors: a submodule importing
    a sibling through its package is not a cycle)."""
    graph = {}
    for name in MODULES:
        targets = {owner(t) for t in imported_names(name)} - {None, name}
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


GRAPH = edges()


def layers() -> dict[str, int]:
    """Module prefix -> layer number, from the table of docs/architecture.md."""
    table = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|[^|]*\|(.*)\|\s*$", line)
        if match:
            for prefix in re.findall(r"`([\w.]+)`", match.group(2)):
                table[prefix] = int(match.group(1))
    return table


LAYERS = layers()


def layer_of(name: str) -> int | None:
    """The layer of the longest prefix listed for ``name`` (the bare ``ssltk`` only for itself)."""
    prefixes = [p for p in LAYERS if name == p or (p != "ssltk" and name.startswith(p + "."))]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def test_the_doc_names_the_layers():
    assert {"ssltk.cli", "ssltk.bench", "ssltk.engine", "ssltk.config", "ssltk.interfaces",
            "ssltk.store", "ssltk"} <= set(LAYERS)
    assert len(set(LAYERS.values())) >= 5


def test_every_module_belongs_to_a_layer():
    unplaced = [name for name in MODULES if layer_of(name) is None]
    assert not unplaced, f"add these modules to the layer table of docs/architecture.md: {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in GRAPH.items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert not _cycles(GRAPH)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_imports_no_plugin():
    offenders = {name: sorted(n for n in _top_level_imports(path) if n.startswith("ssltk_"))
                 for name, (path, _) in MODULES.items()}
    assert not {k: v for k, v in offenders.items() if v}


PLUGINS = sorted(p for p in (ROOT / "plugins").rglob("ssltk_*") if (p / "__init__.py").exists())


@pytest.mark.parametrize("plugin", PLUGINS, ids=[p.name for p in PLUGINS])
def test_a_plugin_imports_no_other_plugin(plugin):
    others = {n for path in plugin.rglob("*.py") for n in _top_level_imports(path)
              if n.startswith("ssltk_") and n != plugin.name}
    assert not others, f"{plugin.name} imports {others}; move what they share into ssltk/"


def test_runs_are_constructed_in_one_module():
    """Grid, CLI and Python API build runs through ssltk.engine.runs, never field by field."""
    builders = {}
    for name, (path, _) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("PretrainRun", "FinetuneRun"):
                builders.setdefault(node.func.id, set()).add(name)
    assert builders == {"PretrainRun": {"ssltk.engine.runs"}, "FinetuneRun": {"ssltk.engine.runs"}}
