"""A led job's preemption: the notice a node sent (a PREEMPTION_NOTICE event on its
stream), every rank's answer to the checkpoint request counted until the grace is over,
and, once the attempt stopped, the wait until the preempted nodes are back.

Who writes the requests: each node writes its own ranks' on its own notice (no round trip
while the clock runs); the leader, on reading the notice, asks every node of the attempt
for the same request (RequestCheckpoint; asking twice changes nothing), so a node that got
no notice saves too. The trainer's and the callback's all-reduce of the request makes all
ranks save at the same step, whichever saw the request first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gantry.v1 import job_pb2

from agent.jobs.leader.led_job import Command, LedJob
from agent.jobs.leader.peers import NodeRefused, NodeUnreachable
from agent.jobs.leader.policy import node_back, preemption_deadline
from agent.jobs.leader.states import ENDED_RANK_STATES

__all__ = ["PREEMPTED_REASON", "PROBE_S", "Preempting", "is_preempted", "wait_until_back"]

EK = job_pb2.JobEventKind
PREEMPTED_REASON = "preempted"  # how a preempted attempt's reason begins
PROBE_S = 2.0  # how often the nodes of a preempted job are asked whether they are back
# As agent.jobs.node.checkpoint_asks writes them (the leader does not import node code).
REQUEST = "request"
ANSWERED = "answered"


def is_preempted(reason: str) -> bool:
    """An attempt's reason says a preemption ended it."""
    return reason.startswith(PREEMPTED_REASON + ":")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass
class Preempting:
    """One attempt's preemption, from the first notice to the stop."""

    nodes: list[str]  # the nodes that announced
    sources: list[str]
    requests: set[str]  # the request ids the nodes wrote (one per notice)
    noticed_at: float
    deadline: float  # the stop, at the latest
    answered: dict[int, dict[str, str]] = field(default_factory=dict)  # rank -> details

    @classmethod
    def first(
        cls, event: job_pb2.JobEvent, policy: job_pb2.PreemptionPolicy, now: float
    ) -> Preempting | None:
        """The preemption a node's notice begins; None for any other event."""
        if not is_notice(event):
            return None
        told = _number(event.details.get("deadline", ""))
        deadline = preemption_deadline(policy, now, told)
        source = event.details.get("source", "")
        return cls([event.node], [source], {event.details[REQUEST]}, now, deadline)

    def add(self, event: job_pb2.JobEvent, policy: job_pb2.PreemptionPolicy, now: float) -> str:
        """Another event of the attempt: a second node's notice (its deadline may be
        sooner), or a rank's answer. Returns a new notice's request id, else ''."""
        details = event.details
        if is_notice(event):
            other = Preempting.first(event, policy, now)
            assert other is not None
            if event.node not in self.nodes:
                self.nodes.append(event.node)
                self.sources += other.sources
            self.requests.add(details[REQUEST])
            self.deadline = min(self.deadline, other.deadline)
            return details[REQUEST]
        answer = event.kind == EK.JOB_EVENT_KIND_PREEMPTION_NOTICE and details.get(ANSWERED)
        if answer and details.get(REQUEST) in self.requests and event.rank >= 0:
            self.answered[event.rank] = dict(details)
        return ""

    def complete(self, ranks: Iterable[job_pb2.Rank]) -> bool:
        """Every rank answered, or ended (it cannot any more)."""
        return all(r.rank in self.answered or int(r.state) in ENDED_RANK_STATES for r in ranks)

    def reason(self, ranks: Sequence[job_pb2.Rank], now: float) -> str:
        """The attempt's reason: who announced, and what was saved in what time."""
        who = ", ".join(f"{n} ({s})" for n, s in zip(self.nodes, self.sources, strict=True))
        took = now - self.noticed_at
        saved = [d for r, d in sorted(self.answered.items()) if any(x.rank == r for x in ranks)]
        head = f"{PREEMPTED_REASON}: {who} announced"
        if not saved:
            return f"{head}; no rank saved a checkpoint in {took:.1f} s"
        last = max(saved, key=lambda d: int(d.get("step") or 0))
        what = last.get("tag") or last.get("path") or "?"
        count = f"{len(saved)}/{len(ranks)} ranks"
        return f"{head}; checkpoint {what} saved by {count} in {took:.1f} s"

    def details(self, ranks: Sequence[job_pb2.Rank], now: float) -> dict[str, str]:
        """The figures of the preemption event (bench/preempt.py reads them)."""
        steps = [int(d["step"]) for d in self.answered.values() if d.get("step")]
        out = {
            "nodes": ",".join(self.nodes),
            "saved_ranks": str(len(self.answered)),
            "ranks": str(len(ranks)),
            "notice_to_checkpoint_s": f"{now - self.noticed_at:.3f}",
        }
        if steps:
            out["step"] = str(max(steps))
        return out


def is_notice(event: job_pb2.JobEvent) -> bool:
    """A node's notice (not a rank's answer to it)."""
    details = event.details
    return (
        event.kind == EK.JOB_EVENT_KIND_PREEMPTION_NOTICE
        and bool(details.get(REQUEST))
        and not details.get(ANSWERED)
    )


async def wait_until_back(
    led: LedJob,
    nodes: Sequence[str],
    preempted: Iterable[str],
    settle_until: float,
    clock: Callable[[], float],
    pause: Callable[[float], Awaitable[Command | None]],
    probe_s: float = PROBE_S,
    went_away: set[str] | None = None,
) -> Command | None:
    """Until every node of the next attempt answers and each preempted one is back
    (``node_back``); or the operator's command that came first."""
    away = set() if went_away is None else set(went_away)
    waiting = set(preempted)
    while True:
        answering = True
        for name in nodes:
            api = led.nodes.get(name)
            if api is None:
                continue
            try:
                await api.ping()
            except (NodeUnreachable, NodeRefused):
                away.add(name)
                answering = False
            else:
                if api.lost_since() is not None:
                    away.add(name)
        now = clock()
        if answering and all(node_back(True, n in away, now, settle_until) for n in waiting):
            return None
        command = await pause(probe_s)
        if command is not None:
            return command
