"""The package's layering, read from the source (every import, lazy ones and all, except those
under ``if TYPE_CHECKING:``):

* no import cycle between tunnelpy's modules;
* ``protocol/`` (the sans-I/O core) imports only ``protocol/`` and standard modules that do no
  I/O — no asyncio, socket, os, time, subprocess, threading, select;
* ``io/`` imports only ``io/`` (sockets, devices and knobs know nothing of the protocol);
* only ``cli`` starts the daemon: nothing imports ``tunnelpy.daemon`` but it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tunnelpy"
IO_MODULES = {"asyncio", "socket", "os", "time", "subprocess", "threading", "select", "signal"}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (modules, or package.attribute)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    internal: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for imp in _imports(name, path):
            if imp in mods and imp != name:
                internal[name].add(imp)
            elif not imp.startswith("tunnelpy"):
                external[name].add(imp.split(".")[0])
    return internal, external


def test_no_import_cycles():
    graph, _ = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for mod in sorted(_modules()):
        if mod not in state:
            visit(mod, [])
    assert cycles == []


def test_protocol_is_sans_io():
    graph, external = _graph()
    for mod in _modules():
        if mod.startswith("tunnelpy.protocol"):
            assert {m for m in graph[mod] if not m.startswith("tunnelpy.protocol")} == set(), mod
            assert external[mod] & IO_MODULES == set(), mod


def test_io_imports_only_io():
    graph, _ = _graph()
    for mod in _modules():
        if mod.startswith("tunnelpy.io"):
            assert {m for m in graph[mod] if not m.startswith("tunnelpy.io")} == set(), mod


def test_only_the_cli_imports_the_daemon():
    graph, _ = _graph()
    assert {m for m, deps in graph.items() if "tunnelpy.daemon" in deps} <= {"tunnelpy.cli"}
