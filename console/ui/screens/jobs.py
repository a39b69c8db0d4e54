"""The jobs screen: every job any agent leads; enter opens one, `/` filters, `o` sorts
(`O` reverses), `d` forgets a finished job (confirmed). The highlighted job's full
reason is on the line below the table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from console.model.cost import total_steps
from console.model.job_rows import state_name
from console.model.jobs import ACTIVE_JOB_STATES, JS, JobsStore, JobView
from console.model.list_query import ListQuery
from console.model.reasons import fit, short_reason
from console.net.jobs_client import JobCommandError
from console.ui.screens import StoreScreen
from console.ui.screens.dialogs import ConfirmScreen
from console.ui.widgets.filter_bar import FilterBar

COLUMNS = ("job", "state", "attempt", "step", "ranks", "reason", "leader")
REASON = COLUMNS.index("reason")
MIN_REASON_WIDTH = 12

Forget = Callable[[str], Awaitable[str]]


def job_row(view: JobView) -> tuple[str, ...]:
    """One job's cells of COLUMNS, as text (the reason short: its cause first, whole;
    the screen cuts it to the width it has)."""
    attempt = view.latest_attempt()
    total = total_steps(view.spec)
    # A running job's reason is its last attempt's history, not its state now.
    reason = "" if view.state == JS.JOB_STATE_RUNNING else view.job.reason
    return (
        view.name,
        state_name(view.state, "JOB_STATE_"),
        str(attempt.number) if attempt else "-",
        # No step reported by any attempt (or only by its metric events): "-", as gantry jobs.
        f"{view.last_step() or '-'}" + (f"/{total}" if total else ""),
        str(len(attempt.ranks)) if attempt else "-",
        short_reason(reason),
        view.leader,
    )


class JobsScreen(StoreScreen):
    DEFAULT_CSS = """
    JobsScreen #jobs-table { height: 1fr; }
    JobsScreen #jobs-status { height: auto; max-height: 4; padding: 0 1; }
    JobsScreen #jobs-title { padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("o", "sort", "Sort"),
        Binding("O", "reverse", "Reverse", show=False, key_display="O"),
        Binding("d", "forget", "Forget"),
    ]

    def __init__(
        self, jobs: JobsStore, open_job: Callable[[str], object], forget: Forget | None = None
    ) -> None:
        super().__init__()
        self.jobs = jobs
        self.open_job = open_job
        self.forget = forget
        self.query_state = ListQuery()
        self.message = ""
        self._drawn = -1
        self._ready = False
        self._shown: list[str] = []  # job names, one per row

    def compose(self) -> ComposeResult:
        yield Static("jobs", id="jobs-title", markup=False)
        yield DataTable(id="jobs-table", cursor_type="row")
        yield FilterBar(id="jobs-filter")
        yield Static(id="jobs-status", markup=False)
        yield Footer()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#jobs-table", DataTable)

    def on_mount(self) -> None:
        table = self.table
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.focus()
        self._ready = True
        self.refresh_from_store()

    def on_screen_resume(self) -> None:
        self.refresh_from_store()

    def selected_job(self) -> JobView | None:
        """The job under the cursor."""
        row = self.table.cursor_row
        if not self._shown or not 0 <= row < len(self._shown):
            return None
        return self.jobs.get(self._shown[row])

    def refresh_from_store(self, force: bool = False) -> None:
        if not self._ready or (self.jobs.version == self._drawn and not force):
            return
        self._drawn = self.jobs.version
        table = self.table
        selected = self.selected_job()
        views = list(self.jobs)
        rows = [job_row(view) for view in views]
        order = self.query_state.apply(rows)
        self._shown = [views[i].name for i in order]
        reason_w = self._reason_width([rows[i] for i in order])
        table.clear()
        for i in order:
            view, cells = views[i], rows[i]
            cells = (*cells[:REASON], fit(cells[REASON], reason_w), *cells[REASON + 1 :])
            bad = view.bad_nodes() or view.state == JS.JOB_STATE_FAILED
            table.add_row(
                cells[0],
                Text(cells[1], style="bold red" if bad else ""),
                *cells[2:],
                key=view.name,
            )
        if table.row_count:
            keep = selected is not None and selected.name in self._shown
            table.move_cursor(row=self._shown.index(selected.name) if keep and selected else 0)
        self._update_title()
        self._update_status()

    def _reason_width(self, rows: list[tuple[str, ...]]) -> int:
        """What the reason column may take so the table fits the screen's width (each
        column is padded by a cell either side; one cell for the scroll bar)."""
        others = sum(
            max([len(name)] + [len(row[i]) for row in rows]) + 2
            for i, name in enumerate(COLUMNS)
            if i != REASON
        )
        return max(MIN_REASON_WIDTH, self.size.width - others - 2 - 1)

    def _update_title(self) -> None:
        shown = self.query_state.describe(COLUMNS)
        count = f"{len(self._shown)} of {len(self.jobs)}" if self.query_state.text else ""
        title = " · ".join(filter(None, ["jobs", count, shown]))
        self.query_one("#jobs-title", Static).update(title)

    def _update_status(self) -> None:
        view = self.selected_job()
        lines = [self.message]
        if not len(self.jobs):
            lines.append("no job yet: gantry launch JOB.yaml")
        elif self.jobs.errors:
            lines.append("not answering: " + "; ".join(self.jobs.errors)[:200])
        elif view is not None and view.job.reason and view.state != JS.JOB_STATE_RUNNING:
            lines.append(f"{view.name}: {view.job.reason}")  # the full reason, wrapped
        elif not self._shown:
            lines.append("no job matches the filter (esc clears it)")
        self.query_one("#jobs-status", Static).update("\n".join(filter(None, lines)))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._update_status()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.open_job(str(event.row_key.value))

    # -- filter and sort -------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    def on_filter_bar_edited(self, event: FilterBar.Edited) -> None:
        self.query_state = self.query_state.with_text(event.text)
        self.refresh_from_store(force=True)

    def on_filter_bar_done(self, event: FilterBar.Done) -> None:
        self.table.focus()

    def action_sort(self) -> None:
        self.query_state = self.query_state.next_sort(len(COLUMNS))
        self.refresh_from_store(force=True)

    def action_reverse(self) -> None:
        self.query_state = self.query_state.reversed()
        self.refresh_from_store(force=True)

    def action_back(self) -> None:
        bar = self.query_one(FilterBar)
        if self.query_state.text:  # the first escape clears the filter, the next goes back
            bar.clear_filter()
            return
        self.dismiss()

    # -- forget ----------------------------------------------------------------------

    def action_forget(self) -> None:
        view = self.selected_job()
        if view is None or self.forget is None:
            self._say("no job to forget")
            return
        if view.state in ACTIVE_JOB_STATES:
            self._say(f"{view.name} is {state_name(view.state, 'JOB_STATE_')}: stop it first")
            return
        name = view.name

        def answered(yes: bool | None) -> None:
            if yes:
                self._say(f"forgetting {name}…")
                self._forget(name)
            else:
                self._say("cancelled")

        self.app.push_screen(
            ConfirmScreen(
                f"Forget {name}?",
                "Its leader drops the job's record and events; checkpoints and logs on disk stay.",
            ),
            answered,
        )

    @work(exclusive=True, group="forget")
    async def _forget(self, name: str) -> None:
        assert self.forget is not None
        try:
            answer = await self.forget(name)
        except JobCommandError as exc:  # a refusal: shown, nothing changed
            self._say(f"refused: {exc}")
            return
        self.jobs.forget(name)
        self._say(answer)
        self.refresh_from_store(force=True)

    def _say(self, text: str) -> None:
        self.message = text
        if self.is_mounted:
            self._update_status()
