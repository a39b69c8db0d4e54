"""A rank's end without the interpreter's finalization.

Finalization (a last garbage collection over torch's, DeepSpeed's and transformers'
objects, module teardown, then C++ static destructors) cost every rank of Gantry's trainer
1-8 s between its end record and its exit, time in which its job looked still running;
skipping only the collection (gc.freeze) let a C++ thread object outlive its owner and
abort the rank. `exit_after` runs the atexit handlers, flushes stdio and leaves with
os._exit, which runs neither.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def exit_code(exc: SystemExit) -> int:
    """The status Python gives a process that ends with `exc` (a message: printed, 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def exit_after(main: Callable[[], int]) -> NoReturn:
    """main(), then the process's end with its status. For a main that closes every file it
    writes before it returns or raises SystemExit (Terminated is one); any other exception
    ends the process as Python does, traceback and finalization included."""
    try:
        code = main()
    except SystemExit as exc:
        code = exit_code(exc)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to add
            stream.flush()
    os._exit(code)
