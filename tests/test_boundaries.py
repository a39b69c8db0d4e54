"""console/ and agent/ never import each other; the agent never imports Textual;
the console never imports torch or pynvml."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(package: str) -> set[str]:
    roots: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("agent", {"console", "textual"}), ("console", {"agent", "torch", "pynvml"})],
)
def test_static_imports(package: str, forbidden: set[str]) -> None:
    assert imported_roots(package) & forbidden == set()


def all_modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__main__.py"
    )


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("agent", ["textual", "console"]), ("console", ["torch", "pynvml", "agent"])],
)
def test_runtime_imports(package: str, forbidden: list[str]) -> None:
    # Importing every module must not pull in the forbidden ones indirectly either.
    code = (
        "import importlib, sys\n"
        f"for m in {all_modules(package)!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {forbidden!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
