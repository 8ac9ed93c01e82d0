"""No two modules of the project import each other, directly or round a loop (imports anywhere in a file count,
those under ``TYPE_CHECKING`` and inside functions too): data flows one way, dataset -> runner -> store ->
tuner / dashboard / serve."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pilot", "tuner", "dashboard")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # pilot.pruning.attach -> pilot.pruning
                target = target.rpartition(".")[0]
            # A package's own __init__ re-exporting its submodules is not a loop through the package.
            if target and target != name and not name.startswith(f"{target}."):
                out.add(target)
    return out


def find_cycles() -> list[list[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert find_cycles() == []


def test_the_check_sees_a_cycle(tmp_path, monkeypatch):
    """The walker itself: two modules importing each other (one under TYPE_CHECKING) are a cycle."""
    package = tmp_path / "pilot"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pilot.b import B\n")
    (package / "b.py").write_text("from pilot.a import x\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGES"]), "PACKAGES", ("pilot",))
    assert find_cycles() == [["pilot.a", "pilot.b", "pilot.a"]]
