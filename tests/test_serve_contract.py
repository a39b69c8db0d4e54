"""Issue 18, the inference contract for clients in other languages: the documented .proto
(every field and RPC commented), the standard health .proto shipped beside it, reflection
v1 beside v1alpha, INVALID_ARGUMENT for undecodable request bytes, the model's name rather
than its path. Servers here are the real gRPC server (agent.serve.main.build_server) on
127.0.0.1 port 0 over a scripted engine; the Node client: test_serve_contract_node.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import inference_service_pb2 as pb
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from agent.serve.events import Done, Event, Request, Usage
from agent.serve.flags import model_name
from agent.serve.main import MAX_REQUEST_BYTES, SERVICE, build_server
from agent.serve.reflection_v1 import V1_SERVICE, v1_file
from agent.serve.rpc import Backend, InferenceServicer, build_request
from agent.serve.stats import ServerStats
from agent.serve.undecodable import refusal
from tests.deepspeed_env import ROOT

TOKEN = "contract-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
PROTOS = ROOT / "protos"
HEALTH_PROTO = "grpc/health/v1/health.proto"
INFERENCE_PROTO = "gantry/v1/inference_service.proto"
REFLECTION_METHOD = "/{}/ServerReflectionInfo"


class EchoEngine:
    """Answers every request with one token, " ok"."""

    def now(self) -> float:
        return 0.0

    def submit(self, request: Request, sink: Callable[[Event], None], **_: Any) -> int:
        sink(Done(" ok", (7,), Usage(len(request.prompt_ids), 1, 1.0, 1.0, "eos")))
        return 1

    def cancel(self, key: int) -> None:
        pass

    def load(self) -> tuple[int, int]:
        return 0, 0


@pytest.fixture
async def address() -> AsyncIterator[str]:
    servicer = InferenceServicer("demo", ServerStats(), 4, 1.0)
    engine: Any = EchoEngine()
    servicer.backend = Backend(engine=engine, encode=lambda text: [1, 2], context_tokens=64)
    server, port, _ = await build_server(servicer, "127.0.0.1:0", TOKEN)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def raw_unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


# --- the .proto files -----------------------------------------------------------------------


def descriptor_set(proto: str, tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "set.pb"
    argv = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_source_info"]
    subprocess.run([*argv, f"--descriptor_set_out={out}", proto], check=True)
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_every_field_enum_value_and_rpc_of_the_inference_proto_is_documented(
    tmp_path: Path,
) -> None:
    (file,) = descriptor_set(INFERENCE_PROTO, tmp_path).file
    commented = {
        tuple(loc.path)
        for loc in file.source_code_info.location
        if loc.leading_comments.strip() or loc.trailing_comments.strip()
    }
    # Paths in FileDescriptorProto: 4 message_type, 2 field; 5 enum_type, 2 value;
    # 6 service, 2 method.
    missing = [
        f"{m.name}.{f.name}"
        for i, m in enumerate(file.message_type)
        for j, f in enumerate(m.field)
        if (4, i, 2, j) not in commented
    ]
    missing += [
        f"{e.name}.{v.name}"
        for i, e in enumerate(file.enum_type)
        for j, v in enumerate(e.value)
        if (5, i, 2, j) not in commented
    ]
    missing += [
        f"{s.name}.{r.name}"
        for i, s in enumerate(file.service)
        for j, r in enumerate(s.method)
        if (6, i, 2, j) not in commented
    ]
    assert missing == []
    text = (PROTOS / INFERENCE_PROTO).read_text()
    for promise in ("authorization: Bearer <token>", "case-sensitive", "UNAVAILABLE", "4096"):
        assert promise in text


def without_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        without_json_names(message.nested_type)


def test_the_shipped_health_proto_is_the_one_the_server_serves(tmp_path: Path) -> None:
    text = (PROTOS / HEALTH_PROTO).read_text()
    assert text.startswith("// Copyright 2015 The gRPC Authors")
    assert "Apache License, Version 2.0" in text
    (shipped,) = descriptor_set(HEALTH_PROTO, tmp_path).file
    shipped.ClearField("source_code_info")
    without_json_names(shipped.message_type)  # protoc adds them; generated code leaves them out
    served = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(served)
    served.name = HEALTH_PROTO  # grpcio-health-checking names it grpc_health/v1/health.proto
    assert shipped == served


def test_reflection_v1_file_is_v1alpha_renamed() -> None:
    file = v1_file()
    assert (file.name, file.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    (service,) = file.service
    assert service.method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    names = [f.type_name for m in file.message_type for f in m.field if f.type_name]
    assert names and all(n.startswith(".grpc.reflection.v1.") for n in names)


# --- pure rules -----------------------------------------------------------------------------


def test_the_model_is_known_by_its_name_never_its_path(tmp_path: Path) -> None:
    assert model_name(tmp_path / "runs" / "demo" / "final") == "demo"
    assert model_name(tmp_path / "runs" / "demo" / "final-int8") == "demo-int8"
    assert model_name(tmp_path / "demo-int8") == "demo-int8"
    assert model_name(tmp_path / "finally") == "finally"
    assert model_name(Path("/")) == "model"
    assert model_name(tmp_path / "demo" / "final", "  ") == "demo"
    assert model_name(tmp_path / "demo" / "final", " tiny-moe ") == "tiny-moe"


def test_an_unset_top_p_samples_from_every_token() -> None:
    params = pb.SamplingParams(max_tokens=4, temperature=1.0)
    assert build_request([1], params, 64, 0.0).top_p == 1.0
    params.top_p = 0.5
    assert build_request([1], params, 64, 0.0).top_p == 0.5


def test_refusals_name_the_request_message() -> None:
    assert refusal("/gantry.v1.InferenceService/Generate") == (
        "request: not a gantry.v1.GenerateRequest"
    )
    assert refusal("/no.Such/Method") == "request: not the request message of /no.Such/Method"


# --- a real server ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("Generate", "gantry.v1.GenerateRequest"),
        ("Complete", "gantry.v1.CompleteRequest"),
        ("GetServerStats", "gantry.v1.GetServerStatsRequest"),
    ],
)
async def test_undecodable_bytes_get_invalid_argument_in_one_line(
    address: str, method: str, message: str
) -> None:
    path = f"/{SERVICE}/{method}"
    async with grpc.aio.insecure_channel(address) as channel:
        if method == "Generate":
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            call: Any = stream(b"\x0a\x7f\x01", metadata=AUTH, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                _ = [reply async for reply in call]
        else:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw_unary(channel, path)(b"\x0a\x7f\x01", metadata=AUTH, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == f"request: not a {message}"
        # A caller without the token is refused first, its bytes never parsed.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_unary(channel, f"/{SERVICE}/Complete")(b"\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The server still answers well-formed requests.
        reply = await raw_unary(channel, f"/{SERVICE}/Complete")(
            pb.CompleteRequest(
                prompt="hi", params=pb.SamplingParams(max_tokens=2)
            ).SerializeToString(),
            metadata=AUTH,
            timeout=10,
        )
    assert pb.CompleteResponse.FromString(reply).text == " ok"


async def test_a_request_over_the_documented_size_is_resource_exhausted(address: str) -> None:
    prompt = "x" * (MAX_REQUEST_BYTES + 1)
    request = pb.CompleteRequest(prompt=prompt, params=pb.SamplingParams(max_tokens=2))
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw_unary(channel, f"/{SERVICE}/Complete")(
                request.SerializeToString(), metadata=AUTH, timeout=10
            )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def reflect(
    channel: grpc.aio.Channel, service: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call: Any = channel.stream_stream(
        REFLECTION_METHOD.format(service),
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([request]), metadata=AUTH, timeout=10)
    (response,) = [r async for r in call]
    assert isinstance(response, reflection_pb2.ServerReflectionResponse)
    return response


@pytest.mark.parametrize(
    "service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
)
async def test_reflection_v1_and_v1alpha_list_and_describe_the_services(
    address: str, service: str
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        listed = await reflect(
            channel, service, reflection_pb2.ServerReflectionRequest(list_services="")
        )
        names = {s.name for s in listed.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health", V1_SERVICE, service} <= names
        for symbol in (SERVICE, V1_SERVICE):
            described = await reflect(
                channel,
                service,
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol),
            )
            assert not described.HasField("error_response"), described.error_response
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in described.file_descriptor_response.file_descriptor_proto
            ]
            package = symbol.rpartition(".")[0]
            assert any(f.package == package for f in files)


def test_top_k_cuts_before_sampling() -> None:
    import torch

    from agent.serve.sampling import Sampling, choose_tokens

    logits = torch.tensor([[0.0, 3.0, 2.9, 2.8]])  # nearly even among 1, 2, 3 when hot
    gen = torch.Generator().manual_seed(0)
    hot = [Sampling(temperature=50.0, generator=gen)]
    assert len({choose_tokens(logits, hot)[0] for _ in range(60)}) > 2  # no cut: any token
    kept = [Sampling(temperature=50.0, generator=gen, top_k=2)]
    assert {choose_tokens(logits, kept)[0] for _ in range(60)} == {1, 2}
    params = pb.SamplingParams(max_tokens=4, top_k=5)
    assert build_request([1], params, 64, 0.0).top_k == 5
