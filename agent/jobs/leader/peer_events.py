"""A job leader's bookkeeping of the nodes it leads: how far it has read each peer's
events (kept in its journal in the same transaction as its copies of them, so a restart
neither loses nor repeats one), what the ranks of an attempt have reported, and which
ranks it cannot vouch for because their node does not answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gantry.v1 import job_pb2
from gantry.v1.figures import latest_metrics

from agent.jobs.event_bus import MAX_BATCH, EventBus
from agent.jobs.journal import Journal
from agent.jobs.journal_clock import ORIGIN  # the detail naming a copy's node
from agent.jobs.leader.peers import NodeApi
from agent.jobs.leader.states import (
    ACTIVE_JOB_STATES,
    ENDED_RANK_STATES,
    AttemptEdge,
    AttemptState,
    attempt_edge_for,
    reported_rank_state,
)
from agent.jobs.metrics_records import phase_from_name

EK = job_pb2.JobEventKind
RS = job_pb2.RankState
ORIGIN_SEQ = "origin_seq"  # ... and its seq there


class PeerLedger:
    """The leader's journal, seen as the record of what it has read from its peers."""

    def __init__(self, node_name: str, journal: Journal, bus: EventBus) -> None:
        self.node_name = node_name
        self.journal = journal
        self.bus = bus

    def positions(self, job: str) -> dict[str, int]:
        """The last seq of each peer's events copied here for `job`."""
        return self.journal.peer_positions(job)

    def copy(self, job: str, node: str, event: job_pb2.JobEvent) -> job_pb2.JobEvent:
        """Journals a copy of `node`'s `event` and the position it was read at, together."""
        copy = job_pb2.JobEvent()
        copy.CopyFrom(event)
        copy.details[ORIGIN] = node
        copy.details[ORIGIN_SEQ] = str(event.seq)
        with self.journal.transaction():
            self.bus.publish(copy)
            self.journal.set_peer_position(job, node, event.seq)
        return copy

    def skip(self, job: str, node: str, event: job_pb2.JobEvent) -> None:
        """`node`'s `event` read but not copied (another node told the same already)."""
        self.journal.set_peer_position(job, node, event.seq)

    async def replay(self, job: str, attempt: int, tally: Tally) -> int:
        """Gives `tally` every rank event of `attempt` journaled here, this node's own and
        the copies of its peers': what the leader knew before it was restarted. Returns
        the last seq read (where this node's own events go on)."""
        end = self.journal.last_seq()
        last = 0
        while batch := self.journal.events_after(last, job, MAX_BATCH, up_to=end):
            last = batch[-1].seq
            for event in batch:
                ours = event.node == self.node_name or ORIGIN in event.details
                if event.attempt == attempt and event.rank >= 0 and ours:
                    tally.add(event)
            await asyncio.sleep(0)  # a long attempt's history: let the agent answer meanwhile
        return max(last, end)


# A rank that failed because another did: its connection to a peer dropped (gloo) or
# NCCL saw a remote process exit (the signatures of agent.jobs.node.log_signatures).
FOLLOWING = frozenset({"gloo_reset", "nccl_remote_exited"})
# How long the leader waits, after such a failure comes first, for the failure it
# follows from before it stops the attempt: a rank killed with -9 (or by the oom-killer)
# is seen by its own node's next poll, and its peers' reset can reach the leader first.
SETTLE_S = 3.0
# A hung rank whose main thread waits in a collective (torch.distributed's, DeepSpeed's
# comm) waits for a peer: the rank stuck elsewhere is the cause. Its own hang is found
# up to a heartbeat and a stack dump later (hangs.STACK_WAIT_MAX_S), so it is waited for
# longer.
_COLLECTIVE_FRAME = re.compile(r'File "[^"]*/(?:torch/distributed|deepspeed/comm)/')
HUNG_SETTLE_S = 20.0


def waits_on_peers(event: job_pb2.JobEvent) -> bool:
    """A hung rank's failure whose main thread's innermost frame is a collective."""
    stacks = event.details.get("stacks", "")
    if "hung" not in event.message or "Current thread" not in stacks:
        return False
    main = stacks[stacks.index("Current thread") :].splitlines()[1:2]
    return bool(main) and _COLLECTIVE_FRAME.search(main[0]) is not None


