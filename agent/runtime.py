"""Assembles an agent's job machinery: journal, event bus, local supervisor, leader; ties
what the kernel log says (XIDs, oom kills) to the ranks it concerns; and hands a preemption
notice (agent.telemetry.preemption) to the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.jobs.event_bus import EventBus
from agent.jobs.journal import Journal
from agent.jobs.leader.leader import JobLeader
from agent.jobs.leader.peers import LocalNode
from agent.jobs.leader.policy import DEFAULT_PREEMPTION_GRACE_S
from agent.jobs.node.ops_warmup import ENV as EXTENSIONS_ENV
from agent.jobs.node.ops_warmup import warm_ops
from agent.jobs.node.supervisor import LocalSupervisor
from agent.rpc.jobs import JobService
from agent.security.task_credentials import without_credentials
from agent.telemetry.kernel_events import KernelNotice
from agent.telemetry.kernel_log import GpuInitFailure, KernelOomKill, KernelXid
from agent.telemetry.preemption import NoticeSource, PreemptionNotice, first_notice
from agent.telemetry.sampler import Sampler

SUPERVISOR_POLL_S = 0.2
# After a notice the agent outlives the jobs' grace by this much: the leader's stop of the
# ranks (its own grace) comes after it.
NOTICE_STOP_MARGIN_S = 12.0


@dataclass
class JobRuntime:
    journal: Journal
    bus: EventBus
    supervisor: LocalSupervisor
    jobs: JobService
    leader: JobLeader
    warm: tuple[str, ...] | None = None  # DeepSpeed ops to build besides the comm op; None: none
    notices: Sequence[NoticeSource] = ()  # where this node learns of its preemption
    notice: PreemptionNotice | None = None  # the one it got
    announced: asyncio.Event = field(default_factory=asyncio.Event)
    _grace_s: float = DEFAULT_PREEMPTION_GRACE_S
    _poller: asyncio.Task[None] | None = field(default=None, repr=False)
    _warmer: asyncio.Task[bool] | None = field(default=None, repr=False)
    _noticer: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Inside the running loop: watch the ranks, resume leading recovered jobs, build
        DeepSpeed's ops for the ranks to come."""
        self._poller = asyncio.create_task(self.supervisor.run(SUPERVISOR_POLL_S))
        if self.warm is not None:
            env = dict(self.supervisor.base_env)
            if not self.jobs.gpus:
                env.setdefault("DS_ACCELERATOR", "cpu")
            folder = Path(env[EXTENSIONS_ENV])
            self._warmer = asyncio.create_task(warm_ops(folder, env, ops=self.warm))
        if self.notices:
            self._noticer = asyncio.create_task(first_notice(self.notices, self.announce))
        self.jobs.tasks.recover()
        await self.leader.recover()

    async def announce(self, notice: PreemptionNotice) -> None:
        """This node is being preempted: its ranks asked for a checkpoint, the leaders told."""
        self.notice = notice
        jobs = self.supervisor.announce_preemption(notice.source, notice.deadline)
        graces = []
        for job in jobs:
            row = self.journal.get_job(job)
            grace = row.spec.preemption.grace_s if row is not None else 0.0
            graces.append(grace if grace > 0 else DEFAULT_PREEMPTION_GRACE_S)
        self._grace_s = max(graces, default=DEFAULT_PREEMPTION_GRACE_S)
        self.announced.set()

    async def until_ranks_stopped(
        self, clock: Callable[[], float] = time.monotonic, poll_s: float = 0.2
    ) -> None:
        """After the notice: until this node's ranks were stopped (by their leaders, once
        checkpointed) or the grace and the stop's margin are over."""
        await self.announced.wait()
        end = clock() + self._grace_s + NOTICE_STOP_MARGIN_S
        while self.supervisor.holds_ranks() and clock() < end:
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        """Stops watching; the ranks themselves go on (a restarted agent re-adopts them)."""
        await self.leader.close()
        await self.jobs.tasks.close()
        for task in (self._poller, self._warmer, self._noticer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.supervisor.close()
        self.journal.close()


def build_job_runtime(
    node_name: str,
    data_dir: Path,
    gpus: list[int],
    extensions: Path | None = None,
    warm: tuple[str, ...] | None = None,
    notices: Sequence[NoticeSource] = (),
) -> JobRuntime:
    """``extensions``: the ranks' TORCH_EXTENSIONS_DIR (None: whatever the environment
    says); ``warm``: build DeepSpeed's ops there at start (and these named ones)."""
    journal = Journal.open(data_dir)
    bus = EventBus(journal)
    base_env = without_credentials(os.environ)  # the agent's token is not the ranks' business
    if extensions is not None:
        base_env[EXTENSIONS_ENV] = str(extensions)
    elif EXTENSIONS_ENV not in base_env:
        warm = None  # nowhere of the agent's own to build them
    supervisor = LocalSupervisor(
        data_dir, node_name, journal, on_event=bus.notify, base_env=base_env
    )
    jobs = JobService(node_name, supervisor, bus, gpus)
    local = LocalNode(node_name, bus, jobs.start_ranks, jobs.stop_ranks, jobs.request_checkpoint)
    leader = JobLeader(node_name, data_dir, bus, local, journal)
    jobs.leader = leader
    return JobRuntime(journal, bus, supervisor, jobs, leader, warm, notices)


def tie_kernel_log(
    sampler: Sampler, supervisor: LocalSupervisor, loop: asyncio.AbstractEventLoop
) -> Callable[[], None]:
    """Hands each kernel-log fact the sampler reads to the supervisor, on the loop: an XID
    on a GPU a rank uses, or an oom kill of a rank's process, becomes that rank's ALERT.
    Returns the function that unties them."""

    def on_loop(notice: KernelNotice) -> None:
        item, gpu, kernel = notice.item, notice.gpu_index, supervisor.kernel
        try:
            if isinstance(item, KernelXid):
                supervisor.journal_kernel(
                    lambda rows: kernel.xid(rows, item.xid, gpu, item.pci, item.text, item.pid)
                )
            elif isinstance(item, KernelOomKill):
                now = supervisor.wall_clock()
                supervisor.journal_kernel(
                    lambda rows: kernel.oom_kill(rows, item.pid, item.process, item.text, now)
                )
            elif isinstance(item, GpuInitFailure) and gpu is not None:
                supervisor.journal_kernel(
                    lambda rows: kernel.gpu_failed(rows, gpu, item.pci, item.text)
                )
        except Exception:
            logging.getLogger("gantry.agent").exception("kernel event for the jobs failed")

    def on_thread(notice: KernelNotice) -> None:
        loop.call_soon_threadsafe(on_loop, notice)

    return sampler.subscribe_kernel(on_thread)
