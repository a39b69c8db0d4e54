"""The test bed's I/O: runs the plan's `ip` commands (as root), gives each namespaced host
an sshd and a CA-issued agent under mutual TLS, applies the faults (each undone on heal, at
its time limit, or at teardown), and tears everything down: every process in the bed's
namespaces killed, the namespaces deleted. A bed left by a crashed run is removed first."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from console.net.ca import init_ca
from console.net.local_agents import agent_program
from tests.netbed import plan as p
from tests.netbed.netns import (
    NetbedError,
    bed_lock,
    clean_stale,
    delete_bed,
    ip,
    kill_namespace,
    netns_pids,
    require_root,
)
from tests.sshd import SSHD, keygen, public_key

__all__ = ["Host", "Netbed", "NetbedError", "clean_stale", "netns_pids", "start_bed", "teardown"]

AGENT_START_TIMEOUT_S = 45.0
SSHD_START_TIMEOUT_S = 10.0
DEFAULT_FAULT_MAX_S = 120.0  # every fault is undone by then, whatever the test does
CONSOLE_NAME = "tester"
_serials = itertools.count()  # this process's beds


@dataclass
class Host:
    """One namespaced host of the bed: its sshd and its agent run inside `ns`."""

    plan: p.HostPlan
    data_dir: Path
    agent: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def address(self) -> str:
        return self.plan.address

    @property
    def ns(self) -> str:
        return self.plan.ns

    @property
    def agent_target(self) -> str:
        return self.plan.agent_target

    def run(self, cmd: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        """`cmd` inside this host's namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *cmd],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def pids(self) -> list[int]:
        return netns_pids(self.ns)


@dataclass
class Fault:
    undo: list[list[str]]
    timer: threading.Timer


