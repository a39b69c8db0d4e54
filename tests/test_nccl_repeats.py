"""NCCL prints the same channel lines again for every communicator: a repeated line is
parsed once but counted each time, and the parser's memory of lines stays bounded."""

from __future__ import annotations

from agent.jobs.node import nccl
from agent.jobs.node.nccl import NcclParser

CHANNEL = "node-a:1234:1250 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC"


def test_a_repeated_line_counts_every_time_and_reports_once() -> None:
    parser = NcclParser(0)
    first = parser.feed(CHANNEL)
    assert [f.kind for f in first] == ["transport"]
    for _ in range(3):
        assert parser.feed(CHANNEL) == []
    assert parser.state.transports["P2P/IPC"] == 4


def test_the_memory_of_lines_is_bounded() -> None:
    parser = NcclParser(0)
    for i in range(nccl.PARSED_LINES_KEPT * 2 + 5):
        parser.feed(f"node-a:1234:{1000 + i} [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC")
    assert len(parser._parsed) <= nccl.PARSED_LINES_KEPT
    assert parser.state.transports["P2P/IPC"] == nccl.PARSED_LINES_KEPT * 2 + 5
