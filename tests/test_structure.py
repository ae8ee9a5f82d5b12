"""The package's structure: no import cycles between its modules, and one home per concern.

The import graph is read statically (every ``import`` and ``from ... import`` statement in every
module, function-level imports included, since a lazy import is still a dependency): an edge
a -> b when module a imports module b of the package. A cycle means two modules that cannot be
understood, tested or changed apart.
"""

from __future__ import annotations

import ast
import pathlib

import scoresde

ROOT = pathlib.Path(scoresde.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(current: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def _imports(mod: str, path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_pkg, node.level, node.module) if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for t in targets:
            while t and t not in MODULES:  # "scoresde.x.y" where y is a name in module x
                t = t.rpartition(".")[0]
            if t and t != mod and t.startswith("scoresde"):
                out.add(t)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        color[u] = GREY
        stack.append(u)
        for v in sorted(graph[u]):
            if color[v] == GREY:
                return stack[stack.index(v):] + [v]
            if color[v] == WHITE and (found := visit(v)):
                return found
        stack.pop()
        color[u] = BLACK
        return None

    for u in sorted(graph):
        if color[u] == WHITE and (found := visit(u)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    # Edges to a package's own __init__ from its submodules ("import scoresde" in a command) are
    # imports of the public API, which imports no command: they are kept, and still no cycle.
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    assert sum(len(v) for v in graph.values()) > 50  # the graph was really read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_every_registry_is_one_instance_of_the_registry_pattern():
    from scoresde.metrics import METRICS
    from scoresde.registry import Registry
    from scoresde.samplers import SAMPLERS
    from scoresde.sde import SDES

    for reg in (SAMPLERS, SDES, METRICS):
        assert isinstance(reg, Registry)


def test_the_docs_sampler_table_is_the_registry_table():
    # docs/samplers.md shows overview_table() between markers; regenerate it when a trait changes:
    # python -c "import scoresde; print(scoresde.samplers.registry.overview_table())"
    text = (ROOT.parent / "docs" / "samplers.md").read_text()
    start, end = "<!-- registry-table:start -->\n", "\n<!-- registry-table:end -->"
    shown = text[text.index(start) + len(start):text.index(end)]
    assert shown == scoresde.samplers.registry.overview_table()
