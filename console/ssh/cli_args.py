"""The arguments of `gantry up` and `gantry down` (kept apart from the implementation,
which imports asyncssh, so building `gantry`'s parser stays quick)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from console.ssh.defaults import CONNECT_TIMEOUT_S, DEFAULT_REMOTE_DIR, DEFAULT_STATE

SSH_VERBS = ("up", "down")


def add_ssh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="SSH user (default: ~/.ssh/config's User, else yours)")
    parser.add_argument(
        "--ssh-config",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="OpenSSH client config to read instead of ~/.ssh/config (repeatable)",
    )
    parser.add_argument(
        "--known-hosts", type=Path, metavar="FILE", help="default: ~/.ssh/known_hosts"
    )
    parser.add_argument(
        "-i",
        "--identity",
        action="append",
        type=Path,
        default=[],
        metavar="KEY",
        help="use only this private key (repeatable; default: ssh-agent and ~/.ssh keys)",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="SECONDS"
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=DEFAULT_STATE,
        metavar="FILE",
        help=f"the SSH cluster file (default {DEFAULT_STATE})",
    )


def add_ssh_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = verbs.add_parser("up", help="start an agent on every host of a hostfile, over SSH")
    up.add_argument("hostfile", type=Path, metavar="HOSTFILE", help="DeepSpeed form: HOST slots=N")
    add_ssh_options(up)
    up.add_argument(
        "--accept-new",
        action="store_true",
        help="accept and record unknown host keys (never a changed one)",
    )
    up.add_argument(
        "--remote-python",
        metavar="PATH",
        help=f"the nodes' Python environment (default: this one, {sys.executable})",
    )
    up.add_argument(
        "--remote-dir",
        default=DEFAULT_REMOTE_DIR,
        metavar="DIR",
        help=f"agents' data on the nodes, DIR/NODE (default {DEFAULT_REMOTE_DIR})",
    )
    up.add_argument("--wheel", type=Path, metavar="FILE", help="the Gantry wheel to install")
    up.add_argument(
        "--peer-ssh-config",
        action="append",
        default=[],
        metavar="FILE",
        help="on the nodes: the OpenSSH config a job's leader reaches the other agents with "
        "(repeatable; default: the agents' user's ~/.ssh/config)",
    )
    up.add_argument(
        "--no-warm-ops",
        action="store_true",
        help="the agents do not build DeepSpeed's ops as they start (the first ranks will)",
    )
    down = verbs.add_parser("down", help="stop the agents `gantry up` started")
    down.add_argument("hostfile", type=Path, nargs="?", metavar="HOSTFILE")
    add_ssh_options(down)
    ranks = down.add_mutually_exclusive_group()
    ranks.add_argument("--stop-ranks", action="store_true", help="stop running jobs, no question")
    ranks.add_argument("--keep-ranks", action="store_true", help="leave running jobs' ranks")
