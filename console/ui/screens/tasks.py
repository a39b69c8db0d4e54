"""The tasks screen: every agent's eval, quantize and serve tasks; the selected one in
detail (an evaluation's verdict against its targets and its trend across checkpoints, a
quantization's sizes before and after, a server's endpoints (gRPC, and HTTP when it
serves the OpenAI-compatible API too), health, requests/s, queue and batch sizes; a running
task's progress); start evaluations, quantizations and servers.

    enter  the selected task's whole detail (scrollable)
    E      evaluate a job's final model (asks for the job)
    Q      quantize a model to int8 (asks for its directory)
    S      serve a model (asks for its directory)
    L      load-test a server (the selected one's gRPC or HTTP endpoint, or any endpoint)
    x      stop the selected task (confirmed)
    tab    to the detail pane (the arrows scroll it)
    escape back
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from gantry.v1 import agent_service_pb2, task_pb2
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from console.model.bars import BLOCKS
from console.model.serve_form import ServeSettings
from console.model.task_view import (
    MISSED,
    detail_lines,
    kind_name,
    model_of,
    outcome,
    result_summary,
    state_name,
)
from console.net.cluster_file import ClusterFileError
from console.net.jobs_client import JobCommandError
from console.net.serve_client import ServerView, probe
from console.net.tasks_client import (
    NodeTask,
    TasksClient,
    completions_url,
    quantize_request,
    serve_request,
)
from console.ui.screens.dialogs import ConfirmScreen
from console.ui.screens.serve_dialog import ServeScreen
from console.ui.screens.task_dialogs import ModelDirScreen, TaskDetailScreen

TS = task_pb2.TaskState
TK = task_pb2.TaskKind
POLL_S = 1.0
# The verdict and the result first: at 80 columns the model's path is what falls off.
COLUMNS = ("task", "state", "result", "node", "kind", "model")
ACTIVE = (TS.TASK_STATE_PENDING, TS.TASK_STATE_RUNNING)
STYLES = {"failed": "red", MISSED: "yellow"}

__all__ = ["COLUMNS", "ModelDirScreen", "TasksScreen", "eval_detail", "serve_detail"]


def eval_trend(history: list[task_pb2.Task]) -> str:
    """BLEU-4 across a job's evaluations, oldest first, as blocks; "" for fewer than two."""
    trend = [t.results["bleu4"] for t in history if "bleu4" in t.results]
    if len(trend) < 2:
        return ""
    top = max(trend) or 1.0
    spark = "".join(BLOCKS[min(len(BLOCKS) - 1, int(v / top * (len(BLOCKS) - 1)))] for v in trend)
    return f"BLEU-4 across {len(trend)} checkpoints: {spark} (latest {trend[-1]:.3f})"


def eval_detail(task: task_pb2.Task, history: list[task_pb2.Task]) -> str:
    trend = eval_trend(history)
    return "\n".join([*detail_lines(task), *([trend] if trend else [])])


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
        if asked := s.prompt_tokens_total:
            found = s.cached_prompt_tokens_total
            share = f"{found / asked:.0%} of prompt tokens found ({found:,} of {asked:,})"
            lines.append(f"prefix cache {share}")
        hist = dict(s.batch_size_histogram)
        if hist:
            top = max(hist.values())
            for size in sorted(hist):
                bar = "█" * max(1, round(30 * hist[size] / top))
                lines.append(f"batch {size:>3} {bar} {hist[size]}")
    return "\n".join(lines)


