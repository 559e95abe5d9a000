"""The package's imports go downward only, in the order README "Layout" writes down, with no cycles and no
imports placed inside functions to hide one. Read from the source with `ast`, nothing is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# Lowest first: a module may import from its own layer and the layers before it, never after.
LAYERS = ("config", "progress", "data", "models", "scoring", "training", "detector", "export", "report", "tracking",
          "review", "inspection", "commands", "bench", "__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    if module in ("pipeline", "pipeline.__init__"):
        return -1
    return LAYERS.index(top)


def imports(path: Path) -> list[tuple[str, bool]]:
    """[(imported pipeline module, inside a function?)] of one file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("pipeline"):
                names = [f"{child.module}.{a.name}" for a in child.names]
                found.extend((n if (PACKAGE.parent / (n.replace(".", "/") + ".py")).exists()
                           or (PACKAGE.parent / n.replace(".", "/")).is_dir() else child.module, in_function)
                             for n in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names if a.name.startswith("pipeline"))
            visit(child, nested)

    visit(tree, False)
    return found


def graph() -> dict[str, list[tuple[str, bool]]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_subpackage_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert tops <= set(LAYERS), f"subpackages without a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_imports_go_downward_only():
    upward = [f"{m} -> {target}" for m, edges in graph().items() for target, _ in edges
              if layer_of(target) > layer_of(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


# Imports made inside a function on purpose, each for what it keeps out of a command that does not need it.
LAZY_IMPORTS = {
    # Lightning (and torch._dynamo under it): 2-5 s of every `score` and `inspect` process (PERFORMANCE.md)
    ("pipeline.detector.detector", "pipeline.detector.fitting"): "training only",
    ("pipeline.commands.score", "pipeline.detector.distributed"): "scoring with several processes only",
}


def test_no_imports_inside_functions():
    # The entry point imports lazily: `--help` and a mistyped key must answer before torch is imported.
    hidden = [f"{m} imports {target} inside a function" for m, edges in graph().items() for target, inside in edges
              if inside and m != "pipeline.__main__" and (m, target) not in LAZY_IMPORTS]
    assert not hidden, "\n".join(hidden)


def test_scoring_and_inspection_do_not_import_lightning():
    for command in ("score", "inspect"):
        code = f"import sys, pipeline.commands.{command}; print('pytorch_lightning' in sys.modules)"
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert loaded.strip() == "False", f"pipeline.commands.{command} imports Lightning"


def test_no_import_cycles():
    edges = defaultdict(set)
    modules = graph()
    for m, targets in modules.items():
        for target, _ in targets:
            if target in modules and target != m:
                edges[m].add(target)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := walk(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(modules):
        if start not in state and (cycle := walk(start, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):]))
