"""The rooms' import contracts: statically with import-linter (the contracts are in
pyproject.toml's [tool.importlinter]: each room and what it must never import, indirect
imports included), and at run time for what a process must not load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_every_room_keeps_its_import_contract() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " BROKEN" not in result.stdout
    assert "0 broken" in result.stdout


def test_contracts_name_every_room() -> None:
    # A room added without a contract would be free to import anything.
    config = (ROOT / "pyproject.toml").read_text()
    rooms = [
        *(f"agent.{p.name}" for p in (ROOT / "agent").iterdir() if (p / "__init__.py").exists()),
        *(
            f"console.{p.name}"
            for p in (ROOT / "console").iterdir()
            if (p / "__init__.py").exists()
        ),
    ]
    for room in rooms:
        if room == "console.ui":
            room = "console.ui.widgets"
        if room == "console.ssh":
            continue  # the SSH bootstrap: net's peer, covered by net's and verbs' contracts
        assert f'"{room}"' in config, f"{room} has no import contract in pyproject.toml"


def all_modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__main__.py" and "bootstrap" not in p.parts
    )


def loaded_after_importing(modules: list[str], watched: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {watched!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    return list(eval(result.stdout.strip()))  # a printed list of names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("agent", ["textual", "console"]), ("console", ["torch", "pynvml", "agent"])],
)
def test_runtime_imports(package: str, forbidden: list[str]) -> None:
    # Importing every module must not pull in the forbidden ones indirectly either.
    assert loaded_after_importing(all_modules(package), forbidden) == []


def test_the_daemon_starts_without_ml_stacks() -> None:
    daemon = ["agent.main", "agent.runtime", *all_modules("agent/rpc"), *all_modules("agent/jobs")]
    daemon += all_modules("agent/telemetry")
    assert loaded_after_importing(daemon, ["torch", "transformers", "deepspeed"]) == []


def test_code_inside_a_rank_loads_no_service_code() -> None:
    rank = ["agent.report", "agent.hf_callback", "agent.rank.report", "agent.rank.hooks"]
    watched = ["grpc", "agent.rpc", "agent.jobs", "agent.telemetry", "agent.tasks", "agent.serve"]
    assert loaded_after_importing(rank, watched) == []
