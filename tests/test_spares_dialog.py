"""The restart dialog's fourth option: (d) runs the failed node's ranks on a free spare,
offered only when the job's spec has spares."""

from __future__ import annotations

from typing import Any

from gantry.v1 import job_pb2
from textual.widgets import OptionList

from console.model.jobs import JobsStore
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import JobsClient, LedJob
from console.net.operator import Operator
from console.ui.app import GantryApp
from console.ui.screens.dialogs import ConfirmScreen, RestartDialog
from tests.console_fixtures import FIXED, cluster_store, targets_for
from tests.job_fixtures import jobs_store


class RecordingClient(JobsClient):
    """Answers restart without an agent, keeping what it was asked."""

    def __init__(self, targets: list[NodeTarget]) -> None:
        super().__init__(targets)
        self.restarts: list[dict[str, Any]] = []

    async def restart(
        self,
        name: str,
        node: str,
        exclude: list[str],
        from_checkpoint: str,
        *,
        spec: job_pb2.JobSpec | None = None,
        include: list[str] | None = None,
        replace: dict[str, str] | None = None,
    ) -> LedJob:
        self.restarts.append({"name": name, "node": node, "replace": replace})
        return LedJob(next(iter(self.targets.values())), job_pb2.Job())


def app_with(jobs: JobsStore) -> tuple[GantryApp, RecordingClient]:
    store = cluster_store()
    targets = targets_for(store)
    client = RecordingClient(targets)
    app = GantryApp(
        targets,
        store=store,
        connect=False,
        clock=lambda: FIXED,
        jobs=jobs,
        operator=Operator(targets, client=client),
    )
    return app, client


def with_spares(*spares: str) -> JobsStore:
    jobs = jobs_store()
    view = jobs.get("demo-moe")
    assert view is not None
    view.job.spec.spares.extend(spares)
    return jobs


async def test_d_runs_the_failed_nodes_ranks_on_a_free_spare() -> None:
    app, client = app_with(with_spares("node-02"))
    async with app.run_test() as pilot:
        await pilot.press("J", "enter", "r")
        dialog: object = app.screen
        assert isinstance(dialog, RestartDialog)
        assert dialog.node == "node-01" and dialog.spare == "node-02"  # rank 3 hung there
        assert dialog.query_one(OptionList).option_count == 4
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        for _ in range(50):
            if client.restarts:
                break
            await pilot.pause(0.05)
    assert client.restarts == [
        {"name": "demo-moe", "node": "node-01", "replace": {"node-01": "node-02"}}
    ]


async def test_no_spares_no_fourth_option_and_a_busy_spare_greyed_out() -> None:
    app, client = app_with(jobs_store())
    async with app.run_test() as pilot:
        await pilot.press("J", "enter", "r")
        dialog: object = app.screen
        assert isinstance(dialog, RestartDialog) and dialog.can_replace is None
        assert dialog.query_one(OptionList).option_count == 3
        await pilot.press("d")
        assert app.screen is dialog
    jobs = with_spares("node-02")
    view = jobs.get("demo-moe")
    assert view is not None
    view.job.attempts[-1].replaced_nodes["node-00"] = "node-02"
    app, client = app_with(jobs)
    async with app.run_test() as pilot:
        await pilot.press("J", "enter", "r")
        dialog = app.screen
        assert isinstance(dialog, RestartDialog)
        assert dialog.can_replace == "every spare already runs another node's ranks"
        await pilot.press("d")
        assert app.screen is dialog
    assert client.restarts == []
