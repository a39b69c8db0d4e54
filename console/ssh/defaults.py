"""Defaults shared by the SSH verbs' arguments and their implementation (no imports, so
`gantry`'s argument parser stays quick)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_STATE = Path(".gantry/ssh/cluster.yaml")  # the SSH cluster file
DEFAULT_REMOTE_DIR = "~/.gantry/agents"  # agents' data on the nodes: DIR/NODE
CONNECT_TIMEOUT_S = 10.0
