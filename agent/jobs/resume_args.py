"""How the checkpoint an attempt resumes from reaches the rank's command line. Pure.

The job spec's ``restart.resume_flag`` names the flag (default ``--resume_from_checkpoint``,
what Gantry's trainer and Hugging Face scripts take); ``FLAG=`` passes one ``FLAG=PATH``
word. The agent owns that flag: it replaces whatever the job's args say with the folder it
resolved, or, when there is nothing to resume from, drops an unresolvable ``latest`` (a
Hugging Face script would look for a folder called "latest"). Reading the flag is a rule of
the contract (`gantry.v1.rules`); this module holds the agent's rewriting.
"""

from __future__ import annotations

from collections.abc import Sequence

from gantry.v1 import job_pb2
from gantry.v1.rules import LATEST, args_resume, resume_flag

__all__ = ["with_resume"]


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
