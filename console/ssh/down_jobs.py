"""`gantry down`'s question about running jobs: their ranks stopped first (asked, or
--stop-ranks), waiting until each job's leader reports it stopped, then its reason said
(it names the nodes whose ranks could not be stopped)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

from console.net.cluster_file import NodeTarget

if TYPE_CHECKING:
    from console.net.jobs_client import JobsClient

JOB_STOP_GRACE_S = 10.0


def _active_job_states() -> tuple[str, ...]:
    """console.model.jobs' live job states less stopping (counted apart), by name."""
    from console.model.jobs import ACTIVE_JOB_STATES, JS

    return tuple(JS.Name(state) for state in sorted(ACTIVE_JOB_STATES - {JS.JOB_STATE_STOPPING}))


def maybe_stop_jobs(targets: list[NodeTarget], stop_without_asking: bool) -> None:
    from gantry.v1 import job_pb2

    from console.net.jobs_client import JobsClient, LedJob

    async def listing() -> tuple[list[LedJob], list[str]]:
        async with JobsClient(targets) as client:
            return await client.list_jobs()

    jobs, errors = asyncio.run(listing())
    for line in errors:
        print(line, file=sys.stderr)
    active = [led for led in jobs if job_pb2.JobState.Name(led.job.state) in _active_job_states()]
    if not active:
        return
    names = ", ".join(led.job.spec.name for led in active)
    if not stop_without_asking:
        if not sys.stdin.isatty():
            print(f"leaving the ranks of {names} running (--stop-ranks stops them)")
            return
        answer = input(f"Stop the ranks of {names} too? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print(f"leaving the ranks of {names} running")
            return
    asyncio.run(_stop_jobs(targets, [led.job.spec.name for led in active]))


async def _stop_jobs(targets: list[NodeTarget], names: list[str]) -> None:
    """Stops the jobs' ranks and waits until their leaders report them stopped, so the
    agents are not stopped while they still stop ranks."""
    from console.net.jobs_client import JobsClient

    async with JobsClient(targets) as client:
        await _stop_and_wait(client, names)


async def _stop_and_wait(client: JobsClient, names: list[str]) -> None:
    from gantry.v1 import job_pb2

    from console.net.jobs_client import JobCommandError

    for name in names:
        try:
            await client.stop(name, JOB_STOP_GRACE_S)
            print(f"{name}: stop requested")
        except JobCommandError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
    deadline = time.monotonic() + JOB_STOP_GRACE_S + 20
    ending = (*_active_job_states(), "JOB_STATE_STOPPING")
    while time.monotonic() < deadline:
        jobs, _ = await client.list_jobs()
        active = [
            led.job.spec.name
            for led in jobs
            if led.job.spec.name in names and job_pb2.JobState.Name(led.job.state) in ending
        ]
        if not active:
            # The leader's reason names the nodes whose ranks it could not stop.
            for led in jobs:
                if led.job.spec.name in names:
                    print(f"{led.job.spec.name}: {led.job.reason or 'stopped'}")
            return
        await asyncio.sleep(0.5)
    print(f"still stopping: {', '.join(active)}; stopping the agents anyway", file=sys.stderr)