@dataclass
class Netbed:
    plan: p.BedPlan
    root: Path
    hosts: list[Host]
    ca_dir: Path
    cluster_file: Path
    ssh_config: Path = field(default=Path())
    known_hosts: Path = field(default=Path())
    user_key: Path = field(default=Path())
    _faults: dict[tuple[str, str], Fault] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _netem: bool | None = None

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == self.plan.host(name).name)

    # -- faults ------------------------------------------------------------------------
    def _apply(
        self, key: tuple[str, str], do: list[list[str]], undo: list[list[str]], max_s: float
    ) -> None:
        self._undo(key)
        try:
            for cmd in do:
                ip(cmd)
        except BaseException:
            for cmd in undo:  # what the failed command's predecessors did
                ip(cmd, check=False)
            raise
        timer = threading.Timer(max_s, self._undo, args=(key,))
        timer.daemon = True
        with self._lock:
            self._faults[key] = Fault(undo, timer)
        timer.start()

    def _undo(self, key: tuple[str, str]) -> None:
        with self._lock:
            fault = self._faults.pop(key, None)
        if fault is None:
            return
        fault.timer.cancel()
        for cmd in fault.undo:
            ip(cmd, check=False)

    def cut(self, host: Host, max_s: float = DEFAULT_FAULT_MAX_S) -> None:
        """Every frame to and from `host` dropped in silence (its peers and the console
        lose it; nothing tells them)."""
        self._apply(
            (host.name, "link"),
            p.port_state_commands(self.plan, host.plan, cut=True),
            p.port_state_commands(self.plan, host.plan, cut=False),
            max_s,
        )

    def heal(self, host: Host) -> None:
        """Undoes every link fault on `host` (cut, delay, loss, throttle, drop)."""
        for fault in ("link", "rate", "drop"):
            self._undo((host.name, fault))

    def throttle(
        self, host: Host, rate: str = "20mbit", max_s: float = DEFAULT_FAULT_MAX_S
    ) -> None:
        """`host`'s link slowed to `rate` each way (tc tbf on both ends of its veth): the
        slow link of a kernel without netem. `unthrottle` or `heal` undoes it."""
        do = p.throttle_commands(self.plan, host.plan, rate)
        self._apply((host.name, "rate"), do, p.clear_commands(self.plan, host.plan), max_s)

    def unthrottle(self, host: Host) -> None:
        self._undo((host.name, "rate"))

    def drop(self, host: Host, pct: float, max_s: float = DEFAULT_FAULT_MAX_S) -> None:
        """`pct` % of the packets across `host`'s link dropped at random, each way (nftables
        in its namespace; needs no netem). `undrop` or `heal` undoes it."""
        if shutil.which("nft") is None:
            raise NetbedError(
                "nft is missing (random loss needs nftables): apt-get install nftables"
            )
        do = p.drop_commands(host.plan, pct)
        self._apply((host.name, "drop"), do, p.undrop_commands(host.plan), max_s)

    def undrop(self, host: Host) -> None:
        self._undo((host.name, "drop"))

    def dropped_packets(self, host: Host) -> int:
        """What `drop` has dropped on `host` so far (0 when no drop is on)."""
        listing = host.run(["nft", "list", "table", "inet", p.LOSS_TABLE])
        return p.dropped_packets(listing.stdout) if listing.returncode == 0 else 0

    def has_netem(self) -> bool:
        """Whether this kernel has sch_netem (delay and loss need it; cut does not)."""
        if self._netem is None:
            on, off = p.netem_probe_commands(self.plan)
            self._netem = ip(on, check=False).returncode == 0
            if self._netem:
                ip(off, check=False)
        return self._netem

    def delay(self, host: Host, ms: float, max_s: float = DEFAULT_FAULT_MAX_S) -> None:
        self.netem(host, delay_ms=ms, max_s=max_s)

    def loss(self, host: Host, pct: float, max_s: float = DEFAULT_FAULT_MAX_S) -> None:
        self.netem(host, loss_pct=pct, max_s=max_s)

    def netem(self, host: Host, *, delay_ms: float = 0, loss_pct: float = 0, max_s: float) -> None:
        if not self.has_netem():
            raise NetbedError(
                "tc netem is not available in this kernel (no sch_netem): delay and loss"
                " cannot be applied; load it (modprobe sch_netem) or use a kernel with it"
            )
        do = p.netem_commands(self.plan, host.plan, delay_ms=delay_ms, loss_pct=loss_pct)
        self._apply((host.name, "link"), do, p.clear_commands(self.plan, host.plan), max_s)

    def cut_console(self, host: Host, max_s: float = DEFAULT_FAULT_MAX_S) -> None:
        """The console loses `host`; the host's peers still reach it."""
        addr = self.plan.console_address
        self._apply(
            (host.name, "console"),
            p.console_cut_commands(host.plan, addr, cut=True),
            p.console_cut_commands(host.plan, addr, cut=False),
            max_s,
        )

    def heal_console(self, host: Host) -> None:
        self._undo((host.name, "console"))

    def heal_all(self) -> None:
        for key in list(self._faults):
            self._undo(key)

    # -- the agents --------------------------------------------------------------------
    def start_agent(self, host: Host) -> None:
        """Starts (or starts again) `host`'s agent, under mutual TLS on its address."""
        agents = self.ca_dir / "agents"
        endpoint = host.data_dir / "agent.json"
        endpoint.unlink(missing_ok=True)
        log = (host.data_dir / "agent.log").open("ab")
        argv = [
            "ip",
            "netns",
            "exec",
            host.ns,
            *agent_program(),
            "--listen",
            host.agent_target,
            "--node-name",
            host.name,
            "--data-dir",
            str(host.data_dir),
            "--tls-ca",
            str(self.ca_dir / "ca.pem"),
            "--tls-cert",
            str(agents / f"{host.name}.pem"),
            "--tls-key",
            str(agents / f"{host.name}.key"),
        ]
        env = {**os.environ, "GANTRY_WARM_OPS": "0"}
        host.agent = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()

    def wait_agent(self, host: Host) -> None:
        assert host.agent is not None
        endpoint = host.data_dir / "agent.json"
        deadline = time.monotonic() + AGENT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if host.agent.poll() is not None:
                tail = (host.data_dir / "agent.log").read_text(errors="replace").splitlines()
                raise NetbedError(f"agent of {host.name} exited: {tail[-1] if tail else '?'}")
            with contextlib.suppress(OSError, json.JSONDecodeError):
                if json.loads(endpoint.read_text()).get("pid") == host.agent.pid:
                    return
            time.sleep(0.05)
        raise NetbedError(f"agent of {host.name} did not start in {AGENT_START_TIMEOUT_S:.0f}s")

    def kill_host_processes(self, host: Host) -> None:
        """Every process of `host` killed (its agent, ranks and sshd): a reboot's first half."""
        kill_namespace(host.ns)

    def rank_pids(self, job: str) -> dict[str, list[int]]:
        """Host name -> the pids in its namespace that run `job`'s ranks."""
        out: dict[str, list[int]] = {}
        for host in self.hosts:
            for pid in host.pids():
                with contextlib.suppress(psutil.Error):
                    if psutil.Process(pid).environ().get("GANTRY_JOB") == job:
                        out.setdefault(host.name, []).append(pid)
        return out


