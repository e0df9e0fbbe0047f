"""Every `from patchrank... import name` in the source tree resolves, the ones inside functions too (commands
import lazily, so a moved function breaks them only when they run: `patchrank demo` did once)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["model", "pipeline", "actors", "deploy", "patchrank", "scripts"]


def _absolute_imports():
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("patchrank"):
                    for alias in node.names:
                        yield path.relative_to(ROOT), node.module, alias.name


def test_every_patchrank_import_resolves():
    found, missing = 0, []
    for path, module, name in _absolute_imports():
        found += 1
        mod = importlib.import_module(module)
        if name == "*" or hasattr(mod, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")
        except ImportError:
            missing.append(f"{path}: from {module} import {name}")
    assert found > 100, found  # the walk found the tree's imports
    assert not missing, "\n".join(missing)
