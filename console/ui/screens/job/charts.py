"""The charts tab: the job's figures over steps (or time), and its nodes' GPU use."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import ComposeResult

from console.model.cluster import ClusterStore
from console.model.gpu_series import GpuUtilization
from console.model.job_steps import OP_PREFIX
from console.model.jobs import JobView
from console.ui.screens.job.pane import Cadence, JobPane
from console.ui.widgets.chart_panel import Chart, ChartPanel

CHARTS = (
    # id, label, store field, aggregate, fixed scale
    ("loss", "loss", "loss", "mean", None),
    ("grad_norm", "grad norm", "grad_norm", "mean", None),
    ("lr", "lr", "learning_rate", "mean", None),
    ("tokens", "tokens/s", "tokens_per_s", "total", None),
    ("step_time", "step s", "step_time_s", "mean", None),
    ("forward", " fwd s", "forward_s", "mean", None),
    ("backward", " bwd s", "backward_s", "mean", None),
    ("allreduce", " allred s", "allreduce_s", "mean", None),
    ("optim", " optim s", "optimizer_step_s", "mean", None),
)
# The step-time split a script's timers give (DeepSpeed's wall_clock_breakdown): a row
# only when it has data (ZeRO-3 has no backward allreduce phase; its collectives are
# all-gather and reduce-scatter, shown one row each from the comms logger's table).
PHASE_FIELDS = frozenset(("forward_s", "backward_s", "allreduce_s", "optimizer_step_s"))
OP_LABELS = {
    "all_reduce": "allreduce",
    "all_gather": "allgather",
    "reduce_scatter": "redscatter",
    "all_to_all": "alltoall",
    "broadcast": "bcast",
}
CHART_POINTS = 120
TIME_BUCKET_S = 5.0
MAX_GPU_CHARTS = 4


def op_label(op: str) -> str:
    """A collective's chart label: `allgather s` for all_gather_into_tensor."""
    for name, short in OP_LABELS.items():
        if op.startswith(name):
            return f"{short} s"
    return f"{op[:9]} s"


class ChartsPane(JobPane):
    TAB = "charts"
    LABEL = "2 Charts"

    def __init__(
        self, cluster: ClusterStore, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cluster, monotonic=monotonic)
        self.panel = ChartPanel(id="chart-panel")
        self.gpu = GpuUtilization(cluster, CHART_POINTS)
        self.by_time = False
        self._fed = Cadence(self.INTERVAL_S)

    def compose(self) -> ComposeResult:
        yield self.panel

    def draw(self, view: JobView, now: float) -> None:
        charts = []
        for _key, label, field, how, fixed in CHARTS:
            values = tuple(self._series(view, field, how, now))
            if values or field not in PHASE_FIELDS:
                charts.append(Chart(label, values, fixed))
        charts.append(Chart("coll %", tuple(self._ratio(view, now)), (0.0, 100.0)))
        for op in view.collective_ops(CHART_POINTS):
            values = tuple(self._series(view, OP_PREFIX + op, "mean", now))
            charts.append(Chart(op_label(op), values))
        charts.extend(self._gpu_charts(view))
        self.panel.show(charts)

    def refresh_from(self, view: JobView, now: float, monotonic: float) -> None:
        super().refresh_from(view, now, monotonic)
        if not self.shown and self._fed.due(view.version, monotonic):
            self._fed.drawn(view.version, monotonic)
            self._feed_gpu_means(view)

    def _feed_gpu_means(self, view: JobView) -> None:
        # Hidden, each node's GPU means still take in its new samples (a millisecond
        # for 128 nodes), so that the tab's key does not read them all at once (128
        # nodes' minutes of samples took a few hundred milliseconds, in the key's frame).
        for node in dict.fromkeys(view.nodes()):
            if node in self.cluster:
                self.gpu.node(node)

    def _series(self, view: JobView, field: str, how: str, now: float) -> list[float]:
        if self.by_time:
            return [
                v
                for v in view.time_series(field, TIME_BUCKET_S, now, CHART_POINTS, how)
                if v is not None
            ]
        return [v for _, v in view.step_series(field, how, CHART_POINTS)]

    def _ratio(self, view: JobView, now: float) -> list[float]:
        coll = self._series(view, "collective_time_s", "mean", now)
        step = self._series(view, "step_time_s", "mean", now)
        return [100 * c / s for c, s in zip(coll, step, strict=False) if s > 0]

    def _gpu_charts(self, view: JobView) -> list[Chart]:
        """One chart per node for the first MAX_GPU_CHARTS nodes, then one for the rest."""
        nodes = [n for n in dict.fromkeys(view.nodes()) if n in self.cluster]
        groups = [[n] for n in nodes[:MAX_GPU_CHARTS]]
        if nodes[MAX_GPU_CHARTS:]:
            groups.append(nodes[MAX_GPU_CHARTS:])
        charts = []
        for group in groups:
            label = f"gpu {group[0]}" if len(group) == 1 else f"gpu +{len(group)}"
            charts.append(Chart(label[:12], self.gpu.group(group), (0.0, 100.0)))
        return charts
