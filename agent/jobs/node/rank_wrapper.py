"""``python -m agent.jobs.node.rank_wrapper --exit-file F -- argv...``: runs one rank and
records its exit.

The agent starts this wrapper as a session leader; the rank is its child in the same process
group, so a signal to the group reaches both. When the agent is restarted the ranks are no
longer its children and their exit codes could not be collected: the wrapper writes the
rank's exit code (``-N`` for signal N) atomically to the exit file, then exits the same way.

Stdlib only, and imported by nothing else at run time: the agent runs it by file path with
``python -I -S`` so it starts fast whatever the rank's working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
from types import FrameType
from typing import NoReturn

# A Python handler, not SIG_IGN: an ignored disposition would be inherited by the rank
# across exec, while handlers are reset to the default there.
_WAIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT reach the rank through the group; the wrapper outlives it to record
    the exit. SIGUSR1 is for the rank's faulthandler."""


def write_exit_file(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{code}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(command: list[str]) -> int:
    try:
        child = subprocess.Popen(command)
    except OSError as e:
        print(f"gantry rank wrapper: cannot start {command[0]!r}: {e}", file=sys.stderr)
        return 126 if isinstance(e, PermissionError) else 127
    return child.wait()  # PEP 475: retried after our no-op handlers run


def exit_like(code: int) -> NoReturn:
    """Exit with ``code``, re-raising the signal when the rank died of one."""
    if code >= 0:
        sys.exit(code)
    sig = -code
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the rank dumped core, not us
    with contextlib.suppress(OSError, ValueError):
        signal.signal(sig, signal.SIG_DFL)  # SIGKILL cannot be handled: already default
    with contextlib.suppress(OSError):
        os.kill(os.getpid(), sig)
    sys.exit(128 + sig)  # the signal's default action does not terminate


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="agent.jobs.node.rank_wrapper")
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command after --")
    for sig in _WAIT_SIGNALS:
        signal.signal(sig, _ignore)
    code = run(command)
    write_exit_file(args.exit_file, code)
    exit_like(code)


if __name__ == "__main__":
    main()
