"""The command palette (ctrl+p): every verb of the console, with the CLI verb it stands
for in its help, for every job the agents lead."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from textual.command import DiscoveryHit, Hit, Hits, Provider

from console.model.jobs import JobsStore


class _ConsoleApp(Protocol):
    jobs: JobsStore

    def open_jobs(self) -> None: ...

    def open_tasks(self) -> None: ...

    def open_job(self, name: str) -> object: ...

    def open_logs(self, name: str, rank: int, attempt: int) -> None: ...


@dataclass(frozen=True)
class Command:
    text: str
    help: str
    run: Callable[[], object]


def console_commands(app: _ConsoleApp) -> list[Command]:
    commands = [
        Command("Jobs", "every job any agent leads (gantry jobs)", app.open_jobs),
        Command("Tasks", "evaluations, quantizations and servers (gantry tasks)", app.open_tasks),
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
                f"Advisor for {name}", "why it is slow or broken, and the fix", open_tab("advisor")
            ),
            Command(
                f"Restart {name}",
                f"in place or without a node (gantry restart {name})",
                act("restart"),
            ),
            Command(f"Stop {name}", f"every rank (gantry stop {name})", act("stop")),
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
