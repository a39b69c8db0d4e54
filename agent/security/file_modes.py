"""The agent's state is its user's alone: the journal (job env values, the audit trail),
job files, rank logs, task records. A umask set once at start makes every file the agent
and its ranks create 0600 and every folder 0700; `tighten_tree` takes group and other
access off what an older agent left behind."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("gantry.agent")

PRIVATE_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def set_private_umask() -> int:
    """From now on this process and its children create 0600 files and 0700 folders;
    returns the umask before."""
    return os.umask(PRIVATE_UMASK)


def _tighten(path: Path, info: os.stat_result, uid: int) -> bool:
    if info.st_uid != uid or not info.st_mode & _OPEN_BITS:
        return False
    try:
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~_OPEN_BITS, follow_symlinks=False)
    except OSError as exc:
        log.warning("cannot make %s private: %s", path, exc.strerror or exc)
        return False
    return True


def tighten_tree(root: Path) -> int:
    """Takes group and other bits off `root` and everything below it that this user owns
    (links are neither changed nor followed); returns how many were changed."""
    uid = os.geteuid()
    changed = 0
    try:
        info = root.lstat()
    except OSError:
        return 0
    if stat.S_ISLNK(info.st_mode):
        return 0
    changed += _tighten(root, info, uid)
    if not stat.S_ISDIR(info.st_mode):
        return changed
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(folder, name)
            try:
                entry = path.lstat()
            except OSError:
                continue  # gone meanwhile
            if not stat.S_ISLNK(entry.st_mode):
                changed += _tighten(path, entry, uid)
    return changed
