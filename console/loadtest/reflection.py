"""Finding a method through gRPC server reflection (grpc.reflection.v1alpha), and in a
set of file descriptors (the reflected ones, or those of --proto files)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from console.loadtest.config import LoadTestError

Metadata = tuple[tuple[str, str | bytes], ...] | None


@dataclass(frozen=True)
class MethodInfo:
    name: str  # "pkg.Service/Method"
    client_streaming: bool
    server_streaming: bool
    request_class: type[Message]
    response_class: type[Message]


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
    service = name.partition("/")[0]
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
    return method_in_pool(files.values(), name, f"{address}'s reflection")


def method_in_pool(
    files: Iterable[descriptor_pb2.FileDescriptorProto], name: str, source: str
) -> MethodInfo:
    """The method `name` among these files, built into a pool of their own; LoadTestError
    naming the service or method when it is not there."""
    by_file = {f.name: f for f in files}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file_name: str) -> None:
        if file_name in added or file_name not in by_file:
            return
        added.add(file_name)
        for dep in by_file[file_name].dependency:
            add(dep)
        pool.Add(by_file[file_name])

    for file_name in by_file:
        add(file_name)
    service, _, method = name.partition("/")
    try:
        found = pool.FindServiceByName(service)
    except KeyError:
        services = sorted(
            f"{f.package}.{s.name}" if f.package else s.name
            for f in by_file.values()
            for s in f.service
        )
        raise LoadTestError(
            f"unknown method {name}: no service {service} in {source} "
            f"(found: {', '.join(services) or 'none'})"
        ) from None
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
        message_factory.GetMessageClass(m.output_type),
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
