"""The test bed's plan, pure: the names, addresses and `ip`/`tc` commands of a bed of N
namespaced hosts on a private bridge (no I/O here: tests/netbed/bed.py runs them).

Layout, for owner pid P's bed number S and subnet 10.213.K.0/24:

    namespace gnb-P-S-br       bridge br0 (no address), one veth end per host + the console's
    namespace gnb-P-S-h1..hN   eth0 = 10.213.K.1..N/24, lo up, its own sshd and agent
    root namespace             gnbP-Sc = 10.213.K.254/24: the console's way into the bridge

The bridge has a namespace of its own, so the only object in the machine's own namespace is
the console's veth end (uniquely named, on a subnet no route of the machine uses).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "gnb"
SUBNET_BASE = "10.213"  # 10.213.K.0/24 for K in SUBNET_THIRD_OCTETS
SUBNET_THIRD_OCTETS = range(1, 251)
CONSOLE_HOST_OCTET = 254
HOST_IFACE = "eth0"
BRIDGE = "br0"
AGENT_PORT = 50051
SSH_PORT = 22
# ip's interface names: at most 15 characters.
IFNAME_MAX = 15
_OWNED_NS_RE = re.compile(rf"{PREFIX}-(\d+)-\d+-(br|h\d+)\Z")
_OWNED_LINK_RE = re.compile(rf"{PREFIX}(\d+)-\d+c\Z")


class PlanError(ValueError):
    """A bed that cannot be planned; the message is one line."""


@dataclass(frozen=True)
class HostPlan:
    index: int  # 1..N
    name: str  # the node's name: node-1..node-N
    ns: str
    address: str
    bridge_port: str  # the veth end in the bridge's namespace

    @property
    def agent_target(self) -> str:
        return f"{self.address}:{AGENT_PORT}"


@dataclass(frozen=True)
class BedPlan:
    owner_pid: int
    serial: int  # the owner's beds are told apart by it
    third_octet: int
    hosts: tuple[HostPlan, ...]

    @property
    def bridge_ns(self) -> str:
        return f"{PREFIX}-{self.owner_pid}-{self.serial}-br"

    @property
    def console_link(self) -> str:
        return f"{PREFIX}{self.owner_pid}-{self.serial}c"

    @property
    def console_address(self) -> str:
        return f"{SUBNET_BASE}.{self.third_octet}.{CONSOLE_HOST_OCTET}"

    @property
    def subnet(self) -> str:
        return f"{SUBNET_BASE}.{self.third_octet}.0/24"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (*(h.ns for h in self.hosts), self.bridge_ns)

    def host(self, name: str) -> HostPlan:
        for host in self.hosts:
            if host.name == name:
                return host
        raise PlanError(f"no host {name!r} in the bed (it has {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


def plan_bed(owner_pid: int, third_octet: int, count: int = 3, serial: int = 0) -> BedPlan:
    """Bed number `serial` of process `owner_pid`: `count` hosts on 10.213.`third_octet`.0/24."""
    if not 1 <= count <= 200:
        raise PlanError(f"{count} hosts: a bed has 1 to 200")
    if third_octet not in SUBNET_THIRD_OCTETS:
        raise PlanError(f"10.213.{third_octet}.0/24: the third octet must be 1..250")
    if owner_pid <= 0:
        raise PlanError(f"owner pid {owner_pid}: not a process id")
    if not 0 <= serial <= 99:
        raise PlanError(f"bed number {serial}: a process has beds 0..99")
    if len(f"{PREFIX}{owner_pid}-{serial}c") > IFNAME_MAX:
        raise PlanError(f"owner pid {owner_pid} makes interface names over {IFNAME_MAX} chars")
    hosts = tuple(
        HostPlan(
            index=i,
            name=f"node-{i}",
            ns=f"{PREFIX}-{owner_pid}-{serial}-h{i}",
            address=f"{SUBNET_BASE}.{third_octet}.{i}",
            bridge_port=f"p{i}",
        )
        for i in range(1, count + 1)
    )
    return BedPlan(owner_pid, serial, third_octet, hosts)


def free_third_octet(routes_text: str, taken_by_beds: Iterable[int] = ()) -> int:
    """The first 10.213.K.0/24 that no route of `ip -4 route show table all` overlaps and
    no other bed uses."""
    networks = []
    for line in routes_text.splitlines():
        words = line.split()
        if not words:
            continue
        dest = words[1] if words[0] in ("local", "broadcast", "unicast", "blackhole") else words[0]
        if dest == "default":
            continue  # a default route overlaps everything: only specific ones clash
        try:
            networks.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            continue
    taken = set(taken_by_beds)
    for octet in SUBNET_THIRD_OCTETS:
        if octet in taken:
            continue
        candidate = ipaddress.ip_network(f"{SUBNET_BASE}.{octet}.0/24")
        if not any(candidate.overlaps(n) for n in networks if n.version == 4):
            return octet
    raise PlanError("every 10.213.K.0/24 clashes with a route or a bed: remove stale beds")


def setup_commands(plan: BedPlan) -> list[list[str]]:
    """The `ip` commands that build the bed, in order."""
    br = plan.bridge_ns
    cmds: list[list[str]] = [
        ["ip", "netns", "add", br],
        ["ip", "-n", br, "link", "set", "lo", "up"],
        ["ip", "-n", br, "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "-n", br, "link", "set", BRIDGE, "up"],
    ]
    for host in plan.hosts:
        cmds += [
            ["ip", "netns", "add", host.ns],
            ["ip", "-n", host.ns, "link", "set", "lo", "up"],
            # Created inside the host's namespace, its peer moved straight into the bridge's:
            # no veth end ever appears in the machine's own namespace.
            [
                "ip",
                "-n",
                host.ns,
                "link",
                "add",
                HOST_IFACE,
                "type",
                "veth",
                "peer",
                "name",
                host.bridge_port,
                "netns",
                br,
            ],
            ["ip", "-n", host.ns, "addr", "add", f"{host.address}/24", "dev", HOST_IFACE],
            ["ip", "-n", host.ns, "link", "set", HOST_IFACE, "up"],
            ["ip", "-n", br, "link", "set", host.bridge_port, "master", BRIDGE],
            ["ip", "-n", br, "link", "set", host.bridge_port, "up"],
        ]
    link = plan.console_link
    cmds += [
        ["ip", "link", "add", link, "type", "veth", "peer", "name", "console", "netns", br],
        ["ip", "-n", br, "link", "set", "console", "master", BRIDGE],
        ["ip", "-n", br, "link", "set", "console", "up"],
        ["ip", "addr", "add", f"{plan.console_address}/24", "dev", link],
        ["ip", "link", "set", link, "up"],
    ]
    return cmds


def teardown_commands(plan: BedPlan) -> list[list[str]]:
    """Deleting the namespaces deletes their veths, and with them the console's end."""
    return [
        *(["ip", "netns", "del", ns] for ns in plan.namespaces),
        ["ip", "link", "del", plan.console_link],
    ]


