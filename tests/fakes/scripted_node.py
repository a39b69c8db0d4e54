"""A scripted node for the job leader's tests (a fake ``NodeApi``): its ranks start and
stop as asked, and report what the test emits, as torch elastic's agent tests script
their workers' results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from gantry.v1 import agent_service_pb2 as A
from gantry.v1 import job_pb2

EK = job_pb2.JobEventKind
RS = job_pb2.RankState


class ScriptedNode:
    """``publish``: how the node's events reach the leader when the node is the leader's
    own (the bus); None for a peer, whose events are read through ``events()``.

    ``on_stop``: what its ranks report when stopped (a node kills them): "rank_killed"
    (RANK_KILLED, as a node does now), "killed" (an older node: RANK_EXITED with the
    signal's code), "killed_state" (RANK_EXITED saying KILLED), "exit0" (they all finish
    with 0 as the stop comes), or "" (nothing)."""

    def __init__(
        self,
        name: str,
        publish: Callable[[job_pb2.JobEvent], object] | None = None,
        *,
        job: str,
        on_stop: str = "rank_killed",
    ) -> None:
        self.name = name
        self.job = job
        self._publish = publish
        self.log: list[job_pb2.JobEvent] = []
        self.more = asyncio.Event()
        self.started: list[A.StartRanksRequest] = []
        self.stopped: list[tuple[int, float]] = []  # (attempt, grace_s)
        self.asked: list[int] = []  # each events() call's after_seq
        self.checkpoints: list[A.RequestCheckpointRequest] = []  # the checkpoints asked
        self.refuse: Exception | None = None
        self.lost: float | None = None
        self.on_stop = on_stop

    def emit(
        self,
        kind: int,
        rank: int,
        attempt: int = 1,
        message: str = "",
        extra: dict[str, str] | None = None,
        *,
        step: int | None = None,
        **details: str,
    ) -> None:
        event = job_pb2.JobEvent(
            job_name=self.job,
            attempt=attempt,
            kind=kind,  # type: ignore[arg-type]
            node=self.name,
            rank=rank,
            message=message,
            details={**(extra or {}), **details},
        )
        if step is not None:
            event.metrics.step = step
        event.time.GetCurrentTime()
        if self._publish is not None:
            self._publish(event)
            return
        event.seq = len(self.log) + 1
        self.log.append(event)
        self.more.set()

    def ranks_of(self, attempt: int) -> list[int]:
        return [r for q in self.started if q.attempt == attempt for r in q.ranks]

    async def ping(self) -> None:
        if self.refuse is not None:
            raise self.refuse

    def lost_since(self) -> float | None:
        return self.lost

    async def start_ranks(self, request: A.StartRanksRequest) -> A.StartRanksResponse:
        if self.refuse is not None:
            raise self.refuse
        if request.validate_only:
            return A.StartRanksResponse()
        self.started.append(request)
        ranks = [
            job_pb2.Rank(rank=r, local_rank=i, node=self.name, state=RS.RANK_STATE_STARTING)
            for i, r in enumerate(request.ranks)
        ]
        return A.StartRanksResponse(ranks=ranks)

    async def stop_ranks(self, request: A.StopRanksRequest) -> A.StopRanksResponse:
        self.stopped.append((request.attempt, request.grace_s))
        if self.refuse is not None:
            raise self.refuse
        for rank in self.ranks_of(request.attempt):
            if self.on_stop == "rank_killed":
                self.emit(EK.JOB_EVENT_KIND_RANK_KILLED, rank, request.attempt, exit_code="-15")
            elif self.on_stop == "killed":
                self.emit(EK.JOB_EVENT_KIND_RANK_EXITED, rank, request.attempt, exit_code="-15")
            elif self.on_stop == "killed_state":
                self.emit(
                    EK.JOB_EVENT_KIND_RANK_EXITED,
                    rank,
                    request.attempt,
                    exit_code="-15",
                    state="KILLED",
                )
            elif self.on_stop == "exit0":
                self.emit(EK.JOB_EVENT_KIND_RANK_EXITED, rank, request.attempt, exit_code="0")
        return A.StopRanksResponse()

    async def request_checkpoint(
        self, request: A.RequestCheckpointRequest
    ) -> A.RequestCheckpointResponse:
        if self.refuse is not None:
            raise self.refuse
        self.checkpoints.append(request)
        return A.RequestCheckpointResponse(asked=len(self.ranks_of(request.attempt)))

    async def events(self, job_name: str, after_seq: int) -> AsyncGenerator[job_pb2.JobEvent, None]:
        self.asked.append(after_seq)
        while True:
            self.more.clear()
            for event in [e for e in self.log if e.seq > after_seq]:
                after_seq = event.seq
                yield event
            if not any(e.seq > after_seq for e in self.log):
                await self.more.wait()

    async def close(self) -> None:
        return None
