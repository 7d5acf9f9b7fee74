"""
IPv6 clients: the default listener serves both families, IPv4 clients are
logged and stored as plain IPv4 addresses, and an IPv6 host counts as its
/64 for the per-client caps and the failed-authentication throttle.
"""

from __future__ import annotations

import json
import socket
import sqlite3

import pytest
from support.credentials import AUTH, BASIC_HEADER
from support.daemon import TWISTD
from support.wait import wait_for
from twisted.internet.address import IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gwebhook.addresses import client_key, display_host, ipv6_available
from gwebhook.tap import Options, makeService
from gwebhook.throttle import AuthThrottle

needs_ipv6 = pytest.mark.skipif(
    not ipv6_available(), reason="this host cannot listen on IPv6 (::1)"
)


@pytest.mark.parametrize(
    ("host", "shown", "key"),
    [
        ("192.0.2.7", "192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.7"),
        ("::1", "::1", "::/64"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2:ffff:ffff:ffff:ffff",
         "2001:db8:1:2::/64"),
        ("fe80::1%lo", "fe80::1%lo", "fe80::/64"),
    ],
)  # fmt: skip
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(host, shown, key):
    """IPv4-mapped addresses are written plainly; IPv6 hosts count per /64."""
    assert display_host(host) == shown
    assert client_key(host) == key


def test_the_throttle_counts_one_ipv6_64_as_one_client():
    """Failures from many addresses of one /64 add up; another /64 is untouched."""
    clock = Clock()
    throttle = AuthThrottle(3, 60, clock.seconds)
    for last in ("1", "2", "3"):
        throttle.failed(f"2001:db8:0:1::{last}")
    assert throttle.retry_after("2001:db8:0:1::ffff") == 60
    assert throttle.retry_after("2001:db8:0:2::1") == 0
    clock.advance(60)
    assert throttle.retry_after("2001:db8:0:1::ffff") == 0


def _site(tmp_path, *extra: str):
    clock = Clock()
    config = Options()
    config.parseOptions(
        ["--no-tls", "--interface", "127.0.0.1", "--port", "0"]
        + ["--db", str(tmp_path / "gwebhook.sqlite"), "--allow-anonymous", *extra]
    )
    daemon = makeService(config, reactor=clock)
    return daemon.site, daemon.store


def _connect(site, host: str):
    """A connection from ``host``: its channel, and what was written to it."""
    peer = IPv6Address("TCP", host, 40000)
    transport = StringTransport(peerAddress=peer)
    channel = site.buildProtocol(peer)
    channel.makeConnection(transport)
    return channel, transport


def test_the_per_client_cap_counts_one_ipv6_64_as_one_client(tmp_path):
    """A host cannot open a fresh address of its /64 for every connection."""
    site, store = _site(tmp_path, "--max-connections-per-client", "2")
    try:
        channels = [
            _connect(site, "2001:db8:0:1::1"),
            _connect(site, "2001:db8:0:1::2"),
        ]
        third = _connect(site, "2001:db8:0:1::3")
        other = _connect(site, "2001:db8:0:2::1")
        assert [channel.admitted for channel, _ in channels] == [True, True]
        assert not third[0].admitted
        assert other[0].admitted
        third[0].dataReceived(b"GET /healthz HTTP/1.1\r\n")
        written = third[1].value()
        assert written.startswith(b"HTTP/1.1 503 ")
        assert b"too many connections from this address" in written
    finally:
        store.close()


def _post(host: str, port: int, pki, body: bytes) -> tuple[int, dict]:
    """One POST over TLS to ``host`` (the certificate names localhost)."""
    context = pki.client_context()
    raw = socket.create_connection((host, port), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Authorization: " + BASIC_HEADER.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, answer = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(answer)


@needs_ipv6
def test_the_default_listener_serves_ipv6_and_ipv4_and_logs_plain_ipv4(
    spawn, pki, tmp_path
):
    """Without --interface: ::1 and 127.0.0.1 both served, logged and kept as sent."""
    d = spawn(start=False)
    d.argv = [
        TWISTD, "-n", "--pidfile=", "--logfile", str(d.log), "gwebhook",
        "--port", str(d.port), "--db", str(d.db), "--cert", str(pki.cert),
        "--key", str(pki.key), *AUTH,
    ]  # fmt: skip
    d.spawn()

    def answers(host: str) -> bool:
        try:
            with socket.create_connection((host, d.port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(lambda: answers("::1") and answers("127.0.0.1"), 15, "both families")
    assert _post("::1", d.port, pki, b'{"name": "six"}')[0] == 200
    assert _post("127.0.0.1", d.port, pki, b'{"name": "four"}')[0] == 200
    log = wait_for(
        lambda: (t := d.log.read_text()).count(" POST / 200 ") == 2 and t,
        10,
        "two access lines",
    )
    assert "] ::1 POST / 200 " in log
    assert "] 127.0.0.1 POST / 200 " in log
    assert "::ffff:" not in log
    with sqlite3.connect(d.db) as db:
        clients = {row[0] for row in db.execute("SELECT client FROM requests")}
    assert clients == {"::1", "127.0.0.1"}


@needs_ipv6
def test_the_interface_defaults_to_dual_stack_where_the_host_has_ipv6(tmp_path):
    """On a host with IPv6 (this one: ::1 answers) the default is '::'."""
    config = Options()
    config.parseOptions(
        ["--no-tls", "--port", "0", "--allow-anonymous"]
        + ["--db", str(tmp_path / "gwebhook.sqlite")]
    )
    assert config["interface"] == "::"
