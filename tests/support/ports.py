"""Ports on 127.0.0.1: free ones, busy ones, and waiting for a listener."""

from __future__ import annotations

import socket

from support.wait import wait_for


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice of an ephemeral one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def occupied_port() -> socket.socket:
    """A socket listening on 127.0.0.1 at a free port: close it when done."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def accepts_connections(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:``port`` is accepted."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def refuses_connections(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:``port`` is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_until_listening(port: int, timeout: float = 10) -> None:
    """Return once 127.0.0.1:``port`` accepts connections."""
    wait_for(lambda: accepts_connections(port), timeout, f"port {port} to listen")


def wait_until_not_listening(port: int, timeout: float = 10) -> None:
    """Return once 127.0.0.1:``port`` refuses connections (the listener is closed)."""
    wait_for(lambda: refuses_connections(port), timeout, f"port {port} to close")
