"""The leader's side of a partition, without a network: a node that does not answer is
not waited on when the attempt's ranks are stopped, its ranks are marked unreachable (not
running), and the attempt's reason names it; rank 0's host, as the console reaches it, is
where the ranks of a direct-mode job meet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from gantry.v1 import agent_service_pb2, job_pb2

from agent.jobs.leader.attempt_start import master_addr, rank0_host
from agent.jobs.leader.led_job import LedJob
from agent.jobs.leader.peer_events import failure_with_unreachable
from agent.jobs.leader.peers import NodeUnreachable
from agent.jobs.leader.watch import stop_attempt

RS = job_pb2.RankState
A = agent_service_pb2


class Node:
    """A node that answers, or (silent) one whose packets go nowhere: calls never return
    on their own, a ping fails after its timeout."""

    def __init__(self, name: str, silent: bool = False) -> None:
        self.name = name
        self.silent = silent
        self.lost: float | None = None

    async def ping(self) -> None:
        if self.silent:
            await asyncio.sleep(0.05)
            self.lost = self.lost or time.time()
            raise NodeUnreachable(f"{self.name}'s agent at 10.0.0.3:50051 is unreachable")

    def lost_since(self) -> float | None:
        return self.lost

    async def start_ranks(self, request: A.StartRanksRequest) -> A.StartRanksResponse:
        raise AssertionError("not started here")

    async def stop_ranks(self, request: A.StopRanksRequest) -> A.StopRanksResponse:
        if self.silent:
            await asyncio.sleep(3600)  # as a cut link: the reply never comes
        ranks = [job_pb2.Rank(rank=0, node=self.name, state=RS.RANK_STATE_KILLED)]
        return A.StopRanksResponse(ranks=ranks)

    async def request_checkpoint(
        self, request: A.RequestCheckpointRequest
    ) -> A.RequestCheckpointResponse:
        return A.RequestCheckpointResponse()

    async def events(self, job_name: str, after_seq: int) -> AsyncGenerator[job_pb2.JobEvent, None]:
        await asyncio.sleep(3600)
        yield job_pb2.JobEvent()

    async def close(self) -> None:
        return None


async def test_a_silent_node_is_not_waited_on_and_its_ranks_are_marked_unreachable() -> None:
    led = LedJob("job", peers={})
    led.nodes = {"node-1": Node("node-1"), "node-3": Node("node-3", silent=True)}
    attempt = job_pb2.Attempt(number=1)
    attempt.ranks.add(rank=0, node="node-1", state=RS.RANK_STATE_FAILED)
    attempt.ranks.add(rank=1, node="node-3", state=RS.RANK_STATE_RUNNING)
    started = time.monotonic()
    unreachable = await asyncio.wait_for(stop_attempt(led, attempt, grace_s=10), 5)
    assert time.monotonic() - started < 2  # not the stop's 30 s + grace
    assert unreachable == ["node-3"]
    lost = attempt.ranks[1]
    assert lost.state != RS.RANK_STATE_RUNNING and lost.HasField("unknown_since")
    assert "node-3" in lost.reason and "unreachable" in lost.reason
    assert attempt.ranks[0].state == RS.RANK_STATE_KILLED  # the answering node's word


def test_the_attempts_reason_names_the_unreachable_nodes_first() -> None:
    failure = "rank 0 on node-1 failed: exit code 1"
    assert failure_with_unreachable(failure, []) == failure
    assert failure_with_unreachable(failure, ["node-3"]) == (
        "node-3 is unreachable (partitioned or down); rank 0 on node-1 failed: exit code 1"
    )
    assert failure_with_unreachable(failure, ["node-2", "node-3"]).startswith(
        "node-2, node-3 are unreachable"
    )


async def test_direct_mode_ranks_meet_at_rank_0s_address_as_the_console_reaches_it() -> None:
    peers = {
        "node-1": A.PeerAgent(name="node-1", address="10.213.1.1:50051"),
        "node-2": A.PeerAgent(name="node-2", address="10.213.1.2:50051"),
    }
    led = LedJob("job", peers=peers)
    assert await master_addr(led, ["node-2", "node-1"]) == "10.213.1.2"
    assert rank0_host(peers, ["node-1"]) == "10.213.1.1"
    named = {"a": A.PeerAgent(name="a", address="gpu-01.lan:50051")}
    assert rank0_host(named, ["a"]) == "gpu-01.lan"
    # Loopback clusters, SSH peers and IPv6 literals keep their old answers.
    local = {"a": A.PeerAgent(name="a", address="127.0.0.1:7000")}
    assert await master_addr(LedJob("job", peers=local), ["a"]) == "127.0.0.1"
    ssh = {"a": A.PeerAgent(name="a", address="127.0.0.1:7000", ssh="gpu-01")}
    assert rank0_host(ssh, ["a"]) == ""
    assert rank0_host({"a": A.PeerAgent(name="a", address="[fe80::1]:1")}, ["a"]) == ""
