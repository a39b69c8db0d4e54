"""The load tester against in-test servers with known, injected timing (127.0.0.1).

Tolerances are wide enough for two loaded cores yet tight enough to catch a wrong clock:
a request is never faster than the delay the server injects, and the extra allowed on top
is stated in each test.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from pathlib import Path

import pytest

from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.progress import Progress
from console.loadtest.runner import preflight, run_loadtest
from console.loadtest.schedule import arrivals, constant
from tests.loadtest_servers import SseServer, SseTiming, Timing, start_grpc

COMPLETE = "gantry.v1.InferenceService/Complete"
SLACK_MS = 20.0  # the most a loaded loop may add to an injected delay at the median


def expected_stall_quantile(q: float, delay_ms: float, stall_ms: float, period_ms: float) -> float:
    """Response time at quantile q for evenly spread arrivals: a fraction f arrives within a
    stall window and waits for the rest of it (uniform over [0, stall))."""
    f = stall_ms / period_ms
    extra = 0.0 if q <= 1 - f else (q - (1 - f)) / f * stall_ms
    return delay_ms + extra


async def test_open_loop_percentiles_match_the_injected_delay_and_stall() -> None:
    """20 ms per call plus a 200 ms stall every second; 100/s for 3 s (three whole periods).
    Tolerance: p50 in [20, 40] ms; p90 and p99 within -20/+80 ms of the injected
    distribution's (120 and 210 ms). The stall shows in p99, and the achieved rate is the
    target's (the open loop does not slow down while the server stalls)."""
    server, address, _ = await start_grpc(Timing(delay_s=0.020, stall_s=0.200, period_s=1.0))
    try:
        report = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, data='{"prompt": "x"}', rate=100, duration_s=3)
        )
    finally:
        await server.stop(0)
    lat = report.latency_ms
    assert report.sent == report.ok == 300 and not report.errors
    assert report.target_rps == pytest.approx(100)
    assert report.achieved_rps == pytest.approx(100, rel=0.1)
    assert 20 <= lat.p50 <= 20 + SLACK_MS
    for q, value in ((0.9, lat.p90), (0.99, lat.p99)):
        want = expected_stall_quantile(q, 20, 200, 1000)  # 120 ms and 210 ms
        assert want - 20 <= value <= want + 80, (q, value, want)
    assert lat.p99 >= 150
    assert report.service_ms.p50 >= 20 and report.send_lag_ms is not None


async def test_closed_loop_latency_of_a_fixed_delay() -> None:
    server, address, _ = await start_grpc(Timing(delay_s=0.020))
    try:
        report = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, concurrency=4, requests=80)
        )
    finally:
        await server.stop(0)
    assert report.mode == "closed" and report.ok == 80 and report.send_lag_ms is None
    assert 20 <= report.latency_ms.p50 <= 20 + SLACK_MS
    assert 20 <= report.latency_ms.p99 <= 150
    # 4 in flight, each at least 20 ms: at most 200/s.
    assert 50 <= report.throughput_rps <= 200


async def test_open_loop_latency_runs_from_the_scheduled_send() -> None:
    """The 50th call blocks the whole event loop (client included) for 300 ms: the sends
    due meanwhile go late. Their latency counts the lag (no coordinated omission) while
    their service time does not."""
    timing = Timing(block_at=51, block_s=0.300)  # call 1 is the preflight probe
    server, address, _ = await start_grpc(timing)
    try:
        report = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, rate=100, duration_s=2)
        )
    finally:
        await server.stop(0)
    lag, latency, service = report.send_lag_ms, report.latency_ms, report.service_ms
    assert report.sent == 200 and report.ok == 200
    assert lag is not None and lag.max >= 250 and lag.mean >= 20
    assert latency.p99 >= 200 and latency.max >= 280
    # Per request, latency = send lag + service time: the lag is in the latency.
    assert latency.mean - service.mean == pytest.approx(lag.mean, abs=1.0)


