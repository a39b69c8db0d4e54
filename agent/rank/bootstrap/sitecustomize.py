"""Gantry's start-up hook in a rank's Python (the agent puts this folder on the rank's
PYTHONPATH): loads ``agent/rank/hooks.py`` by path and installs it, then runs the
``sitecustomize`` this file shadows, if the interpreter has one of its own.

Nothing here may fail the script: any error is swallowed.
"""

import contextlib
import importlib.machinery
import importlib.util
import os
import sys


def _gantry() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(os.path.dirname(here), "hooks.py")
    spec = importlib.util.spec_from_file_location("_gantry_rank_hooks", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_gantry_rank_hooks"] = module
    spec.loader.exec_module(module)
    module.install()


def _chain() -> None:
    """The next ``sitecustomize`` on sys.path (a virtualenv's, the distribution's)."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


with contextlib.suppress(Exception):  # Gantry's hooks are best effort, never in the way
    _gantry()
with contextlib.suppress(Exception):
    _chain()
