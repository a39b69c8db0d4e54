"""Direct mode: `gantry init --ca DIR` makes a CA and certificates; an agent with them
listens with mutual TLS, refuses clients without a certificate or with one from another
CA, and calls its peers with its own certificate."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.jobs.journal import Journal
from agent.jobs.leader.peers import NodeUnreachable, RemoteNode
from agent.rpc.server import ListenError
from agent.security.tls import (
    TlsError,
    TlsFiles,
    channel_credentials,
    load_tls,
    tls_files_from_flags,
)
from console.model.job_spec import parse_job_spec
from console.net.agent_client import fetch_status
from console.net.agent_link import AgentLinks, describe_rpc_error
from console.net.ca import CaError, init_ca, issue, load_ca, parse_host_flag, write_private
from console.net.cluster_file import (
    ClusterFileError,
    NodeTarget,
    TlsPaths,
    dump_cluster_file,
    load_cluster_file,
)
from console.verbs.init import add_init_verb, run_init_verb
from tests.conftest import StartAgent
from tests.secure_agent import ThreadedAgent, threaded_agent
from tests.test_cli import run_cli

A = agent_service_pb2
JS = job_pb2.JobState
FAKE_RANK = Path(__file__).resolve().parent / "fixtures" / "fake_rank.py"
HOSTS = {"node-a": ["127.0.0.1", "localhost"], "node-b": ["127.0.0.1"]}


def init(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_init_verb(parser.add_subparsers(dest="verb"))
    return run_init_verb(parser.parse_args(["init", *argv]))


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cluster's CA (agents node-a, node-b; console alice) and another one."""
    base = tmp_path_factory.mktemp("cas")
    init_ca(base / "ca", HOSTS, ["alice"], port=50051)
    init_ca(base / "other", {"node-a": ["127.0.0.1"]}, ["mallory"])
    return base / "ca", base / "other"


def agent_files(ca_dir: Path, name: str) -> TlsFiles:
    return TlsFiles(
        ca_dir / "ca.pem", ca_dir / "agents" / f"{name}.pem", ca_dir / "agents" / f"{name}.key"
    )


def console_tls(ca_dir: Path, name: str, ca: Path | None = None) -> TlsPaths:
    consoles = ca_dir / "consoles"
    return TlsPaths(ca or ca_dir / "ca.pem", consoles / f"{name}.pem", consoles / f"{name}.key")


@pytest.fixture(scope="module")
def tls_agent(
    cas: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadedAgent]:
    material = load_tls(agent_files(cas[0], "node-a"))
    with threaded_agent(tmp_path_factory.mktemp("agent-a"), tls=material) as agent:
        yield agent


def node_info(target: NodeTarget) -> agent_service_pb2.GetNodeInfoResponse:
    return asyncio.run(fetch_status(target, 5.0))


def refused(target: NodeTarget) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        node_info(target)
    return info.value


# -- gantry init --ca -----------------------------------------------------------------------


