"""The pure rules of targets as users have them: metadata and headers, the name --insecure
dials a certificate by, protoc's arguments and its first error."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from console.loadtest.call_metadata import binary_value, grpc_metadata, http_headers
from console.loadtest.proto_files import first_error, import_paths_for, protoc_args
from console.loadtest.tls import name_override
from tests.loadtest_target_servers import make_certs, self_signed


def test_binary_metadata_is_base64_decoded_where_it_is_base64_else_sent_as_utf8() -> None:
    assert binary_value("AAEC/w==") == b"\x00\x01\x02\xff"
    assert binary_value("AAEC_w") == b"\x00\x01\x02\xff"  # URL-safe, unpadded
    assert binary_value("héllo wörld") == "héllo wörld".encode()
    assert binary_value("abcde") == b"abcde"  # 5 characters cannot be base64


def test_grpc_metadata_puts_the_token_first_and_binary_values_as_bytes() -> None:
    pairs = (("x-tenant", "blue"), ("trace-bin", "AAEC/w=="))
    assert grpc_metadata(pairs, "tok") == (
        ("authorization", "Bearer tok"),
        ("x-tenant", "blue"),
        ("trace-bin", b"\x00\x01\x02\xff"),
    )
    assert grpc_metadata((), "") == ()


def test_http_headers_carry_binary_values_as_grpc_puts_them_on_the_wire() -> None:
    pairs = (("x-tenant", "blue"), ("trace-bin", "héllo"))
    assert http_headers(pairs, "") == [("x-tenant", "blue"), ("trace-bin", "aMOpbGxv")]
    assert http_headers((), "t")[0] == ("authorization", "Bearer t")


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_the_name_override_is_needed_only_where_the_host_is_not_in_the_certificate(
    tmp_path: Path,
) -> None:
    certs = make_certs(tmp_path)
    agent = _der(certs.server_cert.read_bytes())  # node-a, localhost, 127.0.0.1, ::1
    assert name_override(agent, "127.0.0.1") == ""
    assert name_override(agent, "::1") == ""
    assert name_override(agent, "LOCALHOST") == ""
    assert name_override(agent, "10.0.0.9") == "node-a"  # its first DNS name
    stranger = _der(self_signed("elsewhere.example")[0])
    assert name_override(stranger, "127.0.0.1") == "elsewhere.example"
    wildcard = _der(self_signed("*.lan")[0])
    assert name_override(wildcard, "gpu-1.lan") == ""
    assert name_override(wildcard, "a.gpu-1.lan") == "*.lan"


def test_protoc_gets_each_files_folder_unless_an_import_path_holds_it(tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    (inc / "sub").mkdir(parents=True)
    inside, outside = inc / "sub" / "a.proto", tmp_path / "api" / "b.proto"
    assert import_paths_for((inside, outside), (inc,)) == [inc.resolve(), outside.parent.resolve()]
    args = protoc_args((inside,), (inc,), tmp_path / "out.pb")
    assert args == [
        f"--proto_path={inc.resolve()}",
        f"--descriptor_set_out={tmp_path / 'out.pb'}",
        "--include_imports",
        str(inside.resolve()),
    ]


def test_the_first_error_of_protoc_skips_its_warnings() -> None:
    stderr = (
        "warning: Import shared/words.proto is unused.\n"
        'api/echo.proto:8:46: "Missing" is not defined.\n'
        'api/echo.proto:9:1: "Other" is not defined.\n'
    )
    assert first_error(stderr) == 'api/echo.proto:8:46: "Missing" is not defined.'
    assert first_error("") == "protoc failed with no message"


def test_protocs_own_log_lines_are_not_its_error() -> None:
    # protoc 5+ logs through absl (a file without a syntax line: Hadoop's, HBase's protos).
    stderr = (
        "W0000 00:00:1733555555.123456   4242 parser.cc:659] No edition or syntax specified "
        "for the proto file: ha.proto. Please use 'syntax = \"proto2\";' or ...\n"
        'ha.proto:12:3: "Missing" is not defined.\n'
    )
    assert first_error(stderr) == 'ha.proto:12:3: "Missing" is not defined.'
