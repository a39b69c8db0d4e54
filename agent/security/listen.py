"""Where a server may listen without TLS: loopback only (reached through an SSH tunnel)."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """True for localhost, a loopback address, or a name that resolves only to those."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


class OpenListenError(ValueError):
    """Listening beyond loopback without TLS; the message says what to do instead."""


def require_loopback_without_tls(host: str, tls: bool) -> None:
    """A server that answers for the node listens beyond loopback only with mutual TLS."""
    if not tls and not is_loopback(host):
        raise OpenListenError(
            f"refusing to listen on {host} without mutual TLS: pass --tls-ca, --tls-cert and "
            "--tls-key, or listen on 127.0.0.1 and reach it through an SSH tunnel"
        )
