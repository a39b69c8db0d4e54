# ruff: noqa: E501  (NCCL's lines are quoted as NCCL writes them)
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.node.nccl import (
    NcclParser,
    NcclState,
    ib_devices_present,
    ib_fallback,
    parse_nccl_line,
    transport_kind,
)

# node-b, rank 2 of 4: libibverbs missing, so NCCL finds no IB device and uses sockets.
SOCKET_LOG = """\
node-b:5678:5678 [0] NCCL INFO cudaDriverVersion 12040
node-b:5678:5678 [0] NCCL INFO Bootstrap : Using eth0:10.1.2.4<0>
node-b:5678:5690 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.
node-b:5678:5690 [0] NCCL INFO Failed to open libibverbs.so[.1]
node-b:5678:5690 [0] NCCL INFO NET/IB : No device found.
node-b:5678:5690 [0] NCCL INFO NET/Socket : Using [0]eth0:10.1.2.4<0> [1]eth1:fe80::42%eth1<0>
node-b:5678:5690 [0] NCCL INFO Using non-device net plugin version 0
node-b:5678:5690 [0] NCCL INFO Using network Socket
node-b:5678:5690 [0] NCCL INFO ncclCommInitRank comm 0x5581c2a0 rank 2 nranks 4 cudaDev 0 nvmlDev 0 busId 18000 commId 0x9c2f1e7a55d3c001 - Init START
node-b:5678:5690 [0] NCCL INFO Channel 00/02 :    0   1   2   3
node-b:5678:5690 [0] NCCL INFO Trees [0] 3/-1/-1->2->0 [1] 3/0/-1->2->-1
node-b:5678:5690 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [receive] via NET/Socket/0
node-b:5678:5690 [0] NCCL INFO Channel 01/0 : 1[1] -> 2[0] [receive] via NET/Socket/0
node-b:5678:5690 [0] NCCL INFO Channel 00/0 : 2[0] -> 3[1] via P2P/CUMEM
node-b:5678:5690 [0] NCCL INFO Channel 01/0 : 2[0] -> 3[1] via P2P/CUMEM
node-b:5678:5690 [0] NCCL INFO Connected all rings
node-b:5678:5690 [0] NCCL INFO Connected all trees
node-b:5678:5690 [0] NCCL INFO ncclCommInitRank comm 0x5581c2a0 rank 2 nranks 4 cudaDev 0 nvmlDev 0 busId 18000 commId 0x9c2f1e7a55d3c001 - Init COMPLETE
"""

# node-a, rank 0 of 4 over InfiniBand with GPUDirect RDMA.
IB_LOG = """\
node-a:1234:1234 [0] NCCL INFO Bootstrap : Using ib0:10.2.0.5<0>
node-a:1234:1234 [0] NCCL INFO NCCL version 2.21.5+cuda12.4
node-a:1234:1250 [0] NCCL INFO NET/Plugin: No plugin found (libnccl-net.so)
node-a:1234:1250 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB [RO]; OOB ib0:10.2.0.5<0>
node-a:1234:1250 [0] NCCL INFO Using network IB
node-a:1234:1250 [0] NCCL INFO comm 0x55d5c8e0 rank 0 nranks 4 cudaDev 0 nvmlDev 0 busId 18000 commId 0x1234 - Init START
node-a:1234:1250 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC
node-a:1234:1250 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[1] via P2P/IPC/read
node-a:1234:1250 [0] NCCL INFO Channel 00/0 : 3[1] -> 0[0] [receive] via NET/IB/0/GDRDMA
node-a:1234:1250 [0] NCCL INFO Channel 01/0 : 3[1] -> 0[0] [receive] via NET/IB/1/GDRDMA
node-a:1234:1250 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/IB/0
node-a:1234:1250 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via SHM/direct/direct
node-a:1234:1250 [0] NCCL INFO Connected all rings
node-a:1234:1250 [0] NCCL INFO comm 0x55d5c8e0 rank 0 nranks 4 cudaDev 0 nvmlDev 0 busId 18000 commId 0x1234 - Init COMPLETE
node-a:1234:1262 [0] NCCL INFO comm 0x55d5d900 rank 0 nranks 2 cudaDev 0 nvmlDev 0 busId 18000 commId 0x5678 - Init COMPLETE
"""