@dataclass
class Tally:
    """What the ranks of one running attempt have reported: each event applied to its
    ranks, the failure to name kept (the first, unless it only follows from another
    rank's and that one comes within SETTLE_S), the attempt's edge read from its state
    table."""

    attempt: job_pb2.Attempt
    failure: str = ""
    following_since: float | None = None  # the kept failure follows from another's
    settle_s: float = SETTLE_S  # how long to wait for the failure it follows from

    def add(self, event: job_pb2.JobEvent, now: float | None = None) -> None:
        """`now`: the leader's clock (None: no waiting for a root cause, as on replay)."""
        apply_event(self.attempt, event)
        state = reported_rank_state(event)
        # A hung rank is reported FAILED by its node once its stacks are dumped;
        # stopping everything at RANK_HUNG would lose the stacks.
        if state not in (RS.RANK_STATE_FAILED, RS.RANK_STATE_KILLED):
            return
        waiting = waits_on_peers(event)
        follows = event.details.get("signature") in FOLLOWING or waiting
        root_after_following = (
            self.following_since is not None and state == RS.RANK_STATE_FAILED and not follows
        )
        if self.failure and not root_after_following:
            return
        why = event.details.get("reason") or event.message
        verb = "failed" if state == RS.RANK_STATE_FAILED else "was killed"
        self.failure = f"rank {event.rank} on {event.node} {verb}: {why}"
        self.following_since = now if follows and not root_after_following else None
        self.settle_s = HUNG_SETTLE_S if waiting else SETTLE_S
        early = _ended_early(self.attempt, event.rank) if follows else ""
        if early:  # the peer it lost had ended: no failure of its own to wait for
            self.failure += early
            self.following_since = None

    def settle(self) -> None:
        """No more waiting: the failure kept is the one to name (the rank it follows from
        is on a node the leader has lost, whose report will not come)."""
        self.following_since = None

    def settle_at(self) -> float | None:
        """While the kept failure only follows from another's: when to stop waiting."""
        return None if self.following_since is None else self.following_since + self.settle_s

    def edge(self, now: float = float("inf")) -> AttemptEdge | None:
        """RANK_FAILED, ALL_EXITED_OK, or None while the attempt runs on (or while a
        failure that follows from another's waits for it until `settle_at`)."""
        if self.failure:
            settle = self.settle_at()
            return AttemptEdge.RANK_FAILED if settle is None or now >= settle else None
        return attempt_edge_for(AttemptState.RUNNING, [r.state for r in self.attempt.ranks])


def _ended_early(attempt: job_pb2.Attempt, rank: int) -> str:
    """A lost peer that had exited 0: the cause is a script that ended early there (its
    peers then wait on a collective it never joins), not a crash."""
    early = sorted(
        r.rank for r in attempt.ranks if r.rank != rank and r.state == RS.RANK_STATE_EXITED
    )
    if not early:
        return ""
    who = f"rank {early[0]}" if len(early) == 1 else "ranks " + ", ".join(map(str, early))
    return f" ({who} had exited 0 first: its script ended while the others still trained)"


def apply_event(attempt: job_pb2.Attempt, event: job_pb2.JobEvent) -> None:
    """One rank event into the attempt's view of that rank."""
    for rank in attempt.ranks:
        if rank.rank != event.rank:
            continue
        if event.HasField("metrics"):
            rank.metrics.CopyFrom(latest_metrics(rank.metrics, event.metrics))
            rank.last_heartbeat.CopyFrom(event.time)
        kind = event.kind
        state = reported_rank_state(event)
        if state is not None:
            rank.state = state  # type: ignore[assignment]
            if state in (RS.RANK_STATE_FAILED, RS.RANK_STATE_HUNG):
                rank.reason = event.message
        elif kind == EK.JOB_EVENT_KIND_RANK_PHASE:
            phase = phase_from_name(event.details.get("phase", ""))
            if phase is not None:
                rank.phase = phase  # type: ignore[assignment]
                rank.phase_since.CopyFrom(event.time)
        elif kind in (
            EK.JOB_EVENT_KIND_RANK_STARTED,
            EK.JOB_EVENT_KIND_METRICS,
        ) and rank.state in (RS.RANK_STATE_PENDING, RS.RANK_STATE_STARTING):
            rank.state = RS.RANK_STATE_RUNNING


def with_unknown_ranks(job: job_pb2.Job, nodes: Mapping[str, NodeApi]) -> job_pb2.Job:
    """The job as the leader can vouch for it: the ranks still going on a node that does
    not answer are marked unknown since it stopped (a copy; `job` itself is unchanged)."""
    if job.state not in ACTIVE_JOB_STATES or not job.attempts:
        return job
    lost = {name: since for name, api in nodes.items() if (since := api.lost_since()) is not None}
    if not any(
        r.node in lost and int(r.state) not in ENDED_RANK_STATES for r in job.attempts[-1].ranks
    ):
        return job
    marked = job_pb2.Job()
    marked.CopyFrom(job)
    for rank in marked.attempts[-1].ranks:
        if rank.node in lost and int(rank.state) not in ENDED_RANK_STATES:
            rank.unknown_since.FromNanoseconds(int(lost[rank.node] * 1e9))
    return marked


def mark_unreachable(attempt: job_pb2.Attempt, node: str, why: str, since_s: float) -> None:
    """The ranks of `node` that had not ended when the leader lost it: their state unknown
    (not running: nobody can say), since when, and why."""
    for rank in attempt.ranks:
        if rank.node == node and int(rank.state) not in ENDED_RANK_STATES:
            rank.state = RS.RANK_STATE_UNSPECIFIED
            if not rank.HasField("unknown_since"):
                rank.unknown_since.FromNanoseconds(int(since_s * 1e9))
            rank.reason = why


BY_OPERATOR = "stopped by the operator"


def stopped_with_unstopped(reason: str, unstopped: dict[str, str]) -> str:
    """An operator's stop, with the nodes whose ranks it could not stop (node -> why)
    named after it: those ranks may still run, and the operator must know where."""
    if not unstopped:
        return reason
    nodes = "; ".join(f"{node}: {why}" for node, why in sorted(unstopped.items()))
    return f"{reason}, but ranks may still run on {nodes}"


def failure_with_unreachable(failure: str, unreachable: list[str]) -> str:
    """An attempt's reason, the nodes the leader could not reach named first."""
    if not unreachable:
        return failure
    nodes = ", ".join(unreachable)
    verb = "is" if len(unreachable) == 1 else "are"
    return f"{nodes} {verb} unreachable (partitioned or down); {failure}"