class TasksScreen(ModalScreen[None]):
    """Not a StoreScreen: it polls the agents itself while it is shown."""

    DEFAULT_CSS = """
    TasksScreen { background: $surface; }
    TasksScreen #tasks-table { height: auto; max-height: 50%; min-height: 3; }
    TasksScreen #task-detail-scroll { height: 1fr; min-height: 4; background: $panel; }
    TasksScreen #task-detail { width: 1fr; padding: 0 1; }
    TasksScreen #tasks-status { height: 1; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("E", "evaluate", "Evaluate", key_display="E"),
        Binding("Q", "quantize", "Quantize", key_display="Q"),
        Binding("S", "serve", "Serve", key_display="S"),
        Binding("L", "loadtest", "Load test", key_display="L"),
        Binding("x", "stop", "Stop task"),
    ]

    def __init__(self, client: TasksClient) -> None:
        super().__init__()
        self.client = client
        self.tasks: list[NodeTask] = []
        self.server: ServerView | None = None
        self._keys: list[str] = []
        self._listed = False
        self._after_listing: list[Callable[[], object]] = []

    def compose(self) -> ComposeResult:
        yield Static("tasks: evaluations, quantizations, servers", id="tasks-title")
        yield DataTable(id="tasks-table", cursor_type="row")
        with VerticalScroll(id="task-detail-scroll"):
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

    def when_shown(self, action: Callable[[], object]) -> None:
        """Runs `action` once the screen has listed the tasks (now if it has): the
        palette's way in."""
        if self._listed:
            action()
        else:
            self._after_listing.append(action)

    def _listed_once(self) -> None:
        self._listed = True
        actions, self._after_listing = self._after_listing, []
        for action in actions:
            action()

    @work(exclusive=True, group="tasks-poll")
    async def poll(self) -> None:
        try:
            tasks, errors = await self.client.list()
        except JobCommandError as exc:
            self._status(str(exc))
            self._listed_once()
            return
        self.tasks = tasks
        selected = self.selected()
        if (
            selected is not None
            and selected.task.kind == TK.TASK_KIND_SERVE
            and selected.task.state == TS.TASK_STATE_RUNNING
            and selected.task.endpoint
        ):
            self.server = await probe(selected.task.endpoint, _token(selected))
        else:
            self.server = None
        self._draw()
        if errors:
            self._status("not answering: " + "; ".join(errors))
        if not self._listed:
            self._listed_once()

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
            state = outcome(t)
            style = STYLES.get(state, "")
            cells = (
                t.id,
                state,
                result_summary(t),
                found.node.name,
                kind_name(t.kind),
                model_of(t)[-40:],
            )
            for column, value in zip(COLUMNS, cells, strict=True):
                table.update_cell(t.id, column, Text(value, style=style), update_width=True)
        self._draw_detail()

    def detail_text(self, found: NodeTask | None = None) -> str:
        """The selected task (or `found`) in full, for the pane and the detail screen."""
        found = found or self.selected()
        if found is None:
            return "no tasks yet: E evaluates a job, Q quantizes, S serves (or gantry eval …)"
        t = found.task
        if t.kind == TK.TASK_KIND_EVAL:
            history = [
                n.task
                for n in self.tasks
                if n.task.kind == TK.TASK_KIND_EVAL and n.task.eval.job_name == t.eval.job_name
            ]
            return eval_detail(t, history)
        lines = detail_lines(t, found.node.name)
        if t.http_endpoint:
            lines.append(f"HTTP (OpenAI-compatible) {completions_url(found)}")
        if t.kind == TK.TASK_KIND_SERVE and t.endpoint and t.state == TS.TASK_STATE_RUNNING:
            lines.append(serve_detail(self.server))
        return "\n".join(lines)

    def _draw_detail(self) -> None:
        self.query_one("#task-detail", Static).update(self.detail_text())

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._draw_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        found = self.selected()
        if found is None:
            return
        task_id = found.task.id

        def text() -> str:
            latest = next((n for n in self.tasks if n.task.id == task_id), found)
            return self.detail_text(latest)

        self.app.push_screen(TaskDetailScreen(text))

    def hint(self, text: str) -> None:
        """A line for the operator under the detail (the palette's pointers)."""
        self._status(text)

    def _status(self, text: str) -> None:
        self.query_one("#tasks-status", Static).update(text)

    def action_back(self) -> None:
        self.dismiss(None)

    # -- starting tasks --------------------------------------------------------------

    def action_evaluate(self) -> None:
        found = self.selected()
        job = found.task.eval.job_name if found is not None else ""
        self.app.push_screen(
            ModelDirScreen("Evaluate which job's final model?", job, placeholder="job name"),
            self._evaluate_answered,
        )

    def _evaluate_answered(self, job: str | None) -> None:
        if job:
            self.evaluate(job)

    @work(group="tasks-action")
    async def evaluate(self, job: str) -> None:
        """Evaluates the job's final model on its held-out data, on its leader."""
        try:
            node, request = await self.client.eval_request(job)
        except JobCommandError as exc:
            self._status(f"cannot evaluate {job}: {exc}")
            return
        await self._start(node, request)

    def action_quantize(self) -> None:
        found = self.selected()
        model = model_of(found.task) if found is not None else ""
        self.app.push_screen(
            ModelDirScreen("Quantize which model directory to int8?", model), self._quantize
        )

    def _quantize(self, model_dir: str | None) -> None:
        if not model_dir:
            return
        found = self.selected()
        node, held_out = "", ""
        if found is not None and model_of(found.task) == model_dir:
            node = found.node.name
            held_out = found.task.eval.data_path  # BLEU-4 before and after, on the same data
        self._start_task(node, quantize_request(model_dir, eval_data=held_out))

    def action_serve(self) -> None:
        quantized = [
            n.task.quantize.output_dir
            for n in self.tasks
            if n.task.kind == TK.TASK_KIND_QUANTIZE and n.task.state == TS.TASK_STATE_SUCCEEDED
        ]
        self.app.push_screen(ServeScreen(quantized[-1] if quantized else ""), self._serve)

    def _serve(self, settings: ServeSettings | None) -> None:
        if settings is not None:
            self._start_task("", serve_request(settings))

    @work(group="tasks-action")
    async def _start_task(self, node: str, request: agent_service_pb2.StartTaskRequest) -> None:
        await self._start(node, request)

    async def _start(self, node: str, request: agent_service_pb2.StartTaskRequest) -> None:
        try:
            started = await self.client.start(node or next(iter(self.client.targets)), request)
        except JobCommandError as exc:
            self._status(f"refused: {exc}")
            return
        self._status(f"{started.task.id} starting on {started.node.name}")
        self.poll()

    def action_loadtest(self) -> None:
        from console.ui.screens.loadtest import LoadTestScreen

        # Each running server's endpoints, its HTTP one first: the form starts on the
        # last one offered, the selected server's gRPC endpoint.
        owners = {
            endpoint: n
            for n in self.tasks
            if n.task.kind == TK.TASK_KIND_SERVE
            and n.task.state == TS.TASK_STATE_RUNNING
            and n.task.endpoint
            for endpoint in server_endpoints(n)
        }
        endpoints = list(owners)
        found = self.selected()
        if found is not None:
            for endpoint in server_endpoints(found):
                if endpoint in owners:
                    endpoints.remove(endpoint)
                    endpoints.append(endpoint)
        # A server answers only its agent's token: the form starts with the last one's.
        serving = owners.get(endpoints[-1]) if endpoints else None
        token_file = serving.node.token_file if serving is not None else None
        self.app.push_screen(LoadTestScreen(endpoints, token_file=token_file))

    def action_stop(self) -> None:
        found = self.selected()
        if found is None or found.task.state not in ACTIVE:
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
        self._status(f"{task_id}: {state_name(stopped.task.state)}")
        self.poll()


def server_endpoints(found: NodeTask) -> list[str]:
    """A serve task's endpoints for the load test: its HTTP completions URL (if it serves
    HTTP), then its gRPC HOST:PORT."""
    return [e for e in (completions_url(found), found.task.endpoint) if e]


def _token(found: NodeTask) -> str:
    """The serving agent's token, "" when it cannot be read (the probe then says so)."""
    try:
        return found.node.read_token()
    except ClusterFileError:
        return ""
