"""
Client addresses: how one is written in logs and the store, and which
addresses count as one client for the per-client caps and the throttle
(pure, no I/O).
"""

from __future__ import annotations

import ipaddress
import socket

# An IPv6 host is usually given a whole /64 (RFC 6177): counted per address,
# one host could open a fresh address for every connection or failed try.
IPV6_CLIENT_PREFIX = 64


def display_host(host: str) -> str:
    """
    ``host`` as logged and stored: an IPv4 client of a dual-stack listener
    arrives as ``::ffff:a.b.c.d`` and is written ``a.b.c.d``.
    """
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:") :]
    return host


def client_key(host: str) -> str:
    """
    The client ``host`` counts as: the IPv4 address itself, or the /64
    network of an IPv6 address.
    """
    host = display_host(host)
    if ":" not in host:
        return host
    try:
        network = ipaddress.IPv6Network(
            f"{host.split('%', 1)[0]}/{IPV6_CLIENT_PREFIX}", strict=False
        )
    except ValueError:
        return host
    return str(network)


def ipv6_available() -> bool:
    """Whether this host can listen on IPv6 (it may be disabled in the kernel)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
