"""Assembles an agent's job machinery: journal, event bus, local supervisor, leader."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from agent.event_bus import EventBus
from agent.job_service import JobService
from agent.journal import Journal
from agent.leader import JobLeader
from agent.local_supervisor import LocalSupervisor
from agent.peers import LocalNode

SUPERVISOR_POLL_S = 0.2


@dataclass
class JobRuntime:
    journal: Journal
    bus: EventBus
    supervisor: LocalSupervisor
    jobs: JobService
    leader: JobLeader
    _poller: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Inside the running loop: watch the ranks, resume leading recovered jobs."""
        self._poller = asyncio.create_task(self.supervisor.run(SUPERVISOR_POLL_S))
        self.jobs.tasks.recover()
        await self.leader.recover()

    async def close(self) -> None:
        """Stops watching; the ranks themselves go on (a restarted agent re-adopts them)."""
        await self.leader.close()
        await self.jobs.tasks.close()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self.journal.close()


def build_job_runtime(node_name: str, data_dir: Path, gpus: list[int]) -> JobRuntime:
    journal = Journal.open(data_dir)
    bus = EventBus(
        journal.append_event,
        lambda seq, job: journal.events_after(seq, job or None),
        lambda seq, job, tail: journal.events_after_metrics_tail(seq, job or None, tail),
    )
    supervisor = LocalSupervisor(data_dir, node_name, journal, on_event=bus.fan_out)
    jobs = JobService(node_name, supervisor, bus, gpus)
    local = LocalNode(node_name, bus, jobs.start_ranks, jobs.stop_ranks)
    leader = JobLeader(node_name, data_dir, bus, local)
    jobs.leader = leader
    return JobRuntime(journal, bus, supervisor, jobs, leader)
