"""The package's floors: imports only go down, and methods/ and train/ never import each other."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "slimformer"
FLOORS = {
    "config": 0,
    "registry": 0,
    "errors": 0,
    "utils": 0,
    "hardware": 0,
    "data": 1,
    "models": 1,
    "tasks": 1,
    "methods": 2,
    "train": 2,
    "eval": 3,
    "export": 3,
    "reporting": 3,
    "optimize": 4,
    "serve": 4,
    "pipeline": 5,
    "bench": 5,
    "cli": 6,
    "api": 6,
}


def top(module: str) -> str:
    return module.split(".")[1] if module.startswith("slimformer.") else ""


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_go_down(path):
    rel = path.relative_to(SRC)
    if rel.name == "__init__.py" and len(rel.parts) == 1:
        return
    mine = rel.parts[0].removesuffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
        for name in names:
            other = top(name)
            if not other or other == mine:
                continue
            assert FLOORS[other] <= FLOORS[mine], f"{rel} (floor {FLOORS[mine]}) imports {name}"
            assert {mine, other} != {"methods", "train"}, f"{rel} imports {name}"
