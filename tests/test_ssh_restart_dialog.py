"""The console's restart dialog: (c) restarts a node's agent over SSH, greyed out without
SSH mode."""

from __future__ import annotations

from console.net.cluster_file import NodeTarget
from console.net.operator import AGENT_RESTART_NEEDS_SSH, Operator
from console.ui.app import GantryApp
from console.ui.screens.dialogs import ConfirmScreen, RestartDialog
from console.ui.screens.job import JobScreen
from tests.console_fixtures import FIXED, cluster_store, targets_for
from tests.job_fixtures import jobs_store

# -- the restart dialog's (c) ------------------------------------------------------------


class FakeAgents:
    def __init__(self) -> None:
        self.restarted: list[str] = []

    def can_restart(self, node: str) -> str:
        return ""

    async def restart(self, node: str) -> str:
        self.restarted.append(node)
        return f"{node}: agent restarted over SSH (pid 1)"


def job_app(operator_agents: FakeAgents | None) -> GantryApp:
    store = cluster_store()
    targets: list[NodeTarget] = targets_for(store)
    return GantryApp(
        targets,
        store=store,
        connect=False,
        clock=lambda: FIXED,
        jobs=jobs_store(),
        operator=Operator(targets, agents=operator_agents),
    )


async def test_restart_dialog_restarts_the_nodes_agent_over_ssh() -> None:
    agents = FakeAgents()
    app = job_app(agents)
    async with app.run_test() as pilot:
        await pilot.press("J", "enter")
        job: object = app.screen
        assert isinstance(job, JobScreen)
        await pilot.press("r")
        dialog: object = app.screen
        assert isinstance(dialog, RestartDialog) and dialog.agent_restart == ""
        await pilot.press("c")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        for _ in range(50):
            if agents.restarted:
                break
            await pilot.pause(0.05)
        assert agents.restarted == [dialog.node]
        await pilot.pause(0.1)
        assert job.status == f"{dialog.node}: agent restarted over SSH (pid 1)"


async def test_restart_dialog_greys_out_c_without_ssh() -> None:
    app = job_app(None)
    async with app.run_test() as pilot:
        await pilot.press("J", "enter", "r")
        dialog: object = app.screen
        assert isinstance(dialog, RestartDialog)
        assert dialog.agent_restart == AGENT_RESTART_NEEDS_SSH
        await pilot.press("c")
        assert app.screen is dialog  # not offered: nothing happens
