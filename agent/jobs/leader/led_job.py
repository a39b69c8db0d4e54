"""A led job's in-memory side: its nodes, the operator's commands waiting for its attempt
loop, how far each node's events were read, and the running attempt's ranks as their
events tell. Its state is in the journal (agent.jobs.leader.store)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from gantry.v1 import agent_service_pb2, job_pb2

from agent.jobs.leader.peers import NodeApi

STOP_GRACE_S = 10.0


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    RESTART = "restart"
    PREEMPTED = "preempted"  # a node's notice: checkpointed and stopped, the job waits


@dataclass
class Command:
    kind: str  # "stop" or "restart"
    grace_s: float = STOP_GRACE_S
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()  # restart: excluded nodes brought back
    from_checkpoint: str = ""
    spec: job_pb2.JobSpec | None = None  # restart: the job's spec from the new attempt on
    # restart: running node -> the node that runs its ranks next (a spare, or its own node back)
    replace: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # restart: why, for the NODE_REPLACED event ("" : by the operator)
    done: asyncio.Future[None] | None = None

    def resolve(self) -> None:
        """Answers the operator who sent it."""
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


@dataclass
class LedJob:
    name: str
    peers: dict[str, agent_service_pb2.PeerAgent]
    nodes: dict[str, NodeApi] = field(default_factory=dict)
    commands: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)
    # The last event seq read from each node (its own seq), so a new attempt does not
    # re-read history; a peer's is journaled with the copies of its events (PeerLedger).
    seen: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    # The attempt being watched, its ranks as their events say (saved at each edge).
    live: job_pb2.Attempt | None = None
    # The last preemption: the nodes that announced it, and its deadline (wall clock).
    preempted_nodes: tuple[str, ...] = ()
    preempt_deadline: float = 0.0

    def running(self) -> bool:
        return self.task is not None and not self.task.done()
