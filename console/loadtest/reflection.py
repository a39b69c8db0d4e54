"""Finding a method through gRPC server reflection (grpc.reflection.v1alpha)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from console.loadtest.config import LoadTestError

Metadata = tuple[tuple[str, str], ...] | None


@dataclass(frozen=True)
class MethodInfo:
    name: str  # "pkg.Service/Method"
    client_streaming: bool
    server_streaming: bool
    request_class: type[Message]


class _Reflection:
    def __init__(self, channel: grpc.aio.Channel, address: str, metadata: Metadata, timeout: float):
        self.address = address
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self.call: Any = stub.ServerReflectionInfo(metadata=metadata, timeout=timeout)

    async def ask(self, **request: str) -> Any:
        await self.call.write(reflection_pb2.ServerReflectionRequest(**request))
        response = await self.call.read()
        if not isinstance(response, reflection_pb2.ServerReflectionResponse):  # EOF
            raise LoadTestError(f"{self.address}: the reflection stream ended early")
        if response.HasField("error_response"):
            raise LoadTestError(
                f"{self.address}: reflection says {response.error_response.error_message}"
            )
        return response

    async def files(self, **request: str) -> list[descriptor_pb2.FileDescriptorProto]:
        response = await self.ask(**request)
        return [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]


async def find_method(
    channel: grpc.aio.Channel, address: str, name: str, metadata: Metadata, timeout: float
) -> MethodInfo:
    """LoadTestError when the server has no reflection or no such method."""
    service, _, method = name.partition("/")
    reflection = _Reflection(channel, address, metadata, timeout)
    try:
        listed = await reflection.ask(list_services="")
        services = sorted(s.name for s in listed.list_services_response.service)
        if service not in services:
            raise LoadTestError(
                f"unknown method {name}: {address} serves no {service} "
                f"(it serves {', '.join(services) or 'nothing'})"
            )
        files = {f.name: f for f in await reflection.files(file_containing_symbol=service)}
        missing = [d for f in list(files.values()) for d in f.dependency if d not in files]
        while missing:
            wanted = missing.pop()
            if wanted in files:
                continue
            for f in await reflection.files(file_by_filename=wanted):
                files.setdefault(f.name, f)
                missing.extend(d for d in f.dependency if d not in files)
        await reflection.call.done_writing()
    except grpc.aio.AioRpcError as exc:
        raise _reflection_error(exc, address, name) from None
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file_name: str) -> None:
        if file_name in added or file_name not in files:
            return
        added.add(file_name)
        for dep in files[file_name].dependency:
            add(dep)
        pool.Add(files[file_name])

    for file_name in files:
        add(file_name)
    found = pool.FindServiceByName(service)
    by_name = {m.name: m for m in found.methods}
    if method not in by_name:
        raise LoadTestError(
            f"unknown method {name}: {service} has no method {method} "
            f"(its methods: {', '.join(sorted(by_name))})"
        )
    m = by_name[method]
    return MethodInfo(
        name,
        bool(m.client_streaming),
        bool(m.server_streaming),
        message_factory.GetMessageClass(m.input_type),
    )


def _reflection_error(exc: grpc.aio.AioRpcError, address: str, name: str) -> LoadTestError:
    code = exc.code()
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return LoadTestError(
            f"{address} does not offer server reflection, so --method {name} cannot be resolved"
        )
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return LoadTestError(f"{address} refused the token: {exc.details()} (check --token-file)")
    if code is grpc.StatusCode.UNAVAILABLE:
        return LoadTestError(f"cannot reach {address}: {exc.details()}")
    return LoadTestError(f"{address}: reflection failed: {code.name}: {exc.details()}")
