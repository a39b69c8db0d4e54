"""The committed generated code is what `make protos` would write, and imports cleanly."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
GENERATED = PROTO_DIR / "gantry" / "v1"


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in GENERATED.glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ],
        check=True,
        cwd=PROTO_DIR,
    )


def test_generated_code_is_current(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = sorted(p.name for p in (tmp_path / "gantry" / "v1").iterdir())
    committed = sorted(
        p.name
        for p in GENERATED.iterdir()
        if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    )
    assert fresh == committed, "generated files differ in name: run `make protos`"
    stale = [
        name
        for name in fresh
        if not filecmp.cmp(tmp_path / "gantry" / "v1" / name, GENERATED / name, shallow=False)
    ]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_stale_check_notices_an_edit(tmp_path: Path) -> None:
    generate(tmp_path)
    edited = tmp_path / "gantry" / "v1" / "telemetry_pb2.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    assert not filecmp.cmp(edited, GENERATED / "telemetry_pb2.py", shallow=False)


@pytest.mark.parametrize(
    "module",
    ["gantry.v1.agent_service_pb2_grpc", "gantry.v1.inference_service_pb2_grpc"],
)
def test_generated_modules_import_from_the_installed_package(module: str, tmp_path: Path) -> None:
    # From an unrelated directory, so nothing resolves through the source tree's cwd.
    result = subprocess.run(
        [sys.executable, "-c", f"import {module} as m; print(m.__name__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == module


def test_enums_follow_buf_style() -> None:
    from gantry.v1 import job_pb2, task_pb2

    for enum in (job_pb2.JobState, job_pb2.RankState, job_pb2.JobEventKind, task_pb2.TaskState):
        assert enum.Name(0).endswith("_UNSPECIFIED")
