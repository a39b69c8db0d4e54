"""What the load tester shows and warns of (pure): live figures computed as the report
computes them, rates without partial-interval spikes, the short-completions (EOS) and
closed-loop notes, and the warnings of comparing runs that are not comparable."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from console.loadtest.aggregate import Aggregate
from console.loadtest.compare import compare as compare_reports
from console.loadtest.compare import format_compare, incomparable
from console.loadtest.config import LoadTestConfig, LoadTestError, validate
from console.loadtest.histogram import Dist
from console.loadtest.notes import short_completions_note
from console.loadtest.plan import make_plan
from console.loadtest.progress import Progress
from console.loadtest.prompts import PromptSet, describe_requests
from console.loadtest.recorder import Recorder, Snapshot
from console.loadtest.report import Report
from console.loadtest.targets import ServerCount, completion_answer, sse_event
from console.model.loadtest_form import LoadForm, config_from_form
from tests.test_loadtest_pure import make_report


def report_of(aggregate: Aggregate, config: LoadTestConfig) -> Report:
    return aggregate.to_report(
        config, method="m", kind="gantry", streaming=True, started_at="t", notes=[]
    )


# --- live figures are the report's ------------------------------------------------------


def test_live_percentiles_are_the_reports_for_the_same_results() -> None:
    """Warm-up answers, errors and intervals of very different latency: every live p50/p99
    is that of the measured answers so far, and the last one is the report's."""
    config = LoadTestConfig("h:1", rate=100, duration_s=6, warmup_s=1, seed=1)
    plan = make_plan(config)
    recorders = [Recorder(i, True, None, None, streaming=True) for i in range(2)]
    aggregate = Aggregate(plan, 0.0, 2, max_tokens=32)
    rng = random.Random(3)
    measured: list[float] = []
    live: list[Progress] = []
    for i in range(700):
        scheduled = i * 0.01
        warm = scheduled < 1.0
        slow = 2.0 < scheduled < 2.5  # a stall: that interval's latencies are 10x
        latency_s = rng.expovariate(1 / (0.3 if slow else 0.03))
        rec = recorders[i % 2]
        rec.sent(warm, scheduled, scheduled)
        code = "OK" if i % 40 else "UNAVAILABLE"
        rec.done(warm, scheduled, scheduled, scheduled + latency_s, code, scheduled, 3, "eos")
        if not warm and code == "OK":
            measured.append(latency_s * 1000)
        if i % 50 == 49:
            now = scheduled + 0.005
            for r in recorders:
                aggregate.add(r.snapshot(now))
            live.append(aggregate.progress(now + 0.1))
    for r in recorders:
        snap = r.snapshot(7.0)
        snap.final, snap.window_end = True, 7.0
        aggregate.add(snap)
    done = aggregate.progress(7.1, done=True)
    report = report_of(aggregate, config)

    assert report.latency_ms.count == len(measured)
    assert done.latency_ms["p50"] == report.latency_ms.p50
    assert done.latency_ms["p90"] == report.latency_ms.p90
    assert done.latency_ms["p99"] == report.latency_ms.p99
    assert done.achieved_rps == report.achieved_rps
    assert done.throughput_rps == report.throughput_rps
    # Mid-run, the same population: within the histogram's precision of the exact
    # percentile of the measured answers so far (not of one interval, not warm-up).
    mid = next(p for p in live if p.elapsed_s > 3.0)
    so_far = sorted(measured[: mid.completed - mid.errors.get("UNAVAILABLE", 0)])
    exact_p99 = so_far[max(0, round(0.99 * len(so_far)) - 1)]
    assert mid.latency_ms["p99"] == pytest.approx(exact_p99, rel=0.01)


def snap(at: float, sent: int, *, final: bool = False) -> Snapshot:
    return Snapshot(
        0,
        at,
        sent=sent,
        completed=sent,
        ok=sent,
        last_send=at - 0.01,
        last_completion=at,
        final=final,
        window_end=5.0 if final else 0.0,
    )


def test_rates_have_no_spike_from_late_or_partial_snapshots() -> None:
    """30 requests/s for 5 s. The parent's ticks are out of step with the worker's
    snapshots: one tick gets none and the next two, and the last snapshot comes just
    after a tick. Every live rate is 30/s and the last is the report's."""
    config = LoadTestConfig("h:1", rate=30, duration_s=5, seed=1)
    aggregate = Aggregate(make_plan(config), 0.0, 1)
    rates = []
    arrivals = {0.7: [0.5], 1.2: [], 1.7: [1.0, 1.5], 2.2: [2.0], 2.7: [2.5], 3.2: [3.0]}
    arrivals |= {3.7: [3.5], 4.2: [4.0], 4.7: [4.5]}
    for tick, taken in arrivals.items():
        for at in taken:
            aggregate.add(snap(at, 15))
        rates.append(aggregate.progress(tick).achieved_rps)
    aggregate.add(snap(5.02, 15, final=True))  # the last 0.5 s of sends, and the drain
    done = aggregate.progress(5.03, done=True)
    assert rates == pytest.approx([30.0] * len(rates))
    report = report_of(aggregate, config)
    assert report.sent == 150 and report.achieved_rps == pytest.approx(30.0, rel=0.01)
    assert done.achieved_rps == report.achieved_rps


