"""How the checkpoint an attempt resumes from reaches the rank's command line. Pure.

The job spec's ``restart.resume_flag`` names the flag (default ``--resume_from_checkpoint``,
what Gantry's trainer and Hugging Face scripts take); ``FLAG=`` passes one ``FLAG=PATH``
word. The agent owns that flag: it replaces whatever the job's args say with the folder it
resolved, or, when there is nothing to resume from, drops an unresolvable ``latest`` (a
Hugging Face script would look for a folder called "latest").
"""

from __future__ import annotations

from collections.abc import Sequence

from gantry.v1 import job_pb2

DEFAULT_FLAG = "--resume_from_checkpoint"
LATEST = "latest"


def resume_flag(spec: job_pb2.JobSpec) -> tuple[str, bool]:
    """(flag, joined): joined when the value goes in the same word (``FLAG=PATH``)."""
    flag = spec.restart.resume_flag or DEFAULT_FLAG
    if flag.endswith("="):
        return flag[:-1], True
    return flag, False


def args_resume(argv: Sequence[str], flag: str) -> str | None:
    """The value the command line gives ``flag`` (the last one wins, as with argparse)."""
    value: str | None = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def spec_args_resume(spec: job_pb2.JobSpec) -> str | None:
    """What the job's own command and args say to resume from, if anything."""
    flag, _ = resume_flag(spec)
    return args_resume([*spec.command, *spec.args], flag)


def with_resume(argv: Sequence[str], spec: job_pb2.JobSpec, resume_from: str) -> list[str]:
    """``argv`` resuming from ``resume_from``; with nothing to resume from, ``argv`` without
    a ``latest`` value (any other value the job gave is left as it is)."""
    flag, joined = resume_flag(spec)
    given = args_resume(argv, flag)
    if not resume_from and given != LATEST:
        return list(argv)
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag and i + 1 < len(argv):
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    if resume_from:
        out += [f"{flag}={resume_from}"] if joined else [flag, resume_from]
    return out