async def test_open_loop_rate_is_accurate_constant_and_poisson() -> None:
    server, address, _ = await start_grpc(Timing())
    try:
        steady = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, rate=200, duration_s=2)
        )
        poisson = await run_loadtest(
            LoadTestConfig(
                address, method=COMPLETE, rate=200, duration_s=2, arrival="poisson", seed=11
            )
        )
    finally:
        await server.stop(0)
    assert steady.sent == 400 and steady.achieved_rps == pytest.approx(200, rel=0.1)
    assert steady.send_lag_ms is not None and steady.send_lag_ms.p50 < 20
    # Poisson: the seed fixes the arrivals, so the count is known exactly.
    expected = len(list(arrivals(constant(200, 2.0), "poisson", seed=11)))
    assert poisson.sent == expected and abs(expected - 400) < 80
    assert poisson.target_rps == pytest.approx(200)
    assert poisson.achieved_rps == pytest.approx(expected / 2, rel=0.1)


async def test_ttft_and_inter_token_latency_come_from_the_streamed_messages() -> None:
    """First message after 50 ms, then one every 20 ms; the server's own usage claims a
    TTFT of 0.001 ms, which must not be what is reported."""
    server, address, _ = await start_grpc(Timing(first_s=0.050, gap_s=0.020, tokens=5))
    try:
        report = await run_loadtest(LoadTestConfig(address, concurrency=2, requests=10))
    finally:
        await server.stop(0)
    assert report.method == "gantry.v1.InferenceService/Generate" and report.streaming
    assert report.ok == 10 and report.tokens == 50
    assert report.ttft_ms is not None and report.itl_ms is not None
    assert 50 <= report.ttft_ms.p50 <= 50 + SLACK_MS
    assert report.itl_ms.count == 40 and 20 <= report.itl_ms.p50 <= 20 + SLACK_MS
    assert 130 <= report.latency_ms.p50 <= 130 + 3 * SLACK_MS
    assert report.tokens_per_s_request is not None
    assert 15 <= report.tokens_per_s_request.p50 <= 5 / 0.130


async def test_two_worker_processes_send_the_exact_schedule_and_report_every_second() -> None:
    server, address, servicer = await start_grpc(Timing(delay_s=0.005))
    seen: list[tuple[float, Progress]] = []
    try:
        report = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, rate=50, requests=60, workers=2),
            on_progress=lambda p: seen.append((time.monotonic(), p)),
        )
    finally:
        await server.stop(0)
    assert report.workers == 2
    assert report.sent == report.ok == report.latency_ms.count == 60
    assert servicer.calls == 61  # the probe, then exactly the 60 scheduled
    assert report.achieved_rps == pytest.approx(50, rel=0.15)
    times = [t for t, _ in seen]
    assert seen[-1][1].done and len(seen) >= 3
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.0
    assert max(p.sent for _, p in seen) == 60


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_target_is_reported_before_the_run() -> None:
    began = time.monotonic()
    with pytest.raises(LoadTestError, match=r"cannot reach 127\.0\.0\.1:\d+: connection refused"):
        await preflight(LoadTestConfig(f"127.0.0.1:{closed_port()}", rate=10))
    assert time.monotonic() - began < 5
    with pytest.raises(LoadTestError, match=r"cannot reach http://127\.0\.0\.1"):
        await preflight(LoadTestConfig(f"http://127.0.0.1:{closed_port()}/v1/completions", rate=1))


async def test_unknown_methods_and_services_are_reported_before_the_run() -> None:
    server, address, servicer = await start_grpc(Timing())
    bare, bare_address, _ = await start_grpc(Timing(), with_reflection=False)
    try:
        with pytest.raises(LoadTestError) as info:
            await preflight(
                LoadTestConfig(address, method="gantry.v1.InferenceService/Nope", rate=1)
            )
        assert str(info.value) == (
            "unknown method gantry.v1.InferenceService/Nope: gantry.v1.InferenceService has no "
            "method Nope (its methods: Complete, Generate, GetServerStats)"
        )
        with pytest.raises(LoadTestError, match=r"serves no foo\.Bar \(it serves gantry"):
            await preflight(LoadTestConfig(address, method="foo.Bar/Baz", rate=1))
        with pytest.raises(LoadTestError, match="does not offer server reflection"):
            await preflight(LoadTestConfig(bare_address, method=COMPLETE, rate=1))
        with pytest.raises(LoadTestError, match="--data does not fit"):
            await preflight(LoadTestConfig(address, method=COMPLETE, data='{"nope": 1}', rate=1))
        assert servicer.calls == 0  # nothing was sent
        # A bidirectional method (server reflection's own): each request goes as a stream of
        # one message, half-closed, and its replies are read as a server stream's.
        bidi = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ask = '{"listServices": ""}'
        report = await run_loadtest(
            LoadTestConfig(address, method=bidi, data=ask, concurrency=1, requests=3)
        )
        assert report.ok == 3 and report.errors == {} and report.tokens == 3  # one reply each
    finally:
        await server.stop(0)
        await bare.stop(0)


