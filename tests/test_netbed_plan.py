"""The test bed's plan (tests/netbed/plan.py), pure: names, addresses, the `ip`/`tc`
commands, the subnet it picks and the stale beds it finds. No root needed."""

from __future__ import annotations

import pytest

from tests.netbed import plan as p


def test_hosts_get_names_namespaces_and_addresses_on_one_subnet() -> None:
    bed = p.plan_bed(4242, 7)
    assert bed.names() == ["node-1", "node-2", "node-3"]
    assert [h.ns for h in bed.hosts] == ["gnb-4242-0-h1", "gnb-4242-0-h2", "gnb-4242-0-h3"]
    assert [h.address for h in bed.hosts] == ["10.213.7.1", "10.213.7.2", "10.213.7.3"]
    assert bed.host("node-2").agent_target == "10.213.7.2:50051"
    assert bed.console_address == "10.213.7.254" and bed.subnet == "10.213.7.0/24"
    assert bed.namespaces[-1] == "gnb-4242-0-br"
    assert p.plan_bed(4242, 8, 1, serial=1).bridge_ns == "gnb-4242-1-br"
    with pytest.raises(p.PlanError, match=r"beds 0\.\.99"):
        p.plan_bed(4242, 8, 1, serial=100)
    with pytest.raises(p.PlanError, match="no host 'node-9'"):
        bed.host("node-9")


@pytest.mark.parametrize(
    ("pid", "octet", "count", "message"),
    [
        (1, 7, 0, "1 to 200"),
        (1, 0, 3, "1..250"),
        (0, 7, 3, "not a process id"),
        (123456789012, 7, 3, "over 15 chars"),
        (1, 7, -1, "1 to 200"),
    ],
)
def test_a_bed_that_cannot_be_built_is_refused_in_one_line(
    pid: int, octet: int, count: int, message: str
) -> None:
    with pytest.raises(p.PlanError, match=message):
        p.plan_bed(pid, octet, count)


def test_only_the_consoles_veth_end_is_made_in_the_machines_own_namespace() -> None:
    bed = p.plan_bed(99, 3)
    in_root = [
        c for c in p.setup_commands(bed) if c[1] not in ("-n", "netns")
    ]  # `ip -n NS` and `ip netns add|exec` act inside the bed's namespaces
    assert in_root, "the console needs its way into the bridge"
    assert all(bed.console_link in c for c in in_root), in_root
    assert len(bed.console_link) <= p.IFNAME_MAX
    # Every host veth is created inside its namespace, its peer moved to the bridge's.
    veths = [c for c in p.setup_commands(bed) if "veth" in c]
    assert all(c[:3] == ["ip", "-n", h.ns] for c, h in zip(veths, bed.hosts, strict=False))


def test_the_subnet_avoids_the_machines_routes_and_other_beds() -> None:
    routes = (
        "default via 192.0.2.1 dev eth0\n"
        "10.213.1.0/24 dev gnb77c proto kernel scope link src 10.213.1.254\n"
        "10.213.0.0/23 dev tun0\n"
        "local 10.213.2.9 dev lo table local\n"
        "broadcast 127.255.255.255 dev lo table local\n"
    )
    assert p.free_third_octet(routes) == 3  # 0-1 routed, 2 holds a local address
    assert p.free_third_octet(routes, taken_by_beds=[3]) == 4
    assert p.free_third_octet("default via 10.0.0.1 dev eth0\n") == 1
    with pytest.raises(p.PlanError, match="clashes"):
        p.free_third_octet("10.213.0.0/16 dev eth1\n")


def test_cut_disables_the_bridge_port_and_heal_forwards_again() -> None:
    bed = p.plan_bed(5, 9)
    host = bed.host("node-3")
    [cut] = p.port_state_commands(bed, host, cut=True)
    [heal] = p.port_state_commands(bed, host, cut=False)
    assert cut[:4] == ["ip", "netns", "exec", bed.bridge_ns]
    assert cut[-4:] == ["dev", "p3", "state", "0"] and heal[-1] == "3"


def test_netem_shapes_both_ends_of_the_link_and_refuses_nonsense() -> None:
    bed = p.plan_bed(5, 9)
    host = bed.host("node-2")
    ends = p.netem_commands(bed, host, delay_ms=25, loss_pct=2)
    assert [c[3] for c in ends] == [host.ns, bed.bridge_ns]
    assert all("delay" in c and "25ms" in c and "2%" in c for c in ends)
    assert [c[3] for c in p.clear_commands(bed, host)] == [host.ns, bed.bridge_ns]
    with pytest.raises(p.PlanError, match="needs a delay or a loss"):
        p.netem_commands(bed, host)
    with pytest.raises(p.PlanError, match=r"loss 0\.\.100"):
        p.netem_commands(bed, host, loss_pct=120)


def test_console_cut_is_a_blackhole_route_inside_the_host() -> None:
    host = p.plan_bed(5, 9).host("node-1")
    [cut] = p.console_cut_commands(host, "10.213.9.254", cut=True)
    [heal] = p.console_cut_commands(host, "10.213.9.254", cut=False)
    assert cut == ["ip", "-n", host.ns, "route", "add", "blackhole", "10.213.9.254/32"]
    assert heal[4] == "del"


def test_stale_beds_are_those_whose_owner_is_gone() -> None:
    listed = "gnb-10-0-h1 (id: 3)\ngnb-10-1-br (id: 2)\ngnb-11-0-h1\nother-ns\ngnb-x-0-h1\n"
    assert p.stale_namespaces(listed, alive=[11]) == ["gnb-10-0-h1", "gnb-10-1-br"]
    assert p.stale_namespaces(listed, alive=[10, 11]) == []
    links = ["eth0", "gnb10-0c@if6", "gnb11-2c@if3", "gnbX-0c"]
    assert p.stale_links(links, alive=[11]) == ["gnb10-0c"]
    assert p.beds_in_use(listed) == {10: ["gnb-10-0-h1", "gnb-10-1-br"], 11: ["gnb-11-0-h1"]}