# The operator turned IB off on purpose: NCCL echoes the variable.
IB_DISABLED_LOG = """\
node-a:1234:1234 [0] NCCL INFO NCCL_IB_DISABLE set by environment to 1.
node-a:1234:1234 [0] NCCL INFO NCCL_SOCKET_IFNAME set by environment to eth0
node-a:1234:1250 [0] NCCL INFO NET/Socket : Using [0]eth0:10.1.2.3<0>
node-a:1234:1250 [0] NCCL INFO Using network Socket
node-a:1234:1250 [0] NCCL INFO Channel 00/0 : 3[1] -> 0[0] [receive] via NET/Socket/0
"""


def run(log: str, rank: int | None = None) -> NcclParser:
    parser = NcclParser(rank)
    parser.feed_lines(log.splitlines())
    return parser


def test_ib_run_is_read_and_raises_nothing() -> None:
    state = run(IB_LOG).state
    assert state.version == "2.21.5+cuda12.4"
    assert state.host == "node-a"
    assert (state.rank, state.nranks, state.comms_ready) == (0, 4, 2)
    assert state.networks == ["IB"] and state.network == "IB"
    assert state.interfaces == {
        "IB": ["mlx5_0:1/IB", "mlx5_1:1/IB"],
        "OOB": ["ib0:10.2.0.5"],
        "Bootstrap": ["ib0:10.2.0.5"],
    }
    assert state.transports == {"NET/IB": 3, "P2P/IPC": 2, "SHM": 1}
    assert state.channels == {0: {"P2P/IPC", "NET/IB", "SHM"}, 1: {"P2P/IPC", "NET/IB"}}
    assert state.socket_line is None
    assert state.transport_summary() == "3 x NET/IB, 2 x P2P/IPC, 1 x SHM"
    assert ib_fallback({"NCCL_DEBUG": "INFO"}, True, state) is None
    assert ib_fallback({"NCCL_IB_DISABLE": "0"}, True, state) is None


def test_socket_fallback_names_the_rank_and_quotes_the_line() -> None:
    state = run(SOCKET_LOG).state
    assert state.rank == 2  # learned from the communicator
    assert state.networks == ["Socket"]
    assert state.interfaces["Socket"] == ["eth0:10.1.2.4", "eth1:fe80::42%eth1"]
    assert state.interfaces["Bootstrap"] == ["eth0:10.1.2.4"]
    assert state.ib_notes == ["Failed to open libibverbs.so[.1]", "No device found."]
    assert state.transports == {"NET/Socket": 2, "P2P/CUMEM": 2}
    finding = ib_fallback({"NCCL_DEBUG": "INFO"}, True, state)
    assert finding is not None
    assert finding.kind == "ib_fallback" and finding.severity == "warning"
    assert (finding.rank, finding.host) == (2, "node-b")
    assert finding.line == "node-b:5678:5690 [0] NCCL INFO Using network Socket"
    assert finding.message.startswith("rank 2 on node-b fell back to TCP sockets although ")
    assert "the node has InfiniBand devices and NCCL_IB_DISABLE is not set" in finding.message
    assert '"node-b:5678:5690 [0] NCCL INFO Using network Socket"' in finding.message
    assert 'NCCL said "Failed to open libibverbs.so[.1]"' in finding.message
    assert "\n" not in finding.message


def test_socket_channels_alone_are_evidence() -> None:
    lines = [ln for ln in SOCKET_LOG.splitlines() if "Using network" not in ln]
    parser = NcclParser(3)
    parser.feed_lines(lines)
    finding = ib_fallback({}, True, parser.state)
    assert finding is not None and finding.rank == 3
    assert finding.line.endswith("[receive] via NET/Socket/0")


@pytest.mark.parametrize(
    ("env", "ib_present", "reason"),
    [
        ({"NCCL_IB_DISABLE": "0"}, False, "NCCL_IB_DISABLE=0 asks for InfiniBand"),
        ({"NCCL_NET": "IB"}, False, "NCCL_NET=IB asks for InfiniBand"),
        ({}, True, "the node has InfiniBand devices"),
    ],
)
def test_what_counts_as_asking_for_ib(env: dict[str, str], ib_present: bool, reason: str) -> None:
    finding = ib_fallback(env, ib_present, run(SOCKET_LOG).state)
    assert finding is not None and reason in finding.message