# -- faults: the bridge's port state (cut), tc netem (delay, loss) or tbf (throttle) on
# both ends, nftables (drop) -------------------------------------------------------------


def _both_ends(plan: BedPlan, host: HostPlan) -> list[list[str]]:
    """`ip netns exec NS tc` for the host's eth0 and the bridge's end of its veth."""
    return [
        ["ip", "netns", "exec", host.ns, "tc", "qdisc", "replace", "dev", HOST_IFACE],
        ["ip", "netns", "exec", plan.bridge_ns, "tc", "qdisc", "replace", "dev", host.bridge_port],
    ]


def netem_commands(
    plan: BedPlan, host: HostPlan, *, delay_ms: float = 0, loss_pct: float = 0
) -> list[list[str]]:
    """netem on both directions of `host`'s link: `delay_ms` each way (a round trip with the
    host gains twice that), `loss_pct` each way (100: the link is cut)."""
    if delay_ms < 0 or not 0 <= loss_pct <= 100:
        raise PlanError(f"delay {delay_ms} ms, loss {loss_pct} %: delay ≥ 0, loss 0..100")
    if delay_ms == 0 and loss_pct == 0:
        raise PlanError("a netem fault needs a delay or a loss")
    netem = ["root", "netem"]
    if delay_ms:
        netem += ["delay", f"{delay_ms:g}ms"]
    if loss_pct:
        netem += ["loss", f"{loss_pct:g}%"]
    # A deep queue: a delayed link must not also drop what the default 1000 packets would.
    netem += ["limit", "100000"]
    return [[*end, *netem] for end in _both_ends(plan, host)]


def clear_commands(plan: BedPlan, host: HostPlan) -> list[list[str]]:
    """Removes any netem or tbf from both ends (the default qdisc comes back)."""
    return [
        ["ip", "netns", "exec", host.ns, "tc", "qdisc", "del", "dev", HOST_IFACE, "root"],
        [
            "ip",
            "netns",
            "exec",
            plan.bridge_ns,
            "tc",
            "qdisc",
            "del",
            "dev",
            host.bridge_port,
            "root",
        ],
    ]


RATE_RE = re.compile(r"\d+(\.\d+)?(bit|kbit|mbit|gbit)\Z")
# tbf's bucket: at least a few full frames; its queue: a second at the rate (a slow link
# queues, it does not drop what a deeper buffer would carry).
TBF_BURST = "64kb"
TBF_LATENCY = "1s"
LOSS_TABLE = f"{PREFIX}_loss"


