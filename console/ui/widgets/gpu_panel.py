"""One GPU of the node screen: four sparklines with their current figures, and details."""

from __future__ import annotations

from gantry.v1 import telemetry_pb2
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Static

from console.model.node_gpus import GpuSeries, gpu_details, gpu_optional, gpu_values
from console.ui.widgets.spans import spaces_outside_spans
from console.ui.widgets.sparkline import ScaledSparkline

METRICS = ("util", "mem", "temp", "power")


class GpuPanel(Horizontal):
    """One GPU: four sparklines with their current figures, and the details beside.

    Few widgets on purpose (labels, figures and details are one Static each):
    every one of them costs a render when the GPU's figures move.
    """

    def __init__(self, index: int) -> None:
        super().__init__(id=f"gpu-{index}", classes="gpu-panel")
        self.index = index
        self.border_title = f"GPU {index}"
        self._values: dict[str, str] = {}
        self._details_key = ""
        # Kept, not queried: a refresh touches every one of them.
        self._sparks = {key: ScaledSparkline(classes=f"spark spark-{key}") for key in METRICS}
        self._figures = Static("", classes="gpu-figures")
        self._details = Static("", classes="gpu-details")

    def compose(self) -> ComposeResult:
        yield Static("\n".join(METRICS), classes="gpu-labels")
        with Vertical(classes="gpu-sparks"):
            yield from self._sparks.values()
        yield self._figures
        yield self._details

    def show(self, gpu: telemetry_pb2.GpuSample | None, series: GpuSeries) -> None:
        if gpu is None:
            return
        title = f"GPU {gpu.index}" + (f" · {gpu.name}" if gpu.name else "")
        if self.border_title != title:
            self.border_title = title
        job = ""
        if gpu.job_name:
            ranks = ",".join(str(r) for r in gpu.ranks)
            job = f"{gpu.job_name}" + (f" rank {ranks}" if ranks else "")
        if self.border_subtitle != job:
            self.border_subtitle = job
        self.set_class(bool(gpu.error), "-error")
        values = gpu_values(gpu)
        if values != self._values:
            self._values = values
            self._figures.update("\n".join(values[key] for key in METRICS), layout=False)
        details = gpu_details(gpu)
        if details + gpu.error != self._details_key:
            lines_changed = details.count("\n") != self._details_key.count("\n")
            self._details_key = details + gpu.error
            self._details.update(
                spaces_outside_spans(Content.from_markup(details, error=gpu.error)),
                layout=lines_changed,
            )
        power_ceiling = gpu_optional(gpu, "power_limit_w") or max(series.power, default=0.0) or 1.0
        self._sparks["util"].show(tuple(series.util))
        self._sparks["mem"].show(tuple(series.mem))
        self._sparks["temp"].show(tuple(series.temp), max(100.0, max(series.temp, default=0.0)))
        self._sparks["power"].show(tuple(series.power), power_ceiling)

    def value_text(self, key: str) -> str:
        """The figure shown beside a sparkline ("util", "mem", "temp", "power")."""
        return self._values.get(key, "")

    def spark_data(self, key: str) -> tuple[float, ...]:
        return tuple(self._sparks[key].data or ())
