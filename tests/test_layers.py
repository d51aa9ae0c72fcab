"""The layers' import direction: what deploys or measures points to what it needs, never back up.

components/ take typed args (no stack config, no load tester); stacks/ read config and may use planning/
but not bench/ (the load tester); planning/ (catalog, planner, recommend) imports none of them. Read from
the source (every import statement, at any depth), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "components": {"stacks", "bench", "local", "planning"},
    "stacks": {"bench", "local"},
    "planning": {"bench", "stacks", "components", "local", "pulumi"},
    "policy": {"bench", "local"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up_the_layers(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bench.cli import main\n    import stacks.config\n")
    assert imported_packages(module) == {"bench", "stacks"}
