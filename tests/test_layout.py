"""The import structure the layout promises: no circles among the ops modules."""

import ast
from pathlib import Path

OPS = Path(__file__).resolve().parents[1] / "engine" / "ops"


def _ops_imports():
    """{module: engine.ops modules it imports anywhere in its text (top level or inside functions)}."""
    graph = {}
    for path in OPS.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine.ops"):
                if node.module == "engine.ops":
                    deps.update(alias.name for alias in node.names)
                else:
                    deps.add(node.module.split(".")[2])
        graph[path.stem] = deps
    return graph


def test_ops_modules_import_no_circle():
    graph = _ops_imports()
    assert {"dispatch", "fused", "upfirdn2d", "reference"} <= set(graph)
    for start in graph:
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                assert dep != start, f"import circle: {' -> '.join(path + (dep,))}"
                if dep not in path:
                    stack.append((dep, path + (dep,)))
