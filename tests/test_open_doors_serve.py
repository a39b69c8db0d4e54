"""Issue 16, "the inference server an agent starts has no authentication": `python -m
agent.serve` answers only the agent's token, or on a TLS cluster a certificate from the
cluster's CA; it listens beyond loopback only with TLS, and a serve task finds its
agent's files in the environment the agent sets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc

from agent.security.task_credentials import (
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_FILE_ENV,
    credential_env,
    export_credentials,
    without_credentials,
)
from agent.security.tls import TlsFiles, load_tls
from agent.serve.events import Done, Event, Request, Usage
from agent.serve.flags import ListenError, parse_args
from agent.serve.main import build_server
from agent.serve.rpc import Backend, InferenceServicer
from agent.serve.stats import ServerStats
from console.net.ca import init_ca

TOKEN = "serve-door-token-0123456789"
ROOT = Path(__file__).resolve().parent.parent


class EchoEngine:
    """Stands in for the decode engine: every request completes at once with its prompt."""

    def now(self) -> float:
        return 0.0

    def submit(
        self, request: Request, sink: Callable[[Event], None], *, ignore_eos: bool = False
    ) -> int:
        usage = Usage(len(request.prompt_ids), len(request.prompt_ids), 1.0, 1.0, "length")
        sink(Done("echo", request.prompt_ids, usage))
        return 1

    def cancel(self, key: int) -> None:
        return None

    def load(self) -> tuple[int, int]:
        return 0, 0


def servicer() -> InferenceServicer:
    served = InferenceServicer("echo", ServerStats(), 4, 1.0)
    engine: Any = EchoEngine()
    served.backend = Backend(engine=engine, encode=lambda text: [1, 2, 3], context_tokens=64)
    return served


async def complete(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] | None
) -> pb.CompleteResponse:
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    request = pb.CompleteRequest(prompt="apple", params=pb.SamplingParams(max_tokens=3))
    reply: pb.CompleteResponse = await stub.Complete(request, metadata=metadata, timeout=5)
    return reply


@contextlib.asynccontextmanager
async def running(
    token: str | None, listen: str = "127.0.0.1:0", tls: Any = None
) -> AsyncIterator[int]:
    server, port, _ = await build_server(servicer(), listen, token, tls)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


async def test_complete_needs_the_agents_token() -> None:
    async with (
        running(TOKEN) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        for metadata in (None, (("authorization", "Bearer not-the-token-0123456"),)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await complete(channel, metadata)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as stats:
            await stub.GetServerStats(pb.GetServerStatsRequest(), timeout=5)
        assert stats.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reply = await complete(channel, (("authorization", f"Bearer {TOKEN}"),))
        assert list(reply.token_ids) == [1, 2, 3]


async def test_no_credentials_and_open_listening_are_refused() -> None:
    with pytest.raises(ListenError, match="answers no one"):
        await build_server(servicer(), "127.0.0.1:0", None)
    with pytest.raises(ListenError, match=r"refusing to listen on 0\.0\.0\.0 without mutual TLS"):
        await build_server(servicer(), "0.0.0.0:0", TOKEN)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serve-ca")
    init_ca(base / "ca", {"node-a": ["127.0.0.1", "localhost"]}, ["alice"], port=50051)
    return base / "ca"


async def test_on_a_tls_cluster_the_server_wants_a_certificate_from_its_ca(ca_dir: Path) -> None:
    files = TlsFiles(ca_dir / "ca.pem", ca_dir / "agents/node-a.pem", ca_dir / "agents/node-a.key")
    material = load_tls(files)
    ca = (ca_dir / "ca.pem").read_bytes()
    alice = (
        (ca_dir / "consoles/alice.key").read_bytes(),
        (ca_dir / "consoles/alice.pem").read_bytes(),
    )
    # Beyond loopback, as the agent may with TLS.
    async with running(None, "0.0.0.0:0", material) as port:
        address = f"127.0.0.1:{port}"
        anonymous = grpc.ssl_channel_credentials(ca)
        async with grpc.aio.secure_channel(address, anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await complete(channel, None)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # no handshake
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await complete(channel, (("authorization", f"Bearer {TOKEN}"),))
        console = grpc.ssl_channel_credentials(ca, *alice)
        async with grpc.aio.secure_channel(address, console) as channel:
            assert list((await complete(channel, None)).token_ids) == [1, 2, 3]


# -- the command line and the agent's environment ------------------------------------------------


def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_serve_refuses_to_start_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (TOKEN_FILE_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--model", str(model_dir(tmp_path))])
    assert exited.value.code == 2
    assert "give credentials: --token-file F" in capsys.readouterr().err


def test_serve_takes_the_agents_files_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    tls = TlsFiles(tmp_path / "ca.pem", tmp_path / "a.pem", tmp_path / "a.key")
    environ: dict[str, str] = {TLS_KEY_ENV: "/stale.key", "PATH": "/bin"}
    export_credentials(environ, token_file, None)
    assert environ == {TOKEN_FILE_ENV: str(token_file), "PATH": "/bin"}  # no stale TLS
    assert without_credentials(environ) == {"PATH": "/bin"}
    for name, value in credential_env(token_file, tls).items():
        monkeypatch.setenv(name, value)
    args = parse_args(["--model", str(model_dir(tmp_path))])
    assert (args.token_file, args.tls_ca, args.tls_cert, args.tls_key) == (
        token_file,
        tls.ca,
        tls.cert,
        tls.key,
    )


def test_a_started_server_refuses_a_call_without_the_token(tmp_path: Path) -> None:
    """The real program: it listens before the model loads, and refuses an anonymous call
    there and then (the model here never loads: it has no weights)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    ready = tmp_path / "ready.json"
    env = {**os.environ, TOKEN_FILE_ENV: str(token_file), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "agent.serve", "--model", str(model_dir(tmp_path))]
    argv += ["--listen", "127.0.0.1:0", "--ready-file", str(ready), "--drain-s", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert '"address"' in first, proc.stderr.read().decode() if proc.stderr else ""
        address = first.split('"address": "')[1].split('"')[0]

        async def ask() -> tuple[grpc.StatusCode, grpc.StatusCode]:
            async with grpc.aio.insecure_channel(address) as channel:
                codes = []
                for metadata in (None, (("authorization", f"Bearer {TOKEN}"),)):
                    try:
                        await complete(channel, metadata)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
                return codes[0], codes[1]

        anonymous, with_token = asyncio.run(ask())
        assert anonymous is grpc.StatusCode.UNAUTHENTICATED
        assert with_token is not grpc.StatusCode.UNAUTHENTICATED  # loading, or failed: past auth
    finally:
        proc.terminate()
        proc.wait(30)


async def test_the_consoles_probe_reads_stats_with_the_agents_token() -> None:
    from console.net.serve_client import probe

    async with running(TOKEN) as port:
        anonymous = await probe(f"127.0.0.1:{port}")
        assert anonymous.stats is None  # health is open; the stats are the agent's
        with_token = await probe(f"127.0.0.1:{port}", TOKEN)
        assert with_token.stats is not None and with_token.stats.model == "echo"
