"""RankTable: cursor keys, enter, red rows, and repaints limited to the lines that changed."""

from __future__ import annotations

from typing import Any

from textual.app import App, ComposeResult
from textual.geometry import Region

from console.ui.widgets.rank_table import HEADER_LINES, RankTable

COLUMNS = ("rank", "node", "state", "step")


def make_rows(count: int, step: int = 10) -> list[tuple[str, ...]]:
    return [(str(i), f"node-{i // 8:02d}", "running", str(step)) for i in range(count)]


class TableApp(App[None]):
    def __init__(self, rows: list[tuple[str, ...]], bad: set[int] | None = None) -> None:
        super().__init__()
        self.rows = rows
        self.bad = bad or set()
        self.selected: list[int] = []

    def compose(self) -> ComposeResult:
        yield RankTable(COLUMNS, id="ranks")

    def on_mount(self) -> None:
        table = self.query_one(RankTable)
        table.set_rows(self.rows, self.bad)
        table.focus()

    def on_rank_table_row_selected(self, event: RankTable.RowSelected) -> None:
        self.selected.append(event.row)


async def test_cursor_keys_move_and_scroll() -> None:
    app = TableApp(make_rows(100))
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(RankTable)
        assert table.row_count == 100
        assert table.cursor_row == 0
        await pilot.press("down", "down")
        assert table.cursor_row == 2
        await pilot.press("up")
        assert table.cursor_row == 1
        await pilot.press("up", "up")
        assert table.cursor_row == 0  # clamped
        await pilot.press("pagedown")
        page = table.scrollable_content_region.height - HEADER_LINES - 1
        assert table.cursor_row == page
        await pilot.press("end")
        assert table.cursor_row == 99
        await pilot.pause()
        # The cursor row is on screen: scrolled so that it is the last visible line.
        visible = table.scrollable_content_region.height - HEADER_LINES
        assert table.scroll_offset.y == 100 - visible
        await pilot.press("pageup")
        assert table.cursor_row == 99 - page
        await pilot.press("home")
        assert table.cursor_row == 0
        await pilot.pause()
        assert table.scroll_offset.y == 0


async def test_enter_posts_row_selected() -> None:
    app = TableApp(make_rows(5))
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        assert app.selected == [2]


async def test_lines_show_cells_in_fixed_columns_under_a_header() -> None:
    app = TableApp([("7", "a-very-long-node-name", "hung", "12")])
    async with app.run_test(size=(60, 6)) as pilot:
        await pilot.pause()
        table = app.query_one(RankTable)
        header = table.render_line(0).text
        line = table.render_line(1).text
        assert header.split() == list(COLUMNS)
        # The node name is cut to its column; every column starts where its header does.
        assert "a-very-lo…" in line
        for label, cell in zip(COLUMNS, ("7", "a-very-lo…", "hung", "12"), strict=True):
            assert header.index(label) == line.index(cell)


async def test_bad_rows_are_red() -> None:
    app = TableApp(make_rows(3), bad={2})
    async with app.run_test(size=(60, 8)) as pilot:
        await pilot.press("down")  # the cursor off neither row compared below
        await pilot.pause()
        table = app.query_one(RankTable)
        bad_color = table.get_component_rich_style("rank-table--bad").color
        assert bad_color is not None

        def colors(y: int) -> set[Any]:
            return {s.style.color for s in table.render_line(y) if s.text.strip() and s.style}

        assert colors(HEADER_LINES + 2) == {bad_color}
        assert bad_color not in colors(HEADER_LINES + 0)
        # Back to good: drawn again, not red.
        table.set_rows(make_rows(3), set())
        await pilot.pause()
        assert bad_color not in colors(HEADER_LINES + 2)


async def test_set_rows_refreshes_only_changed_lines() -> None:
    rows = make_rows(50)
    app = TableApp(rows)
    async with app.run_test(size=(60, 12)) as pilot:
        await pilot.pause()
        table = app.query_one(RankTable)
        refreshed: list[tuple[Region, ...]] = []
        original = table.refresh

        def spy(*regions: Region, **kwargs: Any) -> RankTable:
            refreshed.append(regions)
            return original(*regions, **kwargs)

        table.refresh = spy  # type: ignore[method-assign]
        rendered = table.lines_rendered

        # The same text: nothing to repaint, nothing built.
        table.set_rows(make_rows(50), set())
        await pilot.pause()
        assert refreshed == []
        assert table.lines_rendered == rendered

        # Two visible rows and one far below the screen move: the two lines repaint.
        changed = list(rows)
        changed[3] = ("3", "node-00", "running", "11")
        changed[5] = ("5", "node-00", "running", "11")
        changed[40] = ("40", "node-05", "running", "11")
        table.set_rows(changed, set())
        width = table.content_width  # the scrollbar's column is not the line's
        assert refreshed == [
            (Region(0, HEADER_LINES + 3, width, 1), Region(0, HEADER_LINES + 5, width, 1))
        ]
        await pilot.pause()
        assert table.lines_rendered == rendered + 2

        # Every row moves: one full refresh.
        refreshed.clear()
        table.set_rows(make_rows(50, step=12), set())
        assert refreshed == [()]

        # A new row count: a full refresh with the new height, the cursor kept in range.
        await pilot.press("end")
        refreshed.clear()
        table.set_rows(make_rows(4), set())
        assert () in refreshed
        assert table.row_count == 4
        assert table.cursor_row == 3
        assert table.virtual_size.height == 4 + HEADER_LINES


async def test_cursor_moves_on_a_scrolled_table_repaint_the_lines_on_screen() -> None:
    app = TableApp(make_rows(100))
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(RankTable)
        await pilot.press("end")
        await pilot.pause()
        top = table.scroll_offset.y
        assert top > 0
        refreshed: list[tuple[Region, ...]] = []
        original = table.refresh

        def spy(*regions: Region, **kwargs: Any) -> RankTable:
            refreshed.append(regions)
            return original(*regions, **kwargs)

        table.refresh = spy  # type: ignore[method-assign]
        await pilot.press("up")
        lines = {region.y for regions in refreshed for region in regions}
        # The old and the new cursor row, where they are on screen (not scrolled twice).
        assert lines == {99 - top + HEADER_LINES, 98 - top + HEADER_LINES}


class TwoTables(App[None]):
    def compose(self) -> ComposeResult:
        yield RankTable(COLUMNS, id="a")
        yield RankTable(COLUMNS, id="b")

    def on_mount(self) -> None:
        for table in self.query(RankTable):
            table.set_rows(make_rows(8), set())
        self.query_one("#a", RankTable).focus()


async def test_a_focus_change_builds_again_only_the_cursor_line() -> None:
    app = TwoTables()
    async with app.run_test(size=(60, 24)) as pilot:
        await pilot.pause()
        first, second = app.query_one("#a", RankTable), app.query_one("#b", RankTable)
        built = first.lines_rendered, second.lines_rendered
        assert min(built) >= 8  # every row drawn once
        cursor = first.get_component_rich_style("rank-table--cursor")
        await pilot.press("tab")  # the focus moves to the second table: both restyle
        await pilot.pause()
        assert app.focused is second
        assert (first.lines_rendered, second.lines_rendered) == (built[0] + 1, built[1] + 1)
        # The unfocused cursor looks different: its line was built again, not reused.
        assert first.get_component_rich_style("rank-table--cursor") != cursor
