"""What a rank is started with: its command line and its environment. Pure."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.node.launch_checks import resolve_argv
from agent.jobs.resume_args import with_resume

__all__ = [
    "BOOTSTRAP_DIR",
    "CHECKPOINT_REQUEST_FILE",
    "IMPORTS_FILE",
    "rank_argv",
    "rank_env",
    "with_deepspeed_config",
]

DS_CONFIG_FLAG = "--deepspeed_config"
INSTRUMENT_ENV = "GANTRY_INSTRUMENT"
IMPORTS_FILE = "imports.json"  # what the rank imported by its first step (agent.rank.hooks)
# Found by path: the jobs room never imports the rank room.
BOOTSTRAP_DIR = str(Path(__file__).resolve().parents[2] / "rank" / "bootstrap")


CHECKPOINT_REQUEST_FILE = "checkpoint_request"  # agent.rank.checkpoint_request


def rank_argv(
    spec: job_pb2.JobSpec, resume_from: str = "", ds_config: Path | str | None = None
) -> list[str]:
    """The rank's command line; ``ds_config``: the file holding the job's own DeepSpeed config
    (written from ``spec.deepspeed_config_json``), which then wins over the args' own."""
    argv = resolve_argv(spec)
    if ds_config is not None:
        argv = with_deepspeed_config(argv, str(ds_config))
    return with_resume(argv, spec, resume_from)


def with_deepspeed_config(argv: Sequence[str], path: str) -> list[str]:
    """``argv`` with every ``--deepspeed_config`` value (``--deepspeed_config V`` or
    ``--deepspeed_config=V``) replaced by ``path``; the flag is appended when absent."""
    out: list[str] = []
    found = False
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        if arg == DS_CONFIG_FLAG:
            out += [arg, path]
            found = skip_value = True
        elif arg.startswith(DS_CONFIG_FLAG + "="):
            out.append(f"{DS_CONFIG_FLAG}={path}")
            found = True
        else:
            out.append(arg)
    if not found:
        out += [DS_CONFIG_FLAG, path]
    return out


def rank_env(
    base: Mapping[str, str],
    spec: job_pb2.JobSpec,
    *,
    attempt: int,
    rank: int,
    local_rank: int,
    local_world_size: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    metrics_path: Path,
    gpus: Sequence[int],
    heartbeat_s: float,
    socket_ifname: str | None = None,
) -> dict[str, str]:
    """The agent's environment, then the job's ``env``, then what Gantry itself decides.

    On a GPU node every local rank sees all of the node's GPUs and picks ``LOCAL_RANK``
    among them, as the ``deepspeed`` launcher does (scripts call ``set_device(local_rank)``).
    """
    env = {**base, "PYTHONUNBUFFERED": "1", **spec.env}
    if spec.hang_timeout_s > 0:
        heartbeat_s = min(heartbeat_s, spec.hang_timeout_s / 4)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(local_world_size),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        GANTRY_JOB=spec.name,
        GANTRY_ATTEMPT=str(attempt),
        GANTRY_METRICS_FILE=str(metrics_path),
        GANTRY_IMPORTS_FILE=str(metrics_path.with_name(IMPORTS_FILE)),
        # A preemption notice asks the rank for a checkpoint through this file.
        GANTRY_CHECKPOINT_REQUEST_FILE=str(metrics_path.with_name(CHECKPOINT_REQUEST_FILE)),
        GANTRY_HEARTBEAT_S=f"{heartbeat_s:g}",
    )
    if spec.HasField("parallelism"):  # Gantry's trainer reads its sizes from these
        env["GANTRY_TENSOR_PARALLEL"] = str(spec.parallelism.tensor or 1)
        env["GANTRY_EXPERT_PARALLEL"] = str(spec.parallelism.expert or 1)
    if socket_ifname and "GLOO_SOCKET_IFNAME" not in env:
        env["GLOO_SOCKET_IFNAME"] = socket_ifname  # agent.jobs.node.route_iface says why
    if spec.collective_timeout_s > 0:
        env["GANTRY_COLLECTIVE_TIMEOUT_S"] = f"{spec.collective_timeout_s:g}"
    if env.get(INSTRUMENT_ENV, "1") != "0":
        # Heartbeats, stacks on SIGUSR1 and start-up phases for any Python script
        # (agent.rank.hooks), without a change to it.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (BOOTSTRAP_DIR, env.get("PYTHONPATH")) if p)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    elif "DS_ACCELERATOR" not in spec.env:
        env["DS_ACCELERATOR"] = "cpu"
    return env
