"""The layout holds: imports run one way between the layers, and nothing loops.

Read from the source (``ast``), not from ``sys.modules``: every import counts,
those under ``if TYPE_CHECKING:`` and inside functions included, since each is a
dependency a reader has to follow. The layers, top to bottom, are the packages'
docstrings' "May import" lines, kept here as one table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import flux_async

ROOT = Path(flux_async.__file__).parent

# Each module's layer: the longest prefix of its dotted name that is listed.
LAYER_OF = {
    "flux_async": "facade",  # __init__: the public re-exports
    "flux_async.sync": "facade",
    "flux_async.web": "facade",
    "flux_async.asgi": "facade",
    # OpenTelemetry's side of the engine's telemetry seam (extra "otel"): public, like
    # the receivers, and imported only by a user who turns it on.
    "flux_async.otel": "facade",
    "flux_async._client": "facade",
    "flux_async.__main__": "cli",
    "flux_async.cli": "cli",
    "flux_async.redis": "redis",
    "flux_async.testing": "testing",
    "flux_async._engine": "engine",
    "flux_async._edge": "edge",
    "flux_async._core": "core",
}

# Which layers each layer may import (besides itself).
MAY_IMPORT = {
    "cli": {"facade", "core", "testing"},
    "facade": {"engine", "edge", "core"},
    # The fleet's coordinator implements the engine's seams.
    "redis": {"engine", "core"},
    "engine": {"edge", "core"},
    "edge": {"core"},
    "core": set(),
    # The local server is the protocol's other side, written apart from the
    # client on purpose: sharing the client's reading of the protocol would make
    # the tests agree with themselves.
    "testing": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> str:
    best = max((prefix for prefix in LAYER_OF
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYER_OF[best]


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The flux_async modules ``module`` imports (``from x import name`` may name a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names
                       if f"{source}.{alias.name}" in known] or [source]
        else:
            continue
        for target in targets:
            if target in known and target != module:
                yield target


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports_of(name, path, known)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer() -> None:
    for name in modules():
        assert layer(name) in MAY_IMPORT


def test_no_import_cycle_inside_flux_async() -> None:
    assert cycles(graph()) == []


def test_imports_run_down_the_layers_only() -> None:
    wrong = sorted(
        f"{source} ({layer(source)}) imports {target} ({layer(target)})"
        for source, targets in graph().items()
        for target in targets
        if layer(target) != layer(source) and layer(target) not in MAY_IMPORT[layer(source)]
    )
    assert wrong == []


def test_the_checks_catch_what_they_look_for() -> None:
    # A loop and an upward import, made up: the same functions must report them.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("flux_async._core.models") == "core"
    assert layer("flux_async._client.client") == "facade"
    assert "engine" not in MAY_IMPORT["core"]


def test_the_top_of_the_tree_is_short_and_each_package_says_what_it_may_import() -> None:
    entries = [p.name for p in ROOT.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 14, sorted(entries)
    for package in [p for p in ROOT.iterdir() if (p / "__init__.py").is_file()]:
        docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert docstring, f"{package.name}/__init__.py has no docstring"
        if package.name.startswith("_"):
            assert "May import" in docstring, package.name
