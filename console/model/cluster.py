"""The console's picture of the cluster: plain Python, no Textual, no I/O.

Agent streams write into it; widgets read from it. Every method that changes a
node takes the time explicitly, so tests need neither servers nor sleeping.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from gantry.v1 import telemetry_pb2
from gantry.v1.xid_catalog import xid_info

# A live agent that has sent nothing for this many sample intervals (and at least
# STALE_MIN_S) is shown as lost: a hung agent must never look like a frozen row.
STALE_INTERVALS = 3.0
STALE_MIN_S = 5.0
DEFAULT_HISTORY = 900
MAX_XID_EVENTS = 1000


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    LOST = "lost"
    UNAUTHORIZED = "unauthorized"


@dataclass
class NodeView:
    name: str
    address: str
    state: ConnState = ConnState.CONNECTING
    # Wall-clock seconds when the node entered its current state.
    since: float = 0.0
    error: str = ""
    info: telemetry_pb2.NodeInfo | None = None
    latest: telemetry_pb2.NodeSample | None = None
    # Wall-clock seconds when the latest sample reached the console.
    received_at: float = 0.0
    history: deque[telemetry_pb2.NodeSample] = field(
        default_factory=lambda: deque(maxlen=DEFAULT_HISTORY)
    )
    xid_events: deque[telemetry_pb2.XidEvent] = field(
        default_factory=lambda: deque(maxlen=MAX_XID_EVENTS)
    )
    # What jobs run here ("demo-moe r0 gpu0, ...") and, when one of their ranks on
    # this node failed or hung, what ("failed r1 demo-moe"): the node is shown red.
    jobs_text: str = ""
    job_fault: str = ""
    # A fatal XID (or a GPU the driver lost) since the agent last connected: "xid 79 gpu3".
    gpu_fault: str = ""
    # Bumped on every change, so a widget repaints only what moved.
    version: int = 0

    @property
    def sample_time(self) -> float:
        """Wall-clock seconds at which the latest sample was taken by the agent."""
        if self.latest is None:
            return 0.0
        return self.latest.time.seconds + self.latest.time.nanos / 1e9

    def status_text(self, now: float) -> str:
        if self.state in (ConnState.LOST, ConnState.UNAUTHORIZED):
            return f"{self.state.value} {format_age(now - self.since)}"
        if self.job_fault and self.state is ConnState.LIVE:
            return self.job_fault
        if self.gpu_fault and self.state is ConnState.LIVE:
            return self.gpu_fault
        return str(self.state.value)


def gpu_fault(sample: telemetry_pb2.NodeSample) -> str:
    """What makes a node unfit for ranks in ``sample``: its latest fatal XID (the catalogue
    says reset the GPU or drain the node), else a GPU the driver lost; "" when none."""
    for event in reversed(sample.xid_events):
        if xid_info(event.xid).fatal:
            where = f" gpu{event.gpu_index}" if event.gpu_known else ""
            return f"xid {event.xid}{where}"
    if sample.gpu_problems:
        return "gpu lost"
    return ""


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"


class ClusterStore:
    """Nodes in the order the cluster file lists them."""

    def __init__(self, history: int = DEFAULT_HISTORY) -> None:
        self._nodes: dict[str, NodeView] = {}
        self._history = history
        self.version = 0

    # -- reading ---------------------------------------------------------------
    def __iter__(self) -> Iterator[NodeView]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def node(self, name: str) -> NodeView:
        return self._nodes[name]

    def names(self) -> list[str]:
        return list(self._nodes)

    def unreachable(self) -> list[NodeView]:
        return [n for n in self._nodes.values() if n.state is not ConnState.LIVE]

    # -- writing ---------------------------------------------------------------
    def add_node(self, name: str, address: str, now: float) -> NodeView:
        if name in self._nodes:
            raise ValueError(f"node {name!r} is listed twice")
        view = NodeView(name=name, address=address, since=now)
        view.history = deque(maxlen=self._history)
        self._nodes[name] = view
        self._touch(view)
        return view

    def set_connecting(self, name: str, now: float) -> None:
        view = self._nodes[name]
        # A lost node stays "lost since T" while reconnect attempts go on: the
        # operator cares how long it has been gone, not about each retry.
        if view.state in (ConnState.LOST, ConnState.UNAUTHORIZED):
            return
        self._set_state(view, ConnState.CONNECTING, now, "")

    def set_live(self, name: str, info: telemetry_pb2.NodeInfo, now: float) -> None:
        self._nodes[name].gpu_fault = ""  # a restarted agent (a reset, a reboot) starts clean
        view = self._nodes[name]
        view.info = info
        self._set_state(view, ConnState.LIVE, now, "")

    def set_lost(self, name: str, now: float, error: str) -> None:
        view = self._nodes[name]
        if view.state is ConnState.LOST:
            if view.error != error:
                view.error = error
                self._touch(view)
            return
        self._set_state(view, ConnState.LOST, now, error)

    def set_unauthorized(self, name: str, now: float, error: str) -> None:
        view = self._nodes[name]
        if view.state is ConnState.UNAUTHORIZED:
            return
        self._set_state(view, ConnState.UNAUTHORIZED, now, error)

    def apply_sample(self, name: str, sample: telemetry_pb2.NodeSample, now: float) -> bool:
        """Adds a sample; returns False for one already held (a replay overlapping)."""
        view = self._nodes[name]
        t = sample.time.seconds + sample.time.nanos / 1e9
        if view.latest is not None and t <= view.sample_time:
            return False
        view.latest = sample
        view.received_at = now
        view.history.append(sample)
        view.xid_events.extend(sample.xid_events)
        fault = gpu_fault(sample)
        if fault:
            view.gpu_fault = fault
        if view.state is not ConnState.LIVE:
            # Samples only flow on a live stream; a stale node that speaks again is live.
            self._set_state(view, ConnState.LIVE, now, "")
        else:
            self._touch(view)
        return True

    def set_job_marks(self, name: str, jobs_text: str, job_fault: str) -> None:
        view = self._nodes[name]
        if (view.jobs_text, view.job_fault) != (jobs_text, job_fault):
            view.jobs_text, view.job_fault = jobs_text, job_fault
            self._touch(view)

    def expire(self, now: float) -> list[str]:
        """Marks live nodes that went silent as lost; returns their names."""
        expired = []
        for view in self._nodes.values():
            if view.state is not ConnState.LIVE:
                continue
            interval = (
                view.info.sample_interval_s if view.info and view.info.sample_interval_s else 1
            )
            limit = max(STALE_MIN_S, STALE_INTERVALS * interval)
            last = view.received_at or view.since
            if now - last > limit:
                self._set_state(view, ConnState.LOST, last, f"no sample for {now - last:.0f}s")
                expired.append(view.name)
        return expired

    def _set_state(self, view: NodeView, state: ConnState, now: float, error: str) -> None:
        view.state = state
        view.since = now
        view.error = error
        self._touch(view)

    def _touch(self, view: NodeView) -> None:
        self.version += 1
        view.version = self.version
