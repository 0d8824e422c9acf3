"""The package's layering: no import cycle between its parts, function-local imports included.

A part is a subpackage of blockwise (training, evaluation, ...) or a top-level module
(build.py, stack.py, jsonable.py, ...). Every `import` statement of every module is read with
`ast`, wherever it stands, so a cycle cannot hide in a function-local import: it fails here.
The package root (blockwise/__init__.py, __main__.py) is the facade over all parts and is
loaded before any of them, so an import of it is no edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "blockwise"
FACADE = {"__init__.py", "__main__.py"}


def part_of(module: str) -> str | None:
    """The part a dotted module name under blockwise belongs to; None for the root itself
    or a module outside the package."""
    names = module.split(".")
    if names[0] != "blockwise" or len(names) == 1:
        return None
    return names[1]


def imported(tree: ast.AST, package: str) -> set[str]:
    """Dotted names of the blockwise modules a parsed module imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            if base == "blockwise":  # `from blockwise import problems`: the part named
                found |= {f"blockwise.{alias.name}" for alias in node.names}
    return found


def part_graph() -> dict[str, set[str]]:
    """part -> the other parts its modules import."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent)
        if relative.parent == Path("blockwise") and path.name in FACADE:
            continue
        package = ".".join(relative.parent.parts)
        part = part_of(".".join(relative.with_suffix("").parts))
        edges = graph.setdefault(part, set())
        for module in imported(ast.parse(path.read_text(), str(path)), package):
            other = part_of(module)
            if other is not None and other != part:
                edges.add(other)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [node])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_the_reader_sees_every_kind_of_import():
    tree = ast.parse(
        "import blockwise.stack\n"
        "from blockwise import problems, teachers\n"
        "def f():\n    from blockwise.training.pairs import Pairs\n"
        "from .metrics import quantiles\n"
    )
    found = imported(tree, "blockwise.evaluation")
    assert {part_of(m) for m in found} - {None} == {"stack", "problems", "teachers", "training",
                                                     "evaluation"}


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_parts_of_the_package_import_each_other_without_a_cycle():
    graph = part_graph()
    assert {"training", "evaluation", "plots", "build"} <= set(graph)  # the walk saw them
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between parts of blockwise: " + " -> ".join(cycle)


@pytest.mark.parametrize("part, other", [
    ("evaluation", "training"),  # the factories a recipe needs live in build.py
    ("training", "evaluation"),  # the normalized error lives in errors.py
    ("plots", "training"),
])
def test_measuring_and_drawing_stay_apart_from_training(part, other):
    assert other not in part_graph()[part]
