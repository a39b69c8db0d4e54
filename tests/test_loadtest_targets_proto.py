"""--proto FILE -I DIR: a method of a server without reflection, its request built from the
.proto files (a real gRPC server on 127.0.0.1 port 0 that has no reflection)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.runner import preflight, run_loadtest
from tests.loadtest_target_servers import (
    COUNT_REPLIES,
    ECHO,
    ECHO_PROTO,
    GrpcTarget,
    start_target,
    write_protos,
)

DATA = json.dumps({"text": "hi", "times": 3, "word": {"value": "x"}})
# SayRequest{text: "hi", times: 3, word: {value: "x"}}, encoded by hand.
WIRE = b"\x0a\x02hi" + b"\x10\x03" + b"\x1a\x03\x0a\x01x"


def echo_load(
    address: str, echo: Path, include: Path, method: str, requests: int = 2
) -> LoadTestConfig:
    """A closed loop of one over echo.v1.Echo's `method`, its types from the .proto files."""
    return LoadTestConfig(
        address,
        method=f"{ECHO}/{method}",
        data=DATA,
        concurrency=1,
        requests=requests,
        proto_files=(echo,),
        import_paths=(include,),
    )


@pytest.fixture
async def target() -> AsyncIterator[GrpcTarget]:
    served = await start_target()
    yield served
    await served.stop()


async def test_a_server_without_reflection_is_loaded_from_the_proto_files(
    target: GrpcTarget, tmp_path: Path
) -> None:
    echo, include = write_protos(tmp_path)
    with pytest.raises(LoadTestError, match="does not offer server reflection"):
        await preflight(LoadTestConfig(target.address, method=f"{ECHO}/Say", data=DATA, rate=1))
    say = echo_load(target.address, echo, include, "Say", requests=4)
    unary = await run_loadtest(say)
    assert unary.kind == "grpc" and not unary.streaming
    assert unary.ok == 4 and not unary.errors
    assert target.echo.requests == [WIRE] * 5  # the probe, then the four
    streamed = await run_loadtest(replace(say, method=f"{ECHO}/Count", requests=2))
    assert streamed.streaming and streamed.ok == 2 and streamed.tokens == 2 * COUNT_REPLIES


async def test_a_method_or_message_not_in_the_files_is_named_in_one_line(
    target: GrpcTarget, tmp_path: Path
) -> None:
    echo, include = write_protos(tmp_path / "good")
    base = LoadTestConfig(target.address, rate=1, proto_files=(echo,), import_paths=(include,))

    async def error(config: LoadTestConfig) -> str:
        with pytest.raises(LoadTestError) as info:
            await preflight(config)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert await error(replace(base, method=f"{ECHO}/Shout")) == (
        f"unknown method {ECHO}/Shout: {ECHO} has no method Shout (its methods: Count, Say)"
    )
    assert await error(replace(base, method="echo.v1.Quiet/Say")) == (
        "unknown method echo.v1.Quiet/Say: no service echo.v1.Quiet in the --proto files "
        "(found: echo.v1.Echo)"
    )
    broken, _ = write_protos(
        tmp_path / "broken", ECHO_PROTO.replace("returns (SayReply);", "returns (Missing);")
    )
    message = await error(replace(base, method=f"{ECHO}/Say", proto_files=(broken,)))
    assert message.startswith("--proto: ") and '"Missing" is not defined.' in message
    no_import = await error(replace(base, method=f"{ECHO}/Say", import_paths=()))
    assert no_import.startswith("--proto: ") and "shared/words.proto" in no_import
    misfit = await error(replace(base, method=f"{ECHO}/Say", data='{"nope": 1}'))
    assert misfit.startswith(f"--data does not fit {ECHO}/Say: ")
    assert target.echo.requests == []  # nothing was sent


async def test_an_any_field_and_a_proto2_required_field_in_data(
    target: GrpcTarget, tmp_path: Path
) -> None:
    # googleapis' ServiceManager and Hadoop's HA protocol: an Any whose "@type" is a message of
    # the --proto files, and proto2 fields marked required.
    proto = ECHO_PROTO.replace(
        'import "shared/words.proto";',
        'import "shared/words.proto";\nimport "google/protobuf/any.proto";',
    ).replace("shared.Word word = 3; }", "shared.Word word = 3; google.protobuf.Any extra = 4; }")
    echo, include = write_protos(tmp_path / "any", proto)
    extra = {"@type": "type.googleapis.com/shared.Word", "value": "y"}
    say = LoadTestConfig(
        target.address,
        method=f"{ECHO}/Say",
        data=json.dumps({"text": "hi", "extra": extra}),
        concurrency=1,
        requests=2,
        proto_files=(echo,),
        import_paths=(include,),
    )
    report = await run_loadtest(say)
    assert report.ok == 2 and b"type.googleapis.com/shared.Word" in target.echo.requests[-1]
    proto2 = (
        ECHO_PROTO.replace('syntax = "proto3";', 'syntax = "proto2";')
        .replace(
            "string text = 1; int32 times = 2; shared.Word word = 3;",
            "required string text = 1; optional int32 times = 2; optional shared.Word word = 3;",
        )
        .replace(
            "message SayReply { string text = 1; }",
            "message SayReply { optional string text = 1; }",
        )
    )
    words = 'syntax = "proto2";\npackage shared;\nmessage Word { required string value = 1; }\n'
    echo2, include2 = write_protos(tmp_path / "proto2", proto2)
    (include2 / "shared" / "words.proto").write_text(words)
    strict = replace(say, proto_files=(echo2,), import_paths=(include2,))
    with pytest.raises(LoadTestError) as info:
        await preflight(replace(strict, data='{"times": 1, "word": {}}'))
    assert str(info.value) == f"--data lacks what {ECHO}/Say requires: text, word.value"


async def test_protoc_log_lines_and_missing_imports_give_one_line_that_says_what_to_give(
    tmp_path: Path,
) -> None:
    from console.loadtest.proto_files import compile_protos

    echo, _ = write_protos(tmp_path)  # its import is in include/, not given below
    with pytest.raises(LoadTestError) as info:
        await compile_protos((echo,), ())
    assert str(info.value) == (
        f"--proto: cannot find shared/words.proto (imported at {echo}:3); give -I DIR, the "
        "folder that import path is relative to"
    )


async def test_another_services_stream_is_reported_in_messages_not_tokens(
    target: GrpcTarget, tmp_path: Path
) -> None:
    echo, include = write_protos(tmp_path)
    text = (await run_loadtest(echo_load(target.address, echo, include, "Count"))).to_table()
    assert "1st message" in text and "inter-msg" in text and "messages   6 in all" in text
    assert "TTFT" not in text and "tokens" not in text.split("messages")[1].split("\n")[0]