def _start_sshd(bed: Netbed, host: Host) -> None:
    root = host.data_dir / "sshd"
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation, as root
    host_key = root / "host_ed25519"
    if not host_key.exists():
        keygen(host_key)
    config = root / "sshd_config"
    config.write_text(
        f"Port {p.SSH_PORT}\nListenAddress {host.address}\nHostKey {host_key}\n"
        f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {bed.root / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "Subsystem sftp internal-sftp\nMaxStartups 64\nMaxSessions 64\nLogLevel ERROR\n"
        "SetEnv GANTRY_WARM_OPS=0\n"
    )
    log = (root / "sshd.log").open("ab")
    host.sshd = subprocess.Popen(
        ["ip", "netns", "exec", host.ns, str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()


def _wait_sshd(host: Host) -> None:
    assert host.sshd is not None
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if host.sshd.poll() is not None:
            raise NetbedError(f"sshd of {host.name} exited: see {host.data_dir}/sshd/sshd.log")
        probe = host.run(["ss", "-Hltn", f"sport = :{p.SSH_PORT}"], timeout_s=5)
        if host.address in probe.stdout:
            return
        time.sleep(0.05)
    raise NetbedError(f"sshd of {host.name} did not listen in {SSHD_START_TIMEOUT_S:.0f}s")


def _write_ssh_files(bed: Netbed) -> None:
    user_key = bed.root / "user_ed25519"
    keygen(user_key)
    (bed.root / "authorized_keys").write_text(public_key(user_key) + "\n")
    bed.user_key = user_key
    bed.ssh_config = bed.root / "ssh_config"
    bed.ssh_config.write_text(
        "".join(
            f"Host {h.name}\n  HostName {h.address}\n  Port {p.SSH_PORT}\n  User root\n"
            f"  IdentityFile {user_key}\n  IdentitiesOnly yes\n\n"
            for h in bed.hosts
        )
    )
    bed.known_hosts = bed.root / "known_hosts"
    bed.known_hosts.write_text(
        "".join(
            f"{h.address} {public_key(h.data_dir / 'sshd' / 'host_ed25519')}\n" for h in bed.hosts
        )
    )


def start_bed(root: Path, count: int = 3, agents: bool = True) -> Netbed:
    """Builds the bed under `root` (certificates, data dirs, logs); `teardown` removes it."""
    require_root()
    clean_stale()
    with bed_lock():
        routes = ip(["ip", "-4", "route", "show", "table", "all"]).stdout
        octet = p.free_third_octet(routes)
        plan = p.plan_bed(os.getpid(), octet, count, serial=next(_serials) % 100)
        try:
            for cmd in p.setup_commands(plan):
                ip(cmd)
        except BaseException:
            delete_bed(plan)
            raise
    ca_dir = root / "ca"
    hosts = [Host(h, root / h.name) for h in plan.hosts]
    bed = Netbed(plan, root, hosts, ca_dir, ca_dir / "cluster.yaml")
    try:
        result = init_ca(
            ca_dir, {h.name: [h.address] for h in hosts}, [CONSOLE_NAME], port=p.AGENT_PORT
        )
        assert result.cluster_file is not None
        for host in hosts:
            host.data_dir.mkdir(parents=True, exist_ok=True)
            _start_sshd(bed, host)
            if agents:
                bed.start_agent(host)
        _write_ssh_files(bed)
        for host in hosts:
            _wait_sshd(host)
            if agents:
                bed.wait_agent(host)
    except BaseException:
        teardown(bed)
        raise
    return bed


def teardown(bed: Netbed) -> None:
    """Faults undone, every process in the bed's namespaces killed, the namespaces deleted."""
    bed.heal_all()
    delete_bed(bed.plan)
    for host in bed.hosts:
        for proc in (host.agent, host.sshd):
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
