"""The cluster screen: a summary line, the node table, and the selected node's trouble."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.content import Content
from textual.widgets import Footer, Static

from console.screens import StoreScreen
from console.screens.node import NodeScreen
from console.store import ClusterStore, ConnState, NodeView
from console.widgets.cluster_table import ClusterTable


@dataclass(frozen=True, slots=True)
class _NodeTotals:
    version: int
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
        for gpu in node.latest.gpus:
            gpus += 1
            if gpu.error:
                failed += 1
                continue
            if gpu.HasField("gpu_util_percent"):
                util_sum += gpu.gpu_util_percent
                util_n += 1
            if gpu.HasField("mem_used_bytes") and gpu.HasField("mem_total_bytes"):
                mem_used += gpu.mem_used_bytes
                mem_total += gpu.mem_total_bytes
    elif node.info is not None:
        gpus = node.info.gpu_count
    return _NodeTotals(node.version, gpus, failed, util_sum, util_n, mem_used, mem_total)


class ClusterScreen(StoreScreen):
    """Every node at a glance; enter opens a node."""

    def __init__(
        self,
        store: ClusterStore,
        *,
        clock: Callable[[], float] = time.time,
        cluster_name: str = "",
    ) -> None:
        super().__init__()
        self.store = store
        self.clock = clock
        self.cluster_name = cluster_name
        self._totals: dict[str, _NodeTotals] = {}
        self._selected: str | None = None
        self._header_markup = ""
        self._status_markup = ""

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
        self._update_header()
        self._update_status()

    def on_screen_resume(self) -> None:
        self.refresh_from_store()

    def refresh_from_store(self) -> None:
        self.table.refresh_rows()
        self._update_header()
        self._update_status()

    def on_cluster_table_node_highlighted(self, message: ClusterTable.NodeHighlighted) -> None:
        self._selected = message.node_name
        self._update_status()

    def on_cluster_table_node_selected(self, message: ClusterTable.NodeSelected) -> None:
        self.app.push_screen(NodeScreen(message.node_name, self.store, clock=self.clock))

    def _update_header(self) -> None:
        live = gpus = failed = util_n = mem_used = mem_total = 0
        util_sum = 0.0
        for node in self.store:
            totals = self._totals.get(node.name)
            if totals is None or totals.version != node.version:
                totals = self._totals[node.name] = _totals(node)
            live += node.state is ConnState.LIVE
            gpus += totals.gpus
            failed += totals.failed
            util_sum += totals.util_sum
            util_n += totals.util_n
            mem_used += totals.mem_used
            mem_total += totals.mem_total
        total = len(self.store)
        parts = ["[b]gantry[/b]"]
        if self.cluster_name:
            parts.append("[b $accent]$cluster[/]")
        nodes_style = "$success" if live == total else "$warning"
        parts.append(f"nodes [{nodes_style}]{live}/{total}[/] live")
        parts.append(f"GPUs [b]{gpus}[/b]")
        if failed:
            parts.append(f"[$error]{failed} failing[/]")
        if util_n:
            parts.append(f"util [b]{util_sum / util_n:.0f}%[/b]")
        if mem_total:
            parts.append(f"mem [b]{100 * mem_used / mem_total:.0f}%[/b]")
        markup = " · ".join(parts)
        if markup != self._header_markup:
            self._header_markup = markup
            header = self.query_one("#cluster-header", Static)
            header.update(Content.from_markup(markup, cluster=self.cluster_name), layout=False)

    def _update_status(self) -> None:
        markup, values = self._status()
        key = markup + "\0" + "\0".join(values.values())
        if key == self._status_markup:
            return
        self._status_markup = key
        line = self.query_one("#status-line", Static)
        line.update(Content.from_markup(markup, **values), layout=False)

    def _status(self) -> tuple[str, dict[str, str]]:
        name = self._selected
        if name is not None and name in self.store:
            node = self.store.node(name)
            if node.state is ConnState.LOST:
                return "[$error]$node: $reason[/]", {"node": name, "reason": node.error or "lost"}
            if node.state is ConnState.UNAUTHORIZED:
                return "[$warning]$node: $reason[/]", {"node": name, "reason": node.error}
        down = [n.name for n in self.store if n.state in (ConnState.LOST, ConnState.UNAUTHORIZED)]
        if down:
            shown = ", ".join(down[:6]) + (f" and {len(down) - 6} more" if len(down) > 6 else "")
            return "[$text-muted]not live: $names[/]", {"names": shown}
        return "", {}
