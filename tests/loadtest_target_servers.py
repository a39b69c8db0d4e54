"""Targets as users have them, for the load tester's tests (127.0.0.1, port 0): gRPC
servers with or without reflection, plain, TLS or mutual TLS, that record the metadata
of every call; an OpenAI-style HTTPS endpoint that records the headers; certificates
made here with the cluster CA's code (console.net.ca); .proto files for --proto.

echo.v1.Echo is served without reflection and without generated code: its handlers take
and return raw bytes, so a test checks the request the load tester built byte for byte.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gantry.v1 import inference_service_pb2_grpc
from grpc_reflection.v1alpha import reflection

from console.net.ca import create_ca, issue, write_private, write_public
from tests.loadtest_servers import SERVICE, FakeInference, Timing

ECHO = "echo.v1.Echo"
SAY_REPLY = b"\x0a\x02ok"  # SayReply{text: "ok"}
COUNT_REPLIES = 3


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA that signed server and client
    server_cert: Path  # CN node-a; names localhost, 127.0.0.1, ::1
    server_key: Path
    client_cert: Path  # a console's client certificate from the same CA
    client_key: Path
    stranger_cert: Path  # self-signed, for "elsewhere.example" only
    stranger_key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca = create_ca()
    files: dict[str, bytes] = {
        "ca.pem": ca.cert.public_bytes(serialization.Encoding.PEM),
    }
    files["server.pem"], files["server.key"] = issue(ca, "node-a", "agent", hosts=[])
    files["client.pem"], files["client.key"] = issue(ca, "alice", "console")
    files["stranger.pem"], files["stranger.key"] = self_signed("elsewhere.example")
    for name, data in files.items():
        write = write_private if name.endswith(".key") else write_public
        write(folder / name, data)
    f = folder
    return Certs(
        f / "ca.pem",
        f / "server.pem",
        f / "server.key",
        f / "client.pem",
        f / "client.key",
        f / "stranger.pem",
        f / "stranger.key",
    )


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None = None  # given: mutual TLS, a client certificate from it required


# -- .proto files ------------------------------------------------------------------------

ECHO_PROTO = """syntax = "proto3";
package echo.v1;
import "shared/words.proto";
service Echo {
  rpc Say(SayRequest) returns (SayReply);
  rpc Count(SayRequest) returns (stream SayReply);
}
message SayRequest { string text = 1; int32 times = 2; shared.Word word = 3; }
message SayReply { string text = 1; }
"""
WORDS_PROTO = """syntax = "proto3";
package shared;
message Word { string value = 1; }
"""


def write_protos(folder: Path, echo_text: str = ECHO_PROTO) -> tuple[Path, Path]:
    """(the service's file, the -I folder its import lives in), in separate folders."""
    api, include = folder / "api", folder / "include"
    (include / "shared").mkdir(parents=True, exist_ok=True)
    api.mkdir(parents=True, exist_ok=True)
    (include / "shared" / "words.proto").write_text(WORDS_PROTO)
    (api / "echo.proto").write_text(echo_text)
    return api / "echo.proto", include


# -- gRPC ----------------------------------------------------------------------------------


class SeenMetadata(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Every call's method and metadata, as the server received them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, str | bytes], ...]]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls.append((details.method, tuple(details.invocation_metadata or ())))
        return await continuation(details)

    def of(self, method: str) -> list[dict[str, str | bytes]]:
        return [dict(metadata) for name, metadata in self.calls if name.endswith(method)]


class RawEcho:
    """echo.v1.Echo on bytes: records each request as it arrived."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def say(self, request: bytes, context: Any) -> bytes:
        self.requests.append(request)
        return SAY_REPLY

    async def count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.requests.append(request)
        for _ in range(COUNT_REPLIES):
            yield SAY_REPLY

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            ECHO,
            {
                "Say": grpc.unary_unary_rpc_method_handler(self.say),
                "Count": grpc.unary_stream_rpc_method_handler(self.count),
            },
        )


@dataclass
class GrpcTarget:
    server: grpc.aio.Server
    address: str
    seen: SeenMetadata
    echo: RawEcho
    inference: FakeInference

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_target(
    tls: ServerTls | None = None, *, with_reflection: bool = False, timing: Timing | None = None
) -> GrpcTarget:
    """Gantry's InferenceService (FakeInference) and echo.v1.Echo, reflection only for the
    former and only when asked for."""
    seen = SeenMetadata()
    server = grpc.aio.server(interceptors=[seen])
    inference = FakeInference(timing or Timing())
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
    echo = RawEcho()
    server.add_generic_rpc_handlers((echo.handler(),))
    if with_reflection:
        reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
            require_client_auth=tls.client_ca is not None,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return GrpcTarget(server, f"127.0.0.1:{port}", seen, echo, inference)


# -- HTTPS -----------------------------------------------------------------------------------


def server_context(tls: ServerTls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class HttpsTarget:
    """/v1/models and /v1/completions (streamed or not), recording each request's headers."""

    tls: ServerTls | None
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> HttpsTarget:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = server_context(self.tls) if self.tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{port}/v1/completions"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "tiny"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"choices": [{"text": "x", "finish_reason": "length"}]})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(2):
            event = {"choices": [{"index": 0, "text": f" t{i}"}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        done = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response


async def settle() -> None:
    """Lets a server finish the handlers of calls that just completed."""
    await asyncio.sleep(0.05)
