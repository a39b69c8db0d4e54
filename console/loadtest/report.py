"""The result of a load test: JSON both ways, and a table for a terminal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from console.loadtest.histogram import Dist

VERSION = 1
DISTS = (
    "latency_ms",
    "service_ms",
    "send_lag_ms",
    "ttft_ms",
    "itl_ms",
    "tokens_per_s_request",
    "completion_tokens",
)


@dataclass(frozen=True)
class NodeFigures:
    """One node's share of a run from the cluster (`--from-nodes`): a node whose send lag
    stands out could not keep up with its share of the load."""

    node: str
    workers: int
    sent: int
    completed: int
    ok: int
    errors: int
    send_lag_p99_ms: float | None  # open loop
    latency_p99_ms: float | None  # its answers' response time

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for name in ("send_lag_p99_ms", "latency_p99_ms"):
            value = out[name]
            out[name] = round(value, 3) if value is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeFigures:
        def ms(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value is not None else None

        return cls(
            str(data["node"]),
            int(data["workers"]),
            int(data["sent"]),
            int(data["completed"]),
            int(data["ok"]),
            int(data["errors"]),
            ms("send_lag_p99_ms"),
            ms("latency_p99_ms"),
        )


@dataclass
class Report:
    target: str
    method: str  # "gantry.v1.InferenceService/Generate", "pkg.S/M" or "POST /v1/completions"
    kind: str  # "gantry", "grpc" or "http"
    streaming: bool
    mode: str  # "open" or "closed"
    load: str  # the plan in words
    arrival: str  # "constant", "poisson" or "closed"
    concurrency: int | None
    workers: int
    started_at: str  # ISO 8601, UTC
    warmup_s: float
    duration_s: float  # the measured window
    partial: bool  # stopped before the end
    target_rps: float | None
    achieved_rps: float  # measured sends / window
    throughput_rps: float  # answers / time to the last answer
    sent: int
    completed: int
    ok: int
    errors: dict[str, int]
    unfinished: int  # in flight when stopped or past the drain timeout
    warmup_requests: int
    latency_ms: Dist  # response time: from the scheduled send (successes)
    service_ms: Dist  # from the actual send
    send_lag_ms: Dist | None  # actual send behind scheduled (open loop)
    ttft_ms: Dist | None  # streams: to the first message carrying a token
    itl_ms: Dist | None  # streams: between messages carrying tokens
    tokens_per_s_request: Dist | None
    tokens: int
    tokens_per_s: float  # overall: tokens / window
    slo_ttft_ms: float | None
    slo_latency_ms: float | None
    good: int  # ok and within the SLOs
    goodput_rps: float
    histograms: dict[str, str] = field(default_factory=dict)  # encoded HDR, for exact merging
    notes: list[str] = field(default_factory=list)
    # A report saved before these fields existed reads with their defaults.
    completion_tokens: Dist | None = None  # streams: tokens in each successful answer
    finishes: dict[str, int] = field(default_factory=dict)  # answers by why they ended
    max_tokens: int | None = None  # asked of each request (None: not completions)
    ignore_eos: bool = False
    prompt_set: str = ""  # which requests were sent, e.g. "built-in: 8 prompts"
    nodes: list[NodeFigures] = field(default_factory=list)  # --from-nodes: each node's share
    # The run second by second: console.loadtest.intervals.Interval.to_json() each.
    intervals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_pct(self) -> float:
        return 100.0 * self.error_count / self.completed if self.completed else 0.0

    @property
    def goodput_pct(self) -> float:
        return 100.0 * self.good / self.sent if self.sent else 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": VERSION}
        for name, value in self.__dict__.items():
            if isinstance(value, Dist):
                out[name] = value.to_json()
            elif name == "nodes":
                out[name] = [node.to_json() for node in self.nodes]
            elif isinstance(value, float):
                out[name] = round(value, 4)
            else:
                out[name] = value
        out["error_pct"] = round(self.error_pct, 4)
        out["goodput_pct"] = round(self.goodput_pct, 4)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        if data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} load test report")
        names = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in names}
        for name in DISTS:
            raw = values.get(name)
            values[name] = Dist.from_json(raw) if raw is not None else None
        values["errors"] = {str(k): int(v) for k, v in (values.get("errors") or {}).items()}
        values["finishes"] = {str(k): int(v) for k, v in (values.get("finishes") or {}).items()}
        values["nodes"] = [NodeFigures.from_json(n) for n in values.get("nodes") or []]
        return cls(**values)

    def to_table(self) -> str:
        lines = [f"load test  {self.target}  {self.method}"]
        lines.append(
            f"load       {self.load}   workers {self.workers}   warm-up {self.warmup_s:g}s"
        )
        stopped = "   (partial: stopped early)" if self.partial else ""
        lines.append(f"measured   {self.duration_s:.2f} s from {self.started_at}{stopped}")
        target = f"target {self.target_rps:.1f}/s   " if self.target_rps is not None else ""
        lines.append(
            f"rate       {target}achieved {self.achieved_rps:.1f}/s   "
            f"throughput {self.throughput_rps:.1f}/s"
        )
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        lines.append(
            f"requests   sent {self.sent}   ok {self.ok}   errors {self.error_count}"
            + (f" ({errors})" if errors else "")
            + f"   unfinished {self.unfinished}   warm-up {self.warmup_requests}"
        )
        lines.append("")
        lines.append(
            f"{'(ms)':<13}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'mean':>9}"
            f"{'count':>8}"
        )
        # Another service's stream carries messages, not tokens (route_guide's ListFeatures).
        messages = self.kind == "grpc"
        rows: list[tuple[str, Dist | None]] = [
            ("latency", self.latency_ms),
            ("service", self.service_ms if self.mode == "open" else None),
            ("send lag", self.send_lag_ms),
            ("1st message" if messages else "TTFT", self.ttft_ms),
            ("inter-msg" if messages else "inter-token", self.itl_ms),
        ]
        for name, dist in rows:
            if dist is not None and dist.count:
                lines.append(_dist_row(name, dist))
        if self.nodes:
            lines.append("")
            lines.extend(_node_rows(self.nodes))
        if self.tokens:
            lines.append("")
            unit = "messages" if messages else "tokens"
            lines.append(f"{unit:<11}{self.tokens} in all, {self.tokens_per_s:.1f}/s overall")
            lines.append(self._completions_line())
            if self.tokens_per_s_request is not None and self.tokens_per_s_request.count:
                lines.append(_dist_row("tokens/s/req", self.tokens_per_s_request))
        if self.slo_ttft_ms is not None or self.slo_latency_ms is not None:
            slo = []
            if self.slo_ttft_ms is not None:
                slo.append(f"TTFT <= {self.slo_ttft_ms:g} ms")
            if self.slo_latency_ms is not None:
                slo.append(f"latency <= {self.slo_latency_ms:g} ms")
            lines.append(
                f"goodput    {self.goodput_rps:.1f}/s, {self.goodput_pct:.1f}% of requests "
                f"within {' and '.join(slo)}"
            )
        lines.extend(f"note       {note}" for note in self.notes)
        return "\n".join(lines)

    def _completions_line(self) -> str:
        per = self.completion_tokens
        parts = [f"median {per.p50:.0f}"] if per is not None and per.count else []
        if self.max_tokens:
            parts.append(f"max {self.max_tokens}" + (" (EOS ignored)" if self.ignore_eos else ""))
        ended = ", ".join(f"{k} {v}" for k, v in sorted(self.finishes.items()))
        if ended:
            parts.append(f"ended by {ended}")
        return "per answer " + ("   ".join(parts) or "-")


def _node_rows(nodes: list[NodeFigures]) -> list[str]:
    lines = [
        f"{'node':<13}{'workers':>8}{'sent':>9}{'ok':>9}{'errors':>8}"
        f"{'send lag p99':>14}{'latency p99':>13}"
    ]
    for n in nodes:
        lag = f"{n.send_lag_p99_ms:.2f} ms" if n.send_lag_p99_ms is not None else "-"
        latency = f"{n.latency_p99_ms:.2f} ms" if n.latency_p99_ms is not None else "-"
        lines.append(
            f"{n.node:<13}{n.workers:>8}{n.sent:>9}{n.ok:>9}{n.errors:>8}{lag:>14}{latency:>13}"
        )
    return lines


def _dist_row(name: str, d: Dist) -> str:
    return (
        f"{name:<13}{d.p50:9.2f}{d.p90:9.2f}{d.p99:9.2f}{d.p999:9.2f}{d.max:9.2f}{d.mean:9.2f}"
        f"{d.count:8d}"
    )
