"""Fuzzing (hypothesis): the job spec parser, the agent's request validators, a live
agent's RPCs with arbitrary field values, and garbage bytes as requests. Never a crash:
a clear one-line error each time, and the agent keeps answering."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from gantry.v1 import agent_service_pb2
from gantry.v1.rules import ValidationError
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.rpc.validation import VALIDATORS, validate_request
from console.model.job_spec import TOP_KEYS, JobSpecError, parse_job_spec
from tests.secure_agent import ThreadedAgent, threaded_agent

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
METHODS = sorted(SERVICE.methods_by_name)

# -- the job spec parser -----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["latest", "..", "/", ".", "~", "node-a slots=1", "slots=0", "a\x00b", "1e999", "step5"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
SECTION_KEYS = ["max_restarts", "backoff_s", "resume", "price_per_gpu_hour", "pricing", "bleu4_min"]
docs = st.dictionaries(
    st.sampled_from([*TOP_KEYS, "nmae", *SECTION_KEYS]),
    values | st.dictionaries(st.sampled_from(SECTION_KEYS), values, max_size=3),
    max_size=len(TOP_KEYS),
)


BASE = Path(__file__).resolve().parent  # an existing folder: working_dir "." is valid


def assert_one_line_or_spec(text: str, base: Path = BASE) -> None:
    try:
        spec = parse_job_spec(text, base, {"node-a", "node-b"}, source="fuzz.yaml")
    except JobSpecError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml") and "\n" not in message, message
    else:
        assert spec.name and spec.nodes and spec.command
        # What the console accepts, every agent accepts.
        validate_request("SubmitJob", agent_service_pb2.SubmitJobRequest(spec=spec))


@FUZZ
@given(text=st.text(alphabet=string.printable + "\x00\x85\u2028{}[]:-&*!|>'\"%@`", max_size=300))
def test_spec_parser_any_text(text: str) -> None:
    assert_one_line_or_spec(text, Path("/nonexistent-base"))
    assert_one_line_or_spec(text)


@settings(FUZZ, max_examples=80)
@given(doc=docs, as_json=st.booleans())
def test_spec_parser_any_mapping(doc: dict[str, Any], as_json: bool) -> None:
    try:
        text = json.dumps(doc, default=str) if as_json else yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    assert_one_line_or_spec(text)


spec_paths = st.sampled_from(
    ["", ".", "..", "../x", "out", "out/../x", "/", "/etc", "~/x", "latest", "step5", "ckpt/step5"]
) | st.text(alphabet="/.a~ ", max_size=8)
numbers = st.integers(-1, 10**13) | st.floats() | st.sampled_from([0, 1e12, 1e13, "5"])
nearly_valid = st.fixed_dictionaries(
    {"name": st.sampled_from(["job", "j-1", "Job"]), "nodes": st.just(["node-a slots=1"])},
    optional={
        "command": st.lists(st.text(max_size=6) | st.integers(), max_size=3),
        "args": st.lists(st.text(max_size=10) | st.integers() | st.booleans(), max_size=3),
        "env": st.dictionaries(st.from_regex(r"[A-Z_]{1,5}", fullmatch=True), st.text(max_size=5)),
        "working_dir": st.sampled_from([".", "..", "/", "fixtures"]),
        "checkpoint_dir": spec_paths,
        "restart": st.fixed_dictionaries(
            {}, optional={"resume": spec_paths, "backoff_s": numbers, "max_restarts": numbers}
        ),
        "hang_timeout_s": numbers,
        "collective_timeout_s": numbers,
        "cost": st.fixed_dictionaries({}, optional={"price_per_gpu_hour": numbers}),
        "eval_targets": st.fixed_dictionaries({}, optional={"ttft_ms_max": numbers}),
    },
)


@settings(FUZZ, max_examples=100)
@given(doc=nearly_valid)
def test_spec_parser_nearly_valid_specs(doc: dict[str, Any]) -> None:
    doc.setdefault("command", ["python"])
    assert_one_line_or_spec(json.dumps(doc, default=str))


# -- request messages of any shape ---------------------------------------------------------------

names = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True),
    st.sampled_from(["", "..", "../etc", "node-a", "a/b", "A", "x" * 64, "\x00"]),
    st.text(max_size=12),
)
paths = st.one_of(
    st.sampled_from(["", "latest", "/", "/etc/passwd", "../x", "step20", "/data/out", "~/x"]),
    st.text(alphabet="/.a-~\x00 ", max_size=16),
    st.text(max_size=16),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


def ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Any in range, with the edges (where overflows hide) drawn often."""
    edges = sorted({low, low + 1, -1, 0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**63, high - 1, high})
    return st.sampled_from([e for e in edges if low <= e <= high]) | st.integers(low, high)


