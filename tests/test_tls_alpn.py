"""
ALPN: what a client offers in its ClientHello never fails the handshake.
A client offering "http/1.0" alone (``curl --http1.0``), or only protocols
nobody here speaks, is served like any other; "http/1.1" is chosen when
offered.  Real ``twistd gwebhook`` processes, stdlib ``ssl`` clients.
"""

from __future__ import annotations

import base64
import socket
import sqlite3

import pytest

from gwebhook.tls import choose_protocol

AUTH = ["--username", "admin", "--password", "pw"]
AUTHORIZATION = "Basic " + base64.b64encode(b"admin:pw").decode()


def post(d, offer: list[str] | None, name: str, version: str = "HTTP/1.1"):
    """POST one incident on a new TLS connection offering ``offer`` over ALPN;
    (the protocol the server chose, the status line, the body)."""
    context = d.pki.client_context()
    if offer is not None:
        context.set_alpn_protocols(offer)
    body = f'{{"name": "{name}"}}'.encode()
    head = (
        f"POST / {version}\r\nHost: localhost\r\nAuthorization: {AUTHORIZATION}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    with (
        socket.create_connection(("127.0.0.1", d.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        chosen = tls.selected_alpn_protocol()
        tls.sendall(head.encode() + body)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    return chosen, status.decode(), rest.partition(b"\r\n\r\n")[2]


def names(d) -> list[str]:
    with sqlite3.connect(d.db) as db:
        return [row[0] for row in db.execute("SELECT name FROM incidents ORDER BY id")]


def test_client_offering_only_http_1_0_is_served_over_http_1_0(spawn):
    """A client offering only "http/1.0" gets it chosen, and its HTTP/1.0 POST
    is answered 200 and stored."""
    d = spawn(*AUTH)
    chosen, status, body = post(d, ["http/1.0"], "curl --http1.0", "HTTP/1.0")
    assert chosen == "http/1.0"
    assert status == "HTTP/1.0 200 OK", (status, body)
    assert names(d) == ["curl --http1.0"]


def test_client_offering_only_unknown_protocols_is_served_without_one(spawn):
    """A client offering only protocols nobody serves completes the handshake
    with none chosen, and its POST is answered as usual."""
    d = spawn(*AUTH)
    chosen, status, body = post(d, ["foo/1", "bar/2"], "foo client")
    assert chosen is None
    assert status == "HTTP/1.1 200 OK", (status, body)
    assert names(d) == ["foo client"]


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [(["h2", "http/1.1"], "http/1.1"), (["http/1.1"], "http/1.1"), (None, None)],
    ids=["h2-then-http1.1", "http1.1", "no-alpn"],
)
def test_http_1_1_clients_and_clients_without_alpn_are_served(spawn, offer, chosen):
    """http/1.1 is chosen when offered (h2 is not spoken here); a client without
    ALPN gets no protocol; both are answered 200."""
    d = spawn(*AUTH)
    got, status, body = post(d, offer, "modern")
    assert got == chosen
    assert status == "HTTP/1.1 200 OK", (status, body)
    assert names(d) == ["modern"]


@pytest.mark.parametrize(
    ("offered", "served", "chosen"),
    [
        ([b"http/1.0"], [b"http/1.1"], b"http/1.0"),
        ([b"http/1.0", b"http/1.1"], [b"http/1.1"], b"http/1.1"),
        ([b"h2", b"http/1.1"], [b"h2", b"http/1.1"], b"h2"),
        ([b"foo/1"], [b"http/1.1"], None),
        ([b"http/1.1"], [], None),
    ],
)
def test_choose_protocol_prefers_the_servers_order(offered, served, chosen):
    """The first served protocol the client offers is chosen; http/1.0 counts as
    served wherever http/1.1 is; with no overlap, nothing is."""
    assert choose_protocol(offered, served) == chosen
