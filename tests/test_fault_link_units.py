"""The slow and lossy link faults' plan (tests/netbed/plan.py), pure: tc tbf on both ends of a
host's veth, nftables random drop on its eth0 only, and their one-line refusals."""

from __future__ import annotations

import pytest

from tests.netbed import plan as p

PLAN = p.plan_bed(4242, 7, 3)
HOST = PLAN.host("node-2")


def test_throttle_puts_a_token_bucket_on_both_ends_of_the_hosts_veth() -> None:
    cmds = p.throttle_commands(PLAN, HOST, "20mbit")
    assert [c[3] for c in cmds] == [HOST.ns, PLAN.bridge_ns]
    assert [c[c.index("dev") + 1] for c in cmds] == [p.HOST_IFACE, HOST.bridge_port]
    for cmd in cmds:
        assert cmd[cmd.index("root") :][:4] == ["root", "tbf", "rate", "20mbit"]
        assert "netem" not in cmd
    # Undone like a netem: the root qdisc deleted on the same two ends.
    undo = p.clear_commands(PLAN, HOST)
    assert [(c[3], c[c.index("dev") + 1]) for c in undo] == [
        (HOST.ns, p.HOST_IFACE),
        (PLAN.bridge_ns, HOST.bridge_port),
    ]


@pytest.mark.parametrize("rate", ["20", "fast", "20 mbit", "-1mbit", "20mbps"])
def test_a_rate_tc_does_not_read_is_refused_in_one_line(rate: str) -> None:
    with pytest.raises(p.PlanError) as err:
        p.throttle_commands(PLAN, HOST, rate)
    assert "\n" not in str(err.value) and "20mbit" in str(err.value)


def test_drop_filters_only_the_hosts_eth0_both_ways_in_its_own_namespace() -> None:
    cmds = p.drop_commands(HOST, 2.5)
    assert all(c[:4] == ["ip", "netns", "exec", HOST.ns] and c[4] == "nft" for c in cmds)
    rules = [c for c in cmds if c[5:7] == ["add", "rule"]]
    assert len(rules) == 2
    hooks = " ".join(" ".join(c) for c in cmds if c[5:7] == ["add", "chain"])
    assert "hook input" in hooks and "hook output" in hooks
    for rule, match in zip(rules, ("iifname", "oifname"), strict=True):
        tail = rule[rule.index(match) :]
        wanted = [match, p.HOST_IFACE, "numgen", "random", "mod", "1000", "<", "25"]
        assert tail == [*wanted, "counter", "drop"]
    every = [c for c in p.drop_commands(HOST, 100) if c[5:7] == ["add", "rule"]]
    assert all(
        c[-5:] == ["in" if m == "iifname" else "out", m, p.HOST_IFACE, "counter", "drop"]
        for c, m in zip(every, ("iifname", "oifname"), strict=True)
    )
    assert p.undrop_commands(HOST) == [
        ["ip", "netns", "exec", HOST.ns, "nft", "delete", "table", "inet", p.LOSS_TABLE]
    ]


@pytest.mark.parametrize("pct", [0, -1, 100.5])
def test_a_loss_outside_0_to_100_is_refused_in_one_line(pct: float) -> None:
    with pytest.raises(p.PlanError) as err:
        p.drop_commands(HOST, pct)
    assert "\n" not in str(err.value)


def test_dropped_packets_sums_both_rules_counters() -> None:
    listing = (
        'table inet gnb_loss {\n\tchain in {\n\t\tiifname "eth0" numgen random mod 1000 < 50'
        ' counter packets 12 bytes 900 drop\n\t}\n\tchain out {\n\t\toifname "eth0" numgen'
        " random mod 1000 < 50 counter packets 30 bytes 4000 drop\n\t}\n}\n"
    )
    assert p.dropped_packets(listing) == 42
    assert p.dropped_packets("") == 0