def throttle_commands(plan: BedPlan, host: HostPlan, rate: str) -> list[list[str]]:
    """A token bucket (tc tbf) at `rate` on both ends of `host`'s veth: what it sends and
    what it receives pass at `rate` each way (this kernel's netem-free slow link)."""
    if not RATE_RE.match(rate):
        raise PlanError(f"rate {rate!r}: write it as tc does, e.g. 20mbit, 500kbit, 1gbit")
    tbf = ["root", "tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY]
    return [[*end, *tbf] for end in _both_ends(plan, host)]


def drop_commands(host: HostPlan, pct: float) -> list[list[str]]:
    """nftables in `host`'s namespace drops `pct` % of what crosses its eth0, at random, each
    way (a round trip loses about twice that); lo is untouched. Undone by `undrop_commands`."""
    if not 0 < pct <= 100:
        raise PlanError(f"loss {pct} %: a random loss is over 0 and at most 100 %")
    per_mille = round(pct * 10)
    nft = ["ip", "netns", "exec", host.ns, "nft"]
    # nft's numgen draws 0..999: "< 1000" is out of its range, and 100 % needs no draw.
    chance = ["numgen", "random", "mod", "1000", "<", str(per_mille)] if per_mille < 1000 else []
    cmds = [[*nft, "add", "table", "inet", LOSS_TABLE]]
    for chain, hook, match in (("in", "input", "iifname"), ("out", "output", "oifname")):
        cmds += [
            [
                *nft,
                "add",
                "chain",
                "inet",
                LOSS_TABLE,
                chain,
                f"{{ type filter hook {hook} priority 0; policy accept; }}",
            ],
            [
                *nft,
                "add",
                "rule",
                "inet",
                LOSS_TABLE,
                chain,
                match,
                HOST_IFACE,
                *chance,
                "counter",
                "drop",
            ],
        ]
    return cmds


def dropped_packets(table_listing: str) -> int:
    """The packets the loss rules dropped, from `nft list table inet LOSS_TABLE`."""
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", table_listing))


def undrop_commands(host: HostPlan) -> list[list[str]]:
    return [["ip", "netns", "exec", host.ns, "nft", "delete", "table", "inet", LOSS_TABLE]]


def port_state_commands(plan: BedPlan, host: HostPlan, cut: bool) -> list[list[str]]:
    """The bridge's port for `host` disabled (every frame to and from it dropped in
    silence, both ends' links still up: a partition, not an unplugged cable) or forwarding
    again. Needs no qdisc: kernels without sch_netem have it."""
    state = "0" if cut else "3"  # disabled / forwarding
    return [
        [
            "ip",
            "netns",
            "exec",
            plan.bridge_ns,
            "bridge",
            "link",
            "set",
            "dev",
            host.bridge_port,
            "state",
            state,
        ],
    ]


def netem_probe_commands(plan: BedPlan) -> tuple[list[str], list[str]]:
    """Adds (and then removes) a no-op netem on the bridge's console port: whether this
    kernel has sch_netem."""
    on = ["ip", "netns", "exec", plan.bridge_ns, "tc", "qdisc", "add", "dev", "console"]
    off = ["ip", "netns", "exec", plan.bridge_ns, "tc", "qdisc", "del", "dev", "console", "root"]
    return [*on, "root", "netem", "delay", "0ms"], off


def console_cut_commands(host: HostPlan, console_address: str, cut: bool) -> list[list[str]]:
    """Drops (or stops dropping) what `host` sends to the console, inside the host's own
    namespace: the console loses the host, the host still reaches its peers."""
    verb = "add" if cut else "del"
    return [["ip", "-n", host.ns, "route", verb, "blackhole", f"{console_address}/32"]]


# -- stale beds ----------------------------------------------------------------------------


def stale_namespaces(netns_list: str, alive: Iterable[int]) -> list[str]:
    """The bed namespaces in `ip netns list` whose owner process is gone."""
    living = set(alive)
    stale = []
    for line in netns_list.splitlines():
        words = line.split()
        if not words:
            continue
        match = _OWNED_NS_RE.match(words[0])
        if match and int(match.group(1)) not in living:
            stale.append(words[0])
    return stale


def stale_links(link_names: Iterable[str], alive: Iterable[int]) -> list[str]:
    """The console veth ends (in the root namespace) whose owner process is gone."""
    living = set(alive)
    out = []
    for name in link_names:
        match = _OWNED_LINK_RE.match(name.split("@")[0])
        if match and int(match.group(1)) not in living:
            out.append(name.split("@")[0])
    return out


def beds_in_use(netns_list: str) -> dict[int, list[str]]:
    """Owner pid -> its namespaces, for every bed in `ip netns list`."""
    beds: dict[int, list[str]] = {}
    for line in netns_list.splitlines():
        words = line.split()
        if words and (match := _OWNED_NS_RE.match(words[0])):
            beds.setdefault(int(match.group(1)), []).append(words[0])
    return beds
