"""The console's pure readings of what the agents diagnosed: the transport per node, the
latest attempt's diagnoses, and a node made red by a fatal XID."""

from __future__ import annotations

from gantry.v1 import job_pb2, telemetry_pb2

from console.model.cluster import ClusterStore
from console.model.diagnoses import diagnoses
from console.model.transport import transport_by_node, transport_summary

EK = job_pb2.JobEventKind


def nccl(node: str, attempt: int, **details: str) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        kind=EK.JOB_EVENT_KIND_NCCL, node=node, attempt=attempt, details=details
    )


def test_transport_per_node_from_the_latest_attempts_nccl_events() -> None:
    events = [
        nccl("node-a", 1, finding="network", network="Socket"),  # an earlier attempt
        nccl("node-a", 2, finding="version", version="2.18.1"),
        nccl("node-a", 2, finding="interfaces", net="IB", devices="mlx5_0:1/RoCE,mlx5_1:1/RoCE"),
        nccl("node-a", 2, finding="transport", transport="NET/IB", gdr="1"),
        nccl("node-a", 2, finding="transport", transport="P2P/CUMEM", gdr="0"),
        nccl("node-a", 2, finding="transport", transport="NVLS", gdr="0"),
        nccl("node-b", 2, finding="network", network="Socket"),
        nccl("node-b", 2, finding="ib_fallback", severity="warning"),
    ]
    nodes = transport_by_node(events)
    a, b = nodes["node-a"], nodes["node-b"]
    assert a.network == "RoCE" and a.gdr and a.intra == ["P2P/CUMEM", "NVLS"]
    assert a.text() == "RoCE+GDR · P2P/CUMEM, NVLS · NCCL 2.18.1"
    assert b.text() == "Socket · fell back to sockets"
    assert transport_summary(nodes).startswith("net node-a RoCE+GDR")
    assert transport_by_node(events, attempt=1)["node-a"].network == "Socket"


def test_diagnoses_of_the_latest_attempt_read_old_alert_names() -> None:
    old = job_pb2.JobEvent(
        kind=EK.JOB_EVENT_KIND_ALERT,
        attempt=2,
        rank=1,
        node="node-b",
        message="rank 1: oom: RuntimeError: CUDA out of memory.",
        details={"alert": "oom", "line": "RuntimeError: CUDA out of memory."},
    )
    failed = job_pb2.JobEvent(
        kind=EK.JOB_EVENT_KIND_RANK_FAILED,
        attempt=2,
        rank=1,
        node="node-b",
        details={"reason": "CUDA out of memory (exit code 1)", "signature": "cuda_oom"},
    )
    earlier = job_pb2.JobEvent(kind=EK.JOB_EVENT_KIND_ALERT, attempt=1, details={"alert": "xid"})
    found = diagnoses([earlier, old, failed])
    assert [(d.alert, d.severity) for d in found] == [
        ("cuda_oom", "warning"),
        ("cuda_oom", "critical"),
    ]
    assert found[1].cause == "CUDA out of memory (exit code 1)"


def test_a_fatal_xid_makes_a_node_red_until_its_agent_reconnects() -> None:
    store = ClusterStore()
    store.add_node("node-b", "127.0.0.1:1", 0.0)
    store.set_live("node-b", telemetry_pb2.NodeInfo(), 0.0)
    benign = telemetry_pb2.NodeSample(
        xid_events=[telemetry_pb2.XidEvent(xid=43, gpu_index=0, gpu_known=True)]
    )
    benign.time.FromSeconds(1)
    store.apply_sample("node-b", benign, 1.0)
    assert store.node("node-b").status_text(1.0) == "live"
    fatal = telemetry_pb2.NodeSample(
        xid_events=[telemetry_pb2.XidEvent(xid=79, gpu_index=3, gpu_known=True)]
    )
    fatal.time.FromSeconds(2)
    store.apply_sample("node-b", fatal, 2.0)
    assert store.node("node-b").status_text(2.0) == "xid 79 gpu3"
    store.set_live("node-b", telemetry_pb2.NodeInfo(), 3.0)
    assert store.node("node-b").status_text(3.0) == "live"
