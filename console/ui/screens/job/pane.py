"""What every tab of the job screen is: a pane that draws itself from the job's view,
at its own cadence, and only while it is shown (the advisor excepted: its tab's label
counts what it finds)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from textual.containers import Vertical
from textual.widget import Widget

from console.model.cluster import ClusterStore
from console.model.jobs import JobView

# A big job changes every few milliseconds: a pane draws at most this often after a
# change, and once a second regardless, so that ages move on.
DRAW_INTERVAL_S = 0.5
IDLE_DRAW_S = 1.0


@dataclass
class Cadence:
    """When something drawn from a changing view is due again (times: monotonic seconds).

    Due when the view's version moved and `interval_s` passed since the last draw, or
    when `idle_s` passed whatever the version.
    """

    interval_s: float
    idle_s: float = IDLE_DRAW_S
    drawn_at: float = -math.inf
    drawn_version: int = -1

    def due(self, version: int, monotonic: float) -> bool:
        since = monotonic - self.drawn_at
        return since >= self.idle_s or (version != self.drawn_version and since >= self.interval_s)

    def drawn(self, version: int, monotonic: float) -> None:
        self.drawn_at, self.drawn_version = monotonic, version

    def expire(self) -> None:
        """Due at the next look, whatever the version."""
        self.drawn_at = -math.inf


class JobPane(Vertical):
    """One tab: drawn while shown, when its cadence says so, and when its tab is shown."""

    TAB: ClassVar[str]  # the pane's id, and the tab's name
    LABEL: ClassVar[str]  # the tab's label
    INTERVAL_S: ClassVar[float] = DRAW_INTERVAL_S

    def __init__(
        self, cluster: ClusterStore, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(id=self.TAB)
        self.cluster = cluster
        self.monotonic = monotonic
        self.cadence = Cadence(self.INTERVAL_S)
        self.shown = False

    @property
    def focus_target(self) -> Widget | None:
        """What the tab's key focuses (None: the focus stays where it is)."""
        return None

    def refresh_from(self, view: JobView, now: float, monotonic: float) -> None:
        """One of the screen's refreshes: drawn if shown and due."""
        if self.shown and self.cadence.due(view.version, monotonic):
            self.cadence.drawn(view.version, monotonic)
            self.draw(view, now)

    def show(self, view: JobView | None, now: float, monotonic: float) -> None:
        """The tab is shown now: drawn at once if due (in the key's frame, only this
        pane); a pane shown again within its interval keeps its lines until its next
        draw, so that flipping through tabs costs no more than the repaint."""
        self.shown = True
        if view is not None:
            self.refresh_from(view, now, monotonic)

    def hide(self) -> None:
        self.shown = False

    def expire(self) -> None:
        """Drawn at the next refresh (after a key that changes what it shows)."""
        self.cadence.expire()

    def draw(self, view: JobView, now: float) -> None:
        raise NotImplementedError
