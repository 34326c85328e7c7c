"""The import structure the layout promises: no circles anywhere in engine/ and ui/ (imports inside functions
included, so a lazy import cannot hide one), engine/ never imports ui/ or gradio, and the dashboard's tabs do not
import each other (what they share lives in ui/common.py, ui/networks.py, ui/datasets.py, ...)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABS = {"ui.data_tab", "ui.train_tab", "ui.generate_tab", "ui.explore_tab", "ui.system_tab"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """{module: the engine/ui modules it imports anywhere in its text (top level or inside functions)}."""
    files = {_module_name(p): p for d in ("engine", "ui") for p in (ROOT / d).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in files and t != name and not name.startswith(t + "."):  # a package's own __init__ aside
                    deps.add(t)
        graph[name] = deps
    return graph


def circles(graph):
    """Every import circle as a path a -> ... -> a (each found once per starting module)."""
    found = []
    for start in sorted(graph):
        stack = [(start, (start,))]
        seen = set()
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph.get(node, ())):
                if dep == start:
                    found.append(" -> ".join(path + (dep,)))
                elif dep not in seen and dep not in path:
                    seen.add(dep)
                    stack.append((dep, path + (dep,)))
    return found


def test_no_import_circle_in_engine_or_ui():
    graph = import_graph()
    assert {"engine.checkpoint", "engine.export", "engine.ops.verify", "ui.generate_tab"} <= set(graph)
    assert circles(graph) == []


def test_the_circle_check_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a", "b -> c -> a -> b",
                                                                          "c -> a -> b -> c"]


def test_engine_imports_no_ui_and_tabs_import_no_tab():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("engine"):
            assert not [d for d in deps if d.startswith("ui")], name
        if name in TABS:
            assert not (deps & TABS), f"{name} imports {sorted(deps & TABS)}"
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] == "gradio"], path
