"""``python agent/rank/standby_runner.py --socket NAME --idle-s S [--import MOD ...]``: a
rank's next attempt, already started.

Starting a rank costs its Python several seconds of imports (torch, DeepSpeed, transformers:
about 5 CPU-s each on a 2-core machine) before it does anything for the job. After a rank
reaches its first step, the agent starts this standby under the usual rank wrapper, with the
job's environment: it imports what the last attempt imported, then waits on an abstract
Unix socket. A new attempt hands it the rank's command line, environment, working directory
and log files as one JSON message; it becomes that rank (``runpy``, as ``python -m MOD`` or
``python SCRIPT`` would run it) and exits with its status. With no message for ``--idle-s``
it exits 0. Only a plain ``python [-u] -m MOD ...`` or ``python [-u] SCRIPT ...`` is handed
over; anything else starts cold.

Standard library only; loaded by path (nothing of Gantry's on the script's ``sys.path``).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import runpy
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

MAX_MESSAGE_BYTES = 4 << 20


def _import_all(names: list[str]) -> int:
    """Imports what the last attempt imported; a module that fails is skipped."""
    count = 0
    for name in names:
        try:
            importlib.import_module(name)
            count += 1
        except Exception:  # whatever a module raises as it loads: the rank will see it
            continue
    return count


def _listen(name: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)  # abstract: no path length limit, gone with the process
    server.listen(1)
    return server


class Receiver(threading.Thread):
    """Accepts the hand-off while the main thread imports, and answers it at once, so the
    agent knows within milliseconds whether this standby took the rank."""

    def __init__(self, server: socket.socket, idle_s: float) -> None:
        super().__init__(name="gantry-standby", daemon=True)
        self.server = server
        self.idle_s = idle_s
        self.message: dict[str, Any] | None = None

    def run(self) -> None:
        self.server.settimeout(self.idle_s)
        try:
            conn, _ = self.server.accept()
        except OSError:  # the idle time is over: from now on a caller is refused
            self.server.close()
            return
        self.server.close()
        with conn:
            conn.settimeout(10.0)
            data = b""
            with contextlib.suppress(OSError):
                while len(data) < MAX_MESSAGE_BYTES:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            try:
                message = json.loads(data)
            except ValueError:
                return
            if isinstance(message, dict):
                with contextlib.suppress(OSError):
                    conn.sendall(b"ok")
                    self.message = message


def _redirect(stdout: str, stderr: str) -> None:
    """The rank's own log files on fds 1 and 2, as the wrapper would have given them."""
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # private logs
        os.dup2(target, fd)
        os.close(target)


def _install_hooks() -> None:
    """Gantry's rank hooks, now that the environment names the rank's metrics file (loaded
    as bootstrap/sitecustomize.py loads them: both run by path, neither can import)."""
    path = Path(__file__).with_name("hooks.py")
    spec = importlib.util.spec_from_file_location("_gantry_rank_hooks", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_gantry_rank_hooks"] = module
    spec.loader.exec_module(module)
    module.install()


def become(message: dict[str, Any]) -> NoReturn:
    """Runs the rank: environment, directory, logs, hooks, then its module or script, in
    this process's own ``__main__`` namespace as ``python -m MOD`` / ``python SCRIPT`` do.

    Not with ``runpy.run_path``/``run_module``: their namespace is torn down as they return,
    before the interpreter's exit, so a script's process group and threads were destroyed
    in another order than in a cold rank (one aborted in C++ at exit). Exits with the
    script's status; returns never."""
    argv = [str(a) for a in message["argv"]]
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in message["env"].items()})
    os.chdir(message["cwd"])
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _redirect(message["stdout"], message["stderr"])
    with contextlib.suppress(Exception):
        _install_hooks()
    rest = argv[1:]
    if rest and rest[0] == "-u":
        rest = rest[1:]
    # Everything the rank needs is taken into locals first: this module's globals are the
    # namespace the rank's code gets, and they are cleared for it.
    namespace = sys.modules["__main__"].__dict__
    exit_now, run_module, builtins_module = sys.exit, runpy._run_module_as_main, builtins  # type: ignore[attr-defined]
    if rest[0] == "-m":
        module = rest[1]
        sys.argv = [module, *rest[2:]]
        sys.path[0] = os.getcwd()

        def run() -> None:
            run_module(module, alter_argv=True)  # what `python -m` itself calls

    else:
        script = os.path.abspath(rest[0])
        sys.argv = [rest[0], *rest[1:]]
        sys.path[0] = os.path.dirname(script)
        with open(script, "rb") as source:
            code = compile(source.read(), script, "exec")
        loader = importlib.machinery.SourceFileLoader("__main__", script)

        def run() -> None:
            namespace.update(
                __name__="__main__",
                __file__=script,
                __doc__=None,
                __package__=None,
                __spec__=None,
                __cached__=None,
                __loader__=loader,
            )
            exec(code, namespace)

    # Everything the rank needs was taken into locals above: this module's globals are the
    # namespace the rank's code gets, cleared for it.
    namespace.clear()
    namespace["__builtins__"] = builtins_module
    run()
    exit_now(0)


def main() -> int:
    parser = argparse.ArgumentParser(prog="rank_standby")
    parser.add_argument("--socket", required=True, help="abstract Unix socket name")
    parser.add_argument("--idle-s", type=float, required=True)
    parser.add_argument("--imports-file", help="a JSON list of module names to import")
    parser.add_argument("--path0", required=True, help="sys.path[0] as the rank will have it")
    args = parser.parse_args()
    sys.path[0] = args.path0  # not this file's folder: Gantry's modules must not shadow any
    receiver = Receiver(_listen(args.socket), args.idle_s)
    receiver.start()
    names: list[str] = []
    if args.imports_file:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(Path(args.imports_file).read_text())
            names = [str(n) for n in loaded] if isinstance(loaded, list) else []
    started = time.monotonic()
    count = _import_all(names)
    # In the standby's own log: when it is ready to take a rank without waiting.
    print(
        f"gantry standby: ready, {count} modules imported in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    receiver.join()
    message = receiver.message
    if message is None:
        return 0
    become(message)


if __name__ == "__main__":
    sys.exit(main())
