"""The console under App.run_test() against real agent processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from textual.pilot import Pilot

from console.model.cluster import ConnState
from console.net.agent_link import AgentLinks
from console.ui.app import GantryApp
from tests.conftest import StartAgent
from tests.test_agent_link import Opened


async def wait_until(pilot: Pilot[None], condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    await pilot.pause(0.3)  # let the coalesced repaint happen


async def test_nodes_appear_go_lost_and_come_back(local_agents: StartAgent) -> None:
    a, b = local_agents("node-a"), local_agents("node-b")
    app = GantryApp([a.target, b.target])
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(
            pilot, lambda: all(n.state is ConnState.LIVE for n in app.store), timeout=20
        )
        screen = app.export_screenshot()
        assert "node-a" in screen and "node-b" in screen

        port = int(b.address.rsplit(":", 1)[1])
        b.process.kill()
        b.process.wait()
        node_b = app.store.node("node-b")
        await wait_until(pilot, lambda: node_b.state is ConnState.LOST, timeout=15)
        assert app.store.node("node-a").state is ConnState.LIVE
        assert "lost" in app.export_screenshot()

        local_agents("node-b", port=port)
        await wait_until(pilot, lambda: node_b.state is ConnState.LIVE, timeout=20)
        assert node_b.latest is not None


async def test_the_console_keeps_one_channel_per_agent_and_closes_them(
    local_agents: StartAgent,
) -> None:
    a, b = local_agents("node-a"), local_agents("node-b")
    opened = Opened()
    app = GantryApp([a.target, b.target], links=AgentLinks(factory=opened))
    async with app.run_test(size=(120, 30)) as pilot:
        assert app.jobs_session is not None
        app.jobs_session.list_interval_s = 0.1
        await wait_until(
            pilot, lambda: all(n.state is ConnState.LIVE for n in app.store), timeout=20
        )
        listed = app.jobs.version
        await wait_until(pilot, lambda: app.jobs.version > listed + 2, timeout=10)
        await pilot.press("q")
    # Telemetry streams and job listings rode the same two channels, closed at exit.
    assert sorted(address for address, _, _ in opened.calls) == sorted([a.address, b.address])
    assert {ch.get_state() for ch in opened.channels} == {grpc.ChannelConnectivity.SHUTDOWN}
