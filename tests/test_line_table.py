"""LineTable, the shared base of the console's tables: header, rows, cursor, dirty lines."""

from __future__ import annotations

import pytest
from rich.segment import Segment
from textual.app import App, ComposeResult
from textual.strip import Strip

from console.ui.widgets.line_table import HEADER_LINES, LineTable


class WordTable(LineTable):
    """A table of words that records what it drew and what it was told."""

    def __init__(self, words: list[str]) -> None:
        super().__init__()
        self.words = words
        self.drawn: list[int] = []
        self.selected: list[int] = []
        self.highlighted: list[int] = []

    def on_mount(self) -> None:
        self.set_row_count(len(self.words))

    def render_header(self, width: int) -> Strip:
        return Strip([Segment("WORD".ljust(width))], width)

    def render_row(self, row: int, width: int, cursor: bool) -> Strip:
        self.drawn.append(row)
        text = ("> " if cursor else "  ") + self.words[row]
        return Strip([Segment(text.ljust(width))], width)

    def select_row(self, row: int) -> None:
        self.selected.append(row)

    def highlight_row(self, row: int) -> None:
        self.highlighted.append(row)


class TableApp(App[None]):
    def __init__(self, words: list[str]) -> None:
        super().__init__()
        self.words = words

    def compose(self) -> ComposeResult:
        yield WordTable(self.words)

    def on_mount(self) -> None:
        self.query_one(WordTable).focus()


def words(count: int) -> list[str]:
    return [f"word-{i:03d}" for i in range(count)]


async def test_header_rows_and_blank_lines() -> None:
    app = TableApp(words(3))
    async with app.run_test(size=(30, 8)) as pilot:
        await pilot.pause()
        table = app.query_one(WordTable)
        assert table.row_count == 3
        assert table.render_line(0).text.rstrip() == "WORD"
        assert table.render_line(1).text.rstrip() == "> word-000"
        assert table.render_line(3).text.rstrip() == "  word-002"
        assert table.render_line(4).text.strip() == ""
        assert table.render_line(1).cell_length == table.content_width


async def test_mount_highlights_the_first_row_and_keys_move_the_cursor() -> None:
    app = TableApp(words(100))
    async with app.run_test(size=(30, 12)) as pilot:
        await pilot.pause()
        table = app.query_one(WordTable)
        assert table.highlighted == [0]
        await pilot.press("down", "j", "up")
        assert table.cursor_row == 1
        assert table.highlighted == [0, 1, 2, 1]
        await pilot.press("up", "up")
        assert table.cursor_row == 0  # clamped
        await pilot.press("pagedown")
        page = table.scrollable_content_region.height - HEADER_LINES - 1
        assert table.cursor_row == page
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor_row == 99
        visible = table.scrollable_content_region.height - HEADER_LINES
        assert table.scroll_offset.y == 100 - visible
        assert table.visible_rows() == range(100 - visible, 100)
        await pilot.press("home")
        await pilot.pause()
        assert (table.cursor_row, table.scroll_offset.y) == (0, 0)


async def test_enter_and_a_second_click_select_the_cursor_row() -> None:
    app = TableApp(words(5))
    async with app.run_test(size=(30, 10)) as pilot:
        table = app.query_one(WordTable)
        await pilot.press("down", "down", "enter")
        assert table.selected == [2]
        await pilot.click(WordTable, offset=(2, HEADER_LINES + 4))
        assert table.cursor_row == 4
        assert table.selected == [2]
        await pilot.click(WordTable, offset=(2, HEADER_LINES + 4), times=2)
        assert table.selected == [2, 4]
        await pilot.click(WordTable, offset=(2, 0))  # the header selects nothing
        assert table.cursor_row == 4


async def test_only_the_rows_marked_are_drawn_again() -> None:
    app = TableApp(words(100))
    async with app.run_test(size=(30, 12)) as pilot:
        await pilot.pause()
        table = app.query_one(WordTable)
        table.drawn.clear()
        table.words[3] = "changed"
        table.words[60] = "off screen"
        table.refresh_row_lines([3, 4, 6, 60])
        await pilot.pause()
        assert sorted(set(table.drawn)) == [3, 4, 6]
        assert table.render_line(3 + HEADER_LINES).text.rstrip() == "  changed"
        table.drawn.clear()
        table.refresh_row_lines([60, 70])
        await pilot.pause()
        assert table.drawn == []


async def test_many_runs_make_one_full_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    app = TableApp(words(100))
    async with app.run_test(size=(30, 40)) as pilot:
        await pilot.pause()
        table = app.query_one(WordTable)
        calls: list[int] = []
        refresh = table.refresh

        def spy(*regions: object, **kwargs: object) -> LineTable:
            calls.append(len(regions))
            return refresh(*regions, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(table, "refresh", spy)
        table.refresh_row_lines([1, 2, 3, 7])
        assert calls == [2]  # one region per run of adjacent rows
        calls.clear()
        table.refresh_row_lines(range(0, 2 * (LineTable.MAX_REFRESH_RUNS + 1), 2))
        assert calls == [0]  # the whole widget at once


async def test_a_shorter_table_pulls_the_cursor_onto_its_last_row() -> None:
    app = TableApp(words(10))
    async with app.run_test(size=(30, 20)) as pilot:
        table = app.query_one(WordTable)
        await pilot.press("end")
        assert table.cursor_row == 9
        del table.words[4:]
        table.set_row_count(4)
        await pilot.pause()
        assert table.cursor_row == 3
        assert table.render_line(5).text.strip() == ""
        table.set_row_count(0)
        assert table.cursor_row == 0
        await pilot.press("enter", "down")
        assert table.selected == []
