"""The interface gloo binds to (agent.jobs.node.route_iface): the route to rank 0's address,
never loopback, set in the ranks' environment unless the job's env sets it."""

from __future__ import annotations

from pathlib import Path

import psutil
from gantry.v1 import job_pb2

from agent.jobs.node.launch import rank_env
from agent.jobs.node.route_iface import interface_to


def env(spec: job_pb2.JobSpec, ifname: str | None) -> dict[str, str]:
    return rank_env(
        {},
        spec,
        attempt=1,
        rank=0,
        local_rank=0,
        local_world_size=1,
        world_size=2,
        master_addr="10.213.0.1",
        master_port=29500,
        metrics_path=Path("/tmp/m.jsonl"),
        gpus=[],
        heartbeat_s=1.0,
        socket_ifname=ifname,
    )


def test_loopback_and_unknown_addresses_name_no_interface() -> None:
    assert interface_to("127.0.0.1") is None
    assert interface_to("localhost") is None
    assert interface_to("no-such-host.invalid") is None


def test_a_routed_address_names_an_interface_of_this_host() -> None:
    found = interface_to("10.0.0.1")  # any non-loopback route (the default one here)
    assert found is None or found in psutil.net_if_addrs()
    if found is not None:
        assert found != "lo"


def test_the_route_sets_gloo_unless_the_job_does() -> None:
    spec = job_pb2.JobSpec(name="j", command=["python", "x.py"])
    assert env(spec, "eth0")["GLOO_SOCKET_IFNAME"] == "eth0"
    assert "GLOO_SOCKET_IFNAME" not in env(spec, None)
    spec.env["GLOO_SOCKET_IFNAME"] = "ib0"
    assert env(spec, "eth0")["GLOO_SOCKET_IFNAME"] == "ib0"
