"""DeepSpeed's just-in-time ops, built once per agent so that no attempt compiles.

On the CPU accelerator every rank's ``deepspeed.init_distributed`` loads a shared-memory op
that g++ compiles the first time (40-107 s measured on 2 cores, once 139 s from a kill to
the next step), into ``$TORCH_EXTENSIONS_DIR``. Ranks of different virtualenvs sharing
``~/.cache/torch_extensions`` rebuild it for each other. So each agent gives its ranks an
extensions folder of its own (``DATA_DIR/torch_extensions`` unless told otherwise) and, as
it starts, builds the ops there in a child process (the agent itself never imports torch).
A stamp file records which DeepSpeed, torch and Python built them, so later starts cost a
file read; ranks started while the build runs wait on torch's own build lock.

That lock is a file torch's builder deletes when it is done; a builder killed mid-build
leaves it, and every later rank then waits for it forever. So the build runs in a session of
its own and is never killed (an agent that stops leaves it to finish), and a lock older than
``STALE_LOCK_S`` is taken for such a leftover and removed before building.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

log = logging.getLogger("gantry.agent")

ENV = "TORCH_EXTENSIONS_DIR"
DIR_NAME = "torch_extensions"
STAMP = "gantry-ops.json"
BUILD_LOG = "gantry-ops.log"
WARM_TIMEOUT_S = 900.0
STALE_LOCK_S = 900.0  # no build of these ops takes this long; its lock is a leftover
SWITCH_ENV = "GANTRY_WARM_OPS"  # "0": no build at start (like --no-warm-ops)
# What every rank on the CPU accelerator builds in init_distributed (deepspeed.comm.torch).
WARM_CODE = """
import sys
from deepspeed.accelerator import get_accelerator
from deepspeed.comm.torch import build_shm_op
build_shm_op()
for name in sys.argv[1:]:
    builder = get_accelerator().create_op_builder(name)
    if builder is None:
        raise SystemExit(f"no DeepSpeed op builder {name!r} for this accelerator")
    builder.load()
print("gantry: DeepSpeed ops built for", get_accelerator().device_name())
"""


def extensions_dir(data_dir: Path, flag: Path | None, environ: Mapping[str, str]) -> Path:
    """``--torch-extensions-dir``, else the agent's own ``$TORCH_EXTENSIONS_DIR``, else a
    folder under its data dir."""
    if flag is not None:
        return flag.expanduser().resolve()
    if environ.get(ENV):
        return Path(environ[ENV]).expanduser().resolve()
    return (data_dir / DIR_NAME).resolve()


def _versions(python: str, ops: tuple[str, ...]) -> dict[str, object]:
    found: dict[str, object] = {"python": python, "ops": list(ops)}
    for package in ("deepspeed", "torch"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def is_warm(folder: Path, python: str = sys.executable, ops: tuple[str, ...] = ()) -> bool:
    """Whether this Python's DeepSpeed and torch already built the ops into ``folder``."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return bool(stamp == _versions(python, ops))


def remove_stale_locks(folder: Path, now: float, max_age_s: float = STALE_LOCK_S) -> list[Path]:
    """torch's build locks in ``folder`` older than ``max_age_s``: removed, and returned."""
    removed = []
    for lock in folder.glob("*/lock"):
        try:
            if now - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
        except OSError:
            continue
    return removed


async def warm_ops(
    folder: Path,
    env: Mapping[str, str],
    python: str = sys.executable,
    ops: tuple[str, ...] = (),
) -> bool:
    """Builds the ops into ``folder`` unless already done; True when they are there."""
    if is_warm(folder, python, ops):
        return True
    folder.mkdir(parents=True, exist_ok=True)
    for lock in remove_stale_locks(folder, time.time()):
        log.warning("removed %s: a build killed long ago left it, and ranks would wait on it", lock)
    # Output to a file, not a pipe: the build outlives an agent that stops.
    with open(folder / BUILD_LOG, "ab") as output:
        process = await asyncio.create_subprocess_exec(
            python,
            "-c",
            WARM_CODE,
            *ops,
            env={**env, ENV: str(folder)},
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a signal to the agent's group must not cut the build
        )
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), WARM_TIMEOUT_S)
    except TimeoutError:
        log.warning("building DeepSpeed's ops in %s takes over %.0f s", folder, WARM_TIMEOUT_S)
        return False
    if process.returncode != 0:
        text = (folder / BUILD_LOG).read_text(errors="replace").strip()
        last = text.splitlines()[-1:] or ["no output"]
        log.warning("building DeepSpeed's ops in %s failed: %s", folder, last[0])
        return False
    (folder / STAMP).write_text(json.dumps(_versions(python, ops)) + "\n")
    log.info("DeepSpeed's ops are built in %s", folder)
    return True
