"""The console's job screens driven by keys (`App.run_test()`) against two real agents
running a real job (the fake training script: no DeepSpeed).

The test kills a rank; its node turns red on the cluster and job screens; `r`, `a`
and `y` restart the job, and the new attempt's steps arrive. Then the rank's log,
the command palette, stop with confirmation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from textual.pilot import Pilot

from console.app import GantryApp
from console.cluster_file import dump_cluster_file
from console.job_spec import load_job_spec
from console.jobs_client import JobsClient
from console.screens.dialogs import ConfirmScreen, RestartDialog
from console.screens.job import JobScreen
from console.screens.jobs import JobsScreen
from console.screens.logs import LogScreen
from console.widgets.rank_table import RankTable
from tests.conftest import StartAgent
from tests.test_jobs_e2e import FAKE_RANK

WAIT_S = 60.0


async def until(
    pilot: Pilot[Any], what: str, check: Callable[[], bool], timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def current(app: GantryApp) -> object:
    """The app's screen, typed loosely: keys change it under mypy's narrowing."""
    return app.screen


def write_spec(tmp_path: Path) -> Path:
    spec = {
        "name": "live-job",
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "100000", "--step-s", "0.1"],
        "working_dir": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "restart": {"max_restarts": 0, "backoff_s": 0.2},
    }
    path = tmp_path / "live-job.yaml"
    path.write_text(json.dumps(spec))
    return path


async def test_kill_a_rank_then_restart_it_from_the_console(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    targets = [a.target for a in agents]
    dump_cluster_file(tmp_path / "cluster.yaml", targets)
    client = JobsClient(targets)
    await client.launch(load_job_spec(write_spec(tmp_path)))
    app = GantryApp(targets, refresh_interval_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.jobs_session is not None
        app.jobs_session.list_interval_s = 0.3
        await until(pilot, "the job listed", lambda: "live-job" in app.jobs)
        # Cluster screen: which job and rank runs on each node.
        await until(
            pilot, "node marks", lambda: "live-job r1" in app.store.node("node-b").jobs_text
        )
        await pilot.press("J")
        assert isinstance(app.screen, JobsScreen)
        await pilot.press("enter")
        assert isinstance(app.screen, JobScreen)
        screen = app.screen
        view = app.jobs.get("live-job")
        assert view is not None
        await until(pilot, "steps", lambda: view.last_step() >= 3 and len(view.rank_rows()) == 2)
        table = screen.query_one("#rank-table", RankTable)
        assert table.row_count == 2

        # kill -9 of rank 1's training process (the child of its wrapper)
        attempt = view.latest_attempt()
        assert attempt is not None
        pid = next(r.pid for r in attempt.ranks if r.rank == 1)
        psutil.Process(pid).children()[0].kill()
        await until(pilot, "node-b red", lambda: "node-b" in view.bad_nodes())
        await until(pilot, "cluster mark", lambda: "failed" in app.store.node("node-b").job_fault)
        assert app.store.node("node-b").status_text(time.time()) == "live-job r1 failed"
        await until(
            pilot,
            "red title",
            lambda: "failed: node-b" in str(screen.query_one("#job-title").render()),
        )

        await pilot.press("r")
        assert isinstance(app.screen, RestartDialog)
        assert app.screen.node == "node-b"
        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert current(app) is screen
        await until(
            pilot,
            "attempt 2 steps",
            lambda: (
                (a := view.latest_attempt()) is not None
                and a.number == 2
                and all(
                    latest is not None and latest.metrics.step >= 2
                    for _, latest in view.rank_rows()
                )
            ),
        )
        assert "node-b" not in view.bad_nodes()
        operator = [e for e in view.events if e.kind == 14]  # OPERATOR_ACTION
        assert operator and "restart" in operator[-1].message

        # The rank's log: `l` on the selected rank.
        await pilot.press("l")
        assert isinstance(app.screen, LogScreen)
        log_screen = app.screen
        await until(
            pilot,
            "log lines",
            lambda: any(
                "attempt 2" in log_screen.buffer.line(i)
                for i in range(log_screen.buffer.first_index, log_screen.buffer.end_index)
            ),
        )
        await pilot.press("escape")
        assert current(app) is screen

        # Stop, confirmed.
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, "stopped", lambda: view.state == 6)  # JOB_STATE_STOPPED
        await asyncio.sleep(0)


async def test_out_of_memory_is_advised_and_the_fix_applied_with_one_key(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    targets = [a.target for a in agents]
    spec_path = write_spec(tmp_path)
    spec = json.loads(spec_path.read_text())
    spec["args"] = [
        *spec["args"],
        "--oom-above",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
    ]
    spec_path.write_text(json.dumps(spec))
    await JobsClient(targets).launch(load_job_spec(spec_path))
    app = GantryApp(targets, refresh_interval_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.jobs_session is not None
        app.jobs_session.list_interval_s = 0.3
        await until(pilot, "the job listed", lambda: "live-job" in app.jobs)
        screen = app.open_job("live-job")
        await pilot.pause()
        await pilot.press("5")
        await until(
            pilot, "the OOM finding", lambda: any(f.rule == "oom" for f in screen._findings)
        )
        finding = next(f for f in screen._findings if f.rule == "oom")
        assert finding.applicable and "CUDA out of memory" in finding.evidence
        assert finding.remedy is not None and finding.remedy.kind == "halve-micro-batch"
        options = screen.query_one("#findings")
        options.focus()
        options.highlighted = screen._findings.index(finding)  # type: ignore[attr-defined]
        await pilot.press("enter")
        assert isinstance(app.screen, ConfirmScreen)
        assert "--per_device_train_batch_size 8 -> 4" in app.screen.detail
        await pilot.press("y")
        view = app.jobs.get("live-job")
        assert view is not None
        await until(
            pilot,
            "attempt 2 steps past the OOM",
            lambda: (
                (a := view.latest_attempt()) is not None
                and a.number == 2
                and all(
                    latest is not None and latest.metrics.step >= 4
                    for _, latest in view.rank_rows()
                )
            ),
        )
        args = list(view.spec.args)
        assert args[args.index("--per_device_train_batch_size") + 1] == "4"
        assert args[args.index("--gradient_accumulation_steps") + 1] == "2"
