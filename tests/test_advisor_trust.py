"""The advisor an operator can trust (issue 15 §5): the straggler is the rank the others wait
for, interruptions are judged on enough history, and findings belong to the current attempt
and world; a finished job hears only why it ended."""

from __future__ import annotations

import dataclasses

from console.model.advisor import (
    DEFAULT_THRESHOLDS,
    EventNote,
    Failure,
    LogHit,
    Thresholds,
    current,
    evaluate,
    interruptions,
    straggler,
)
from tests.test_advisor import given, only, point, stream

MIN = 60.0
HOUR = 3600.0


# --- the straggler ------------------------------------------------------------------------


def test_straggler_is_never_the_rank_that_waits() -> None:
    # Rank 1 waits 0.4 s a step at the collective: it waits for the others, it is no
    # straggler, and its node is not offered for exclusion (issue 15).
    waits = [
        point(r, s, collective_time_s=0.4 if r == 1 else 0.1) for r in range(3) for s in range(10)
    ]
    assert straggler(given(waits), DEFAULT_THRESHOLDS) == []
    # The slowest compute and the lowest wait: the others wait for rank 0.
    odd = [
        point(r, s, step_time_s=1.0, collective_time_s={0: 0.1, 1: 0.5, 2: 0.3}[r])
        for r in range(3)
        for s in range(10)
    ]
    assert only(straggler(given(odd), DEFAULT_THRESHOLDS), "straggler").title.startswith("Rank 0")
    # The slowest compute with a wait that is not the lowest: nobody waits for it alone.
    slower_and_waiting = [
        point(r, s, step_time_s=1.0, collective_time_s={0: 0.1, 1: 0.5, 2: 0.05}[r])
        for r in range(3)
        for s in range(10)
    ]
    assert straggler(given(slower_and_waiting), DEFAULT_THRESHOLDS) == []


def test_straggler_by_step_time_only_when_the_ranks_step_together() -> None:
    slow = [
        point(r, s, step_time_s=2.0 if r == 0 else 1.0, collective_time_s=None, node=f"n{r}")
        for r in range(2)
        for s in range(10)
    ]
    finding = only(straggler(given(slow), DEFAULT_THRESHOLDS), "straggler")
    assert finding.evidence.startswith("rank 0 on n0: step time 2 s per step, 2.0x")
    assert "same steps 0-9 (no collective time reported; the ranks step together" in (
        finding.evidence
    )
    assert straggler(given([p for p in slow if p.rank == 0]), DEFAULT_THRESHOLDS) == []
    apart = [p for p in slow if p.rank == 1] + [
        dataclasses.replace(p, step=p.step + 50) for p in slow if p.rank == 0
    ]
    assert straggler(given(apart), DEFAULT_THRESHOLDS) == []  # not the same steps


# --- interruptions ------------------------------------------------------------------------


def test_minutes_of_history_give_no_weekly_rate() -> None:
    # Three failures in the job's first 12 minutes: once "56,896.6 a week"; now the mean
    # time between them, which is frequent.
    now = 1_000_000.0
    inp = given(
        failures=[Failure(now - t * MIN, f"rank 0 exited ({t})") for t in (10, 6, 1)],
        now=now,
        started=now - 12 * MIN,
    )
    finding = only(interruptions(inp, DEFAULT_THRESHOLDS), "interruptions")
    assert finding.severity == "warning"
    assert finding.evidence.startswith("3 failures in 12 min: one every 4 min")
    assert "week" not in finding.evidence.replace("a weekly rate needs", "")
    assert finding.remedy is not None and finding.remedy.params["every_s"] == "240"


def test_rare_failures_in_a_short_history_are_not_reported() -> None:
    now = 1_000_000.0
    inp = given(
        failures=[Failure(now - 4 * HOUR, "a"), Failure(now - 1 * HOUR, "b")],
        now=now,
        started=now - 5 * HOUR,
    )
    assert interruptions(inp, DEFAULT_THRESHOLDS) == []  # one every 2.5 h, under 6 h seen
    frequent = Thresholds(interruptions_frequent_s=3 * HOUR)
    assert only(interruptions(inp, frequent), "interruptions").evidence.startswith(
        "2 failures in 5.0 h: one every 2.5 h"
    )
    # From the span on, the weekly rate: 2 in 6 h is 56 a week.
    later = dataclasses.replace(inp, started=now - 6 * HOUR)
    finding = only(interruptions(later, DEFAULT_THRESHOLDS), "interruptions")
    assert finding.evidence.startswith("2 failures in the last 6.0 h, 56.0 a week")


