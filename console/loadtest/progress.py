"""What a running load test shows, delivered at least once a second."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    elapsed_s: float  # since the start, warm-up included
    target_rps: float | None  # the scheduled rate now (None in closed loop)
    achieved_rps: float  # sends per second over the last interval, warm-up included
    sent: int  # measured requests (warm-up excluded)
    completed: int
    errors: dict[str, int]  # by gRPC status name, "HTTP_503", ...
    in_flight: int
    latency_ms: dict[str, float]  # p50/p90/p99 over the last interval; 0.0 when none
    histogram: list[tuple[float, int]]  # (upper bound ms, count): the run's latencies so far
    done: bool = False
    phase: str = "run"  # "warmup", "run", "drain" or "done"
    warmup_sent: int = 0
    throughput_rps: float = 0.0  # answers per second over the last interval
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a terminal."""
        target = f"/{self.target_rps:.0f}" if self.target_rps is not None else ""
        errors = sum(self.errors.values())
        lat = self.latency_ms
        latency = (
            f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms" if lat.get("p50") else "p50 - p99 -"
        )
        phase = "" if self.phase == "run" else f" [{self.phase}]"
        # The last interval of a run is a sliver: its rate would mislead.
        rate = "" if self.done else f" rate {self.achieved_rps:.0f}{target}/s"
        return (
            f"{self.elapsed_s:6.1f}s{phase}{rate} "
            f"sent {self.sent} done {self.completed} err {errors} "
            f"in-flight {self.in_flight} {latency}"
        )