def test_two_workers_rates_add_up_and_a_finished_one_stops_counting() -> None:
    aggregate = Aggregate(make_plan(LoadTestConfig("h:1", rate=40, duration_s=5)), 0.0, 2)
    aggregate.add(dataclasses.replace(snap(0.5, 10), worker=0))
    aggregate.add(dataclasses.replace(snap(0.5, 10), worker=1))
    assert aggregate.progress(0.6).achieved_rps == pytest.approx(40.0)
    aggregate.add(dataclasses.replace(snap(0.75, 5, final=True), worker=1))
    assert aggregate.progress(0.8).achieved_rps == pytest.approx(40.0)  # 20 + its last 20
    assert aggregate.progress(1.3).achieved_rps == pytest.approx(20.0)


# --- notes ------------------------------------------------------------------------------


def completions(p50: float, count: int = 100) -> Dist:
    return Dist(count, p50, p50, p50, p50, p50, p50)


def test_short_completions_note_only_when_eos_ends_them_far_below_max_tokens() -> None:
    note = short_completions_note(completions(1), 32, {"eos": 4258}, ignore_eos=False)
    assert note is not None
    assert note.startswith("completions are short: median 1 token, max_tokens 32")
    assert "4258 of 4258 answers ended at end-of-sequence" in note and "--ignore-eos" in note
    assert short_completions_note(completions(30), 32, {"eos": 90}, False) is None
    assert short_completions_note(completions(4), 32, {"length": 100}, False) is None
    assert short_completions_note(completions(1), None, {"eos": 1}, False) is None
    unknown = short_completions_note(completions(2), 32, {}, False)
    assert unknown is not None and "does not say why" in unknown
    ignored = short_completions_note(completions(1), 32, {"eos": 9}, True)
    assert ignored is not None and "may not honour it" in ignored


def test_live_and_report_warn_of_one_token_completions_and_closed_loop() -> None:
    config = LoadTestConfig("h:1", concurrency=4, duration_s=1)
    aggregate = Aggregate(make_plan(config), 0.0, 1, max_tokens=32)
    rec = Recorder(0, False, None, None, streaming=True, warmup=False)
    for i in range(50):
        rec.sent(False, i * 0.01, i * 0.01)
        rec.done(False, i * 0.01, i * 0.01, i * 0.01 + 0.02, "OK", i * 0.01 + 0.01, 1, "eos")
    final = rec.snapshot(1.0)
    final.final, final.window_end = True, 1.0
    aggregate.add(final)
    live = aggregate.progress(1.0).notes
    report = report_of(aggregate, config)
    assert live == report.notes and len(live) == 2
    assert live[0].startswith("closed loop hides stalls (coordinated omission)")
    assert "--rate" in live[0]
    assert live[1].startswith("completions are short: median 1 token, max_tokens 32")
    assert report.finishes == {"eos": 50} and report.completion_tokens is not None
    table = report.to_table()
    assert "note       closed loop hides stalls" in table
    assert "per answer median 1   max 32   ended by eos 50" in table
    saved = report.to_json()
    assert Report.from_json(saved).to_json() == saved
    assert saved["finishes"] == {"eos": 50} and saved["completion_tokens"]["p50"] == 1.0


def test_open_loop_carries_no_closed_loop_note() -> None:
    config = LoadTestConfig("h:1", rate=10, duration_s=1)
    aggregate = Aggregate(make_plan(config), 0.0, 1)
    assert aggregate.progress(0.5).notes == []
    assert not any("closed loop" in n for n in report_of(aggregate, config).notes)


# --- comparing ------------------------------------------------------------------------


