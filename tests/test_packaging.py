"""Every third-party module the relay imports comes from a dependency pyproject.toml declares.

A module that only arrives as a dependency of a dependency (h11 through Hypercorn, outcome
through trio) works until that dependency drops it or changes its range; declaring it pins
what the relay's own code relies on.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "triorelay"

pytestmark = pytest.mark.timeout(30)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"triorelay", "__future__"}


def test_every_imported_module_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _normalized(re.match(r"[A-Za-z0-9_.-]+", requirement)[0])  # type: ignore[index]
        for requirement in project["dependencies"]
    }
    providers = packages_distributions()
    imported = _imported_modules()
    assert {"hypercorn", "trio", "h11", "outcome"} <= imported  # the walk sees the imports
    undeclared = {
        module: providers.get(module)
        for module in sorted(imported)
        if not declared & {_normalized(d) for d in providers.get(module, [module])}
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