# --- the current attempt and world ----------------------------------------------------------


def test_points_of_an_earlier_attempt_or_a_larger_world_are_not_judged() -> None:
    # Attempt 1 had 4 ranks and rank 3 was slow; attempt 2 went on without its node.
    old = [
        point(r, s, step_time_s=1.0, collective_time_s=0.05 if r == 3 else 0.45, time=s)
        for r in range(4)
        for s in range(20)
    ]
    new = [
        point(r, s, step_time_s=0.6, collective_time_s=0.05, time=100.0 + s)
        for r in range(3)
        for s in range(20, 40)
    ]
    inp = given([*old, *new], now=140.0)
    assert only(evaluate(inp), "straggler").title == "Rank 3 is a straggler"  # unknown attempt
    assert evaluate(dataclasses.replace(inp, attempt=2, attempt_started=95.0)) == []
    assert evaluate(dataclasses.replace(inp, world_size=3)) == []
    kept = current(dataclasses.replace(inp, attempt=2, attempt_started=95.0, world_size=3))
    assert {p.step for p in kept.metrics} == set(range(20, 40))


def test_an_earlier_attempts_oom_is_not_this_attempts() -> None:
    oom_line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
    inp = given(
        log_hits=[LogHit(1, "node-b", 50.0, oom_line, attempt=1)],
        failures=[Failure(51.0, "rank 1 (node-b) exited with code 1", attempt=1)],
        now=100.0,
    )
    assert only(evaluate(inp), "oom").severity == "critical"  # attempts unknown: judged
    assert evaluate(dataclasses.replace(inp, attempt=2)) == []
    note = EventNote("alert", 1, "node-b", 90.0, "rank 1: ...", {"alert": "cuda_oom"}, 2)
    again = dataclasses.replace(inp, attempt=2, notes=[note])
    assert "rank 1 (node-b)" in only(evaluate(again), "oom").evidence


def test_gpus_of_a_node_the_attempt_left_are_not_judged() -> None:
    inp = stream("input_bound")
    assert only(evaluate(inp), "input-bound").evidence.startswith("GPU util 42% mean on node-a")
    without_a = dataclasses.replace(inp, nodes=frozenset({"node-b"}))
    assert only(evaluate(without_a), "input-bound").evidence.startswith(
        "GPU util 62% mean on node-b"
    )


def test_a_finished_job_hears_only_why_it_ended() -> None:
    network = stream("network_bound")
    assert {f.rule for f in evaluate(network)} == {"network-bound", "raise-grad-accum"}
    assert evaluate(dataclasses.replace(network, running=False)) == []
    straggling = stream("straggler")
    assert evaluate(dataclasses.replace(straggling, running=False)) == []
    spiked = stream("grad_spike")
    assert evaluate(dataclasses.replace(spiked, running=False)) == []
    ended = dataclasses.replace(stream("oom_cuda"), running=False)
    assert {f.rule for f in evaluate(ended)} == {"oom"}
    assert {f.rule for f in evaluate(dataclasses.replace(stream("nan_loss"), running=False))} == {
        "nan-loss"
    }


def test_input_bound_counts_from_the_current_attempts_first_step() -> None:
    # oom_cuda: the GPUs idled 20 s before attempt 2's first step; no failure is given here.
    inp = dataclasses.replace(stream("oom_cuda"), failures=[])
    assert only(evaluate(inp), "input-bound").severity == "warning"
    second = min(m.time for m in inp.metrics if m.time > inp.now - 60) - 1.0
    assert "input-bound" not in {
        f.rule for f in evaluate(dataclasses.replace(inp, attempt_started=second))
    }
    long_ago = dataclasses.replace(inp, attempt_started=inp.now - 3600)
    assert "input-bound" in {f.rule for f in evaluate(long_ago)}
