"""The cluster screen: a summary line, the node table, and the selected node's trouble."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.widgets import Footer, Static

from console.model.cluster import ClusterStore, ConnState, NodeView
from console.ui.screens import StoreScreen
from console.ui.screens.node import NodeScreen
from console.ui.widgets.cluster_table import ClusterTable
from console.ui.widgets.spans import spaces_outside_spans

# Cluster-wide util and mem figures change with almost every sample; the header
# shows them at most this often. Node and GPU counts are shown at once.
HEADER_FIGURES_INTERVAL_S = 1.0


class _NodeTotals(NamedTuple):
    version: int
    live: bool
    down: bool
    gpus: int
    failed: int
    util_sum: float
    util_n: int
    mem_used: int
    mem_total: int


def _totals(node: NodeView) -> _NodeTotals:
    gpus = failed = util_n = mem_used = mem_total = 0
    util_sum = 0.0
    if node.latest is not None:
        samples = node.latest.gpus
        gpus = len(samples)
        for gpu in samples:
            if gpu.error:
                failed += 1
                continue
            has = gpu.HasField
            if has("gpu_util_percent"):
                util_sum += gpu.gpu_util_percent
                util_n += 1
            if has("mem_used_bytes") and has("mem_total_bytes"):
                mem_used += gpu.mem_used_bytes
                mem_total += gpu.mem_total_bytes
    elif node.info is not None:
        gpus = node.info.gpu_count
    state = node.state
    return _NodeTotals(
        node.version,
        state is ConnState.LIVE,
        state is ConnState.LOST or state is ConnState.UNAUTHORIZED,
        gpus,
        failed,
        util_sum,
        util_n,
        mem_used,
        mem_total,
    )


@dataclass(slots=True)
class _ClusterTotals:
    """Sums over every node, kept up to date one changed node at a time."""

    nodes: int = 0
    live: int = 0
    gpus: int = 0
    failed: int = 0
    util_sum: float = 0.0
    util_n: int = 0
    mem_used: int = 0
    mem_total: int = 0

    def replace(self, old: _NodeTotals | None, new: _NodeTotals) -> None:
        """Takes `old` (a node's previous totals, if any) out of the sums and puts `new` in."""
        if old is None:
            self.nodes += 1
            self.live += new.live
            self.gpus += new.gpus
            self.failed += new.failed
            self.util_sum += new.util_sum
            self.util_n += new.util_n
            self.mem_used += new.mem_used
            self.mem_total += new.mem_total
        else:
            self.live += new.live - old.live
            self.gpus += new.gpus - old.gpus
            self.failed += new.failed - old.failed
            self.util_sum += new.util_sum - old.util_sum
            self.util_n += new.util_n - old.util_n
            self.mem_used += new.mem_used - old.mem_used
            self.mem_total += new.mem_total - old.mem_total


class ClusterScreen(StoreScreen):
    """Every node at a glance; enter opens a node, J the jobs, r the restart dialog of
    the selected node's failed job."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("J", "jobs", "Jobs", key_display="J"),
        Binding("T", "tasks", "Tasks", key_display="T"),
        Binding("r", "restart", "Restart"),
    ]

    def __init__(
        self,
        store: ClusterStore,
        *,
        clock: Callable[[], float] = time.time,
        cluster_name: str = "",
        open_jobs: Callable[[], None] | None = None,
        open_tasks: Callable[[], None] | None = None,
        restart_node: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.open_jobs = open_jobs
        self.open_tasks = open_tasks
        self.restart_node = restart_node
        self.clock = clock
        self.cluster_name = cluster_name
        self._totals: dict[str, _NodeTotals] = {}
        self._sums = _ClusterTotals()
        self._scanned_version = -1
        self._selected: str | None = None
        self._status_stale = True
        self._header_counts: tuple[int, ...] = ()
        self._header_figures: tuple[str, str] = ("", "")
        self._figures_shown_at = -HEADER_FIGURES_INTERVAL_S
        self._header_markup = ""
        self._status_markup = ""
        # For throttling the header's figures only; shown times use `clock`.
        self._monotonic: Callable[[], float] = time.monotonic

    def compose(self) -> ComposeResult:
        yield Static(id="cluster-header")
        yield ClusterTable(self.store, clock=self.clock, id="nodes")
        yield Static(id="status-line")
        yield Footer()

    @property
    def table(self) -> ClusterTable:
        return self.query_one("#nodes", ClusterTable)

    def on_mount(self) -> None:
        self.table.focus()
        self._scan()
        self._update_header()
        self._update_status()

    def on_screen_resume(self) -> None:
        self.refresh_from_store()

    def refresh_from_store(self) -> None:
        self.table.refresh_rows()
        if self._scan() or self._header_figures_due():
            self._update_header()
        if self._status_stale:
            self._update_status()

    def on_cluster_table_node_highlighted(self, message: ClusterTable.NodeHighlighted) -> None:
        self._selected = message.node_name
        self._update_status()

    def action_jobs(self) -> None:
        if self.open_jobs is not None:
            self.open_jobs()

    def action_tasks(self) -> None:
        if self.open_tasks is not None:
            self.open_tasks()

    def action_restart(self) -> None:
        if self.restart_node is not None and self._selected is not None:
            self.restart_node(self._selected)

    def on_cluster_table_node_selected(self, message: ClusterTable.NodeSelected) -> None:
        self.app.push_screen(NodeScreen(message.node_name, self.store, clock=self.clock))

    def _scan(self) -> bool:
        """Brings the cluster sums up to date; False when the store did not move.

        One integer compare per node; only nodes whose version moved are summed
        again. Flags the status line when a node went down or came back.
        """
        store = self.store
        if store.version == self._scanned_version:
            return False
        self._scanned_version = store.version
        totals, sums = self._totals, self._sums
        for node in store:
            old = totals.get(node.name)
            if old is not None and old.version == node.version:
                continue
            new = totals[node.name] = _totals(node)
            sums.replace(old, new)
            if new.down or (old is not None and old.down) or node.name == self._selected:
                self._status_stale = True
        return True

    def _header_figures_due(self) -> bool:
        return self._monotonic() - self._figures_shown_at >= HEADER_FIGURES_INTERVAL_S

    def _update_header(self) -> None:
        s = self._sums
        counts = (s.live, s.nodes, s.gpus, s.failed)
        figures = (
            f"{s.util_sum / s.util_n:.0f}%" if s.util_n else "",
            f"{100 * s.mem_used / s.mem_total:.0f}%" if s.mem_total else "",
        )
        if counts == self._header_counts and (
            # Only the figures moved: they wait for their interval.
            figures == self._header_figures or not self._header_figures_due()
        ):
            return
        self._header_counts = counts
        self._header_figures = figures
        self._figures_shown_at = self._monotonic()
        parts = ["[b]gantry[/b]"]
        if self.cluster_name:
            parts.append("[b $accent]$cluster[/]")
        nodes_style = "$success" if s.live == s.nodes else "$warning"
        parts.append(f"nodes [{nodes_style}]{s.live}/{s.nodes}[/] live")
        gpus = f"[b]{s.gpus}[/b] GPU" + ("" if s.gpus == 1 else "s")
        if s.failed:
            gpus += f" [$error]({s.failed} failing)[/]"
        parts.append(gpus)
        util, mem = figures
        if util:
            parts.append(f"util [b]{util}[/b]")
        if mem:
            parts.append(f"mem [b]{mem}[/b]")
        markup = " · ".join(parts)
        if markup != self._header_markup:
            self._header_markup = markup
            header = self.query_one("#cluster-header", Static)
            content = Content.from_markup(markup, cluster=self.cluster_name)
            header.update(spaces_outside_spans(content), layout=False)

    def _update_status(self) -> None:
        self._status_stale = False
        markup, values = self._status()
        key = markup + "\0" + "\0".join(values.values())
        if key == self._status_markup:
            return
        self._status_markup = key
        line = self.query_one("#status-line", Static)
        line.update(spaces_outside_spans(Content.from_markup(markup, **values)), layout=False)

    def _status(self) -> tuple[str, dict[str, str]]:
        name = self._selected
        if name is not None and name in self.store:
            node = self.store.node(name)
            if node.state is ConnState.LOST:
                return "[$error]$node: $reason[/]", {"node": name, "reason": node.error or "lost"}
            if node.state is ConnState.UNAUTHORIZED:
                return "[$warning]$node: $reason[/]", {"node": name, "reason": node.error}
            if node.job_fault:
                return "[$error]$node: $fault[/] · r: restart", {
                    "node": name,
                    "fault": node.job_fault,
                }
            if node.jobs_text:
                return "$node runs $jobs", {"node": name, "jobs": node.jobs_text}
        down = [n.name for n in self.store if n.state in (ConnState.LOST, ConnState.UNAUTHORIZED)]
        if down:
            shown = ", ".join(down[:6]) + (f" and {len(down) - 6} more" if len(down) > 6 else "")
            return "[$text-muted]not live: $names[/]", {"names": shown}
        return "", {}
