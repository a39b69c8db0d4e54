from __future__ import annotations

import random
from pathlib import Path

import pytest

from console.net.backoff import Backoff
from console.net.cluster_file import (
    ClusterFileError,
    NodeTarget,
    dump_cluster_file,
    load_cluster_file,
    parse_agent_flags,
)


def test_round_trip_and_relative_token_paths(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "nodes:\n"
        "  - {name: node-a, address: '127.0.0.1:5001', token_file: a/token}\n"
        "  - {name: node-b, address: '127.0.0.1:5002', token_file: /abs/token}\n"
    )
    targets = load_cluster_file(path)
    assert targets == [
        NodeTarget("node-a", "127.0.0.1:5001", tmp_path / "a" / "token"),
        NodeTarget("node-b", "127.0.0.1:5002", Path("/abs/token")),
    ]
    again = tmp_path / "again.yaml"
    dump_cluster_file(again, targets)
    assert load_cluster_file(again) == targets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: [", "not valid YAML"),
        ("- a\n- b\n", "'nodes' list"),
        ("nodes:\n  - {address: 'h:1'}\n", "node name None"),
        ("nodes:\n  - {name: Node_A, address: 'h:1'}\n", "lower-case"),
        ("nodes:\n  - {name: a}\n", "needs an address"),
        ("nodes:\n  - {name: a, address: 'h:99999'}\n", "not HOST:PORT"),
        ("nodes:\n  - {name: a, address: 'h:1'}\n  - {name: a, address: 'h:2'}\n", "twice"),
    ],
)
def test_bad_cluster_files_get_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ClusterFileError, match=message) as info:
        load_cluster_file(path)
    assert "\n" not in str(info.value)


def test_missing_cluster_file(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="cannot read cluster file"):
        load_cluster_file(tmp_path / "nope.yaml")


def test_agent_flags_share_the_token_file(tmp_path: Path) -> None:
    token = tmp_path / "t"
    assert parse_agent_flags(["a=127.0.0.1:1", "b=localhost:2"], token) == [
        NodeTarget("a", "127.0.0.1:1", token),
        NodeTarget("b", "localhost:2", token),
    ]
    with pytest.raises(ClusterFileError, match="NAME=HOST:PORT"):
        parse_agent_flags(["127.0.0.1:1"], token)


def test_token_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ClusterFileError, match="cannot read token file"):
        NodeTarget("a", "h:1", tmp_path / "missing").read_token()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ClusterFileError, match="is empty"):
        NodeTarget("a", "h:1", empty).read_token()
    with pytest.raises(ClusterFileError, match="no token file"):
        NodeTarget("a", "h:1").read_token()


def test_backoff_grows_caps_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, maximum_s=4, factor=2, jitter=0.0, rng=random.Random(1))
    assert [backoff.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    backoff.reset()
    assert backoff.next() == 0.5
    jittered = Backoff(initial_s=1, jitter=0.2, rng=random.Random(7))
    delays = [jittered.next() for _ in range(1)]
    assert 0.8 <= delays[0] <= 1.2
