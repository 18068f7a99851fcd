"""The package's shape: no module imports itself back (even lazily), and the CLI stays thin."""

from __future__ import annotations

import ast
from pathlib import Path

import ipguard.cli

SRC = Path(ipguard.cli.__file__).resolve().parents[1]
MAX_COMMAND_BODY = 60


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(("ipguard", *parts)).removesuffix(".__init__")


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the ipguard modules it imports anywhere in its code (function bodies too)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # the package's own __init__ (a re-export hub) and parents of a module are not edges
            deps |= {t for t in targets if t in files and t != "ipguard" and t != name
                     and not name.startswith(t + ".")}  # fmt: skip
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep == start:
                found.append([*path, dep])
            elif dep > start and dep not in path:
                walk(start, dep, [*path, dep])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    assert "ipguard.models.statedict" in graph["ipguard.models.nets"]  # the graph sees real imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from ipguard.b import g\n")
    (tmp_path / "b.py").write_text("from ipguard.a import f\n")
    (tmp_path / "c.py").write_text("import ipguard.a\n")
    assert cycles(import_graph(tmp_path)) == [["ipguard.a", "ipguard.b", "ipguard.a"]]


def command_bodies() -> dict[str, int]:
    """Lines of each CLI command's body, its signature and docstring aside."""
    tree = ast.parse(Path(ipguard.cli.__file__).read_text())
    sizes = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
            for d in node.decorator_list
        ):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            sizes[node.name] = (body[-1].end_lineno or 0) - body[0].lineno + 1
    return sizes


def test_every_command_is_thin() -> None:
    sizes = command_bodies()
    registered = {c.callback.__name__ for c in ipguard.cli.app.registered_commands if c.callback}
    assert set(sizes) == registered and len(sizes) >= 10
    assert {name: n for name, n in sizes.items() if n > MAX_COMMAND_BODY} == {}


MAX_FUNCTION = 80  # lines, signature and docstring included


def long_functions(root: Path) -> dict[str, int]:
    """Functions under ``root`` longer than :data:`MAX_FUNCTION` lines."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or 0) - node.lineno + 1
                if lines > MAX_FUNCTION:
                    found[f"{path.relative_to(root)}:{node.name}"] = lines
    return found


def test_no_function_is_over_80_lines(tmp_path: Path) -> None:
    assert long_functions(Path(ipguard.__file__).parent) == {}
    # two-sided: a long function is found
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION)
    assert long_functions(tmp_path) == {"m.py:f": MAX_FUNCTION + 1}
