"""--metadata k=v: sent with every request, the probe and the reflection call included, by
every worker process; as HTTP headers to an HTTP endpoint (real servers on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.runner import run_loadtest
from tests.loadtest_servers import SseServer, SseTiming
from tests.loadtest_target_servers import HttpsTarget, settle, start_target

PAIRS = (("x-tenant", "blue"), ("trace-bin", "AAEC/w=="))
COMPLETE = "gantry.v1.InferenceService/Complete"
REFLECTION = "ServerReflection/ServerReflectionInfo"


def carries_pairs(metadata: dict[str, str | bytes]) -> bool:
    return metadata.get("x-tenant") == "blue" and metadata.get("trace-bin") == b"\x00\x01\x02\xff"


async def test_every_grpc_call_carries_the_metadata_with_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    target = await start_target(with_reflection=True)
    try:
        gantry = await run_loadtest(
            LoadTestConfig(
                target.address, concurrency=1, requests=3, metadata=PAIRS, token_file=token_file
            )
        )
        method = await run_loadtest(
            LoadTestConfig(target.address, method=COMPLETE, rate=20, requests=6, metadata=PAIRS)
        )
        await settle()
    finally:
        await target.stop()
    assert gantry.ok == 3 and method.ok == 6
    generate = target.seen.of("/Generate")
    assert len(generate) == 4  # the probe, then three
    assert all(carries_pairs(m) and m["authorization"] == "Bearer tok-123" for m in generate)
    reflection = target.seen.of(REFLECTION)
    assert len(reflection) == 1 and carries_pairs(reflection[0])
    complete = target.seen.of("/Complete")
    assert len(complete) == 7 and all(carries_pairs(m) for m in complete)
    assert not any("authorization" in m for m in complete)


async def test_worker_processes_send_the_metadata_too() -> None:
    target = await start_target(with_reflection=True)
    try:
        report = await run_loadtest(
            LoadTestConfig(
                target.address, method=COMPLETE, rate=40, requests=20, workers=2, metadata=PAIRS
            )
        )
        await settle()
    finally:
        await target.stop()
    assert report.workers == 2 and report.ok == 20
    complete = target.seen.of("/Complete")
    assert len(complete) == 21 and all(carries_pairs(m) for m in complete)


async def test_an_http_endpoint_gets_the_metadata_as_headers() -> None:
    http = await HttpsTarget(None).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(http.url, concurrency=1, requests=3, max_tokens=2, metadata=PAIRS)
        )
    finally:
        await http.close()
    assert report.ok == 3 and report.tokens == 6
    assert len(http.headers) == 4  # the probe, then three
    for headers in http.headers:
        assert headers["x-tenant"] == "blue" and headers["trace-bin"] == "AAEC/w"


async def test_an_http_endpoint_that_wants_its_own_header_says_so() -> None:
    sse = await SseServer(SseTiming(api_key="k-1")).start()
    try:
        with pytest.raises(LoadTestError, match=r"HTTP 401.*--metadata K=V"):
            await run_loadtest(LoadTestConfig(sse.url, concurrency=1, requests=2))
        with pytest.raises(LoadTestError, match=r"HTTP 401.*or check --metadata$"):
            await run_loadtest(
                LoadTestConfig(sse.url, concurrency=1, requests=2, metadata=(("x-api-key", "no"),))
            )
        report = await run_loadtest(
            LoadTestConfig(sse.url, concurrency=1, requests=2, metadata=(("x-api-key", "k-1"),))
        )
    finally:
        await sse.close()
    assert report.ok == 2
