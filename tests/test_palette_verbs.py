"""The command palette holds every CLI verb that makes sense in the console (issue 16):
eval, quantize, serve and load test among them; a new verb without an entry (or a
reason in CLI_ONLY) fails here."""

from __future__ import annotations

import argparse
import re
from typing import Any

from gantry.v1 import job_pb2
from textual.app import App

from console.cli import build_parser
from console.model.jobs import JobsStore
from console.ui.commands import CLI_ONLY, Command, GantryCommands, console_commands
from console.ui.screens.loadtest import LoadTestScreen
from console.ui.screens.serve_dialog import ServeScreen
from console.ui.screens.task_dialogs import ModelDirScreen
from console.ui.screens.tasks import TasksScreen
from tests.task_samples import met_eval
from tests.test_tasks_screen import FakeTasksClient


def cli_verbs() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


def demo_jobs() -> JobsStore:
    jobs = JobsStore()
    job = job_pb2.Job()
    job.spec.name = "demo"
    attempt = job.attempts.add(number=1)
    attempt.ranks.add(rank=0, node="node-a")
    jobs.set_listing([("node-a", job)], [])
    return jobs


class PaletteApp(App[None]):
    """What the palette asks of the console app, with tasks from a fake client."""

    COMMANDS = App.COMMANDS | {GantryCommands}

    def __init__(self, client: FakeTasksClient) -> None:
        super().__init__()
        self.jobs = demo_jobs()
        self.client = client

    def open_jobs(self) -> None:
        pass

    def open_tasks(self) -> None:
        self.push_screen(TasksScreen(self.client))  # type: ignore[arg-type]

    def open_job(self, name: str) -> object:
        return None

    def open_logs(self, name: str, rank: int, attempt: int) -> None:
        pass


def commands() -> list[Command]:
    return console_commands(PaletteApp(FakeTasksClient([])))


def test_every_cli_verb_has_a_palette_entry_or_a_reason_not_to() -> None:
    helps = [c.help for c in commands()]
    missing = sorted(
        verb
        for verb in cli_verbs() - set(CLI_ONLY)
        if not any(re.search(rf"gantry {re.escape(verb)}(?=[ )]|$)", h) for h in helps)
    )
    assert missing == [], f"CLI verbs without a palette entry: {missing}"
    assert set(CLI_ONLY) <= cli_verbs()  # no stale reasons
    texts = {c.text for c in commands()}
    assert {"Evaluate demo", "Quantize a model", "Serve a model", "Load test"} <= texts


async def run_command(app: PaletteApp, pilot: Any, text: str) -> None:
    command = next(c for c in console_commands(app) if c.text == text)
    command.run()
    for _ in range(30):
        await pilot.pause()
        if not isinstance(app.screen, TasksScreen):
            return


async def test_palette_entries_open_what_they_say() -> None:
    client = FakeTasksClient([met_eval()])
    app = PaletteApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await run_command(app, pilot, "Serve a model")
        assert isinstance(app.screen, ServeScreen)
        assert app.screen.prompt == "Serve a model (gantry serve)"
        await pilot.press("escape")
        assert isinstance(app.screen, TasksScreen)
        await run_command(app, pilot, "Quantize a model")
        assert isinstance(app.screen, ModelDirScreen)
        assert app.screen.prompt == "Quantize which model directory to int8?"
        await pilot.press("escape")
        await run_command(app, pilot, "Load test")
        assert isinstance(app.screen, LoadTestScreen)
        await pilot.press("escape")
        await run_command(app, pilot, "Evaluate demo")
        for _ in range(20):
            if client.started:
                break
            await pilot.pause()
        assert [r.eval.job_name for _, r in client.started] == ["demo"]
        assert len(app.screen_stack) == 2  # the tasks screen was reused, not stacked again


async def test_the_palette_finds_eval_by_typing() -> None:
    client = FakeTasksClient([met_eval()])
    app = PaletteApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"Serve a model")
        await pilot.pause(0.3)
        await pilot.press("enter")
        for _ in range(30):
            await pilot.pause()
            if isinstance(app.screen, ServeScreen):
                break
        assert isinstance(app.screen, ServeScreen)
