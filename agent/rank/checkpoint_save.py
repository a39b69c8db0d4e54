"""How Gantry's trainer makes a checkpoint appear whole or not at all, and what it says when
a save fails. No torch import: the engine is passed in.

DeepSpeed's ``save_checkpoint`` writes the tag's files straight into ``DIR/TAG`` and rank 0
rewrites ``latest`` as soon as its own files are written, whether the other ranks' writes
succeed or not; a save cut short (a full disk) leaves a ``stepN`` folder that looks like a
checkpoint, and may leave ``latest`` naming it. So the trainer saves into ``stepN.saving``
without DeepSpeed's ``latest``; once every rank's files are written (the barrier that ends
``save_checkpoint``), each node's local rank 0 renames the folder to ``stepN`` and replaces
``latest`` by an atomic rename. A ``.saving`` folder is never a checkpoint
(``agent.jobs.checkpoints``), and the next save removes what a failed one left.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "SAVING_SUFFIX",
    "SaveFailed",
    "publish",
    "remove_unfinished",
    "save_atomically",
    "save_folder",
]

SAVING_SUFFIX = ".saving"
LATEST = "latest"
# Below this many free bytes after a failed write, the disk is taken as full: torch reports
# a short write as "unexpected pos", not as ENOSPC.
FULL_BELOW_BYTES = 1 << 20
# How long a node's rank waits for another node's to move a checkpoint into place.
PUBLISH_WAIT_S = 60.0
_PUBLISHING = ".publishing."
_REPLACED = ".replaced."


class SaveFailed(SystemExit):
    """A checkpoint was not saved: exits the rank with one ``gantry: ...`` line."""


def remove_unfinished(ckpt_dir: Path) -> list[Path]:
    """Removes what failed saves left in ``ckpt_dir`` (``*.saving`` folders, and folders a
    publish that died half-way had claimed or moved aside); returns them."""
    try:
        stale = [
            p
            for p in ckpt_dir.iterdir()
            if p.is_dir()
            and (p.name.endswith(SAVING_SUFFIX) or _PUBLISHING in p.name or _REPLACED in p.name)
        ]
    except OSError:
        return []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _unique(ckpt_dir: Path, tag: str, what: str) -> Path:
    # Host and pid: the nodes sharing ``ckpt_dir`` may run processes of the same pid.
    return ckpt_dir / f".{tag}{what}{socket.gethostname()}.{os.getpid()}"


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    """``latest`` names ``tag``, replaced by a rename: never empty, never half-written."""
    tmp = _unique(ckpt_dir, LATEST, ".tmp.")
    try:
        with open(tmp, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt_dir / LATEST)
    finally:
        tmp.unlink(missing_ok=True)


def publish(ckpt_dir: Path, tag: str, wait_s: float = PUBLISH_WAIT_S) -> None:
    """``tag.saving`` becomes ``tag`` (an older ``tag`` replaced), then ``latest`` names it.
    The local rank 0s of nodes sharing ``ckpt_dir`` all call it: the one whose rename
    claims ``tag.saving`` moves it into place, the others wait (up to ``wait_s``) until it
    is there before they write ``latest``. Checking first and renaming after lost the
    checkpoint: a second node moved the first one's fresh ``tag`` aside as the older one
    and deleted it (9 times in 300 simultaneous publishes)."""
    saving, final = ckpt_dir / (tag + SAVING_SUFFIX), ckpt_dir / tag
    claimed = _unique(ckpt_dir, tag, _PUBLISHING)
    try:
        saving.rename(claimed)
    except FileNotFoundError:  # another node's rank publishes it, or did
        deadline = time.monotonic() + wait_s
        while not final.is_dir():
            if time.monotonic() > deadline:
                raise SaveFailed(
                    f"gantry: checkpoint {tag} in {ckpt_dir} was not published by the node "
                    f"that claimed it within {wait_s:g}s"
                ) from None
            time.sleep(0.05)
    else:
        old = _unique(ckpt_dir, tag, _REPLACED)
        try:
            final.rename(old)
        except FileNotFoundError:
            old = Path()
        claimed.rename(final)
        if old != Path():
            shutil.rmtree(old, ignore_errors=True)
    _write_latest(ckpt_dir, tag)


def _no_space(exc: BaseException, ckpt_dir: Path) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return free_bytes(ckpt_dir) < FULL_BELOW_BYTES


def free_bytes(path: Path) -> int:
    """Bytes free on the file system of ``path`` (a large number when it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62


def failure_message(exc: BaseException, ckpt_dir: Path, tag: str) -> str:
    """The one line a rank exits with when the save of ``tag`` failed."""
    if _no_space(exc, ckpt_dir):
        return (
            f"gantry: checkpoint save failed: no space left on device in {ckpt_dir} "
            f"({tag} not saved; {free_bytes(ckpt_dir)} bytes free)"
        )
    return (
        f"gantry: checkpoint save failed in {ckpt_dir} ({tag} not saved): "
        + (f"{type(exc).__name__}: {exc}")[:500]
    )


def save_folder(ckpt_dir: Path, name: str, write: Callable[[Path], None]) -> None:
    """``write`` fills ``name.saving``, renamed to ``name`` when done (the tokenizer saved
    beside the checkpoints); a failure raises ``SaveFailed``."""
    # Each writer its own folder: the ranks of one data-parallel rank (tensor parallel)
    # save it at the same time, and the first rename wins.
    saving = ckpt_dir / f"{name}-{os.getpid()}{SAVING_SUFFIX}"
    try:
        write(saving)
        try:
            saving.rename(ckpt_dir / name)
        except OSError:
            if not (ckpt_dir / name).is_dir():
                raise
            shutil.rmtree(saving, ignore_errors=True)  # another rank's copy is in place
    except Exception as exc:
        shutil.rmtree(saving, ignore_errors=True)
        raise SaveFailed(failure_message(exc, ckpt_dir, name)) from exc


def save_atomically(
    engine: Any, ckpt_dir: Path, tag: str, client: dict[str, Any], local_rank: int
) -> None:
    """``engine.save_checkpoint`` into ``tag.saving``, published as ``tag`` once every rank
    wrote its part; a failure raises ``SaveFailed`` naming the directory and the cause."""
    if local_rank == 0:
        remove_unfinished(ckpt_dir)  # before save_checkpoint's first barrier
    try:
        engine.save_checkpoint(
            str(ckpt_dir), tag=tag + SAVING_SUFFIX, client_state=client, save_latest=False
        )
        if local_rank == 0:
            publish(ckpt_dir, tag)
    except Exception as exc:
        raise SaveFailed(failure_message(exc, ckpt_dir, tag)) from exc
