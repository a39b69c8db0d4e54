"""`gantry advise NAME [--apply RULE]`: the advisor's findings for a job, from what the
agents hold now (the job, its whole event stream, each node's buffered GPU history),
and applying one finding's remedy (a restart with the edited spec)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
from gantry.v1 import agent_service_pb2, job_pb2

from console.model.advice import Advice, findings_for, load_thresholds
from console.model.cluster import ClusterStore
from console.model.jobs import JobsStore, JobView
from console.model.remedies import RemedyError, plan_remedy
from console.net.agent_link import AgentLink
from console.net.cluster_file import ClusterFileError, NodeTarget
from console.net.jobs_client import JobCommandError, JobsClient, NotConfirmed

HISTORY_QUIET_S = 0.3  # the replayed history has arrived once the stream goes quiet
HISTORY_MAX_S = 3.0


async def _node_history(link: AgentLink, store: ClusterStore) -> None:
    request = agent_service_pb2.WatchNodeRequest(replay_history=True)
    try:
        metadata = link.metadata()
        stub = await link.stub()
    except ClusterFileError:
        return
    stream = stub.WatchNode(request, metadata=metadata)
    deadline = time.monotonic() + HISTORY_MAX_S
    with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError, StopAsyncIteration):
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(stream.read(), HISTORY_QUIET_S)
            if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                break
            store.apply_sample(link.target.name, message.sample, time.time())
    stream.cancel()


async def gather(
    client: JobsClient, targets: list[NodeTarget], name: str
) -> tuple[JobView, ClusterStore]:
    led, checkpoints = await client.describe(name)
    jobs = JobsStore()
    view = jobs.apply_job(led.leader.name, led.job, checkpoints, time.time())
    async for event in client.events(name, follow=False):
        jobs.apply_event(event)
    cluster = ClusterStore()
    by_name = {t.name: t for t in targets}
    nodes = [n for n in dict.fromkeys(view.nodes()) if n in by_name]
    for node in nodes:
        cluster.add_node(node, by_name[node].address, time.time())
    await asyncio.gather(*(_node_history(client.links.link(by_name[n]), cluster) for n in nodes))
    return view, cluster


def advice_json(advice: list[Advice]) -> list[dict[str, Any]]:
    return [
        {
            "rule": a.rule,
            "severity": a.severity,
            "title": a.title,
            "evidence": a.evidence,
            "remedy": None
            if a.remedy is None
            else {"kind": a.remedy.kind, "summary": a.remedy.summary, "details": a.remedy.details},
            "applicable": a.applicable,
        }
        for a in advice
    ]


def advice_text(name: str, advice: list[Advice]) -> str:
    if not advice:
        return f"{name}: no findings (the advisor's rules see nothing wrong)"
    lines = []
    for a in advice:
        lines.append(f"[{a.severity}] {a.rule}: {a.title}")
        lines.append(f"    {a.evidence}")
        if a.remedy is not None:
            hint = f"  (gantry advise {name} --apply {a.rule})" if a.applicable else ""
            lines.append(f"    fix: {a.remedy.summary}{hint}")
    return "\n".join(lines)


def job_scope(job: job_pb2.Job) -> tuple[int, int]:
    """What findings are computed for: the job's current attempt and its world size."""
    if not job.attempts:
        return 0, 0
    return int(job.attempts[-1].number), len(job.attempts[-1].ranks)


def check_scope(name: str, rule: str, then: tuple[int, int], now: tuple[int, int]) -> None:
    """Refuses (one line) a finding computed for another attempt or world size than now's."""
    if then != now:
        raise JobCommandError(
            f"{rule} was found in attempt {then[0]} at {then[1]} ranks, and {name} is now on "
            f"attempt {now[0]} at {now[1]} ranks: not applied (run `gantry advise {name}` again)"
        )


def _always(question: str) -> bool:
    return True


async def advise(
    client: JobsClient,
    targets: list[NodeTarget],
    name: str,
    apply: str = "",
    confirm: Callable[[str], bool] = _always,
) -> tuple[list[Advice], str]:
    """The findings, and (with `apply`, once `confirm` says yes) one line saying what was
    applied; a finding is applied only to the attempt and world size it was found in."""
    try:
        thresholds = load_thresholds()
    except ValueError as exc:
        raise JobCommandError(str(exc)) from None
    view, cluster = await gather(client, targets, name)
    scope = job_scope(view.job)
    advice = findings_for(view, cluster, time.time(), thresholds)
    if not apply:
        return advice, ""
    chosen = next((a for a in advice if a.rule == apply), None)
    if chosen is None:
        rules = ", ".join(a.rule for a in advice) or "none"
        raise JobCommandError(f"no finding {apply!r} for {name} now (findings: {rules})")
    if chosen.remedy is None or not chosen.applicable:
        raise JobCommandError(f"{apply}: its remedy is advice, nothing to apply automatically")
    try:
        plan = plan_remedy(chosen.remedy, view.spec)
    except RemedyError as exc:
        raise JobCommandError(str(exc)) from None
    changes = "; ".join(plan.changes)
    if not confirm(f"apply {apply} to {name} ({changes})? this restarts it"):
        raise NotConfirmed(f"{apply} not applied to {name}")
    now, _ = await client.describe(name)  # what may have changed while the question was up
    check_scope(name, apply, scope, job_scope(now.job))
    if plan.exclude:  # go on without a node: a restart at the smaller world, the spec as it is
        node = plan.exclude[0]
        led = await client.restart(name, node, list(plan.exclude), "")
    else:
        led = await client.restart(name, "", [], "", spec=plan.spec)
    return (
        advice,
        f"{name}: applied {apply} ({changes}); restarting after attempt {len(led.job.attempts)}",
    )
