"""Starting one rank on this node: its files, its journal row, its process (from a standby
when one is ready) and the event that says so, or why it could not start."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal import Journal, RankRow
from agent.jobs.node import rank_process
from agent.jobs.node.live_rank import EventBatch, Launch, LiveRank
from agent.jobs.node.nccl import NcclParser
from agent.jobs.node.rank_files import RankFiles
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_states import RankEdge, RankState
from agent.jobs.node.script_logs import ScriptLogParser
from agent.jobs.node.standby import Standbys

__all__ = ["DS_CONFIG_FILE", "new_rank_row", "rank_nccl_parser", "spawn_rank", "write_ds_config"]

_K = job_pb2.JobEventKind
DS_CONFIG_FILE = "ds_config.json"
RANK_FILES = ("stdout.log", "stderr.log", "metrics.jsonl", "exit_code")


def check_start(
    spec: job_pb2.JobSpec,
    ranks: Sequence[int],
    local_ranks: Sequence[int] | None,
    gpus: Sequence[int],
    world_size: int,
) -> list[int]:
    """The local ranks of a start request (default 0..n-1); ValueError names what is wrong."""
    if not spec.command:
        raise ValueError("the job spec has no command")
    if not ranks:
        raise ValueError("no ranks to start")
    locals_ = list(range(len(ranks))) if local_ranks is None else list(local_ranks)
    if len(locals_) != len(ranks) or len(set(ranks)) != len(ranks):
        raise ValueError("ranks and local_ranks must be distinct and of equal length")
    if gpus and max(locals_) >= len(gpus):
        raise ValueError(f"{len(ranks)} local ranks but only GPUs {list(gpus)}")
    for rank in ranks:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
    return locals_


def write_ds_config(attempt_dir: Path, spec: job_pb2.JobSpec) -> Path | None:
    """The job's embedded DeepSpeed config as the attempt's ``ds_config.json``; None when
    the job has none. ValueError when it cannot be written (nothing is started then)."""
    if not spec.deepspeed_config_json:
        return None
    path = attempt_dir / DS_CONFIG_FILE
    tmp = path.with_name(DS_CONFIG_FILE + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(spec.deepspeed_config_json)
        tmp.replace(path)
    except OSError as exc:
        raise ValueError(f"cannot write the job's DeepSpeed config to {path}: {exc}") from None
    return path


def new_rank_row(
    journal: Journal,
    rank_dir: Path,
    key: tuple[str, int, int],
    local_rank: int,
    node: str,
    gpus: Sequence[int],
) -> RankRow:
    """A PENDING row for the rank ``key`` (job, attempt, rank), its files in ``rank_dir``
    and their read offsets reset."""
    paths = {name: rank_dir / name for name in RANK_FILES}
    # Left over from a deleted job of the same name: never read as this run's.
    for path in paths.values():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        journal.set_offset(path, 0)
    job, attempt, rank = key
    return RankRow(
        job=job,
        attempt=attempt,
        rank=rank,
        local_rank=local_rank,
        node=node,
        state=RankState.PENDING,
        stdout_path=str(paths["stdout.log"]),
        stderr_path=str(paths["stderr.log"]),
        metrics_path=str(paths["metrics.jsonl"]),
        exit_path=str(paths["exit_code"]),
        gpu_indices=(gpus[local_rank],) if gpus else (),
    )


def rank_nccl_parser(row: RankRow, spec: job_pb2.JobSpec | None, ib_present: bool) -> NcclParser:
    """The parser of the rank's NCCL lines, knowing the job's NCCL settings."""
    env = dict(spec.env) if spec is not None else {}
    return NcclParser(row.rank, env=env, ib_present=ib_present)


def spawn_rank(
    rj: RankJournal,
    standbys: Standbys,
    row: RankRow,
    launch: Launch,
    spec: job_pb2.JobSpec,
    *,
    now: float,
    ib_present: bool,
) -> tuple[RankRow, EventBatch, LiveRank | None]:
    """Starts a PENDING rank: STARTING and watched, or FAILED (``None``: nothing to watch).

    ``now``: the supervisor clock. The row and batch are for the caller to commit.
    """
    batch = EventBatch()
    details = {"argv": " ".join(launch.argv)}
    stdout, stderr = Path(row.stdout_path), Path(row.stderr_path)
    try:
        handle = standbys.take(
            row.job, row.local_rank, launch.argv, launch.env, launch.cwd, stdout, stderr
        )
        if handle is not None:
            # Its wrapper records the exit code in the standby's own exit file.
            row = replace(row, exit_path=str(handle.exit_file))
            details["standby"] = "yes"
        else:
            handle = rank_process.spawn(
                launch.argv, launch.env, launch.cwd, stdout, stderr, Path(row.exit_path)
            )
    except OSError as e:
        reason = f"could not start: {e}"
        row = rj.edge(row, RankEdge.SPAWN_FAILED, reason=reason, ended=rj.wall_clock())
        rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, reason)
        return row, batch, None
    started = rj.wall_clock()
    row = rj.edge(
        row,
        RankEdge.SPAWN,
        pid=handle.pid,
        create_time=handle.create_time,
        started=started,
        phase=job_pb2.RANK_PHASE_STARTED,
        phase_since=started,
    )
    rj.emit(
        batch,
        row,
        _K.JOB_EVENT_KIND_RANK_STARTED,
        f"rank {row.rank} started, pid {handle.pid}"
        + (" (from its standby)" if "standby" in details else ""),
        details={"pid": str(handle.pid), **details},
    )
    files = RankFiles(
        row.metrics_path,
        row.stdout_path,
        row.stderr_path,
        nccl=rank_nccl_parser(row, spec, ib_present),
        script=ScriptLogParser(launch.argv),
    )
    live = LiveRank(row, handle, spec.hang_timeout_s, now, files, launch=launch)
    return row, batch, live
