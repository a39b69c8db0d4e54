"""Console widgets: the cluster table and screens under App.run_test() (their pure parts:
tests/test_console_format.py)."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.strip import Strip
from textual.widgets import Static

from console.model.bars import (
    DASH,
)
from console.model.cluster import ClusterStore
from console.ui.app import GantryApp
from console.ui.screens.cluster import ClusterScreen
from console.ui.screens.node import TIMES, NodeScreen
from console.ui.widgets.cluster_table import ClusterTable
from console.ui.widgets.gpu_panel import GpuPanel
from console.ui.widgets.sparkline import ScaledSparkline
from tests.console_fixtures import (
    FIXED,
    LOST_ERROR,
    NVML_ERROR,
    cluster_store,
    make_sample,
    targets_for,
)

# -- the app ---------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_app(store: ClusterStore, clock: Clock, interval: float = 0.05) -> GantryApp:
    return GantryApp(
        targets_for(store), store=store, connect=False, clock=clock, refresh_interval_s=interval
    )


def table_of(app: GantryApp) -> ClusterTable:
    return app.screen.query_one(ClusterTable)


async def test_rows_appear_for_every_node() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ClusterScreen)
        table = table_of(app)
        assert table.node_names == store.names()
        texts = [table.row_text(i) for i in range(len(store))]
        for name, text in zip(store.names(), texts, strict=True):
            assert text.lstrip().startswith(name)
        by_name = dict(zip(store.names(), texts, strict=True))
        assert "live" in by_name["node-00"]
        assert "lost 12s" in by_name["node-03"]
        assert "unauth 3s" in by_name["node-04"]
        assert "connecting" in by_name["node-07"]
        assert "no GPU" in by_name["node-05"]
        assert "!" in by_name["node-02"]
        assert DASH in by_name["node-01"]
        assert "1.0T" in by_name["node-05"]


async def test_wide_terminal_draws_bars_with_percentages() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = table_of(app)
        assert table.layout_in_use.util_bar >= 2
        row = table.row_text(0)
        assert "GB/s" in row and "MB/s" in row
        util = store.node("node-00").latest.gpus[0].gpu_util_percent  # type: ignore[union-attr]
        assert f"{util:3.0f} " in row
        assert "unauthorized 3s" in table.row_text(4)


async def test_cursor_moves_with_keys() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(80, 24)) as pilot:
        table = table_of(app)
        assert table.cursor_row == 0
        await pilot.press("down", "j")
        assert table.cursor_row == 2
        await pilot.press("k")
        assert table.cursor_row == 1
        await pilot.press("end")
        assert table.cursor_row == len(store) - 1
        await pilot.press("down")
        assert table.cursor_row == len(store) - 1
        await pilot.press("home", "up")
        assert table.cursor_row == 0
        await pilot.press("pagedown")
        assert table.cursor_row == len(store) - 1
        await pilot.press("pageup")
        assert table.cursor_row == 0
        assert table.cursor_node == "node-00"


async def test_cursor_scrolls_a_long_table() -> None:
    store = ClusterStore()
    for i in range(60):
        store.add_node(f"n{i:02d}", "h:1", FIXED)
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(80, 24)) as pilot:
        table = table_of(app)
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor_row == 59
        assert table.scroll_offset.y > 0
        visible = table.size.height - 1
        assert table.scroll_offset.y <= 59 < table.scroll_offset.y + visible
        await pilot.press("home")
        await pilot.pause()
        assert table.scroll_offset.y == 0


async def test_enter_opens_the_node_screen_and_escape_returns() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("down", "down")
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeScreen)
        assert screen.node_name == "node-02"
        panels = list(screen.query(GpuPanel))
        assert [p.index for p in panels] == list(range(8))
        assert panels[5].has_class("-error")
        assert not panels[0].has_class("-error")
        summary = str(screen.query_one("#xid-summary", Static).content)
        assert f"79 {TIMES}1" in summary and f"13 {TIMES}2" in summary
        events = str(screen.query_one("#xid-list", Static).content)
        # Newest first.
        assert events.index("XID 79") < events.index("XID 13")
        assert len(panels[0].spark_data("util")) == 60
        assert panels[0].query(ScaledSparkline)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ClusterScreen)
        assert table_of(app).cursor_row == 2


async def test_node_screen_updates_gpu_panels_as_they_scroll_into_view() -> None:
    store = cluster_store(now=FIXED - 1)
    clock = Clock(FIXED)
    app = make_app(store, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, NodeScreen)
        first, last = screen.query_one("#gpu-0", GpuPanel), screen.query_one("#gpu-7", GpuPanel)
        sample = make_sample("node-00", 0, 1000, FIXED, 8)
        for gpu in sample.gpus:
            gpu.gpu_util_percent = 100.0
        store.apply_sample("node-00", sample, FIXED)
        await pilot.pause(0.2)
        assert first.value_text("util") == "100%"
        assert len(first.spark_data("util")) == 61
        # GPU 7 is below the fold: it is brought up to date once scrolled to.
        assert last.value_text("util") != "100%"
        screen.query_one("#gpu-panels").scroll_end(animate=False)
        await pilot.pause()
        await pilot.pause()
        assert last.value_text("util") == "100%"
        assert len(last.spark_data("util")) == 61


async def test_node_screen_without_driver_and_with_unsupported_fields() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(NodeScreen("node-05", store, clock=app.clock))
        await pilot.pause()
        title = str(app.screen.query_one("#node-title", Static).content)
        assert f"no NVIDIA driver: {NVML_ERROR}" in title
        assert app.screen.query_one("#no-gpu", Static)
        host = str(app.screen.query_one("#node-host", Static).content)
        assert "CPU" in host and "GiB" in host
        app.pop_screen()
        app.push_screen(NodeScreen("node-01", store, clock=app.clock))
        await pilot.pause()
        panel = app.screen.query_one("#gpu-2", GpuPanel)
        assert panel.value_text("util") == DASH
        assert panel.value_text("power") == DASH
        assert panel.value_text("temp") == "60 °C"
        details = str(panel.query_one(".gpu-details", Static).content)
        assert f"throttle {DASH}" in details
        assert f"ECC c/u vol {DASH}/{DASH} agg {DASH}/{DASH}" in details


async def test_lost_row_age_follows_the_injected_clock() -> None:
    store = cluster_store()
    clock = Clock(FIXED)
    app = make_app(store, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        table = table_of(app)
        assert "lost 12s" in table.row_text(3)
        await pilot.press("down", "down", "down")
        await pilot.pause()
        status = str(app.screen.query_one("#status-line", Static).content)
        assert status == f"node-03: {LOST_ERROR}"
        clock.now = FIXED + 1
        # Live nodes' samples are only 1 s old: nothing expires, the age moves on.
        app.tick()
        await pilot.pause()
        assert "lost 13s" in table.row_text(3)
        assert "unauth 4s" in table.row_text(4)
        assert "live" in table.row_text(0)


async def test_silent_node_expires_to_lost() -> None:
    store = cluster_store()
    clock = Clock(FIXED)
    app = make_app(store, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        clock.now = FIXED + 30
        app.tick()
        await pilot.pause()
        text = table_of(app).row_text(0)
        assert "lost 30s" in text


async def test_unchanged_rows_are_not_rendered_again() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = table_of(app)
        rendered = table.rows_rendered
        assert rendered >= len(store)
        table.refresh()  # a full repaint: every visible line drawn from the cache
        await pilot.pause()
        app.refresh_screen()
        app.tick()
        await pilot.pause()
        assert table.rows_rendered == rendered


async def test_store_changes_are_drawn_after_the_refresh_interval() -> None:
    store = cluster_store(now=FIXED - 2)
    app = make_app(store, Clock(FIXED), interval=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = table_of(app)
        # Every sampled row was drawn once; the lost node's sample is 20 s older.
        assert list(table.repaint_delays_s) == [2.0, 2.0, 2.0, 22.0, 2.0, 2.0]
        rendered = table.rows_rendered
        before = table.row_text(0)
        sample = make_sample("node-00", 0, 1000, FIXED - 1, 8)
        for gpu in sample.gpus:
            gpu.gpu_util_percent = 100.0
        store.apply_sample("node-00", sample, FIXED - 1)
        await pilot.pause(0.2)
        after = table.row_text(0)
        assert after != before
        assert "████████" in after
        # Only the changed row was built again.
        assert table.rows_rendered == rendered + 1
        assert list(table.repaint_delays_s)[-1] == 1.0
        assert len(table.repaint_delays_s) == 7


async def test_only_the_lines_of_changed_rows_are_drawn_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = cluster_store(now=FIXED - 2)
    app = make_app(store, Clock(FIXED), interval=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = table_of(app)
        drawn: list[int] = []
        render_line = table.render_line

        def spy(y: int) -> Strip:
            drawn.append(y)
            return render_line(y)

        # Textual calls render_line only for lines marked dirty; every other
        # line of the widget comes from its line cache.
        monkeypatch.setattr(table, "render_line", spy)
        rendered = table.rows_rendered
        before = [table.row_text(row) for row in range(len(store))]
        for node, name in ((0, "node-00"), (2, "node-02")):
            sample = make_sample(name, node, 1000, FIXED - 1, 8, error_gpu=5 if node == 2 else None)
            for gpu in sample.gpus:
                gpu.gpu_util_percent = 100.0
            assert store.apply_sample(name, sample, FIXED - 1)
        await pilot.pause(0.2)
        # Line 0 is the column header; node-00 and node-02 are lines 1 and 3.
        assert sorted(set(drawn)) == [1, 3]
        assert table.rows_rendered == rendered + 2
        after = [table.row_text(row) for row in range(len(store))]
        assert [row for row in range(len(store)) if after[row] != before[row]] == [0, 2]
        assert "100 █████ 100" in after[0]
        drawn.clear()
        app.refresh_screen()
        app.tick()
        await pilot.pause(0.2)
        assert drawn == []
        assert table.rows_rendered == rendered + 2


async def test_figures_start_their_own_segment_in_live_and_lost_rows() -> None:
    # Right-aligned figures keep their padding with the gap before them, so a
    # viewer that trims each segment (librsvg) aligns live and lost rows alike.
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        table = table_of(app)
        assert table.layout_in_use.util_bar >= 2
        for row in (0, 2, 3, 5):
            segments = list(table.row_strip(row))
            for segment in segments:
                assert segment.text.strip() == "" or not segment.text.startswith(" "), (
                    row,
                    segment.text,
                )
        live, lost = table.row_text(0), table.row_text(3)
        gpu0 = store.node("node-00").latest.gpus[0]  # type: ignore[union-attr]
        gpu3 = store.node("node-03").latest.gpus[0]  # type: ignore[union-attr]
        start = live.index(f"{gpu0.gpu_util_percent:3.0f} ")
        assert lost.index(f"{gpu3.gpu_util_percent:3.0f} ") == start


async def test_header_counts_follow_the_store_and_figures_wait_their_interval() -> None:
    store = cluster_store(now=FIXED - 2)
    clock = Clock(FIXED)
    app = make_app(store, clock)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ClusterScreen)
        header = screen.query_one("#cluster-header", Static)
        text = str(header.content)
        assert "nodes 5/8 live · 40 GPUs (1 failing) · util " in text
        monotonic = [1000.0]
        screen._monotonic = lambda: monotonic[0]
        screen._figures_shown_at = monotonic[0]
        util = text.split("util ")[1].split("%")[0]
        for node, name in ((0, "node-00"), (6, "node-06")):
            sample = make_sample(name, node, 1000, FIXED - 1, 8)
            for gpu in sample.gpus:
                gpu.gpu_util_percent = 100.0
            assert store.apply_sample(name, sample, FIXED - 1)
        await pilot.pause(0.2)
        # The cluster's figures move only once their interval has passed...
        assert f"util {util}%" in str(header.content)
        monotonic[0] += 1.0
        app.tick()  # the app refreshes once a second even when the store is still
        await pilot.pause()
        text = str(header.content)
        assert f"util {util}%" not in text
        # ...node counts at once.
        store.set_lost("node-01", FIXED, LOST_ERROR)
        await pilot.pause(0.2)
        assert "nodes 4/8 live" in str(header.content)


class TableApp(App[None]):
    """The table alone, to see the messages it posts."""

    def __init__(self, store: ClusterStore) -> None:
        super().__init__()
        self.store = store
        self.selected: list[str] = []
        self.highlighted: list[str] = []

    def compose(self) -> ComposeResult:
        yield ClusterTable(self.store, clock=lambda: FIXED)

    def on_cluster_table_node_selected(self, message: ClusterTable.NodeSelected) -> None:
        self.selected.append(message.node_name)

    def on_cluster_table_node_highlighted(self, message: ClusterTable.NodeHighlighted) -> None:
        self.highlighted.append(message.node_name)


async def test_table_posts_selected_and_highlighted() -> None:
    app = TableApp(cluster_store())
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(ClusterTable)
        table.focus()
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        assert app.selected == ["node-02"]
        assert app.highlighted[0] == "node-00"
        assert app.highlighted[-1] == "node-02"
        await pilot.click(ClusterTable, offset=(3, 4))
        await pilot.pause()
        assert table.cursor_row == 3
        await pilot.click(ClusterTable, offset=(3, 4), times=2)
        await pilot.pause()
        assert app.selected == ["node-02", "node-03"]


async def test_enter_on_a_lost_node_shows_its_error() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(80, 24)) as pilot:
        table_of(app).cursor_row = 3
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, NodeScreen)
        title = str(app.screen.query_one("#node-title", Static).content)
        assert "lost 12s" in title and LOST_ERROR in title


async def test_quit_key_exits() -> None:
    store = cluster_store()
    app = make_app(store, Clock(FIXED))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
