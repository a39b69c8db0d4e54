"""What a running load test shows, delivered at least once a second, and the live rates."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    elapsed_s: float  # since the start, warm-up included
    target_rps: float | None  # the scheduled rate now (None in closed loop)
    # Sends per second over the time the workers' latest figures cover, warm-up included;
    # when done, the run's measured rate as the report gives it.
    achieved_rps: float
    sent: int  # measured requests (warm-up excluded)
    completed: int
    errors: dict[str, int]  # by gRPC status name, "HTTP_503", ...
    in_flight: int
    # p50/p90/p99 of the run so far, from the report's histogram (successes, warm-up
    # excluded; during the warm-up, its own); 0.0 when none.
    latency_ms: dict[str, float]
    histogram: list[tuple[float, int]]  # (upper bound ms, count): the run's latencies so far
    done: bool = False
    phase: str = "run"  # "warmup", "run", "drain" or "done"
    warmup_sent: int = 0
    throughput_rps: float = 0.0  # answers per second, over the same time as achieved_rps
    notes: list[str] = field(default_factory=list)  # warnings, as the report will note them

    def line(self) -> str:
        """One line for a terminal."""
        target = f"/{self.target_rps:.0f}" if self.target_rps is not None else ""
        errors = sum(self.errors.values())
        lat = self.latency_ms
        latency = (
            f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms" if lat.get("p50") else "p50 - p99 -"
        )
        phase = "" if self.phase == "run" else f" [{self.phase}]"
        return (
            f"{self.elapsed_s:6.1f}s{phase} rate {self.achieved_rps:.0f}{target}/s "
            f"sent {self.sent} done {self.completed} err {errors} "
            f"in-flight {self.in_flight} {latency}"
        )


class IntervalRates:
    """Per-second rates from the workers' snapshots, each worker's counts divided by the
    time its own snapshots cover. The parent's ticks and the workers' snapshots are not in
    step: dividing by the parent's interval turns two snapshots in one tick into a spike,
    and a run's last snapshot, arriving just after a tick, into a bigger one."""

    def __init__(self, start_at: float) -> None:
        self.start_at = start_at
        self._covered_to: dict[int, float] = {}  # worker -> end of the time already counted
        self._pending: dict[int, tuple[int, int, float]] = {}  # worker -> sent, answered, at
        self._rates: dict[int, tuple[float, float]] = {}  # worker -> its latest rates
        self._finished: set[int] = set()

    def add(self, worker: int, sent: int, answered: int, at: float, final: bool) -> None:
        old_sent, old_answered, _ = self._pending.get(worker, (0, 0, 0.0))
        self._pending[worker] = (old_sent + sent, old_answered + answered, at)
        if final:
            self._finished.add(worker)

    def rates(self) -> tuple[float, float]:
        """(sent/s, answered/s) now, summed over the workers; a worker whose next snapshot
        has not come yet counts at its latest rates, a finished one no longer."""
        for worker, (sent, answered, at) in list(self._pending.items()):
            since = self._covered_to.get(worker, self.start_at)
            if at - since <= 0:
                if worker in self._finished:
                    del self._pending[worker]
                continue  # nothing covered yet: keep the counts for the next snapshot
            self._rates[worker] = (sent / (at - since), answered / (at - since))
            self._covered_to[worker] = at
            del self._pending[worker]
        sent_rate = sum(r[0] for r in self._rates.values())
        answered_rate = sum(r[1] for r in self._rates.values())
        for worker in self._finished - self._pending.keys():
            self._rates.pop(worker, None)
        return sent_rate, answered_rate