def test_compare_warns_when_the_runs_are_not_comparable() -> None:
    base = make_report(prompt_set="p.jsonl: 4 prompts, sha256 aa", max_tokens=32)
    assert incomparable(base, make_report(prompt_set=base.prompt_set, max_tokens=32)) == []
    closed = make_report(mode="closed", target="other:1", prompt_set="built-in: 8 prompts")
    closed.max_tokens, closed.ignore_eos = 64, True
    warnings = incomparable(base, closed)
    assert warnings[0].startswith("A is open loop and B is closed loop: closed loop hides")
    assert "the targets differ (A: 127.0.0.1:5, B: other:1)" in warnings
    assert any(w.startswith("the prompt sets differ") for w in warnings)
    assert "the max_tokens differ (A: 32, B: 64)" in warnings
    assert "the ignore-EOS settings differ (A: no, B: yes)" in warnings
    text = format_compare(compare_reports(base, closed), "a", "b", warnings)
    assert text.startswith("A: a\nB: b\n\nwarning: not comparable: A is open loop")
    # A report saved before prompt sets and max_tokens were kept is not compared on them.
    assert incomparable(make_report(), base) == []


# --- inputs -------------------------------------------------------------------------------


def test_sse_finish_reasons() -> None:
    assert sse_event('data: {"choices": [{"text": " hi", "finish_reason": null}]}') == (1, "")
    assert sse_event('data: {"choices": [{"text": "", "finish_reason": "stop"}]}') == (0, "eos")
    assert sse_event('data: {"choices": [{"text": "x", "finish_reason": "length"}]}') == (
        1,
        "length",
    )
    assert sse_event("data: [DONE]") is None


def test_sse_chat_deltas() -> None:
    def delta(d: str) -> str:
        return f'data: {{"choices": [{{"index": 0, "delta": {d}, "finish_reason": null}}]}}'

    assert sse_event(delta('{"role": "assistant", "content": ""}')) == (0, "")
    assert sse_event(delta('{"content": "Hi"}')) == (1, "")
    assert sse_event(delta('{"reasoning_content": "so"}')) == (1, "")  # a reasoning model
    assert sse_event(delta('{"reasoning": "so"}')) == (1, "")
    end = 'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
    assert sse_event(end) == (0, "eos")


def test_sse_usage_is_the_servers_count() -> None:
    # OpenAI's stream_options.include_usage: "usage": null on every event, then one
    # event with no choices and the usage.
    assert sse_event('data: {"choices": [{"text": "ab"}], "usage": null}') == (1, "")
    usage = 'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}'
    assert sse_event(usage) == ServerCount(7)
    assert sse_event('data: {"choices": [], "usage": {"completion_tokens": "7"}}') == (0, "")
    assert sse_event('data: {"choices": [], "usage": {"completion_tokens": true}}') == (0, "")


def test_a_whole_completions_answer_says_its_tokens_in_its_usage() -> None:
    answer = {
        "choices": [{"text": "a b", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    assert completion_answer(json.dumps(answer).encode()) == (2, "eos")
    assert completion_answer(
        b'{"choices": [{"text": "a"}], "usage": {"completion_tokens": 1}}'
    ) == (
        1,
        "",
    )
    assert completion_answer(b'{"choices": [{"text": "a"}]}') is None  # no usage
    assert completion_answer(b"not json") is None
    assert completion_answer(b"[1, 2]") is None


def test_recorder_counts_finishes_and_completion_lengths() -> None:
    rec = Recorder(0, False, None, None, streaming=True, warmup=False)
    for tokens, finish in ((1, "eos"), (1, "eos"), (32, "length")):
        rec.sent(False, 0.0, 0.0)
        rec.done(False, 0.0, 0.0, 0.1, "OK", 0.05, tokens, finish)
    got = rec.snapshot(1.0)
    assert got.finishes == {"eos": 2, "length": 1}
    assert got.hists["completion_tokens"].summary().p50 == 1.0


def test_ignore_eos_from_form_and_refused_with_method() -> None:
    form = LoadForm("h:1", "closed", "4", "10s", "32", ignore_eos="yes")
    assert config_from_form(form).ignore_eos
    assert not config_from_form(dataclasses.replace(form, ignore_eos="no")).ignore_eos
    with pytest.raises(LoadTestError, match="ignore EOS 'maybe': expected yes or no"):
        config_from_form(dataclasses.replace(form, ignore_eos="maybe"))
    with pytest.raises(LoadTestError, match="--ignore-eos is for the Gantry endpoint"):
        validate(LoadTestConfig("h:1", rate=1, method="a.B/C", ignore_eos=True))


def test_prompt_sets_are_told_apart() -> None:
    two = PromptSet(["a", "b"])
    assert describe_requests(two, None).startswith("built-in: 2 prompts, sha256 ")
    one = describe_requests(PromptSet(["a"]), None)
    assert one.startswith("built-in: 1 prompt, sha256 ")
    assert one != describe_requests(PromptSet(["b"]), None)
    assert describe_requests(None, None, '{"x": 1}') != describe_requests(None, None, "{}")
