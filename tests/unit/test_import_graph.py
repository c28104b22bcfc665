"""The import graph of reconciler/: no cycle, and every arrow points down the layers.

CLI -> core -> store, with the dispatcher beside the core: the CLI may import
anything; the dispatcher anything but the CLI; the core and the store neither of
them (docs/architecture.md). Every import counts, those inside functions and
under TYPE_CHECKING too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import reconciler

PACKAGE = Path(reconciler.__file__).resolve().parent
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(path: Path, name: str, modules: dict[str, Path]) -> Iterator[str]:
    """The reconciler modules `path` (module `name`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` names a module; `from module import name`
            # the module itself.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target in modules:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {t for t in _imported(path, name, modules) if t != name}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return None


def _layer(module: str) -> str:
    if module == "reconciler.__main__":  # `python -m reconciler`: the CLI's entry point
        return "reconciler.cli"
    for layer in ("reconciler.cli", "reconciler.dispatch"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return "core"  # the core, the store below it, and the package's __init__


# Which layers each layer may import: arrows point down, the dispatcher beside the core.
ALLOWED = {
    "reconciler.cli": {"reconciler.cli", "reconciler.dispatch", "core"},
    "reconciler.dispatch": {"reconciler.dispatch", "core"},
    "core": {"core"},
}


def test_the_graph_is_read() -> None:
    graph = import_graph()
    # A few arrows known to exist, so that a walk that finds nothing fails here.
    assert "reconciler.cli.group" in graph["reconciler.cli"]
    assert "reconciler.store" in graph["reconciler.cli.state"]
    assert "reconciler.events" in graph["reconciler.dispatch.app"]
    assert "reconciler.store.base" in graph["reconciler.store.sqlite"]


def test_no_import_cycle_inside_reconciler() -> None:
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_import_points_down_the_layers() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) not in ALLOWED[_layer(module)]
    )
    assert upward == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
