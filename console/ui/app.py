"""The Textual console: the cluster screen fed by agent streams through the store, and
the jobs those agents lead (job, logs and restart screens) through the jobs store."""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import ClassVar

from rich.style import Style
from textual.app import App
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.strip import Strip

from console.model.cluster import ClusterStore
from console.model.jobs import RS, JobsStore
from console.net.agent_client import ClusterSession
from console.net.agent_link import AgentLinks
from console.net.cluster_file import NodeTarget
from console.net.job_session import JobsSession
from console.net.operator import Operator
from console.net.tasks_client import TasksClient
from console.ui.commands import GantryCommands
from console.ui.screens import StoreScreen
from console.ui.screens.cluster import ClusterScreen
from console.ui.screens.help import HelpScreen, help_rows
from console.ui.screens.job import JobScreen
from console.ui.screens.jobs import JobsScreen
from console.ui.screens.rank_logs import rank_log_screen
from console.ui.screens.tasks import TasksScreen

EXPIRE_INTERVAL_S = 1.0


# Collection thresholds for a console that repaints several times a second. Every
# frame leaves thousands of young objects; a young generation of 50,000 was collected in
# 50-250 ms (a key's repaint waited behind it). Small generations keep each pause to a
# few milliseconds; a full collection stays rare (after 1,000 middle ones).
GC_THRESHOLDS = (2_000, 5, 1_000)


def tune_gc() -> None:
    """For a long-running console: what exists after start-up (modules, classes) is
    never garbage, so it leaves the collector's sight; young objects are collected
    often and in small batches; and Textual's strips stop referring to themselves."""
    _untangle_strips()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _untangle_strips() -> None:
    """Textual (8.x) caches a Strip's own self in its caches when `divide` has nothing
    to cut or `crop_extend` nothing to change: the compositor divides every line of every
    frame, so every strip drawn became a reference cycle (a dozen objects with its
    caches) that only the cyclic collector frees, most of the objects it had to go
    through. The same answers, without the self-reference; refcounting frees them."""
    if getattr(Strip, "_gantry_untangled", False):
        return
    divide, crop_extend = Strip.divide, Strip.crop_extend

    def divide_untangled(self: Strip, cuts: Iterable[int]) -> Sequence[Strip]:
        cuts = list(cuts)
        length = self.cell_length
        if [cut for cut in cuts if cut <= length] == [length]:
            return [self]
        return divide(self, cuts)

    def crop_extend_untangled(self: Strip, start: int, end: int, style: Style | None) -> Strip:
        if start == 0 and end == self.cell_length:
            return self
        return crop_extend(self, start, end, style)

    Strip.divide = divide_untangled  # type: ignore[method-assign]
    Strip.crop_extend = crop_extend_untangled  # type: ignore[method-assign]
    Strip._gantry_untangled = True  # type: ignore[attr-defined]


