"""TLS and mutual-TLS targets: --tls-ca, --tls-cert/--tls-key, and --insecure only when
asked for. Real TLS gRPC and HTTPS servers on 127.0.0.1, certificates made in the test
with the cluster CA's code; a server that demands a client certificate as Gantry's serve
task does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.security.tls import TlsFiles, load_tls
from agent.serve.events import Done, Event, Request, Usage
from agent.serve.http_api import HttpApi, server_ssl_context
from agent.serve.main import build_server
from agent.serve.rpc import Backend, InferenceServicer
from agent.serve.stats import ServerStats
from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.runner import preflight, run_loadtest
from tests.loadtest_target_servers import (
    ECHO,
    Certs,
    HttpsTarget,
    ServerTls,
    make_certs,
    settle,
    start_target,
    write_protos,
)

COMPLETE = "gantry.v1.InferenceService/Complete"
PAIRS = (("x-tenant", "blue"),)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("loadtest-tls"))


def server_only(certs: Certs) -> ServerTls:
    return ServerTls(certs.server_cert, certs.server_key)


def mutual(certs: Certs) -> ServerTls:
    return ServerTls(certs.server_cert, certs.server_key, client_ca=certs.ca)


async def one_line_error(config: LoadTestConfig) -> str:
    with pytest.raises(LoadTestError) as info:
        await preflight(config)
    assert "\n" not in str(info.value)
    return str(info.value)


async def test_a_tls_grpc_server_checked_against_the_ca(certs: Certs) -> None:
    target = await start_target(server_only(certs))
    try:
        report = await run_loadtest(
            LoadTestConfig(target.address, concurrency=2, requests=6, tls_ca=certs.ca)
        )
        plain = await one_line_error(LoadTestConfig(target.address, rate=1))
    finally:
        await target.stop()
    assert report.ok == 6 and report.kind == "gantry" and report.tokens == 6 * 4
    assert plain.startswith(f"cannot reach {target.address}")


async def test_a_bad_server_certificate_fails_before_the_run_unless_insecure(
    certs: Certs,
) -> None:
    # Self-signed, for another name: neither trusted nor the name dialled.
    stranger = await start_target(ServerTls(certs.stranger_cert, certs.stranger_key))
    try:
        message = await one_line_error(LoadTestConfig(stranger.address, rate=1, tls_ca=certs.ca))
        assert message.startswith(f"{stranger.address}: the server's certificate failed")
        assert "--insecure" in message
        report = await run_loadtest(
            LoadTestConfig(stranger.address, concurrency=1, requests=3, insecure=True)
        )
        assert report.ok == 3
        assert stranger.inference.streams == 4  # the probe, then three
    finally:
        await stranger.stop()


async def test_mutual_tls_wants_the_client_certificate(certs: Certs) -> None:
    target = await start_target(mutual(certs), with_reflection=True)
    try:
        anonymous = await one_line_error(LoadTestConfig(target.address, rate=1, tls_ca=certs.ca))
        assert "client certificate" in anonymous and "--tls-cert" in anonymous
        stranger = await one_line_error(
            LoadTestConfig(
                target.address,
                rate=1,
                tls_ca=certs.ca,
                tls_cert=certs.stranger_cert,
                tls_key=certs.stranger_key,
            )
        )
        assert stranger.startswith(f"{target.address} refused")
        # The server's certificate comes from a CA this client was not given.
        client = LoadTestConfig(
            target.address, rate=1, tls_cert=certs.client_cert, tls_key=certs.client_key
        )
        untrusted = await one_line_error(client)
        assert "certificate failed verification" in untrusted
        assert target.inference.calls == target.inference.streams == 0
        report = await run_loadtest(
            replace(client, method=COMPLETE, rate=20, requests=4, tls_ca=certs.ca, metadata=PAIRS)
        )
        insecure = await run_loadtest(
            replace(client, rate=None, concurrency=1, requests=2, insecure=True)
        )
        await settle()
    finally:
        await target.stop()
    assert report.ok == 4 and insecure.ok == 2
    assert target.seen.of("ServerReflectionInfo")[0]["x-tenant"] == "blue"


async def test_worker_processes_reach_a_mutual_tls_server_with_proto_files(
    certs: Certs, tmp_path: Path
) -> None:
    echo, include = write_protos(tmp_path)
    target = await start_target(mutual(certs))
    try:
        report = await run_loadtest(
            LoadTestConfig(
                target.address,
                method=f"{ECHO}/Say",
                data='{"text": "hi"}',
                proto_files=(echo,),
                import_paths=(include,),
                rate=40,
                requests=20,
                workers=2,
                metadata=PAIRS,
                tls_ca=certs.ca,
                tls_cert=certs.client_cert,
                tls_key=certs.client_key,
            )
        )
        await settle()
    finally:
        await target.stop()
    assert report.workers == 2 and report.ok == 20 and not report.errors
    assert target.echo.requests == [b"\x0a\x02hi"] * 21
    assert all(m["x-tenant"] == "blue" for m in target.seen.of("/Say"))


async def test_an_https_endpoint_with_its_ca_and_with_insecure(certs: Certs) -> None:
    https = await HttpsTarget(server_only(certs)).start()
    stranger = await HttpsTarget(ServerTls(certs.stranger_cert, certs.stranger_key)).start()
    try:
        report = await run_loadtest(
            LoadTestConfig(https.url, concurrency=1, requests=3, max_tokens=2, tls_ca=certs.ca)
        )
        message = await one_line_error(LoadTestConfig(stranger.url, rate=1, tls_ca=certs.ca))
        insecure = await run_loadtest(
            LoadTestConfig(stranger.url, concurrency=1, requests=2, max_tokens=2, insecure=True)
        )
    finally:
        await https.close()
        await stranger.close()
    assert report.ok == 3 and report.tokens == 6 and len(https.headers) == 4
    assert message.startswith(f"{stranger.url}: the server's certificate failed verification")
    assert insecure.ok == 2 and len(stranger.headers) == 3


async def test_an_https_endpoint_that_wants_a_client_certificate(certs: Certs) -> None:
    https = await HttpsTarget(mutual(certs)).start()
    try:
        anonymous = await one_line_error(LoadTestConfig(https.url, rate=1, tls_ca=certs.ca))
        report = await run_loadtest(
            LoadTestConfig(
                https.url,
                concurrency=2,
                requests=4,
                max_tokens=2,
                workers=2,
                tls_ca=certs.ca,
                tls_cert=certs.client_cert,
                tls_key=certs.client_key,
            )
        )
    finally:
        await https.close()
    assert anonymous.startswith(https.url) and "client certificate" in anonymous
    assert report.ok == 4 and len(https.headers) == 5


# -- Gantry's own inference server, as a serve task runs it on a TLS cluster ---------------


class EchoEngine:
    """Stands in for the decode engine: every request completes at once."""

    def now(self) -> float:
        return 0.0

    def submit(
        self, request: Request, sink: Callable[[Event], None], *, ignore_eos: bool = False
    ) -> int:
        usage = Usage(len(request.prompt_ids), 3, 1.0, 1.0, "length")
        sink(Done("echo", (1, 2, 3), usage))
        return 1

    def cancel(self, key: int) -> None:
        return None

    def load(self) -> tuple[int, int]:
        return 0, 0


def echo_servicer() -> InferenceServicer:
    served = InferenceServicer("echo", ServerStats(), 4, 1.0)
    engine: Any = EchoEngine()
    served.backend = Backend(engine=engine, encode=lambda text: [1, 2, 3], context_tokens=64)
    return served


async def test_gantrys_serve_task_on_a_tls_cluster_is_loaded_with_a_console_certificate(
    certs: Certs,
) -> None:
    material = load_tls(TlsFiles(certs.ca, certs.server_cert, certs.server_key))
    server, port, _ = await build_server(echo_servicer(), "127.0.0.1:0", None, material)
    await server.start()
    runner = web.AppRunner(HttpApi(echo_servicer(), None, certificate_verified=True).app())
    await runner.setup()
    context = server_ssl_context(material.ca, certs.server_cert, certs.server_key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/completions"  # type: ignore[union-attr]
    console = LoadTestConfig(
        f"127.0.0.1:{port}",
        concurrency=2,
        requests=6,
        tls_ca=certs.ca,
        tls_cert=certs.client_cert,
        tls_key=certs.client_key,
    )
    try:
        refused = await one_line_error(replace(console, tls_cert=None, tls_key=None))
        grpc_report = await run_loadtest(console)
        http_report = await run_loadtest(replace(console, target=url, max_tokens=3))
    finally:
        await server.stop(0)
        await runner.cleanup()
    assert "client certificate" in refused
    assert grpc_report.ok == 6 and not grpc_report.errors
    assert http_report.ok == 6 and not http_report.errors
