"""The checkpoints tab: the job's checkpoints, newest first, with their age and size."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import ComposeResult
from textual.widgets import DataTable

from console.model.bars import DASH, format_bytes
from console.model.cluster import ClusterStore, format_age
from console.model.jobs import JobView, ts
from console.ui.screens.job.pane import JobPane

CHECKPOINT_COLUMNS = ("tag", "step", "age", "size", "")


class CheckpointsPane(JobPane):
    TAB = "checkpoints"
    LABEL = "4 Checkpoints"

    def __init__(
        self, cluster: ClusterStore, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cluster, monotonic=monotonic)
        self.table: DataTable[str] = DataTable(id="checkpoint-table", cursor_type="row")
        self._drawn: tuple[tuple[str, int], ...] = ()

    def compose(self) -> ComposeResult:
        yield self.table

    def on_mount(self) -> None:
        for column in CHECKPOINT_COLUMNS:
            self.table.add_column(column, key=column or "flags")

    @property
    def focus_target(self) -> DataTable[str]:
        return self.table

    def draw(self, view: JobView, now: float) -> None:
        key = tuple((c.tag, c.step) for c in view.checkpoints)
        table = self.table
        if key != self._drawn:
            self._drawn = key
            table.clear()
            for c in reversed(view.checkpoints):
                # A script's own convention is named (hf: checkpoint-N, deepspeed: a tag).
                foreign = c.format not in ("", "gantry", "universal")
                flags = " ".join(
                    f
                    for f, on in (
                        ("latest", c.latest),
                        ("universal", c.universal),
                        (c.format, foreign),
                    )
                    if on
                )
                table.add_row(c.tag, str(c.step), "", format_bytes(c.size_bytes), flags, key=c.tag)
        for c in view.checkpoints:
            saved = ts(c.saved)
            table.update_cell(c.tag, "age", format_age(now - saved) if saved else DASH)
