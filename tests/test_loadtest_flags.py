"""The newer `gantry loadtest` flags (sweep, --proto, --metadata, TLS, --from-nodes) as the
CLI parses and checks them: each bad combination is one line naming what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.cli import build_parser
from console.loadtest.config import LoadTestConfig, LoadTestError, validate
from console.verbs.loadtest import config_from_args


def config(*argv: str) -> LoadTestConfig:
    args = build_parser().parse_args(["loadtest", "--target", "127.0.0.1:9", *argv])
    made = config_from_args(args)
    validate(made)
    return made


def refused(*argv: str) -> str:
    with pytest.raises(LoadTestError) as info:
        config(*argv)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_new_flags_reach_the_config(tmp_path: Path) -> None:
    proto = tmp_path / "echo.proto"
    proto.write_text('syntax = "proto3";\n')
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    made = config(
        "--concurrency", "2", "--method", "echo.Echo/Say", "--proto", str(proto),
        "-I", str(tmp_path), "--metadata", "X-Tenant=a=b", "--metadata", "trace=1",
        "--tls-ca", str(pem), "--tls-cert", str(pem), "--tls-key", str(pem),
        "--from-nodes", "node-a, node-b", "--data", "{}",
    )  # fmt: skip
    assert made.proto_files == (proto,) and made.import_paths == (tmp_path,)
    assert made.metadata == (("x-tenant", "a=b"), ("trace", "1"))
    assert made.uses_tls and (made.tls_ca, made.tls_cert, made.tls_key) == (pem, pem, pem)
    assert made.from_nodes == ("node-a", "node-b")
    assert not config("--concurrency", "1").uses_tls  # plain HOST:PORT: plaintext


def test_sweep_needs_an_slo_and_chooses_the_load() -> None:
    assert config("--sweep", "--slo-ttft-ms", "500").sweep
    assert "needs an SLO" in refused("--sweep")
    assert "drop --rate" in refused("--sweep", "--slo-ttft-ms", "5", "--rate", "3")
    assert "drop --requests" in refused("--sweep", "--slo-latency-ms", "5", "--requests", "9")


def test_bad_targets_flags_are_one_line_each(tmp_path: Path) -> None:
    pem = tmp_path / "c.pem"
    pem.write_text("x")
    assert "give --method too" in refused("--rate", "1", "--proto", str(pem))
    assert "no such file" in refused("--rate", "1", "--tls-ca", str(tmp_path / "none.pem"))
    assert "go together" in refused("--rate", "1", "--tls-cert", str(pem))
    assert "expected KEY=VALUE" in refused("--rate", "1", "--metadata", "novalue")
    assert "reserved" in refused("--rate", "1", "--metadata", "authorization=Bearer x")
    assert "give one of them" in refused("--rate", "1", "--insecure", "--tls-ca", str(pem))
    assert "not a node name" in refused("--rate", "1", "--from-nodes", "a b")
    assert "no such directory" in refused(
        "--rate", "1", "--method", "a.B/C", "--proto", str(pem), "-I", str(tmp_path / "nope")
    )