async def test_a_token_is_needed_and_used(tmp_path: Path) -> None:
    token = "loadtest-token-0123456789"
    server, address, _servicer = await start_grpc(Timing(), token=token)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    try:
        with pytest.raises(LoadTestError, match=r"refused the call.*give --token-file \(or"):
            await preflight(LoadTestConfig(address, rate=1))
        # A third-party server's auth is often a header of its own.
        tenant = (("x-tenant", "blue"),)
        with pytest.raises(LoadTestError, match=r"give --token-file or check --metadata$"):
            await preflight(LoadTestConfig(address, rate=1, metadata=tenant))
        with pytest.raises(LoadTestError, match=r"check --token-file and --metadata$"):
            bad = tmp_path / "bad"
            bad.write_text("wrong-token\n")
            await preflight(LoadTestConfig(address, rate=1, metadata=tenant, token_file=bad))
        report = await run_loadtest(
            LoadTestConfig(address, concurrency=1, requests=3, token_file=token_file)
        )
        assert report.ok == 3
        with_method = await run_loadtest(
            LoadTestConfig(
                address, method=COMPLETE, concurrency=1, requests=2, token_file=token_file
            )
        )
        assert with_method.ok == 2
    finally:
        await server.stop(0)


async def test_server_errors_and_timeouts_are_counted_not_fatal() -> None:
    server, address, _ = await start_grpc(Timing(fail_every=5))
    slow, slow_address, _ = await start_grpc(Timing(delay_s=0.3))
    try:
        failing = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, concurrency=2, requests=50)
        )
        late = await run_loadtest(
            LoadTestConfig(slow_address, method=COMPLETE, concurrency=2, requests=4, timeout_s=0.05)
        )
    finally:
        await server.stop(0)
        await slow.stop(0)
    assert failing.errors == {"INTERNAL": 10} and failing.ok == 40 and failing.completed == 50
    assert failing.latency_ms.count == 40  # latencies are of answers that succeeded
    assert late.errors == {"DEADLINE_EXCEEDED": 4} and late.ok == 0
    assert "INTERNAL 10" in failing.to_table()


async def test_an_openai_compatible_http_endpoint_streams() -> None:
    sse = await SseServer(SseTiming(first_s=0.030, gap_s=0.010, tokens=4, fail_every=4)).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(sse.url, concurrency=2, requests=12, max_tokens=4)
        )
    finally:
        await sse.close()
    assert report.kind == "http" and report.method == "POST /v1/completions"
    assert report.errors == {"HTTP_500": 3} and report.ok == 9 and report.tokens == 36
    assert report.ttft_ms is not None and 30 <= report.ttft_ms.p50 <= 30 + 3 * SLACK_MS
    assert report.itl_ms is not None and 10 <= report.itl_ms.p50 <= 10 + 3 * SLACK_MS
    probe, first = sse.bodies[0], sse.bodies[1]
    assert probe["stream"] is True and probe["max_tokens"] == 1
    assert first["model"] == "tiny" and first["stream"] is True and first["max_tokens"] == 4
    assert first["stream_options"] == {"include_usage": True}
    assert isinstance(first["prompt"], str) and first["prompt"]


@pytest.mark.parametrize("knows_usage", [True, False])
async def test_http_tokens_are_the_servers_count_where_it_gives_one(knows_usage: bool) -> None:
    # Three tokens an event, as a server with --stream-interval 3 sends them.
    timing = SseTiming(tokens=6, per_event=3, knows_usage=knows_usage)
    sse = await SseServer(timing).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(sse.url, concurrency=1, requests=3, max_tokens=6)
        )
    finally:
        await sse.close()
    assert report.ok == 3
    if knows_usage:  # usage.completion_tokens, not the events
        assert report.tokens == 18 and all("stream_options" in b for b in sse.bodies)
    else:  # asked again without stream_options; events with text are all it can count
        assert report.tokens == 6
        assert [("stream_options" in b) for b in sse.bodies] == [True, False, False, False, False]


