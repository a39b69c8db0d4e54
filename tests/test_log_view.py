"""The log screen driven through Textual's pilot, and its snapshots at 80x24.

The screen polls its buffer every 0.1 s; the tests call `poll()` themselves after
feeding lines, so nothing waits on the timer. Update the snapshots with
`pytest tests/test_log_view.py --snapshot-update` and look at the SVGs under
tests/__snapshots__/test_log_view/ before committing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Static

from console.model.log_buffer import LogBuffer
from console.model.log_streams import LogMode, RankLogs
from console.ui.screens.logs import LogScreen
from console.ui.widgets.log_view import LogView

TITLE = "demo-moe · rank 1 · attempt 2 · stdout"
RANK_TITLE = "demo-moe · rank 1 · attempt 2"  # both streams: the screen adds the mode
SIZE = (80, 24)


class LogApp(App[None]):
    """A bare app with LogScreen pushed over its default screen."""

    ENABLE_COMMAND_PALETTE = False
    # GantryApp's own bindings, so the footer reads as it does in the console.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help_quit", "Help", key_display="?"),
    ]

    def __init__(
        self,
        buffer: LogBuffer | RankLogs,
        *,
        follow: bool = True,
        sync_interval_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        title: str = TITLE,
    ) -> None:
        super().__init__()
        self.title_text = title
        self.buffer = buffer
        self.follow = follow
        self.sync_interval_s = sync_interval_s  # 0: every poll shows what came (most tests)
        self.monotonic = monotonic

    def on_mount(self) -> None:
        screen = LogScreen(
            self.title_text,
            self.buffer,
            follow=self.follow,
            sync_interval_s=self.sync_interval_s,
            monotonic=self.monotonic,
        )
        self.push_screen(screen)


def step_lines(start: int, count: int) -> list[str]:
    return [f"step={i} loss={2.5 - i / 1000:.4f}" for i in range(start, start + count)]


def filled(count: int, max_lines: int = 100_000) -> LogBuffer:
    buffer = LogBuffer(max_lines)
    buffer.extend(step_lines(0, count))
    return buffer


def log_screen(app: App[None]) -> LogScreen:
    screen = app.screen
    assert isinstance(screen, LogScreen)
    return screen


async def feed(pilot: Pilot[None], lines: Iterable[str]) -> None:
    screen = log_screen(pilot.app)
    screen.buffer.extend(lines)
    screen.poll()
    await pilot.pause()


def last_visible(view: LogView) -> str:
    return view.visible_text()[-1]


# -- follow and pause -----------------------------------------------------------


async def test_follow_keeps_the_last_line_visible() -> None:
    app = LogApp(filled(10))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        assert last_visible(view) == "step=9 loss=2.4910"
        for start in (10, 110, 210):
            await feed(pilot, step_lines(start, 100))
            assert last_visible(view) == step_lines(start + 99, 1)[0]
            assert view.live
        assert view.visible_range()[1] == 309
        assert "follow" in screen.status_text()
        assert "new" not in screen.status_text()


async def test_a_firehose_is_taken_in_at_most_every_sync_interval_s() -> None:
    now = [100.0]
    app = LogApp(filled(10), sync_interval_s=0.25, monotonic=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await feed(pilot, step_lines(10, 100))  # the first poll past the interval: shown
        assert last_visible(view) == step_lines(109, 1)[0]
        now[0] += 0.1
        await feed(pilot, step_lines(110, 100))  # too soon: waits
        assert last_visible(view) == step_lines(109, 1)[0]
        now[0] += 0.2
        screen.poll()  # nothing new since, but the waiting lines are due
        await pilot.pause()
        assert last_visible(view) == step_lines(209, 1)[0] and view.live
        # Paused, the same: new lines are counted (and the ring shifted) at that pace.
        await pilot.press("space")
        now[0] += 0.3
        await feed(pilot, step_lines(210, 5))
        assert view.new_lines == 5
        now[0] += 0.1
        await feed(pilot, step_lines(215, 5))  # too soon: waits
        assert view.new_lines == 5
        now[0] += 0.2
        screen.poll()
        assert view.new_lines == 10 and not view.live


async def test_pause_keeps_the_view_still_and_counts_new_lines() -> None:
    app = LogApp(filled(100))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await pilot.press("space")
        shown = view.visible_text()
        await feed(pilot, step_lines(100, 50))
        assert view.visible_text() == shown
        assert view.paused and not view.live
        assert view.new_lines == 50
        assert "paused +50 new" in screen.status_text()
        await feed(pilot, step_lines(150, 7))
        assert "paused +57 new" in screen.status_text()
        await pilot.press("space")
        assert view.live
        assert last_visible(view) == step_lines(156, 1)[0]
        assert "new" not in screen.status_text()


async def test_a_paused_view_stays_on_its_lines_while_the_ring_drops() -> None:
    app = LogApp(filled(200, max_lines=200))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await pilot.press("space")
        shown = view.visible_text()
        top = view.top_index
        await feed(pilot, step_lines(200, 30))  # lines 0-29 drop out
        assert screen.buffer.first_index == 30
        assert view.visible_text() == shown
        assert view.top_index == top
        await feed(pilot, step_lines(230, 500))  # every shown line drops out
        assert view.top_index == screen.buffer.first_index
        assert view.visible_text()[0] == screen.buffer.line(screen.buffer.first_index)


async def test_scrolling_up_pauses_and_G_follows_again() -> None:
    app = LogApp(filled(300))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await pilot.press("pageup")
        assert view.paused
        shown = view.visible_text()
        await feed(pilot, step_lines(300, 20))
        assert view.visible_text() == shown
        await pilot.press("G")
        assert view.live
        assert last_visible(view) == step_lines(319, 1)[0]
        await pilot.press("g")
        assert view.top_index == 0
        assert view.paused


async def test_follow_off_stays_put_until_follow_on() -> None:
    app = LogApp(filled(100))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await pilot.press("f")
        assert not view.follow and not view.live
        shown = view.visible_text()
        await feed(pilot, step_lines(100, 10))
        assert view.visible_text() == shown
        assert "follow off +10 new" in screen.status_text()
        await pilot.press("f")
        assert view.live
        assert last_visible(view) == step_lines(109, 1)[0]


async def test_a_view_opened_without_follow_starts_at_the_top() -> None:
    app = LogApp(filled(100), follow=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        view = log_screen(app).view
        assert view.top_index == 0
        await feed(pilot, step_lines(100, 10))
        assert view.top_index == 0
        assert view.new_lines == 10


# -- search and errors ------------------------------------------------------------

NCCL_AT = (40, 150, 260)


def nccl_buffer() -> LogBuffer:
    lines = step_lines(0, 300)
    for i in NCCL_AT:
        lines[i] = f"node-b:2233:2290 [1] NCCL WARN Call to connect returned refused ({i})"
    buffer = LogBuffer()
    buffer.extend(lines)
    return buffer


async def test_search_moves_to_the_match_and_n_N_step() -> None:
    app = LogApp(nccl_buffer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await pilot.press("slash")
        assert screen.search_input.display
        assert screen.search_input.has_focus
        await pilot.press(*"nccl", "space", *"warn", "enter")
        assert not screen.search_input.display
        assert view.has_focus
        # Searched down from the top of the view (the end), so it wrapped.
        assert view.current_line == 40
        assert view.paused
        first, last = view.visible_range()
        assert first <= 40 <= last
        status = screen.status_text()
        assert "/nccl warn match 1 of 3" in status
        assert "wrapped" in status

        visited = []
        for key in ("n", "n", "n", "N", "N"):
            await pilot.press(key)
            current = view.current_line
            assert current is not None
            first, last = view.visible_range()
            assert first <= current <= last
            visited.append(current)
        assert visited == [150, 260, 40, 260, 150]
        assert "match 2 of 3" in screen.status_text()


async def test_matches_are_highlighted_on_the_current_line() -> None:
    app = LogApp(nccl_buffer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        screen.run_search("NCCL warn")
        await pilot.pause()
        view = screen.view
        row = 40 - view.top_index
        segments = list(view.render_line(row))
        matched = [s for s in segments if s.style is not None and s.style.reverse]
        assert [s.text for s in matched] == ["NCCL WARN"]
        current_bg = matched[0].style.bgcolor if matched[0].style else None
        plain = list(view.render_line(row + 1))
        assert all(s.style is None or not s.style.reverse for s in plain)
        assert all(s.style is None or s.style.bgcolor != current_bg for s in plain)


async def test_search_with_new_lines_counts_them() -> None:
    app = LogApp(nccl_buffer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        screen.run_search("nccl warn")
        await feed(pilot, ["NCCL WARN again"])
        assert "match 1 of 4" in screen.status_text()
        await pilot.press("N")
        assert screen.view.current_line == 300


async def test_bad_regex_and_no_match_are_reported() -> None:
    app = LogApp(nccl_buffer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        await pilot.press("slash", *"re:(", "enter")
        assert "bad regex '(': missing ), unterminated subpattern" in screen.status_text()
        assert screen.view.search is None
        screen.run_search("no such line")
        assert "no match for 'no such line'" in screen.status_text()
        assert screen.view.current_line is None
        await pilot.press("n")
        assert "no match" in screen.status_text()
        screen.run_search("")
        assert screen.view.search is None
        await pilot.press("n")
        assert "no search" in screen.status_text()


async def test_a_regex_search() -> None:
    app = LogApp(nccl_buffer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        screen.run_search(r"re:refused \(1\d\d\)")
        assert screen.view.current_line == 150
        assert "match 1 of 1" in screen.status_text()


async def test_escape_closes_the_search_then_leaves_the_screen() -> None:
    app = LogApp(nccl_buffer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        await pilot.press("slash", *"nccl")
        await pilot.press("escape")
        assert not screen.search_input.display
        assert app.screen is screen
        assert screen.view.search is None
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, LogScreen)
        assert isinstance(app.screen, Screen)


async def test_e_jumps_to_the_first_error() -> None:
    lines = step_lines(0, 300)
    lines[120] = "[rank1]: Traceback (most recent call last):"
    lines[121] = '[rank1]:   File "/work/agent/train.py", line 88, in <module>'
    lines[122] = "[rank1]: RuntimeError: CUDA error: an illegal memory access was encountered"
    lines[200] = "[rank1]:[E1023 12:34:56.789012 1234 ProcessGroupNCCL.cpp:616] Watchdog timeout"
    buffer = LogBuffer()
    buffer.extend(lines)
    app = LogApp(buffer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        await pilot.press("e")
        assert view.current_line == 120
        first, last = view.visible_range()
        assert first <= 120 <= last
        assert view.paused
        counts = screen.query_one("#log-counts", Static).content
        assert isinstance(counts, Content)
        assert counts.plain == "4 errors"


async def test_e_again_goes_to_the_next_error_and_E_back() -> None:
    lines = step_lines(0, 300)
    lines[120] = "[rank1]: Traceback (most recent call last):"
    lines[121] = '[rank1]:   File "/work/agent/train.py", line 88, in <module>'
    lines[122] = "[rank1]: RuntimeError: CUDA error: an illegal memory access was encountered"
    lines[200] = "[rank1]:[E1023 12:34:56.789012 1234 ProcessGroupNCCL.cpp:616] Watchdog timeout"
    buffer = LogBuffer()
    buffer.extend(lines)
    app = LogApp(buffer)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        await pilot.press("e", "e")
        assert screen.view.current_line == 200  # the traceback's frames are not errors
        assert "error 2 of 2: error" in screen.status_text()
        await pilot.press("e")
        assert screen.view.current_line == 120  # wrapped
        await pilot.press("E")
        assert screen.view.current_line == 200


async def test_e_without_errors_says_so() -> None:
    app = LogApp(filled(50))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        await pilot.press("e")
        assert "no error lines" in screen.status_text()
        assert screen.view.current_line is None


# -- both streams ---------------------------------------------------------------

# A rank started with a config that is not there: stdout says little, stderr why.
# (The argparse line as a rank prints it; DeepSpeed's launcher line from
# https://github.com/hiyouga/LlamaFactory/issues/573.)
STDOUT_LINES = [
    "[2025-03-01 10:00:00,001] [INFO] [real_accelerator.py:219:get_accelerator] Setting "
    "ds_accelerator to cuda (auto detect)",
    "[2025-03-01 10:00:01,310] [INFO] [comm.py:652:init_distributed] cdb=None",
]
STDERR_LINES = [
    "usage: train.py [-h] [--deepspeed_config DEEPSPEED_CONFIG] [--steps STEPS]",
    "train.py: error: argument --deepspeed_config: can't open '/work/ds_config.json': [Errno 2] "
    "No such file or directory: '/work/ds_config.json'",
]


def rank_logs(stdout: list[str], stderr: list[str]) -> RankLogs:
    logs = RankLogs(hold_s=0.0)
    logs.add("stdout", stdout)
    logs.add("stderr", stderr)
    return logs


async def test_stdout_and_stderr_merged_stderr_marked_and_s_cycles() -> None:
    logs = rank_logs(STDOUT_LINES, STDERR_LINES)
    app = LogApp(logs, title=RANK_TITLE)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        title = str(screen.query_one("#log-title", Static).render())
        assert title == RANK_TITLE + " · stdout+stderr"
        assert view.visible_text() == STDOUT_LINES + STDERR_LINES
        gutters = [view.render_line(y).text[:2] for y in range(4)]
        assert gutters == ["  ", "  ", "│ ", "│ "]
        modes: list[LogMode] = []
        await pilot.press("s")
        modes.append(screen.mode)
        assert view.buffer is logs.stdout
        assert view.visible_text() == STDOUT_LINES and not view.marked
        assert view.render_line(0).text.startswith("[2025")
        await pilot.press("s")
        modes.append(screen.mode)
        assert view.visible_text() == STDERR_LINES
        assert str(screen.query_one("#log-title", Static).render()).endswith("· stderr")
        await pilot.press("s")
        modes.append(screen.mode)
        assert modes == [LogMode.STDOUT, LogMode.STDERR, LogMode.MERGED] and view.marked


async def test_an_empty_stream_says_which_and_e_finds_the_error_on_stderr() -> None:
    app = LogApp(rank_logs([], STDERR_LINES))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        await pilot.press("s")
        assert screen.status_text().startswith("no lines yet on stdout (stderr has 2: press s)")
        assert "of 0" not in screen.status_text()
        await pilot.press("s", "e")
        assert screen.view.current_line == 1
        assert "error 1 of 1: error" in screen.status_text()


async def test_seek_lands_on_the_event_line_once_it_arrives() -> None:
    logs = RankLogs(hold_s=60.0)
    app = LogApp(logs)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        screen.seek(STDERR_LINES[1])
        assert screen.view.current_line is None
        logs.add("stdout", STDOUT_LINES + step_lines(0, 100))
        logs.add("stderr", STDERR_LINES)
        screen.poll()
        await pilot.pause()
        assert screen.view.current_line == 103
        first, last = screen.view.visible_range()
        assert first <= 103 <= last


# -- cost -----------------------------------------------------------------------


async def test_100k_lines_render_only_what_is_visible() -> None:
    app = LogApp(filled(100_000))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = log_screen(app)
        view = screen.view
        assert last_visible(view) == step_lines(99_999, 1)[0]
        height = len(view.visible_text())
        assert view.lines_rendered <= 3 * height
        # Paused at the end of the ring: appended lines drop old ones but draw nothing.
        await pilot.press("pageup")
        rendered = view.lines_rendered
        await feed(pilot, step_lines(100_000, 1000))
        assert view.lines_rendered == rendered
        screen.run_search("step=99990 ")
        await pilot.pause()
        assert view.current_line == 99_990
        assert view.lines_rendered - rendered <= 3 * height


# -- snapshots ------------------------------------------------------------------

DEEPSPEED_LOG = [
    "[2025-03-01 10:00:00,001] [INFO] [real_accelerator.py:219:get_accelerator] Setting "
    "ds_accelerator to cuda (auto detect)",
    "[2025-03-01 10:00:01,310] [INFO] [comm.py:652:init_distributed] cdb=None",
    "node-b:2233:2233 [1] NCCL INFO Bootstrap : Using eth0:10.0.0.12<0>",
    "node-b:2233:2233 [1] NCCL INFO cudaDriverVersion 12040",
    "NCCL version 2.21.5+cuda12.4",
    "node-b:2233:2290 [1] NCCL INFO Channel 00/02 :    0   1",
    "node-b:2233:2290 [1] NCCL INFO Connected all rings",
    "[2025-03-01 10:00:04,902] [INFO] [config.py:1003:print]   zero_optimization_stage ...... 3",
    "/opt/venv/lib/python3.11/site-packages/torch/utils/checkpoint.py:91: UserWarning: None of "
    "the inputs have requires_grad=True. Gradients will be None",
    "  warnings.warn(",
]
DEEPSPEED_LOG += [
    f"[2025-03-01 10:01:{i:02d},000] [INFO] [logging.py:128:log_dist] [Rank 1] step={i * 10}, "
    f"skipped=0, lr=[0.0001], loss={2.5 - i / 40:.4f}"
    for i in range(1, 21)
]
DEEPSPEED_LOG += [
    "[2025-03-01 10:01:21,500] [WARNING] [stage3.py:1850:step] 4 pytorch allocator cache "
    "flushes since last step",
    "node-b:2233:2301 [1] NCCL WARN NET/Socket : peer 10.0.0.11<41234> shutdown",
    "node-b:2233:2301 [1] NCCL INFO transport/net.cc:1298 -> 6",
    "[rank1]:[E0301 10:06:21.8 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective "
    "operation timeout: WorkNCCL(SeqNum=212, OpType=ALLREDUCE) ran for 300000 milliseconds",
    "[rank1]: Traceback (most recent call last):",
    '[rank1]:   File "/work/agent/train.py", line 412, in <module>',
    "[rank1]:     main()",
    '[rank1]:   File "/work/agent/train.py", line 388, in main',
    "[rank1]:     engine.backward(loss)",
    "[rank1]: torch.distributed.DistBackendError: NCCL communicator was aborted on rank 1.",
]


def snapshot_app() -> LogApp:
    buffer = LogBuffer()
    buffer.extend(DEEPSPEED_LOG)
    return LogApp(buffer)


def test_log_screen_follow_80x24(snap_compare: Any) -> None:
    # The end of the log: the traceback in red, warnings in yellow, following.
    assert snap_compare(snapshot_app(), terminal_size=SIZE)


def test_log_screen_merged_80x24(snap_compare: Any) -> None:
    # Both streams: stderr's traceback behind the red gutter; `e` on its first error.
    on_stderr = ("NCCL", "[rank1]", "Warning", "warnings.warn", "[WARNING]")
    stderr = [line for line in DEEPSPEED_LOG if any(mark in line for mark in on_stderr)]
    stdout = [line for line in DEEPSPEED_LOG if line not in stderr]
    app = LogApp(rank_logs(stdout, stderr), title=RANK_TITLE)
    assert snap_compare(app, press=["e", "e"], terminal_size=SIZE)


def test_log_screen_search_80x24(snap_compare: Any) -> None:
    # "/nccl info" finds the match below the top of the view; "n" wraps to the first.
    press = ["slash", *"nccl", "space", *"info", "enter", "n"]
    assert snap_compare(snapshot_app(), press=press, terminal_size=SIZE)