def test_init_writes_ca_certificates_and_a_cluster_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = tmp_path / "ca"
    code = init(["--ca", str(ca_dir), "--host", "node-a=gpu-01.lan,10.0.0.5", "--console", "alice"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "created the CA" in out and "--tls-cert node-a.pem" in out
    for key in ("ca.key", "agents/node-a.key", "consoles/alice.key"):
        assert stat.S_IMODE((ca_dir / key).stat().st_mode) == 0o600, key
    material = load_tls(agent_files(ca_dir, "node-a"))
    assert material.name == "node-a"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(material.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"gpu-01.lan", "node-a", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert "10.0.0.5" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    [target] = load_cluster_file(ca_dir / "cluster.yaml")
    assert target == NodeTarget("node-a", "gpu-01.lan:50051", None, console_tls(ca_dir, "alice"))
    assert target.read_token() == ""  # TLS: the certificate is the credential

    # Again: the CA is kept, a new node joins the cluster file.
    ca_before = (ca_dir / "ca.pem").read_bytes()
    assert init(["--ca", str(ca_dir), "--host", "node-b=10.0.0.6", "--json"]) == 0
    assert '"ca_created": false' in capsys.readouterr().out
    assert (ca_dir / "ca.pem").read_bytes() == ca_before
    names = [t.name for t in load_cluster_file(ca_dir / "cluster.yaml")]
    assert names == ["node-a", "node-b"]
    load_tls(agent_files(ca_dir, "node-b"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "node-a"], "expected NAME=HOST"),
        (["--host", "Node_A=h"], "lower-case"),
        (["--host", "node-a=bad host"], "neither a host name nor an IP"),
        (["--host", "a=h", "--host", "a=g"], "given twice"),
        (["--console", "no/slash"], "--console"),
        (["--days", "0"], "--days"),
    ],
)
def test_init_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert init(["--ca", str(tmp_path / "ca"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_init_refuses_half_a_ca(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.pem").write_text("x")
    with pytest.raises(CaError, match="without its pair"):
        init_ca(tmp_path / "ca", {}, ["alice"])
    with pytest.raises(CaError, match="node name ''"):
        parse_host_flag("=h")


# -- the agent's files -----------------------------------------------------------------------


def test_agent_tls_files_are_checked(cas: tuple[Path, Path], tmp_path: Path) -> None:
    ca_dir, other = cas
    good = agent_files(ca_dir, "node-a")
    with pytest.raises(TlsError, match="not issued by the CA"):
        load_tls(TlsFiles(other / "ca.pem", good.cert, good.key))
    with pytest.raises(TlsError, match="does not belong"):
        load_tls(TlsFiles(good.ca, good.cert, ca_dir / "agents" / "node-b.key"))
    loose = tmp_path / "loose.key"
    loose.write_bytes(good.key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(TlsError, match="chmod 600"):
        load_tls(TlsFiles(good.ca, good.cert, loose))
    with pytest.raises(TlsError, match="does not exist"):
        load_tls(TlsFiles(good.ca, tmp_path / "missing.pem", good.key))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    with pytest.raises(TlsError, match="expired"):
        load_tls(good, now=later)
    with pytest.raises(TlsError, match="add --tls-key"):
        tls_files_from_flags(good.ca, good.cert, None)
    assert tls_files_from_flags(None, None, None) is None


def test_expired_certificate_is_refused(cas: tuple[Path, Path], tmp_path: Path) -> None:
    ca = load_ca(cas[0])
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    cert, key = issue(ca, "node-a", "agent", hosts=["127.0.0.1"], days=1, now=past)
    (tmp_path / "old.pem").write_bytes(cert)
    write_private(tmp_path / "old.key", key)
    with pytest.raises(TlsError, match="expired"):
        load_tls(TlsFiles(cas[0] / "ca.pem", tmp_path / "old.pem", tmp_path / "old.key"))


def test_non_loopback_needs_tls(tmp_path: Path, cas: tuple[Path, Path]) -> None:
    with (
        pytest.raises(ListenError, match="--tls-ca"),
        threaded_agent(tmp_path / "plain", listen="0.0.0.0:0"),
    ):
        pass
    material = load_tls(agent_files(cas[0], "node-b"))
    with threaded_agent(tmp_path / "tls", "node-b", listen="0.0.0.0:0", tls=material) as agent:
        tls = console_tls(cas[0], "alice")
        reply = node_info(NodeTarget("node-b", agent.address, None, tls))
        assert reply.info.node_name == "node-b"


# -- mutual TLS on the wire --------------------------------------------------------------------


def test_console_certificate_is_accepted_without_a_token(
    tls_agent: ThreadedAgent, cas: tuple[Path, Path]
) -> None:
    target = NodeTarget("node-a", tls_agent.address, None, console_tls(cas[0], "alice"))
    assert node_info(target).info.node_name == "node-a"
    # Also by host name: the certificate names localhost.
    named = NodeTarget("node-a", f"localhost:{tls_agent.port}", None, target.tls)
    assert node_info(named).info.node_name == "node-a"


def test_gantry_status_reads_tls_from_the_cluster_file(
    tls_agent: ThreadedAgent,
    cas: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = tmp_path / "cluster.yaml"
    tls = console_tls(cas[0], "alice")
    dump_cluster_file(cluster, [NodeTarget("node-a", tls_agent.address, None, tls)])
    code, out, err = run_cli(["status", "--cluster", str(cluster), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["nodes"][0]["state"] == "live"
    # The job and task verbs go the same way.
    for verb in (["jobs"], ["tasks"]):
        code, out, err = run_cli([*verb, "--cluster", str(cluster), "--json"], capsys)
        assert code == 0, err
        json.loads(out)


def test_no_certificate_is_refused(tls_agent: ThreadedAgent, cas: tuple[Path, Path]) -> None:
    ca = (cas[0] / "ca.pem").read_bytes()
    with grpc.secure_channel(tls_agent.address, grpc.ssl_channel_credentials(ca)) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetNodeInfo(
                agent_service_pb2.GetNodeInfoRequest(), metadata=tls_agent.metadata(), timeout=5
            )
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # the handshake fails
    # Plain text on the TLS port, even with the right token, gets nowhere either.
    with grpc.insecure_channel(tls_agent.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as plain:
            stub.GetNodeInfo(
                agent_service_pb2.GetNodeInfoRequest(), metadata=tls_agent.metadata(), timeout=5
            )
    assert plain.value.code() is grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(
    tls_agent: ThreadedAgent, cas: tuple[Path, Path]
) -> None:
    ca_dir, other = cas
    # mallory trusts our CA but holds a certificate from another one: the console says so
    # before it dials, naming the file ...
    mallory = console_tls(other, "mallory", ca=ca_dir / "ca.pem")
    with pytest.raises(ClusterFileError, match="was not issued by the CA") as said:
        node_info(NodeTarget("node-a", tls_agent.address, None, mallory))
    assert str(mallory.cert) in str(said.value)
    # ... and the agent refuses it on the wire all the same.
    creds = grpc.ssl_channel_credentials(
        mallory.ca.read_bytes(), mallory.key.read_bytes(), mallory.cert.read_bytes()
    )

    async def dial() -> None:
        async with grpc.aio.secure_channel(tls_agent.address, creds) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            await stub.GetNodeInfo(agent_service_pb2.GetNodeInfoRequest(), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as wire:
        asyncio.run(dial())
    assert wire.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "refused this console's certificate" in describe_rpc_error(wire.value, tls=True)
    # And a console of the other CA does not trust our agent.
    stranger = console_tls(other, "mallory")
    error = refused(NodeTarget("node-a", tls_agent.address, None, stranger))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "TLS handshake failed" in describe_rpc_error(
        error
    ) or "unreachable" in describe_rpc_error(error)


def test_health_and_audit_name_the_certificate(
    tls_agent: ThreadedAgent, cas: tuple[Path, Path]
) -> None:
    tls = console_tls(cas[0], "alice")
    ca, cert, key = tls.read("node-a")
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    with grpc.secure_channel(tls_agent.address, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        stub.StopRanks(agent_service_pb2.StopRanksRequest(job_name="nothing-here"), timeout=5)
    entry = tls_agent.audit()[0]
    assert (entry.who, entry.what, entry.details["outcome"]) == (
        "console alice",
        "stop-ranks",
        "ok",
    )


def test_garbage_on_the_tls_port_does_not_take_the_agent_down(
    tls_agent: ThreadedAgent, cas: tuple[Path, Path]
) -> None:
    for payload in (
        b"\x16\x03\x01\x02\x00" + b"\x00" * 512,
        b"GET / HTTP/1.1\r\n\r\n",
        bytes(range(256)) * 8,
    ):
        with socket.create_connection(("127.0.0.1", tls_agent.port), timeout=2) as sock:
            sock.sendall(payload)
    target = NodeTarget("node-a", tls_agent.address, None, console_tls(cas[0], "alice"))
    assert node_info(target).info.node_name == "node-a"


def test_agents_call_their_peers_with_their_certificate(
    tls_agent: ThreadedAgent, cas: tuple[Path, Path]
) -> None:
    ca_dir, other = cas
    peer = agent_service_pb2.PeerAgent(name="node-a", address=tls_agent.address)

    async def ping(credentials: grpc.ChannelCredentials | None) -> None:
        node = RemoteNode(peer, credentials)
        try:
            await node.ping()
        finally:
            await node.close()

    asyncio.run(ping(channel_credentials(load_tls(agent_files(ca_dir, "node-b")))))
    with pytest.raises(NodeUnreachable):
        asyncio.run(ping(channel_credentials(load_tls(agent_files(other, "node-a")))))


def test_cluster_file_tls_fields(tmp_path: Path, cas: tuple[Path, Path]) -> None:
    ca_dir, _ = cas
    path = tmp_path / "cluster.yaml"
    path.write_text(
        f"tls: {{ca: {ca_dir}/ca.pem, cert: {ca_dir}/consoles/alice.pem,\n"
        f"      key: {ca_dir}/consoles/alice.key}}\n"
        "nodes:\n"
        "  - {name: node-a, address: 'h:1'}\n"
        "  - {name: node-b, address: 'h:2', token_file: t, key: other.key}\n"
    )
    a, b = load_cluster_file(path)
    assert a.tls == console_tls(ca_dir, "alice")
    assert b.tls is not None and b.tls.key == tmp_path / "other.key"
    with pytest.raises(ClusterFileError, match="cannot read TLS key"):
        b.read_token()
    for text, message in (
        ("tls: {ca: a}\nnodes:\n  - {name: a, address: 'h:1'}\n", "add cert"),
        ("tls: {ca: a, cert: b, key: c, pin: d}\nnodes: []\n", "unknown key 'pin'"),
        ("tls: [a]\nnodes: []\n", "expected a mapping"),
    ):
        path.write_text(text)
        with pytest.raises(ClusterFileError, match=message) as info:
            load_cluster_file(path)
        assert "\n" not in str(info.value)


# -- two real agents, a job across them -----------------------------------------------------------


def test_a_job_runs_across_two_mtls_agents(
    local_agents: StartAgent, cas: tuple[Path, Path], tmp_path: Path
) -> None:
    """The console reaches the leader with its certificate, the leader starts the peer's
    ranks with its own: no token anywhere."""
    ca_dir, _ = cas

    def flags(name: str) -> list[str]:
        files = agent_files(ca_dir, name)
        return [
            "--tls-ca",
            str(files.ca),
            "--tls-cert",
            str(files.cert),
            "--tls-key",
            str(files.key),
        ]

    agents = [local_agents(name, extra_args=flags(name)) for name in ("node-a", "node-b")]
    tls = console_tls(ca_dir, "alice")
    doc = {
        "name": "tls-job",
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "2", "--step-s", "0.01"],
        "working_dir": str(tmp_path),
        "restart": {"max_restarts": 0, "backoff_s": 0},
    }
    spec = parse_job_spec(json.dumps(doc), tmp_path, {"node-a", "node-b"})
    peers = [A.PeerAgent(name=a.name, address=a.address) for a in agents]

    async def run() -> agent_service_pb2.DescribeJobResponse:
        async with AgentLinks() as links:
            stub = await links.link(NodeTarget("node-a", agents[0].address, None, tls)).stub()
            await stub.SubmitJob(A.SubmitJobRequest(spec=spec, peers=peers), timeout=30)
            deadline = time.monotonic() + 60
            while True:
                reply: agent_service_pb2.DescribeJobResponse = await stub.DescribeJob(
                    A.DescribeJobRequest(name="tls-job"), timeout=10
                )
                if reply.job.state in (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED):
                    return reply
                assert time.monotonic() < deadline, reply.job
                await asyncio.sleep(0.2)

    reply = asyncio.run(run())
    assert reply.job.state == JS.JOB_STATE_SUCCEEDED, reply.job.reason
    nodes = sorted(r.node for r in reply.job.attempts[0].ranks)
    assert nodes == ["node-a", "node-b"]
    peer_audit = Journal.open(agents[1].data_dir)
    try:
        whos = {(e.who, e.what) for e in peer_audit.audit_entries()}
    finally:
        peer_audit.close()
    assert ("agent node-a", "start-ranks") in whos
    leader_audit = Journal.open(agents[0].data_dir)
    try:
        submits = [e.who for e in leader_audit.audit_entries() if e.what == "submit"]
    finally:
        leader_audit.close()
    # The name the caller gives (none here) beside the certificate the handshake verified.
    assert submits == ["unknown (console alice)"]
