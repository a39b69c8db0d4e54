"""A real OpenSSH `sshd` on 127.0.0.1 for the SSH tests and the bench: its own host key,
a generated user key in its own authorized_keys file, and an ssh_config defining the
aliases node-1..node-N for it. Nothing touches ~/.ssh.

Debian's openssh-server provides /usr/sbin/sshd (`make test` installs it when missing).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 10.0


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def public_key(private: Path) -> str:
    """ "ssh-ed25519 AAAA..." of a key made by `keygen`."""
    return " ".join(Path(f"{private}.pub").read_text().split()[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    root: Path
    port: int
    host_key: Path
    user_key: Path
    ssh_config: Path
    process: subprocess.Popen[bytes]
    user: str

    def known_hosts(self, path: Path, key_line: str | None = None) -> Path:
        """A known_hosts file trusting this sshd's host key (or `key_line` instead)."""
        path.write_text(f"[127.0.0.1]:{self.port} {key_line or public_key(self.host_key)}\n")
        return path

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (killing them drops those connections)."""
        try:
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        except psutil.Error:
            return []

    def drop_connections(self) -> None:
        for pid in self.session_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self.drop_connections()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def ssh_config_text(port: int, user: str, aliases: int) -> str:
    return "".join(
        f"Host node-{i}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n\n"
        for i in range(1, aliases + 1)
    )


@contextlib.contextmanager
def running_sshd(root: Path, aliases: int = 8) -> Iterator[Sshd]:
    """sshd -D on a free port of 127.0.0.1, as the current user; stopped afterwards."""
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is missing: apt-get install openssh-server (make test does)")
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    user_key = keygen(root / "user_ed25519")
    (root / "authorized_keys").write_text(public_key(user_key) + "\n")
    # Privilege separation needs this directory when sshd starts as root.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    user = getpass.getuser()
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        "Subsystem sftp internal-sftp\nMaxStartups 64\nMaxSessions 64\n"
        "LogLevel ERROR\n"
        # Agents started through it leave DeepSpeed's ops to the suite's own build (each
        # agent would compile them into its fresh data dir).
        "SetEnv GANTRY_WARM_OPS=0\n"
    )
    ssh_config = root / "ssh_config"
    ssh_config.write_text(ssh_config_text(port, user, aliases))
    log = (root / "sshd.log").open("ab")
    process = subprocess.Popen(
        [str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    sshd = Sshd(root, port, host_key, user_key, ssh_config, process, user)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not start listening")
            time.sleep(0.02)
        yield sshd
    finally:
        sshd.stop()