class GantryApp(App[None]):
    """Agent streams write into `store`; a timer repaints what changed.

    Streams can deliver hundreds of samples a second across a cluster, so nothing
    repaints per sample: every `refresh_interval_s` the app compares the store's
    version with the one last drawn and only then asks the current screen to
    refresh, and each widget repaints just the rows whose node version moved.
    """

    CSS_PATH = "gantry.tcss"
    TITLE = "gantry"
    COMMANDS = App.COMMANDS | {GantryCommands}

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "toggle_help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        targets: list[NodeTarget],
        *,
        store: ClusterStore | None = None,
        connect: bool = True,
        clock: Callable[[], float] = time.time,
        refresh_interval_s: float = 0.1,
        cluster_name: str = "",
        jobs: JobsStore | None = None,
        operator: Operator | None = None,
        background: Callable[[GantryApp], Awaitable[object]] | None = None,
        links: AgentLinks | None = None,
    ) -> None:
        super().__init__()
        self.targets = targets
        self.store = store if store is not None else ClusterStore()
        self.jobs = jobs if jobs is not None else JobsStore()
        # One channel per agent for everything the console does; closed at exit.
        if links is None:
            links = operator.links if operator is not None else AgentLinks()
        self.links = links
        self.operator = operator if operator is not None else Operator(targets, links=links)
        self.jobs_session: JobsSession | None = None
        self.background = background
        self._jobs_drawn = -1
        self._jobs_marked = -1
        self.clock = clock
        self.connect = connect
        self.refresh_interval_s = refresh_interval_s
        self.cluster_name = cluster_name
        self.session: ClusterSession | None = None
        self._drawn_version = -1
        now = clock()
        for target in targets:
            if target.name not in self.store:
                self.store.add_node(target.name, target.address, now)

    def on_mount(self) -> None:
        self.store.expire(self.clock())
        self._drawn_version = self.store.version
        self.push_screen(
            ClusterScreen(
                self.store,
                clock=self.clock,
                cluster_name=self.cluster_name,
                open_jobs=self.open_jobs,
                open_tasks=self.open_tasks,
                restart_node=self.restart_node,
            )
        )
        if self.connect:
            # grpc.aio channels must be created inside the running loop.
            self.session = ClusterSession(self.targets, self.store, links=self.links)
            self.session.start()
            self.jobs_session = JobsSession(
                self.targets, self.jobs, clock=self.clock, links=self.links
            )
            self.jobs_session.start()
        if self.background is not None:
            # Something that runs beside the operator (the demo's pipeline).
            self.run_worker(self.background(self), name="background", group="background")
        self.set_interval(self.refresh_interval_s, self._poll_store, name="poll-store")
        self.set_interval(EXPIRE_INTERVAL_S, self.tick, name="expire")

    async def on_unmount(self) -> None:
        await self._stop_session()

    async def action_quit(self) -> None:
        await self._stop_session()
        self.exit()

    def action_toggle_help(self) -> None:
        """The keys of the current screen, its own first (the help screen's `?` closes it)."""
        screen = self.screen
        if isinstance(screen, HelpScreen):
            screen.dismiss(None)
            return
        title = type(screen).__name__.removesuffix("Screen").lower() or "console"
        self.push_screen(HelpScreen(help_rows(screen), f"{title} keys"))

    def refresh_screen(self) -> None:
        """Asks the current screen to redraw from the store."""
        self._drawn_version = self.store.version
        screen = self.screen
        if isinstance(screen, StoreScreen):
            try:
                screen.refresh_from_store()
            except NoMatches:
                # A timer tick while the screen is being taken down (at exit, or as it
                # is dismissed): there is nothing left to draw into.
                if not (self._exit or self._closing or screen._closing or not screen.is_attached):
                    raise

    def _poll_store(self) -> None:
        if self.jobs.structure_version != self._jobs_marked:
            self._jobs_marked = self.jobs.structure_version
            self._mark_nodes()
        if self.jobs.version != self._jobs_drawn:
            self._jobs_drawn = self.jobs.version
            self.refresh_screen()
        elif self.store.version != self._drawn_version:
            self.refresh_screen()

    def _mark_nodes(self) -> None:
        """What runs on each node, and which nodes hold a failed or hung rank."""
        owners = self.jobs.gpu_owners()
        faults: dict[str, list[str]] = {}
        for node_name, bad in self.jobs.current_faults().items():
            for view, rank in bad:
                what = "hung" if rank.state == RS.RANK_STATE_HUNG else "failed"
                # What first: the node table's state column is 11 cells at 80 columns.
                faults.setdefault(node_name, []).append(f"{what} r{rank.rank} {view.name}")
        for node in self.store:
            runs = [
                f"{job} r{rank}" + (f" gpu{','.join(map(str, gpus))}" if gpus else "")
                for job, rank, gpus in owners.get(node.name, [])
            ]
            self.store.set_job_marks(
                node.name, ", ".join(runs), "; ".join(faults.get(node.name, []))
            )

    # -- jobs ----------------------------------------------------------------------

    def open_jobs(self) -> None:
        self.push_screen(JobsScreen(self.jobs, self.open_job, self.forget_job))

    async def forget_job(self, name: str) -> str:
        """Asks the job's leader to forget a finished job (jobs screen `d`)."""
        return await self.operator.forget(name)

    def open_tasks(self) -> None:
        self.push_screen(TasksScreen(TasksClient(self.targets, self.links)))

    def open_job(self, name: str) -> JobScreen:
        if self.jobs_session is not None:
            self.jobs_session.watch(name)
        screen = JobScreen(
            name, self.jobs, self.store, self.operator, clock=self.clock, open_logs=self.open_logs
        )

        def closed(_: None) -> None:
            if self.jobs_session is not None and self.jobs_session.watched == name:
                self.jobs_session.watch("")

        self.push_screen(screen, closed)
        return screen

    def restart_node(self, node: str) -> None:
        """The restart dialog of the current job whose rank failed on `node` (cluster
        screen `r`): the same job that the node's red mark names."""
        bad = self.jobs.current_faults().get(node)
        if bad:
            screen = self.open_job(bad[0][0].name)
            self.call_after_refresh(screen.action_restart)
            return
        self.notify(f"no failed rank on {node}", severity="warning")

    def open_logs(self, name: str, rank: int, attempt: int) -> None:
        """The rank's log screen: stdout and stderr, merged with stderr marked (``s`` cycles)."""
        self.push_screen(rank_log_screen(self.jobs_session, name, rank, attempt))

    def tick(self) -> None:
        """Marks silent nodes lost and redraws, so shown ages move on (once a second)."""
        self.store.expire(self.clock())
        self.refresh_screen()

    async def _stop_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.stop()
        jobs, self.jobs_session = self.jobs_session, None
        if jobs is not None:
            await jobs.stop()
        await self.operator.close()
        await self.links.close()
