"""What a node checks before it agrees to run a job's ranks, so that a bad job is
refused before anything starts (one line naming what to fix)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gantry.v1 import job_pb2
from gantry.v1.rules import LATEST, spec_args_resume

from agent.jobs.checkpoints import resolve_reference

MODULE_CHECK_TIMEOUT_S = 30.0


class LaunchCheckError(Exception):
    pass


def working_dir(spec: job_pb2.JobSpec) -> Path:
    return Path(spec.working_dir) if spec.working_dir else Path.cwd()


def _resolve_program(program: str, cwd: Path) -> str | None:
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    if program in ("python", "python3"):
        # Ranks run on the agent's own interpreter, the one Gantry is installed in.
        return sys.executable
    return shutil.which(program)


def resolve_argv(spec: job_pb2.JobSpec) -> list[str]:
    argv = list(spec.command) + list(spec.args)
    program = _resolve_program(argv[0], working_dir(spec))
    return [program or argv[0], *argv[1:]]


def _module_of(argv: list[str]) -> str | None:
    for flag, value in itertools.pairwise(argv[1:]):
        if flag == "-m":
            return value
    return None


def check_launch(spec: job_pb2.JobSpec, resume_from: str) -> None:
    cwd = working_dir(spec)
    if not cwd.is_dir():
        raise LaunchCheckError(f"working_dir {cwd} does not exist on this node")
    if not spec.command:
        raise LaunchCheckError("the job has no command")
    argv = list(spec.command) + list(spec.args)
    program = _resolve_program(argv[0], cwd)
    if program is None:
        raise LaunchCheckError(f"entry point {argv[0]!r} is not found or not executable")
    module = _module_of(argv)
    if module is not None:
        found = subprocess.run(
            [
                program,
                "-c",
                "import importlib.util, sys;"
                " sys.exit(importlib.util.find_spec(sys.argv[1]) is None)",
                module,
            ],
            cwd=cwd,
            capture_output=True,
            timeout=MODULE_CHECK_TIMEOUT_S,
        )
        if found.returncode != 0:
            raise LaunchCheckError(f"entry point module {module!r} is not importable by {program}")
    elif program.endswith(("python", "python3")) and len(argv) > 1 and argv[1].endswith(".py"):
        script = Path(argv[1]) if os.path.isabs(argv[1]) else cwd / argv[1]
        if not script.is_file():
            raise LaunchCheckError(f"entry point script {argv[1]} does not exist")
    # The leader resolves what an attempt resumes from (resume_from); what the args or the
    # policy name must exist too, as a folder or a checkpoint tag of checkpoint_dir.
    for resume in (resume_from, spec_args_resume(spec) or "", _policy_resume(spec)):
        if resume and resume != LATEST:
            path = Path(resume) if os.path.isabs(resume) else cwd / resume
            named = resolve_reference(resume, spec.checkpoint_dir, str(cwd))
            if not path.exists() and named is None:
                raise LaunchCheckError(f"checkpoint {resume} to resume from does not exist")


def _policy_resume(spec: job_pb2.JobSpec) -> str:
    return spec.restart.resume if spec.restart.resume not in ("", LATEST) else ""
