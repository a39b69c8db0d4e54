"""The command palette (ctrl+p): every verb of the console, with the CLI verb it stands
for in its help, for every job the agents lead. Every CLI verb has an entry here, or a
reason in CLI_ONLY (tests/test_palette_verbs.py holds the two lists together)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from textual.command import DiscoveryHit, Hit, Hits, Provider

from console.model.jobs import JobsStore
from console.ui.screens.cluster import ClusterScreen
from console.ui.screens.tasks import TasksScreen

# CLI verbs without a palette entry, and why.
CLI_ONLY = {
    "launch": "a job spec is a file: `gantry launch JOB.yaml` sends it",
    "init": "writes the console's cluster file, before there is a console",
    "up": "starts agents over SSH, before there is a console",
    "down": "stops the agents the console talks to",
}


class _ConsoleApp(Protocol):
    jobs: JobsStore

    @property
    def screen(self) -> object: ...

    @property
    def screen_stack(self) -> Sequence[object]: ...

    def pop_screen(self) -> object: ...

    def open_jobs(self) -> None: ...

    def open_tasks(self) -> None: ...

    def open_job(self, name: str) -> object: ...

    def open_logs(self, name: str, rank: int, attempt: int) -> None: ...


@dataclass(frozen=True)
class Command:
    text: str
    help: str
    run: Callable[[], object]


def on_tasks(app: _ConsoleApp, then: Callable[[TasksScreen], object]) -> Callable[[], None]:
    """Opens the tasks screen and, once it has listed the tasks, does `then` on it."""

    def run() -> None:
        if not isinstance(app.screen, TasksScreen):
            app.open_tasks()
        screen = app.screen
        if isinstance(screen, TasksScreen):
            screen.when_shown(partial(then, screen))

    return run


def show_cluster(app: _ConsoleApp) -> None:
    """Back to the cluster screen, the console's first."""
    while not isinstance(app.screen, ClusterScreen) and len(app.screen_stack) > 1:
        app.pop_screen()


def _evaluate(screen: TasksScreen, job: str) -> None:
    screen.evaluate(job)


def task_commands(app: _ConsoleApp) -> list[Command]:
    def hint(text: str) -> Callable[[TasksScreen], None]:
        return lambda screen: screen.hint(text)

    return [
        Command("Tasks", "evaluations, quantizations and servers (gantry tasks)", app.open_tasks),
        Command(
            "Task detail",
            "a task's verdict, results and report: enter on it (gantry task ID)",
            on_tasks(app, hint("enter shows the selected task's whole detail")),
        ),
        Command(
            "Stop a task",
            "a server drains first: x on it (gantry stop-task ID)",
            on_tasks(app, hint("x stops the selected task")),
        ),
        Command(
            "Quantize a model",
            "int8, sizes and BLEU-4 before and after (gantry quantize MODEL_DIR --int8)",
            on_tasks(app, TasksScreen.action_quantize),
        ),
        Command(
            "Serve a model",
            "the inference server on an agent: gRPC, with an HTTP port the OpenAI API too "
            "(gantry serve MODEL_DIR)",
            on_tasks(app, TasksScreen.action_serve),
        ),
        Command(
            "Load test",
            "a server, or any endpoint: latency and throughput (gantry loadtest)",
            on_tasks(app, TasksScreen.action_loadtest),
        ),
    ]


def console_commands(app: _ConsoleApp) -> list[Command]:
    commands = [
        Command("Cluster", "every node's state (gantry status)", partial(show_cluster, app)),
        Command("Jobs", "every job any agent leads (gantry jobs)", app.open_jobs),
        Command(
            "Forget a finished job",
            "d on it in the jobs list (gantry forget NAME)",
            app.open_jobs,
        ),
        *task_commands(app),
    ]
    for view in app.jobs:
        name = view.name

        def open_tab(tab: str, job: str = name) -> Callable[[], None]:
            def run() -> None:
                screen = app.open_job(job)
                action = getattr(screen, "action_tab", None)
                if action is not None:
                    action(tab)

            return run

        def act(action: str, job: str = name) -> Callable[[], None]:
            def run() -> None:
                screen = app.open_job(job)
                getattr(screen, f"action_{action}")()

            return run

        commands += [
            Command(f"Job {name}", f"ranks, charts, events (gantry job {name})", open_tab("ranks")),
            Command(
                f"Events of {name}", f"the timeline (gantry events {name})", open_tab("events")
            ),
            Command(
                f"Checkpoints of {name}",
                f"step, age, size; resume from one (gantry restart {name} --from TAG)",
                open_tab("checkpoints"),
            ),
            Command(
                f"Advisor for {name}",
                f"why it is slow or broken, and the fix (gantry advise {name})",
                open_tab("advisor"),
            ),
            Command(
                f"Restart {name}",
                f"in place or without a node (gantry restart {name})",
                act("restart"),
            ),
            Command(f"Stop {name}", f"every rank (gantry stop {name})", act("stop")),
            Command(
                f"Evaluate {name}",
                f"its final model on held-out data, against its targets (gantry eval {name})",
                on_tasks(app, partial(_evaluate, job=name)),
            ),
        ]
        attempt = view.latest_attempt()
        for rank in sorted(attempt.ranks, key=lambda r: r.rank) if attempt else []:
            number = attempt.number if attempt else 0
            commands.append(
                Command(
                    f"Logs of {name} rank {rank.rank}",
                    f"on {rank.node} (gantry logs {name} --rank {rank.rank} -f)",
                    partial(app.open_logs, name, rank.rank, number),
                )
            )
    return commands


class GantryCommands(Provider):
    def _commands(self) -> list[Command]:
        app = self.app
        if not hasattr(app, "jobs") or not hasattr(app, "open_job"):
            return []
        return console_commands(app)  # type: ignore[arg-type]

    async def discover(self) -> Hits:
        for command in self._commands():
            yield DiscoveryHit(command.text, command.run, help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            score = matcher.match(command.text)
            if score > 0:
                yield Hit(score, matcher.highlight(command.text), command.run, help=command.help)
