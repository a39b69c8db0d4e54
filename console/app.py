"""The Textual console: the cluster screen fed by agent streams through the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.widgets import HelpPanel

from console.agent_client import ClusterSession
from console.cluster_file import NodeTarget
from console.screens import StoreScreen
from console.screens.cluster import ClusterScreen
from console.store import ClusterStore

EXPIRE_INTERVAL_S = 1.0


class GantryApp(App[None]):
    """Agent streams write into `store`; a timer repaints what changed.

    Streams can deliver hundreds of samples a second across a cluster, so nothing
    repaints per sample: every `refresh_interval_s` the app compares the store's
    version with the one last drawn and only then asks the current screen to
    refresh, and each widget repaints just the rows whose node version moved.
    """

    CSS_PATH = "gantry.tcss"
    TITLE = "gantry"

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
    ) -> None:
        super().__init__()
        self.targets = targets
        self.store = store if store is not None else ClusterStore()
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
            ClusterScreen(self.store, clock=self.clock, cluster_name=self.cluster_name)
        )
        if self.connect:
            # grpc.aio channels must be created inside the running loop.
            self.session = ClusterSession(self.targets, self.store)
            self.session.start()
        self.set_interval(self.refresh_interval_s, self._poll_store, name="poll-store")
        self.set_interval(EXPIRE_INTERVAL_S, self.tick, name="expire")

    async def on_unmount(self) -> None:
        await self._stop_session()

    async def action_quit(self) -> None:
        await self._stop_session()
        self.exit()

    def action_toggle_help(self) -> None:
        if self.screen.query(HelpPanel):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def refresh_screen(self) -> None:
        """Asks the current screen to redraw from the store."""
        self._drawn_version = self.store.version
        screen = self.screen
        if isinstance(screen, StoreScreen):
            screen.refresh_from_store()

    def _poll_store(self) -> None:
        if self.store.version != self._drawn_version:
            self.refresh_screen()

    def tick(self) -> None:
        """Marks silent nodes lost and redraws, so shown ages move on (once a second)."""
        self.store.expire(self.clock())
        self.refresh_screen()

    async def _stop_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.stop()