async def test_http_stream_options_of_the_users_own_are_sent_as_given() -> None:
    sse = await SseServer(SseTiming(tokens=2, knows_usage=False)).start()
    try:
        with pytest.raises(LoadTestError, match=r"HTTP 400: .*stream_options"):
            await run_loadtest(
                LoadTestConfig(
                    sse.url,
                    concurrency=1,
                    requests=1,
                    data='{"stream_options": {"include_usage": false}}',
                )
            )
        report = await run_loadtest(
            LoadTestConfig(sse.url, concurrency=1, requests=2, data='{"stream_options": null}')
        )
    finally:
        await sse.close()
    assert report.ok == 2 and report.tokens == 4
    assert [("stream_options" in b) for b in sse.bodies] == [True, False, False, False]


async def test_http_finish_reasons_are_kept_and_ignore_eos_is_in_the_body() -> None:
    sse = await SseServer(SseTiming(tokens=4)).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(sse.url, concurrency=1, requests=3, max_tokens=4, ignore_eos=True)
        )
    finally:
        await sse.close()
    assert report.finishes == {"length": 3} and report.ignore_eos
    assert report.completion_tokens is not None and round(report.completion_tokens.p50) == 4
    assert all(body["ignore_eos"] is True for body in sse.bodies)
    assert report.prompt_set.startswith("built-in: 8 prompts, sha256 ")


async def test_stop_ends_the_run_with_a_partial_report() -> None:
    server, address, _ = await start_grpc(Timing(delay_s=0.010))
    stop = asyncio.Event()

    def on_progress(p: Progress) -> None:
        if p.sent >= 10:
            stop.set()

    began = time.monotonic()
    try:
        report = await run_loadtest(
            LoadTestConfig(address, method=COMPLETE, rate=50, duration_s=60),
            on_progress=on_progress,
            stop=stop,
        )
    finally:
        await server.stop(0)
    assert time.monotonic() - began < 10
    assert report.partial and report.sent >= 10 and report.duration_s < 10
    assert report.ok + report.unfinished + report.error_count == report.sent
    assert report.target_rps == pytest.approx(50)


async def test_whole_http_answers_count_the_tokens_their_usage_gives() -> None:
    sse = await SseServer(SseTiming()).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(sse.url, concurrency=1, requests=3, data='{"stream": false}')
        )
    finally:
        await sse.close()
    assert report.ok == 3 and report.tokens == 3 * 5 and report.finishes == {"length": 3}
    assert all(body["stream"] is False and "stream_options" not in body for body in sse.bodies)


@pytest.mark.parametrize("per_event", [1, 3])
async def test_a_chat_endpoint_gets_each_prompt_as_a_user_message(per_event: int) -> None:
    sse = await SseServer(SseTiming(tokens=6, per_event=per_event, first_s=0.02)).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(sse.chat_url, concurrency=2, requests=4, max_tokens=6)
        )
    finally:
        await sse.close()
    assert report.method == "POST /v1/chat/completions" and report.ok == 4
    assert report.tokens == 24 and report.finishes == {"length": 4}
    # The role-only event carries no token: the first token came after first_s.
    assert report.ttft_ms is not None and report.ttft_ms.p50 >= 20
    assert sse.paths[0] == "/v1/models"
    for body in sse.bodies:
        assert "prompt" not in body and body["model"] == "tiny"
        [message] = body["messages"]
        assert message["role"] == "user" and isinstance(message["content"], str)


@pytest.mark.parametrize("tail", ["", "/", "/v1", "/v1/"])
async def test_a_servers_base_url_means_its_completions(tail: str) -> None:
    sse = await SseServer(SseTiming(tokens=2)).start()
    base = sse.url.removesuffix("/v1/completions")
    try:
        report = await run_loadtest(LoadTestConfig(base + tail, concurrency=1, requests=2))
    finally:
        await sse.close()
    assert report.ok == 2 and report.method == "POST /v1/completions"
    assert sse.paths == ["/v1/models"] + ["/v1/completions"] * 3