INTS = {
    FieldDescriptor.TYPE_INT32: ints(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: ints(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: ints(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: ints(0, 2**64 - 1),
}
ENUM_OR_INT = st.integers(0, 12)


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return (
            paths
            if any(w in field.name for w in ("dir", "path", "checkpoint", "resume"))
            else names
        )
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return FLOATS
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return ENUM_OR_INT
    return INTS.get(field.type, st.integers(0, 100))


@st.composite
def _message(draw: st.DrawFn, descriptor: Any, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = list(descriptor.fields)
    chosen = (
        draw(st.lists(st.sampled_from(fields), max_size=len(fields), unique=True)) if fields else []
    )
    for field in chosen:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = field.message_type.fields_by_name["key"]
            value = field.message_type.fields_by_name["value"]
            out[field.name] = draw(
                st.dictionaries(field_values(key, depth), field_values(value, depth), max_size=3)
            )
        elif field.is_repeated:
            out[field.name] = draw(st.lists(field_values(field, depth), max_size=3))
        else:
            out[field.name] = draw(field_values(field, depth))
    return out


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    if depth > 3:
        return st.just({})
    return _message(descriptor, depth)


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    """A message from drawn values; values protobuf refuses (a wrong enum) are left out."""
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        try:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target = getattr(message, name)
                for k, v in value.items():
                    if isinstance(v, dict):
                        build_into(target[k], v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                target = getattr(message, name)
                for item in value:
                    if isinstance(item, dict):
                        build_into(target.add(), item)
                    else:
                        target.append(item)
            elif isinstance(value, dict):
                build_into(getattr(message, name), value)
            else:
                setattr(message, name, value)
        except (ValueError, TypeError):
            continue
    return message


def build_into(target: Message, values: dict[str, Any]) -> None:
    target.CopyFrom(build(type(target), values))
    target.SetInParent()


def request_class(method: str) -> type[Message]:
    cls: type[Message] = getattr(agent_service_pb2, SERVICE.methods_by_name[method].input_type.name)
    return cls


@st.composite
def requests(draw: st.DrawFn, methods: list[str]) -> tuple[str, Message]:
    method = draw(st.sampled_from(methods))
    cls = request_class(method)
    return method, build(cls, draw(messages(cls.DESCRIPTOR)))


@FUZZ
@given(call=requests(METHODS))
def test_validators_any_request(call: tuple[str, Message]) -> None:
    method, request = call
    try:
        validate_request(method, request)
    except ValidationError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=200))
def test_validators_any_parsed_bytes(method: str, payload: bytes) -> None:
    try:
        request = request_class(method).FromString(payload)
    except Exception:
        return  # not a message at all: gRPC refuses it before any validator (below)
    try:
        validate_request(method, request)
    except ValidationError as exc:
        assert "\n" not in str(exc)


def test_every_method_is_fuzzed() -> None:
    assert set(METHODS) == set(VALIDATORS)


# -- a live agent ------------------------------------------------------------------------------

# Calls whose effects stay inside the agent (nothing is started: see `defuse`).
LIVE = [m for m in METHODS if m != "WatchNode"]  # WatchNode streams for ever by design
CLEAR_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}


def defuse(method: str, request: Any) -> None:
    """Nothing the fuzzer sends may start a process or follow a stream for ever."""
    if method in ("SubmitJob", "StartRanks", "RestartJob") and request.HasField("spec"):
        del request.spec.command[:]
        request.spec.command.append("/nonexistent/gantry-fuzz")
    if method == "StartTask":
        which = request.WhichOneof("spec")
        if which == "loadtest":
            request.loadtest.target = ""  # refused: a load test names its target
        elif which is not None:
            getattr(request, which).model_dir = "/nonexistent/gantry-fuzz-model"
    if hasattr(request, "follow"):
        request.follow = False


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedAgent]:
    with threaded_agent(tmp_path_factory.mktemp("fuzzed") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def channel(agent: ThreadedAgent) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(agent.address) as opened:
        yield opened


def invoke(channel: grpc.Channel, method: str, payload: bytes, metadata: Any) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method}"
    streaming = SERVICE.methods_by_name[method].server_streaming
    try:
        if streaming:
            for _ in channel.unary_stream(path, None, None)(payload, metadata=metadata, timeout=2):
                pass
        else:
            channel.unary_unary(path, None, None)(payload, metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        details = exc.details() or ""
        assert "\n" not in details, details
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", LIVE)
@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_live_agent_any_request_gets_a_clear_answer(
    agent: ThreadedAgent, channel: grpc.Channel, method: str, data: st.DataObject
) -> None:
    cls = request_class(method)
    request = build(cls, data.draw(messages(cls.DESCRIPTOR)))
    defuse(method, request)
    code = invoke(channel, method, request.SerializeToString(), agent.metadata("fuzz"))
    assert code in CLEAR_CODES, (method, request, code)


@settings(FUZZ, max_examples=60)
@given(method=st.sampled_from(LIVE), payload=st.binary(max_size=300))
def test_live_agent_survives_garbage_requests(
    agent: ThreadedAgent, channel: grpc.Channel, method: str, payload: bytes
) -> None:
    try:
        request = request_class(method).FromString(payload)
    except Exception:
        pass  # undecodable: gRPC answers for itself
    else:
        defuse(method, request)
        payload = request.SerializeToString()
    invoke(channel, method, payload, agent.metadata())
    reply = channel.unary_unary(f"/{SERVICE.full_name}/GetNodeInfo", None, None)(
        b"", metadata=agent.metadata(), timeout=5
    )
    assert agent_service_pb2.GetNodeInfoResponse.FromString(reply).info.node_name == "node-a"
