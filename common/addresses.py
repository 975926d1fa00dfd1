"""Listen addresses: whether one is reachable from this machine only.

Owns the rule both gRPC servers (the control API, the GPU agent) apply before serving without
authentication: such a server may listen on loopback only. Pure: no sockets are opened.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_HOST = "127.0.0.1"


def split_host_port(address: str) -> tuple[str, str]:
    """``("0.0.0.0", "50061")`` of ``"0.0.0.0:50061"``; IPv6 brackets are removed
    (``[::1]:50061`` gives ``("::1", "50061")``); no port gives ``(address, "")``."""
    host, sep, port = address.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        return address, ""  # no port, or a bare IPv6 address
    return host.removeprefix("[").removesuffix("]"), port


def is_loopback(address: str) -> bool:
    """Whether gRPC serving on ``address`` (``host:port``, or ``unix:path``) is reachable from
    this machine only: a ``unix:`` socket, ``localhost`` or a loopback IP (127.0.0.0/8, ::1).
    A wildcard (0.0.0.0, [::]), an interface's address or a host name is not."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host, _ = split_host_port(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def on_loopback(address: str) -> str:
    """``address`` with its host replaced by 127.0.0.1 (the port kept)."""
    _, port = split_host_port(address)
    return f"{LOOPBACK_HOST}:{port}"
