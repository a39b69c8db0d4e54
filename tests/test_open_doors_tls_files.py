"""Issue 16, "mTLS errors must name the file": a missing, unreadable or mismatched CA,
certificate or key is refused with one line naming that path, at agent start and when the
console loads the cluster file's TLS files."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest

from agent.main import parse_args, run_agent
from agent.security.tls import TlsError, TlsFiles, load_tls
from console.net.ca import init_ca, issue, load_ca, write_private
from console.net.cluster_file import ClusterFileError, NodeTarget, TlsPaths, load_cluster_file


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cas")
    init_ca(base / "ca", {"node-a": ["127.0.0.1"], "node-b": ["127.0.0.1"]}, ["alice"])
    init_ca(base / "other", {"node-a": ["127.0.0.1"]}, ["mallory"])
    return base / "ca", base / "other"


def agent_files(ca: Path, name: str = "node-a") -> TlsFiles:
    return TlsFiles(ca / "ca.pem", ca / "agents" / f"{name}.pem", ca / "agents" / f"{name}.key")


def refusal(files: TlsFiles) -> str:
    with pytest.raises(TlsError) as info:
        load_tls(files)
    text = str(info.value)
    assert "\n" not in text
    return text


# -- the agent ------------------------------------------------------------------------------------


def test_agent_tls_refusals_name_the_file(cas: tuple[Path, Path], tmp_path: Path) -> None:
    ca, other = cas
    good = agent_files(ca)
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder\n")
    cases = [
        # A key whose folder is a file: stat fails with ENOTDIR.
        (TlsFiles(good.ca, good.cert, plain / "node-a.key"), plain / "node-a.key", "cannot read"),
        (TlsFiles(tmp_path / "nope.pem", good.cert, good.key), tmp_path / "nope.pem", "exist"),
        (TlsFiles(good.ca, tmp_path, good.key), tmp_path, "is a folder"),
        (TlsFiles(good.ca, good.key, good.key), good.key, "not a PEM certificate"),
        (TlsFiles(plain, good.cert, good.key), plain, "not a PEM certificate"),
        (TlsFiles(good.ca, good.cert, agent_files(ca, "node-b").key), good.cert, "not belong"),
        (TlsFiles(other / "ca.pem", good.cert, good.key), other / "ca.pem", "not issued"),
    ]
    for files, path, words in cases:
        text = refusal(files)
        assert str(path) in text and words in text, text


def test_a_certificate_not_yet_valid_is_refused_naming_it(
    cas: tuple[Path, Path], tmp_path: Path
) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    cert, key = issue(load_ca(cas[0]), "node-a", "agent", hosts=["127.0.0.1"], days=30, now=later)
    (tmp_path / "early.pem").write_bytes(cert)
    write_private(tmp_path / "early.key", key)
    text = refusal(TlsFiles(cas[0] / "ca.pem", tmp_path / "early.pem", tmp_path / "early.key"))
    assert f"{tmp_path / 'early.pem'} is not valid before" in text


async def test_agent_start_says_which_file(
    cas: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = agent_files(cas[0])
    wrong_key = agent_files(cas[0], "node-b").key
    argv = ["--node-name", "node-a", "--data-dir", str(tmp_path / "d")]
    argv += ["--tls-ca", str(good.ca), "--tls-cert", str(good.cert), "--tls-key", str(wrong_key)]
    with caplog.at_level(logging.ERROR, logger="gantry.agent"):
        assert await run_agent(parse_args(argv)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"private key {wrong_key} does not belong to certificate {good.cert}"]


# -- the console ----------------------------------------------------------------------------------


def console_refusal(tls: TlsPaths) -> str:
    with pytest.raises(ClusterFileError) as info:
        NodeTarget("node-a", "127.0.0.1:1", None, tls).read_token()
    text = str(info.value)
    assert "\n" not in text and text.startswith("node node-a: ")
    return text


def test_console_tls_refusals_name_the_file(cas: tuple[Path, Path], tmp_path: Path) -> None:
    ca, other = cas
    consoles = ca / "consoles"
    alice = TlsPaths(ca / "ca.pem", consoles / "alice.pem", consoles / "alice.key")
    mallory_key = other / "consoles" / "mallory.key"
    cases = [
        (TlsPaths(alice.ca, alice.cert, mallory_key), mallory_key, "does not belong"),
        (
            TlsPaths(alice.ca, other / "consoles" / "mallory.pem", mallory_key),
            other / "consoles" / "mallory.pem",
            "was not issued by the CA",
        ),
        (TlsPaths(alice.ca, alice.key, alice.key), alice.key, "not a PEM certificate"),
        (TlsPaths(alice.cert, alice.cert, alice.key), alice.cert, "not issued"),
        (TlsPaths(tmp_path / "ca.pem", alice.cert, alice.key), tmp_path / "ca.pem", "cannot read"),
    ]
    for tls, path, words in cases:
        text = console_refusal(tls)
        assert str(path) in text and words in text, text
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    cert, key = issue(load_ca(ca), "alice", "console", hosts=[], days=1, now=past)
    (tmp_path / "old.pem").write_bytes(cert)
    write_private(tmp_path / "old.key", key)
    text = console_refusal(TlsPaths(alice.ca, tmp_path / "old.pem", tmp_path / "old.key"))
    assert f"{tmp_path / 'old.pem'} expired on" in text
    # The good files pass, as PEM bytes.
    assert [b"-----BEGIN" in pem for pem in alice.read("node-a")] == [True, True, True]


def test_a_cluster_file_with_a_mismatched_key_names_it(
    cas: tuple[Path, Path], tmp_path: Path
) -> None:
    ca, other = cas
    path = tmp_path / "cluster.yaml"
    path.write_text(
        f"tls: {{ca: {ca}/ca.pem, cert: {ca}/consoles/alice.pem, "
        f"key: {other}/consoles/mallory.key}}\n"
        "nodes:\n  - {name: node-a, address: 'h:1'}\n"
    )
    (target,) = load_cluster_file(path)
    with pytest.raises(ClusterFileError, match="does not belong") as info:
        target.read_token()
    assert f"{other}/consoles/mallory.key" in str(info.value)