@pytest.mark.parametrize(
    ("env", "ib_present"),
    [
        ({"NCCL_IB_DISABLE": "1"}, True),  # the operator asked for sockets
        ({"NCCL_IB_DISABLE": " 1 "}, True),
        ({"NCCL_IB_DISABLE": "01"}, True),
        ({"NCCL_NET": "Socket"}, True),
        ({"NCCL_NET": "AWS Libfabric"}, True),
        ({}, False),  # no IB here and nobody asked for it
        ({"NCCL_IB_DISABLE": "yes please"}, False),  # not a number NCCL would read
    ],
)
def test_sockets_that_were_asked_for_are_fine(env: dict[str, str], ib_present: bool) -> None:
    assert ib_fallback(env, ib_present, run(SOCKET_LOG).state) is None


def test_ib_disabled_in_the_rank_environment_counts() -> None:
    state = run(IB_DISABLED_LOG, rank=0).state
    assert state.env == {"NCCL_IB_DISABLE": "1", "NCCL_SOCKET_IFNAME": "eth0"}
    assert state.socket_line is not None
    # The job spec said nothing, but the rank had NCCL_IB_DISABLE=1 (NCCL printed it).
    assert ib_fallback({}, True, state) is None
    assert ib_fallback({"NCCL_IB_DISABLE": "1"}, True, state) is None


def test_parser_reports_news_once_and_the_fallback_when_given_the_env() -> None:
    parser = NcclParser(2, env={"NCCL_DEBUG": "INFO"}, ib_present=True)
    findings = parser.feed_lines(SOCKET_LOG.splitlines())
    kinds = [f.kind for f in findings]
    assert kinds.count("ib_fallback") == 1
    assert kinds.count("transport") == 2  # one per kind, not one per channel line
    assert kinds.count("network") == 1
    assert "interfaces" in kinds and "comm" in kinds
    fallback = next(f for f in findings if f.kind == "ib_fallback")
    assert fallback.rank == 2 and fallback.line.endswith("Using network Socket")
    # Feeding the same log again adds nothing new.
    again = parser.feed_lines(SOCKET_LOG.splitlines())
    assert {f.kind for f in again} == {"comm"}


def test_ib_run_parser_with_env_reports_no_fallback() -> None:
    parser = NcclParser(env={}, ib_present=True)
    findings = parser.feed_lines(IB_LOG.splitlines())
    assert all(f.kind != "ib_fallback" for f in findings)
    assert [f.message for f in findings if f.kind == "version"] == [
        "rank ? (node-a): NCCL 2.21.5+cuda12.4"
    ]
    comm = next(f.message for f in findings if f.kind == "comm")
    assert "rank 0 of 4" in comm and "3 x NET/IB" in comm


def test_warn_lines_become_warnings() -> None:
    line = (
        "node-a:1234:1262 [0] transport/net_ib.cc:1295 NCCL WARN NET/IB : Got completion from "
        "peer 10.2.0.6<47193> with status=12 opcode=0 len=0 vendor err 129 (Recv)"
    )
    parser = NcclParser(0)
    (finding,) = parser.feed(line)
    assert finding.kind == "warn" and finding.severity == "warning"
    assert finding.message.startswith("rank 0 (node-a): NCCL WARN NET/IB : Got completion")
    assert parser.state.warnings == [line]


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "2024-05-01T12:00:00.123456789Z stdout F ",  # containerd / CRI
        "[2024-05-01 12:00:00,123] [INFO] ",
        "\x1b[36m[2024-05-01 12:00:00]\x1b[0m ",
        "rank2  | ",  # docker compose
        "[default0]:",  # torchrun --tee
        "[1,0]<stdout>:",  # mpirun --tag-output
        "\x1b]0;title\x07\x1b[1;32m",
    ],
    ids=lambda prefix: repr(prefix),
)
def test_collector_prefixes_and_ansi_codes(prefix: str) -> None:
    text = "node-b:5678:5690 [0] NCCL INFO Using network Socket"
    line = prefix + text.replace("NCCL INFO", "\x1b[32mNCCL INFO\x1b[0m") + "\r\n"
    parsed = parse_nccl_line(line)
    assert parsed is not None
    assert (parsed.host, parsed.pid, parsed.tid, parsed.cuda_dev) == ("node-b", 5678, 5690, 0)
    assert (parsed.level, parsed.message) == ("INFO", "Using network Socket")
    assert parsed.text == text
    parser = NcclParser(2)
    parser.feed(line)
    assert parser.state.socket_line == text


