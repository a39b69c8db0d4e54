"""The ranks tab: one line per rank, its state and latest figures."""

from __future__ import annotations

import time
from collections.abc import Callable

from gantry.v1 import job_pb2
from textual.app import ComposeResult

from console.model.cluster import ClusterStore
from console.model.job_rows import RANK_COLUMNS, lost_nodes, rank_cells
from console.model.jobs import BAD_RANK_STATES, JobView
from console.model.rank_coordinates import (
    cells_with_coordinates,
    has_parallelism,
    with_coordinates,
)
from console.ui.screens.job.pane import JobPane
from console.ui.widgets.rank_table import RankTable


class RanksPane(JobPane):
    TAB = "ranks"
    LABEL = "1 Ranks"

    def __init__(
        self, cluster: ClusterStore, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cluster, monotonic=monotonic)
        self.table = RankTable(RANK_COLUMNS, id="rank-table")
        self._rank_keys: list[int] = []

    def compose(self) -> ComposeResult:
        yield self.table

    @property
    def focus_target(self) -> RankTable:
        return self.table

    def draw(self, view: JobView, now: float) -> None:
        table = self.table
        coordinates = has_parallelism(view.spec)
        columns = with_coordinates(RANK_COLUMNS) if coordinates else RANK_COLUMNS
        if columns != table.columns:
            table.set_columns(columns)
            self._rank_keys = []  # every row again, in the new columns
        lost = lost_nodes(view, self.cluster)
        rows = view.rank_rows()
        bad = {
            index
            for index, (rank, _) in enumerate(rows)
            if rank.state in BAD_RANK_STATES or rank.node in lost or rank.HasField("unknown_since")
        }
        keys = [rank.rank for rank, _ in rows]
        if keys != self._rank_keys:
            self._rank_keys = keys
            first, last = 0, len(rows)
            cells: list[tuple[str, ...]] = []
        else:
            # Only the rows on screen (and a page around them) are worked out again: a
            # thousand ranks change every second. The rest keep their last text until
            # scrolled near.
            top = table.scroll_offset.y
            height = table.size.height or 60  # not laid out yet: a generous page
            first, last = max(0, top - height), top + 2 * height
            cells = list(table.rows)
        fresh = [
            rank_cells(rank, latest, rank.node in lost, now) for rank, latest in rows[first:last]
        ]
        if coordinates:
            fresh = [
                cells_with_coordinates(RANK_COLUMNS, cells, rank)
                for cells, (rank, _) in zip(fresh, rows[first:last], strict=True)
            ]
        cells[first:last] = fresh
        table.set_rows(cells, bad)

    def selected_rank(self, view: JobView) -> job_pb2.Rank | None:
        """The rank under the table's cursor (None: the job has no rank yet)."""
        rows = view.rank_rows()
        if not rows:
            return None
        return rows[min(max(self.table.cursor_row, 0), len(rows) - 1)][0]
