"""Mean GPU utilization per sample, for the job screen's charts (pure: no Textual).

Each sample is worked out once: a node's per-sample means are kept with the newest
sample they reach, and only the samples after it are read on the next call (128 nodes x
120 samples x 8 GPUs read again on every draw took tens of milliseconds)."""

from __future__ import annotations

from dataclasses import dataclass

from gantry.v1 import telemetry_pb2

from console.model.cluster import ClusterStore


@dataclass
class _NodeMeans:
    version: int
    newest: telemetry_pb2.NodeSample | None  # the newest sample read
    means: list[float | None]  # per sample, None where no GPU reported utilization
    values: list[float]  # the means that are not None


class GpuUtilization:
    def __init__(self, cluster: ClusterStore, points: int) -> None:
        self.cluster = cluster
        self.points = points  # the last this many samples
        self._nodes: dict[str, _NodeMeans] = {}
        self._groups: dict[tuple[str, ...], tuple[tuple[int, ...], tuple[float, ...]]] = {}

    def newest_read(self, name: str) -> telemetry_pb2.NodeSample | None:
        cached = self._nodes.get(name)
        return cached.newest if cached is not None else None

    def group(self, nodes: list[str]) -> tuple[float, ...]:
        """Mean GPU utilization of `nodes`, sample by sample."""
        versions = tuple(self.cluster.node(name).version for name in nodes)
        key = tuple(nodes)
        cached = self._groups.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1]
        series = [self.node(name) for name in nodes]
        length = min((len(s) for s in series), default=0)
        result: tuple[float, ...] = ()
        if length:
            result = tuple(
                sum(s[len(s) - length + i] for s in series) / len(series) for i in range(length)
            )
        self._groups[key] = (versions, result)
        return result

    def node(self, name: str) -> list[float]:
        """A node's mean GPU utilization per sample."""
        node = self.cluster.node(name)
        cached = self._nodes.get(name)
        if cached is not None and cached.version == node.version:
            return cached.values
        history = node.history
        stop = max(0, len(history) - self.points)
        newest = cached.newest if cached is not None else None
        fresh: list[float | None] = []
        i = len(history) - 1
        while i >= stop and history[i] is not newest:
            utils = [g.gpu_util_percent for g in history[i].gpus if g.HasField("gpu_util_percent")]
            fresh.append(sum(utils) / len(utils) if utils else None)
            i -= 1
        kept = cached.means if cached is not None and i >= stop else []
        means = (kept + fresh[::-1])[-(len(history) - stop) :] if history else []
        values = [v for v in means if v is not None]
        self._nodes[name] = _NodeMeans(
            node.version, history[-1] if history else None, means, values
        )
        return values
