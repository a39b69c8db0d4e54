"""The environment of DeepSpeed subprocesses in tests (CPU accelerator, offline), and a
session fixture that builds DeepSpeed's shared-memory op once.

DeepSpeed compiles that op with g++ the first time a machine initializes it (30-55 s,
minutes on a loaded machine); `deepspeed_warm` builds it into a cache of this
virtualenv's own (~/.cache/gantry-torch-extensions/<hash of sys.prefix>) once, and is
quick when it is already there. One cache per virtualenv: an op built by another
checkout's virtualenv is rebuilt in place when this one loads it (40-107 s), and two
suites running side by side would rebuild it under each other's ranks.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.jobs.node.ops_warmup import remove_stale_locks

ROOT = Path(__file__).resolve().parent.parent
EXT_CACHE = (
    Path.home()
    / ".cache"
    / "gantry-torch-extensions"
    / hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
)
# What a rank needs beyond the agent's own environment.
DEEPSPEED_ENV = {
    "TORCH_EXTENSIONS_DIR": str(EXT_CACHE),
    "DS_ACCELERATOR": "cpu",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    env = {**os.environ, **DEEPSPEED_ENV}
    for name in ("GANTRY_METRICS_FILE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="session")
def deepspeed_warm() -> dict[str, str]:
    """The environment for DeepSpeed subprocesses, with the op cache built once."""
    env = base_env()
    # A run killed mid-build left torch's lock: every build would wait on it forever.
    remove_stale_locks(EXT_CACHE, time.time())
    if not any(EXT_CACHE.glob("**/deepspeed_shm_comm*.so")):
        env1 = {
            **env,
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
        code = "import deepspeed; deepspeed.init_distributed(dist_backend='gloo')"
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=env1,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    return env
