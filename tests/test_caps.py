"""Connection caps protect other clients and the daemon's descriptors."""

import http.client
import socket
import time

import pytest
from support.credentials import AUTH, HEADERS
from support.proc import listening_sockets, open_files
from support.wait import wait_for

# Every test here starts twistd.
pytestmark = pytest.mark.process


def idle_connections(
    port: int, count: int, source: str = "127.0.0.1"
) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def open_connections(pid: int) -> int:
    """
    The sockets ``pid`` holds other than those it listens on.  Counted rather
    than all its descriptors: a daemon just started may still be opening
    files of its own.
    """
    sockets = sum(t.startswith("socket:") for t in open_files(pid).values())
    return sockets - len(listening_sockets(pid))


def test_one_address_over_its_cap_does_not_shut_out_others(daemon):
    """Connections refused for one address do not count against everyone's cap."""
    d = daemon(*AUTH, "--max-connections", "50", "--max-connections-per-client", "5")
    hogs = idle_connections(d.port, 60)
    try:
        time.sleep(0.3)
        # Another address of the loopback range, as another sender would be.
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            d.port,
            timeout=10,
            context=d.pki.client_context(),
            source_address=("127.0.0.2", 0),
        )
        connection.request("POST", "/", body=b'{"name": "other"}', headers=HEADERS)
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        for s in hogs:
            s.close()


def test_refused_connections_that_say_nothing_are_dropped_soon(daemon):
    """Connections over a cap that send nothing are closed within a few seconds."""
    d = daemon(*AUTH, "--max-connections-per-client", "5")
    hogs = idle_connections(d.port, 40)
    try:
        # They were all taken (at least most: accept() may lag a little) ...
        deadline = time.monotonic() + 1.5
        peak = 0
        while time.monotonic() < deadline and peak < 40:
            peak = max(peak, open_connections(d.process.pid))
            time.sleep(0.02)
        assert peak >= 30
        # ... and the refused ones go within a few seconds: only the five
        # admitted ones are still held (until their idle timeout).
        wait_for(
            lambda: open_connections(d.process.pid) <= 5,
            6,
            "the refused connections to be closed",
        )
    finally:
        for s in hogs:
            s.close()
