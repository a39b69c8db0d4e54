"""DeepSpeed's just-in-time ops, built once per agent so that no attempt compiles.

On the CPU accelerator every rank's ``deepspeed.init_distributed`` loads a shared-memory op
that g++ compiles the first time (40-107 s measured on 2 cores, once 139 s from a kill to
the next step), into ``$TORCH_EXTENSIONS_DIR``. Ranks of different virtualenvs sharing
``~/.cache/torch_extensions`` rebuild it for each other. So each agent gives its ranks an
extensions folder of its own (``DATA_DIR/torch_extensions`` unless told otherwise) and, as
it starts, builds the ops there in a child process (the agent itself never imports torch).
A stamp file records which DeepSpeed, torch and Python built them, so later starts cost a
file read; ranks started while the build runs wait on torch's own build lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

log = logging.getLogger("gantry.agent")

ENV = "TORCH_EXTENSIONS_DIR"
DIR_NAME = "torch_extensions"
STAMP = "gantry-ops.json"
WARM_TIMEOUT_S = 900.0
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
    process = await asyncio.create_subprocess_exec(
        python,
        "-c",
        WARM_CODE,
        *ops,
        env={**env, ENV: str(folder)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), WARM_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.warning("building DeepSpeed's ops in %s took over %.0f s", folder, WARM_TIMEOUT_S)
        return False
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.warning("building DeepSpeed's ops in %s failed: %s", folder, last[0])
        return False
    (folder / STAMP).write_text(json.dumps(_versions(python, ops)) + "\n")
    log.info("DeepSpeed's ops are built in %s", folder)
    return True