@pytest.mark.parametrize(
    "line",
    [
        "",
        "NCCL",
        "NCCL INFO Using network Socket",  # no HOST:PID:TID [DEV]: not NCCL's own output
        "print('node-a:1:1 NCCL INFO Using network Socket')",
        "node-a:abc:1 [0] NCCL INFO Using network Socket",
        "node-a:1:1 [x] NCCL INFO Using network Socket",
        "[rank0]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error",
        "{'loss': 2.31, 'step': 10}",
        "\x00\xff\ufffd NCCL INFO \x1b[",
        "a" * 200_000 + " NCCL INFO Using network Socket",
        "node-a:1:1 [0] " + "x" * 20_000 + " NCCL INFO Using network Socket",
    ],
    ids=lambda line: repr(line[:40]),
)
def test_garbage_is_ignored(line: str) -> None:
    parser = NcclParser()
    assert parser.feed(line) == []
    assert parser.state == NcclState()


def test_unknown_and_huge_nccl_messages_teach_nothing_but_the_host() -> None:
    parser = NcclParser()
    assert parser.feed("node-a:1234:1250 [0] NCCL INFO " + "x" * 100_000) == []
    assert parser.feed("node-a:1234:1250 [0] NCCL INFO Some message of a later NCCL") == []
    assert parser.state == NcclState(host="node-a")


@pytest.mark.parametrize(
    ("via", "kind"),
    [
        ("NET/IB/0", "NET/IB"),
        ("NET/IB/1/GDRDMA", "NET/IB"),
        ("NET/Socket/0", "NET/Socket"),
        ("NET/AWS Libfabric/0/GDRDMA", "NET/AWS Libfabric"),
        ("P2P/IPC", "P2P/IPC"),
        ("P2P/IPC/read", "P2P/IPC"),
        ("P2P/CUMEM/read", "P2P/CUMEM"),
        ("P2P/direct pointer", "P2P/direct pointer"),
        ("SHM/direct/direct", "SHM"),
        ("direct shared memory", "SHM"),
        ("CollNet", "CollNet"),
    ],
)
def test_transport_kinds(via: str, kind: str) -> None:
    assert transport_kind(via) == kind


def test_ib_devices_present(tmp_path: Path) -> None:
    assert not ib_devices_present(tmp_path / "missing")
    sysfs = tmp_path / "infiniband"
    sysfs.mkdir()
    assert not ib_devices_present(sysfs)
    (sysfs / "mlx5_0").mkdir()
    assert ib_devices_present(sysfs)
    assert isinstance(ib_devices_present(), bool)


NCCLISH = st.lists(
    st.sampled_from(
        [
            "node-a:1:2 [0] NCCL INFO ",
            "node-a:1:2 [0] f.cc:3 NCCL WARN ",
            "Using network ",
            "NET/IB : Using ",
            "NET/Socket : Using ",
            "Channel 00/0 : ",
            "0[0] -> 1[1] ",
            "via ",
            "NET/",
            "comm 0x1 rank ",
            " nranks ",
            "Init COMPLETE",
            " set by environment to ",
            "NCCL_IB_DISABLE",
            "[0]",
            "\x1b[",
            ";",
            "<0>",
        ]
    )
    | st.text(max_size=8),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(NCCLISH, max_size=8), env=st.dictionaries(st.text(), st.text()))
def test_fuzz_feed_never_raises(lines: list[str], env: dict[str, str]) -> None:
    parser = NcclParser(env=env, ib_present=True)
    for line in lines:
        for finding in parser.feed(line):
            assert "\n" not in finding.message
    ib_fallback(env, True, parser.state)
