"""Server reflection, v1 and v1alpha both: grpcio-reflection serves only v1alpha
(grpc/grpc#38576), and clients such as grpcurl, Postman and grpc-java's tools ask for v1 first.

The two protocols' messages are the same but for their package, so one servicer answers
both; v1's file, made from v1alpha's, joins the descriptor pool so that a client can also
describe the v1 service it called.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer  # reflection.aio's, typed

V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1ALPHA_SERVICE = f"{V1ALPHA_PACKAGE}.ServerReflection"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
METHOD = "ServerReflectionInfo"


def _v1(type_name: str) -> str:
    return type_name.replace(f".{V1ALPHA_PACKAGE}.", f".{V1_PACKAGE}.", 1)


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, as v1alpha's file with the package renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.ClearField("options")  # v1alpha's are deprecated: true and its Java/Go packages
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = _v1(field.type_name)
    for method in proto.service[0].method:
        method.input_type, method.output_type = _v1(method.input_type), _v1(method.output_type)
    return proto


def add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Adds v1's file to `pool` unless it has one already (another library's)."""
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(v1_file().SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha for `service_names` and themselves on `server`."""
    add_v1_file(descriptor_pool.Default())
    servicer = ReflectionServicer((*service_names, V1_SERVICE, V1ALPHA_SERVICE))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {METHOD: v1}),)
    )
