"""The network interface this host reaches an address through: what gloo binds to.

Left to itself gloo binds to the address the host name resolves to, which on many hosts
(Debian's 127.0.1.1, containers and network namespaces sharing one host name) is
loopback: every rank then advertises 127.0.0.1 to the others and a multi-node job fails
in ``connectFullMesh``. The route to rank 0's address names the interface the others
reach this host through."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import psutil

__all__ = ["interface_to"]


def interface_to(address: str) -> str | None:
    """The interface of the route to ``address``; None for loopback or when unknown."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(address, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)  # UDP: picks the route, sends nothing
            local = str(probe.getsockname()[0]).split("%")[0]
    except OSError:
        return None
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(local).is_loopback:
            return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == local for a in addrs):
            return name
    return None
