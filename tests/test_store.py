"""The console store as pure logic: no servers, explicit times."""

from __future__ import annotations

import pytest
from gantry.v1 import telemetry_pb2

from console.model.cluster import ClusterStore, ConnState, format_age


def sample(seq: int, t: float, xids: tuple[int, ...] = ()) -> telemetry_pb2.NodeSample:
    s = telemetry_pb2.NodeSample(node_name="n", seq=seq)
    s.time.FromNanoseconds(int(t * 1e9))
    for code in xids:
        s.xid_events.add(gpu_index=0, xid=code).time.FromNanoseconds(int(t * 1e9))
    return s


def info(interval: float = 1.0) -> telemetry_pb2.NodeInfo:
    return telemetry_pb2.NodeInfo(node_name="n", sample_interval_s=interval)


def test_nodes_keep_file_order_and_refuse_duplicates() -> None:
    store = ClusterStore()
    for name in ("b", "a", "c"):
        store.add_node(name, "127.0.0.1:1", 0)
    assert store.names() == ["b", "a", "c"]
    with pytest.raises(ValueError, match="listed twice"):
        store.add_node("a", "x:1", 0)


def test_lifecycle_connecting_live_lost_live() -> None:
    store = ClusterStore()
    store.add_node("n", "h:1", 100)
    assert store.node("n").state is ConnState.CONNECTING
    store.set_live("n", info(), 101)
    assert store.apply_sample("n", sample(1, 101.5), 101.6)
    assert store.node("n").state is ConnState.LIVE
    store.set_lost("n", 110, "agent unreachable")
    view = store.node("n")
    assert view.state is ConnState.LOST and view.since == 110
    assert view.status_text(now=125) == "lost 15s"
    # Reconnect attempts do not reset "lost since".
    store.set_connecting("n", 120)
    store.set_lost("n", 130, "agent unreachable")
    assert store.node("n").since == 110
    store.set_live("n", info(), 140)
    assert store.node("n").state is ConnState.LIVE
    assert store.unreachable() == []


def test_replayed_history_overlapping_is_not_applied_twice() -> None:
    store = ClusterStore()
    store.add_node("n", "h:1", 0)
    for i in range(5):
        assert store.apply_sample("n", sample(i, 10 + i, xids=(79,) if i == 2 else ()), 20)
    # After a reconnect the agent replays everything it buffered.
    applied = [
        store.apply_sample("n", sample(i, 10 + i, xids=(79,) if i == 2 else ()), 30)
        for i in range(7)
    ]
    assert applied == [False] * 5 + [True, True]
    view = store.node("n")
    assert [s.seq for s in view.history] == list(range(7))
    assert len(view.xid_events) == 1


def test_repeated_xid_codes_are_all_kept() -> None:
    store = ClusterStore()
    store.add_node("n", "h:1", 0)
    store.apply_sample("n", sample(1, 1, xids=(48, 48)), 1)
    store.apply_sample("n", sample(2, 2, xids=(48,)), 2)
    assert [e.xid for e in store.node("n").xid_events] == [48, 48, 48]


def test_silent_live_node_expires_to_lost() -> None:
    store = ClusterStore()
    store.add_node("n", "h:1", 0)
    store.set_live("n", info(interval=1.0), 0)
    store.apply_sample("n", sample(1, 1), 1)
    assert store.expire(5.9) == []
    assert store.expire(6.5) == ["n"]
    view = store.node("n")
    assert view.state is ConnState.LOST
    assert view.since == 1  # lost since the last sample, not since we noticed
    assert "no sample" in view.error
    # A sample arriving again makes it live.
    store.apply_sample("n", sample(2, 7), 7)
    assert store.node("n").state is ConnState.LIVE


def test_versions_mark_exactly_what_changed() -> None:
    store = ClusterStore()
    store.add_node("a", "h:1", 0)
    store.add_node("b", "h:2", 0)
    before = store.version
    store.apply_sample("a", sample(1, 1), 1)
    assert store.version == before + 1
    assert store.node("a").version == store.version
    assert store.node("b").version < before + 1
    # A duplicate changes nothing.
    store.apply_sample("a", sample(1, 1), 2)
    assert store.version == before + 1


def test_unauthorized_is_its_own_state() -> None:
    store = ClusterStore()
    store.add_node("n", "h:1", 0)
    store.set_unauthorized("n", 5, "token refused")
    assert store.node("n").status_text(8) == "unauthorized 3s"
    assert store.unreachable()[0].name == "n"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m01s"), (3725, "1h02m"), (-3, "0s")]
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
