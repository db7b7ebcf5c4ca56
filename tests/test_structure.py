"""The package reads as the pipeline: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "rnnlm"
# Bottom to top. training and sampling are the two tasks: neither imports the other.
LAYERS = ["utils", "data", "fastpaths", "models", "generation", {"training", "sampling", "exporting"}, "report"]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in ([layer] if isinstance(layer, str) else layer)}
RANK["rnnlm"] = len(LAYERS)  # the package's __init__: the config resolvers, above every layer


def part(module: str) -> str:
    """``rnnlm.models.network`` -> ``models`` (a subpackage or a top-level module)."""
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


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__"}
    assert parts == set(RANK) - {"rnnlm"}, "place each new part of src/rnnlm in LAYERS"


def test_layers_import_only_the_layers_below_them():
    edges = import_edges()
    assert ("models", "utils") in edges and ("sampling", "generation") in edges  # the walk sees imports at all
    upward = sorted((a, b) for a, b in edges if RANK[b] >= RANK[a])
    assert not upward, f"imports that point up or sideways: {upward}"


def test_at_most_four_flat_modules_at_the_top():
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(flat) <= 4, flat


def test_the_benchmark_is_not_installed():
    assert not (PACKAGE / "bench").exists()
    assert (PACKAGE.parents[1] / "benchmarks" / "__main__.py").exists()
