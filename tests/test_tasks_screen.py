"""The tasks screen at 80x24 and 200x50 (issue 16): the verdict and result first and
readable, an evaluation's progress while it runs, a missed target called so, the
quantize detail whole (wrapped, scrollable), and evaluate / quantize / serve started
from it."""

from __future__ import annotations

import io
from typing import Any

from gantry.v1 import agent_service_pb2, task_pb2
from rich.console import Console
from textual.app import App
from textual.containers import VerticalScroll

from console.net.cluster_file import NodeTarget
from console.net.tasks_client import NodeTask
from console.ui.screens.serve_dialog import ServeScreen
from console.ui.screens.task_dialogs import ModelDirScreen, TaskDetailScreen
from console.ui.screens.tasks import TasksScreen
from tests.task_samples import (
    LONG_WARNING,
    met_eval,
    missed_eval,
    quantize_task,
    running_eval,
    serve_task,
)

NODE = NodeTarget("node-a", "127.0.0.1:1")


class FakeTasksClient:
    """What TasksScreen asks of a TasksClient, answered from a list; starts recorded."""

    def __init__(self, tasks: list[task_pb2.Task]) -> None:
        self.tasks = [NodeTask(NODE, t) for t in tasks]
        self.targets = {NODE.name: NODE}
        self.started: list[tuple[str, agent_service_pb2.StartTaskRequest]] = []

    async def list(self) -> tuple[list[NodeTask], list[str]]:
        return list(self.tasks), []

    async def eval_request(self, job: str) -> tuple[str, agent_service_pb2.StartTaskRequest]:
        request = agent_service_pb2.StartTaskRequest()
        request.eval.job_name = job
        request.eval.model_dir = f"/data/runs/{job}/out/final"
        return "node-a", request

    async def start(self, node: str, request: agent_service_pb2.StartTaskRequest) -> NodeTask:
        self.started.append((node, request))
        which = request.WhichOneof("spec") or ""
        return NodeTask(NODE, task_pb2.Task(id=f"{which}-new", node=node))


class TasksApp(App[None]):
    def __init__(self, client: FakeTasksClient) -> None:
        super().__init__()
        self.client = client

    def on_mount(self) -> None:
        self.push_screen(TasksScreen(self.client))  # type: ignore[arg-type]


def screen_text(app: App[Any]) -> str:
    """What the terminal shows, as plain text lines."""
    console = Console(width=app.size.width, file=io.StringIO(), record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


async def shown(pilot: Any, app: TasksApp) -> TasksScreen:
    for _ in range(50):
        await pilot.pause()
        screen = app.screen
        if isinstance(screen, TasksScreen) and screen.tasks:
            await pilot.pause()
            return screen
    raise AssertionError("the tasks screen listed nothing")


ALL = [missed_eval(), met_eval(), quantize_task(), running_eval(), serve_task()]


async def test_at_80x24_each_row_shows_its_verdict_result_and_progress_first() -> None:
    app = TasksApp(FakeTasksClient(ALL))
    async with app.run_test(size=(80, 24)) as pilot:
        await shown(pilot, app)
        text = screen_text(app)
        assert "missed" in line_with(text, "eval-0000miss")
        assert "bleu4 0.21 < 0.25" in line_with(text, "eval-0000miss")
        assert "succeeded" not in line_with(text, "eval-0000miss")
        assert "targets met: bleu4 0.9282" in line_with(text, "eval-00000met")
        assert "2.15 MiB → 619 KiB" in line_with(text, "quantize-0000q8")
        assert "25% 12/48 samples" in line_with(text, "eval-00000run")
        assert "0.9281685" not in text and "e+06" not in text


async def test_the_detail_pane_shows_the_verdict_and_progress_of_the_selected_task() -> None:
    app = TasksApp(FakeTasksClient(ALL))
    async with app.run_test(size=(80, 24)) as pilot:
        await shown(pilot, app)
        text = screen_text(app)  # the first row, the missed evaluation, is selected
        assert "missed: bleu4 0.21 < 0.25; rouge_l 0.3012 < 0.45" in text
        await pilot.press("down", "down", "down")  # the running evaluation
        text = screen_text(app)
        assert "eval-00000run · eval · running on node-a" in text
        lines = text.splitlines()
        header = lines.index(line_with(text, "eval-00000run · eval"))
        assert lines[header + 1].strip() == "25% 12/48 samples"
        assert lines[header + 2].strip() == "bleu4 0.3123"


async def scrolled_to_end(pilot: Any, app: App[Any]) -> str:
    for _ in range(40):
        await pilot.press("pagedown")
    await pilot.pause()
    return screen_text(app)


async def test_the_quantize_detail_is_whole_at_80x24_and_200x50() -> None:
    for size in ((80, 24), (200, 50)):
        app = TasksApp(FakeTasksClient([quantize_task()]))
        async with app.run_test(size=size) as pilot:
            await shown(pilot, app)
            await pilot.press("enter")
            assert isinstance(app.screen, TaskDetailScreen)
            first = screen_text(app)
            assert "quantize-0000q8 · quantize · succeeded on node-a" in first
            last = await scrolled_to_end(pilot, app)
            # The warning is the last line: wrapped at 80 columns, never cut.
            words = " ".join(f"{first}\n{last}".split())
            assert " ".join(LONG_WARNING.split()[-6:]) in words, size
            assert "not quantized: layers.0.router, layers.1.router and 1 more" in words
            assert "params+buffers 2.15 MiB 619 KiB" in words
            await pilot.press("escape")
            assert isinstance(app.screen, TasksScreen)


async def test_the_detail_pane_scrolls_to_its_last_line() -> None:
    app = TasksApp(FakeTasksClient([quantize_task()]))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await shown(pilot, app)
        pane = screen.query_one("#task-detail-scroll", VerticalScroll)
        await pilot.press("tab")
        assert pane.has_focus
        text = await scrolled_to_end(pilot, app)
        assert "the last words of a long warning)" in " ".join(text.split())


async def test_evaluate_quantize_and_serve_start_from_the_screen() -> None:
    client = FakeTasksClient([met_eval()])
    app = TasksApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        await shown(pilot, app)
        await pilot.press("E")
        assert isinstance(app.screen, ModelDirScreen)
        await pilot.press("enter")  # the selected evaluation's job is offered
        await pilot.pause()
        await pilot.press("Q")
        assert isinstance(app.screen, ModelDirScreen)
        await pilot.press("enter")  # the selected evaluation's model
        await pilot.pause()
        await pilot.press("S")
        assert isinstance(app.screen, ServeScreen)
        await pilot.press(*"/m/int8", "enter")
        for _ in range(20):
            if len(client.started) == 3:
                break
            await pilot.pause()
        kinds = [r.WhichOneof("spec") for _, r in client.started]
        assert kinds == ["eval", "quantize", "serve"]
        evaluate, quantize, serve = (r for _, r in client.started)
        assert evaluate.eval.job_name == "demo"
        assert quantize.quantize.model_dir == "/data/runs/demo/out/final"
        assert quantize.quantize.output_dir == "/data/runs/demo/out/final-int8"
        assert quantize.quantize.eval_data_path == "/data/runs/demo/heldout.jsonl"
        assert quantize.quantize.int8
        assert serve.serve.model_dir == "/m/int8"
