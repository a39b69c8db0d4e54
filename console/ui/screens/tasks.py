"""The tasks screen: every agent's eval, quantize and serve tasks; the selected one in
detail (an evaluation's targets and its trend across checkpoints, a quantization's
sizes, a server's health, requests/s, queue and batch sizes); start and stop servers.

    S      serve a model (asks for its directory)
    L      load-test a server (the selected one, or any endpoint)
    x      stop the selected task (confirmed)
    escape back
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from gantry.v1 import agent_service_pb2, task_pb2
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from console.model.bars import BLOCKS, format_bytes
from console.net.jobs_client import JobCommandError
from console.net.serve_client import ServerView, probe
from console.net.tasks_client import NodeTask, TasksClient
from console.ui.screens.dialogs import DIALOG_CSS, ConfirmScreen

TS = task_pb2.TaskState
TK = task_pb2.TaskKind
POLL_S = 1.0
COLUMNS = ("task", "kind", "state", "node", "model", "result")


def kind_name(kind: int) -> str:
    return task_pb2.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()


def task_state(state: int) -> str:
    return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()


def model_of(task: task_pb2.Task) -> str:
    which = task.WhichOneof("spec")
    return str(getattr(task, which).model_dir) if which else ""


def result_of(task: task_pb2.Task) -> str:
    r = task.results
    if task.kind == TK.TASK_KIND_EVAL and "bleu4" in r:
        verdict = "pass" if r.get("passed", 0) >= 1 else "FAIL"
        return f"BLEU-4 {r['bleu4']:.3f} ROUGE-L {r.get('rouge_l', 0):.3f} {verdict}"
    if task.kind == TK.TASK_KIND_QUANTIZE and "size_after" in r:
        return f"{format_bytes(r.get('size_before'))} -> {format_bytes(r['size_after'])}"
    if task.kind == TK.TASK_KIND_SERVE:
        return task.endpoint or task.error
    return task.error


def eval_detail(task: task_pb2.Task, history: list[task_pb2.Task]) -> str:
    lines = []
    try:
        report: dict[str, Any] = json.loads(task.report_json) if task.report_json else {}
    except ValueError:
        report = {}
    for name, target in (report.get("targets") or {}).items():
        verdict = "pass" if target.get("pass") else "FAIL"
        lines.append(
            f"{name:<14} {target.get('value')!s:<10} target {target.get('target')}  {verdict}"
        )
    trend = [t.results["bleu4"] for t in history if "bleu4" in t.results]
    if len(trend) > 1:
        top = max(trend) or 1.0
        spark = "".join(
            BLOCKS[min(len(BLOCKS) - 1, int(v / top * (len(BLOCKS) - 1)))] for v in trend
        )
        lines.append(f"BLEU-4 across {len(trend)} checkpoints: {spark} (latest {trend[-1]:.3f})")
    return "\n".join(lines) or "no report yet"


def serve_detail(view: ServerView | None) -> str:
    if view is None:
        return "asking the server…"
    lines = [f"endpoint {view.endpoint} · health {view.health}"]
    s = view.stats
    if s is not None:
        lines.append(
            f"requests/s {s.requests_per_s:.1f} · tokens/s {s.tokens_per_s:.0f} · "
            f"queue {s.queue_depth} · running {s.running}/{s.max_batch_size} · "
            f"requests {s.requests_total} · errors {s.errors_total}"
        )
        hist = dict(s.batch_size_histogram)
        if hist:
            top = max(hist.values())
            for size in sorted(hist):
                bar = "█" * max(1, round(30 * hist[size] / top))
                lines.append(f"batch {size:>3} {bar} {hist[size]}")
    return "\n".join(lines)


class ModelDirScreen(ModalScreen[str | None]):
    DEFAULT_CSS = DIALOG_CSS.format(name="ModelDirScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, default: str = "") -> None:
        super().__init__()
        self.prompt = prompt
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt, classes="dialog-title", markup=False)
            yield Input(value=self.default, placeholder="/path/to/model")
            yield Static("enter starts · escape cancels", classes="dialog-help")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TasksScreen(ModalScreen[None]):
    """Not a StoreScreen: it polls the agents itself while it is shown."""

    DEFAULT_CSS = """
    TasksScreen { background: $surface; }
    #tasks-table { height: 1fr; }
    #task-detail { height: auto; max-height: 12; padding: 0 1; background: $panel; }
    #tasks-status { height: 1; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("S", "serve", "Serve a model", key_display="S"),
        Binding("L", "loadtest", "Load test", key_display="L"),
        Binding("x", "stop", "Stop task"),
    ]

    def __init__(self, client: TasksClient) -> None:
        super().__init__()
        self.client = client
        self.tasks: list[NodeTask] = []
        self.server: ServerView | None = None
        self._keys: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("tasks: evaluations, quantizations, servers", id="tasks-title")
        yield DataTable(id="tasks-table", cursor_type="row")
        yield Static(id="task-detail", markup=False)
        yield Static(id="tasks-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        table.focus()
        self.poll()
        self.set_interval(POLL_S, self.poll)

    @work(exclusive=True, group="tasks-poll")
    async def poll(self) -> None:
        try:
            tasks, errors = await self.client.list()
        except JobCommandError as exc:
            self._status(str(exc))
            return
        self.tasks = tasks
        selected = self.selected()
        if (
            selected is not None
            and selected.task.kind == TK.TASK_KIND_SERVE
            and selected.task.state == TS.TASK_STATE_RUNNING
            and selected.task.endpoint
        ):
            self.server = await probe(selected.task.endpoint)
        else:
            self.server = None
        self._draw()
        if errors:
            self._status("not answering: " + "; ".join(errors))

    def selected(self) -> NodeTask | None:
        if not self.tasks:
            return None
        table = self.query_one(DataTable)
        index = min(max(table.cursor_row, 0), len(self.tasks) - 1)
        return self.tasks[index]

    def _draw(self) -> None:
        table = self.query_one(DataTable)
        keys = [t.task.id for t in self.tasks]
        if keys != self._keys:
            row = table.cursor_row
            table.clear()
            for found in self.tasks:
                table.add_row(*([""] * len(COLUMNS)), key=found.task.id)
            self._keys = keys
            if keys:
                table.move_cursor(row=min(max(row, 0), len(keys) - 1))
        for found in self.tasks:
            t = found.task
            state = task_state(t.state)
            style = "red" if t.state == TS.TASK_STATE_FAILED else ""
            cells = (
                t.id,
                kind_name(t.kind),
                state,
                found.node.name,
                model_of(t)[-40:],
                result_of(t),
            )
            for column, value in zip(COLUMNS, cells, strict=True):
                table.update_cell(t.id, column, Text(value, style=style))
        self._draw_detail()

    def _draw_detail(self) -> None:
        found = self.selected()
        detail = self.query_one("#task-detail", Static)
        if found is None:
            detail.update("no tasks yet: gantry eval / quantize / serve, or S here")
            return
        t = found.task
        if t.kind == TK.TASK_KIND_EVAL:
            history = [
                n.task
                for n in self.tasks
                if n.task.kind == TK.TASK_KIND_EVAL and n.task.eval.job_name == t.eval.job_name
            ]
            detail.update(eval_detail(t, history))
        elif t.kind == TK.TASK_KIND_SERVE:
            detail.update(serve_detail(self.server) if t.endpoint else task_state(t.state))
        else:
            lines = [f"{k} {v:g}" for k, v in sorted(t.results.items())]
            detail.update("\n".join(lines) or task_state(t.state))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._draw_detail()

    def _status(self, text: str) -> None:
        self.query_one("#tasks-status", Static).update(text)

    def action_back(self) -> None:
        self.dismiss(None)

    def action_serve(self) -> None:
        quantized = [
            n.task.quantize.output_dir
            for n in self.tasks
            if n.task.kind == TK.TASK_KIND_QUANTIZE and n.task.state == TS.TASK_STATE_SUCCEEDED
        ]
        self.app.push_screen(
            ModelDirScreen("Serve which model directory?", quantized[-1] if quantized else ""),
            self._serve,
        )

    def _serve(self, model_dir: str | None) -> None:
        if model_dir:
            self._start_server(model_dir)

    @work(group="tasks-action")
    async def _start_server(self, model_dir: str) -> None:
        request = agent_service_pb2.StartTaskRequest()
        request.serve.model_dir = model_dir
        node = next(iter(self.client.targets))
        try:
            started = await self.client.start(node, request)
        except JobCommandError as exc:
            self._status(f"refused: {exc}")
            return
        self._status(f"{started.task.id} starting on {started.node.name}")
        self.poll()

    def action_loadtest(self) -> None:
        from console.ui.screens.loadtest import LoadTestScreen

        endpoints = [
            n.task.endpoint
            for n in self.tasks
            if n.task.kind == TK.TASK_KIND_SERVE
            and n.task.state == TS.TASK_STATE_RUNNING
            and n.task.endpoint
        ]
        found = self.selected()
        if found is not None and found.task.endpoint in endpoints:
            endpoints.remove(found.task.endpoint)
            endpoints.append(found.task.endpoint)  # the form starts on the last one
        self.app.push_screen(LoadTestScreen(endpoints))

    def action_stop(self) -> None:
        found = self.selected()
        if found is None or found.task.state not in (TS.TASK_STATE_PENDING, TS.TASK_STATE_RUNNING):
            self._status("nothing running to stop")
            return
        task_id = found.task.id

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop(task_id)

        self.app.push_screen(
            ConfirmScreen(f"Stop {task_id}?", "A server drains its requests first."), answered
        )

    @work(group="tasks-action")
    async def _stop(self, task_id: str) -> None:
        try:
            stopped = await self.client.stop(task_id)
        except JobCommandError as exc:
            self._status(f"refused: {exc}")
            return
        self._status(f"{task_id}: {task_state(stopped.task.state)}")
        self.poll()
