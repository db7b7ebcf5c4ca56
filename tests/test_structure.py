"""The package's dependencies point one way: no two parts of src/rnnlm import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rnnlm"


def part(module: str) -> str:
    """``rnnlm.models.rnn`` -> ``models`` (a subpackage or a top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_edges() -> set[tuple[str, str]]:
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "rnnlm":  # from rnnlm import fastpaths
                names = [f"rnnlm.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnlm."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("rnnlm.")]
            else:
                continue
            edges.update((part(module), part(name)) for name in names if part(module) != part(name))
    return edges


def test_no_two_parts_of_the_package_import_each_other():
    edges = import_edges()
    assert ("models", "errors") in edges  # the walk sees imports at all
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(a for a in graph if reaches(a, a, set()))
    assert not cycles, f"import cycle through {cycles}"


def test_data_models_generation_point_one_way():
    edges = import_edges()
    assert ("models", "fastpaths") in edges and ("generation", "fastpaths") in edges
    assert not {("data", "models"), ("data", "generation"), ("evaluation", "models"), ("models", "generation")} & edges
    assert not {edge for edge in edges if edge[0] == "fastpaths"}  # torch only: below everything that uses it
