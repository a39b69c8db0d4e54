"""The test bed's namespace plumbing: `ip` run as root, the processes in a namespace killed,
a bed's namespaces deleted, stale beds (their owner gone) found and removed, and the lock
two beds planned at once take."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.netbed import plan as p
from tests.sshd import SSHD

LOCK_FILE = Path("/tmp/gantry-netbed.lock")


class NetbedError(RuntimeError):
    """The bed could not be built; the message is one line."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetbedError("the network test bed needs root (ip netns, veth, tc): run as root")
    if not SSHD.exists():
        raise NetbedError(f"{SSHD} is missing: apt-get install openssh-server")


def ip(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetbedError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_pids(ns: str) -> list[int]:
    done = ip(["ip", "netns", "pids", ns], check=False)
    return [int(w) for w in done.stdout.split() if w.isdigit()]


def kill_namespace(ns: str) -> None:
    """SIGKILL to every process in `ns` until none is left (a rank may be forking)."""
    for _ in range(50):
        pids = netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def delete_bed(plan_or_names: p.BedPlan | list[str], link: str | None = None) -> None:
    names = plan_or_names.namespaces if isinstance(plan_or_names, p.BedPlan) else plan_or_names
    if isinstance(plan_or_names, p.BedPlan):
        link = plan_or_names.console_link
    for ns in names:
        kill_namespace(ns)
    for ns in names:
        ip(["ip", "netns", "del", ns], check=False)
    if link:
        ip(["ip", "link", "del", link], check=False)


def clean_stale() -> list[str]:
    """Removes the beds of processes that are gone; returns what it removed."""
    alive = set(psutil.pids())
    listed = ip(["ip", "netns", "list"], check=False).stdout
    namespaces = p.stale_namespaces(listed, alive)
    links_text = ip(["ip", "-o", "link", "show"], check=False).stdout
    names = [line.split(": ")[1] for line in links_text.splitlines() if ": " in line]
    links = p.stale_links(names, alive)
    delete_bed(namespaces)
    for link in links:
        ip(["ip", "link", "del", link], check=False)
    return [*namespaces, *links]


@contextlib.contextmanager
def bed_lock() -> Iterator[None]:
    """Two beds planned at once would pick the same subnet."""
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
