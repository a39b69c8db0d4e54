"""The jobs screen: every job any agent leads; enter opens one."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from console.model.cost import total_steps
from console.model.job_rows import state_name
from console.model.jobs import JobsStore
from console.ui.screens import StoreScreen

COLUMNS = ("job", "state", "attempt", "step", "ranks", "leader", "reason")


class JobsScreen(StoreScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back")]

    def __init__(self, jobs: JobsStore, open_job: Callable[[str], object]) -> None:
        super().__init__()
        self.jobs = jobs
        self.open_job = open_job
        self._drawn = -1
        self._ready = False

    def compose(self) -> ComposeResult:
        yield Static("jobs", id="jobs-title")
        yield DataTable(id="jobs-table", cursor_type="row")
        yield Static(id="jobs-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.focus()
        self._ready = True
        self.refresh_from_store()

    def on_screen_resume(self) -> None:
        self.refresh_from_store()

    def refresh_from_store(self) -> None:
        if not self._ready or self.jobs.version == self._drawn:
            return
        self._drawn = self.jobs.version
        table = self.query_one(DataTable)
        selected = table.cursor_row
        table.clear()
        for view in self.jobs:
            attempt = view.latest_attempt()
            total = total_steps(view.spec)
            state = state_name(view.state, "JOB_STATE_")
            style = "bold red" if view.bad_nodes() or state == "failed" else ""
            table.add_row(
                view.name,
                Text(state, style=style),
                str(attempt.number) if attempt else "-",
                f"{view.last_step()}" + (f"/{total}" if total else ""),
                str(len(attempt.ranks)) if attempt else "-",
                view.leader,
                view.job.reason[:60],
                key=view.name,
            )
        if table.row_count:
            table.move_cursor(row=min(max(selected, 0), table.row_count - 1))
        status = self.query_one("#jobs-status", Static)
        if not len(self.jobs):
            status.update("no job yet: gantry launch JOB.yaml")
        elif self.jobs.errors:
            status.update("not answering: " + "; ".join(self.jobs.errors)[:200])
        else:
            status.update("")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.open_job(str(event.row_key.value))

    def action_back(self) -> None:
        self.dismiss()
