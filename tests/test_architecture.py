"""The layout's rules, checked: tests, benchmarks and load tests use only public names.

Which layer may import which is import-linter's job (`.importlinter`, run by `make test`).
What it cannot see: a test or benchmark reaching into a private member (`_name`) of the
project, which ties it to internals a refactor may change. This test parses every file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("export", "triton_embeddings")
USERS = sorted(p for folder in ("tests", "benchmarks", "locustfiles") for p in (ROOT / folder).glob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _ours(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in PROJECT


def private_uses(source: str) -> list[str]:
    """`from project import _x`, `import project._x`, `module._x` and `setattr(module, "_x")`
    where `module` is bound by an import of the project."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to project modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _ours(node.module):
            for alias in node.names:
                if _private(alias.name) or any(_private(part) for part in node.module.split(".")):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            if node.value.id in modules:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Name):
            name = node.args[1]
            if node.args[0].id in modules and isinstance(name, ast.Constant) and _private(str(name.value)):
                found.append(f"line {node.lineno}: {node.args[0].id}.{name.value} (by name)")
    return found


@pytest.mark.parametrize("path", USERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_uses_only_public_names(path: Path) -> None:
    assert private_uses(path.read_text(encoding="utf-8")) == []


def test_the_check_sees_private_uses() -> None:
    source = (
        "from export.clip.model import _tokenizer_settings\n"
        "from export.repository import layout\n"
        "layout._exchange\n"
        "monkeypatch.setattr(layout, '_exchange', None)\n"
    )
    assert len(private_uses(source)) == 3
