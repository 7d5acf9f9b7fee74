"""
Talking to a server under test on 127.0.0.1: HTTPS requests, raw TCP and TLS
connections (from any address of 127.0.0.0/8), requests written as bytes,
answers read off a socket or parsed from what a server wrote, and watching
how a connection ends.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from support.pki import sha256

# Errors a client sees when the server closes or resets under it (or stalls).
CLOSED = (OSError, http.client.HTTPException)


@dataclass
class Response:
    """One HTTP response: its status, headers (names in lowercase) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _response(reply: http.client.HTTPResponse) -> Response:
    body = reply.read()
    return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body)


# ------------------------------------------------------------------ requests


def https(
    d, source: str = "127.0.0.1", timeout: float = 10
) -> http.client.HTTPConnection:
    """
    A connection to daemon ``d`` from ``source``, not yet opened: HTTPS
    verified through ``d``'s CA, or plain HTTP when ``d`` serves without TLS.
    """
    if d.pki is None:
        return http.client.HTTPConnection(
            "127.0.0.1", d.port, timeout=timeout, source_address=(source, 0)
        )
    return http.client.HTTPSConnection(
        "127.0.0.1",
        d.port,
        timeout=timeout,
        context=d.pki.client_context(),
        source_address=(source, 0),
    )


def keep_alive(d) -> http.client.HTTPConnection:
    """A connection to ``d``, already open, for several requests in turn."""
    connection = https(d)
    connection.connect()
    return connection


def ask(
    connection: http.client.HTTPConnection,
    method: str = "GET",
    path: str = "/healthz",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One request on an open connection, which stays open."""
    connection.request(method, path, body=body, headers=headers or {})
    return _response(connection.getresponse())


def send(
    d,
    body: bytes | None = b"{}",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    method: str = "POST",
    path: str = "/",
    timeout: float = 10,
) -> Response:
    """One request to daemon ``d`` on a new connection from ``source``."""
    connection = https(d, source, timeout)
    try:
        return ask(connection, method, path, body, headers)
    finally:
        connection.close()


# ----------------------------------------------------------- raw connections


def connect_raw(port: int, source: str = "127.0.0.1", timeout: float = 10):
    """A plain TCP connection to 127.0.0.1:``port`` from ``source``."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    try:
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
    except BaseException:
        raw.close()
        raise
    return raw


def connect(
    port: int, context: ssl.SSLContext, source: str = "127.0.0.1", timeout: float = 10
) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:``port`` from ``source``, handshake done."""
    raw = connect_raw(port, source, timeout)
    try:
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def request_head(
    length: int,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/",
    expect: bool = False,
) -> bytes:
    """A request line and headers announcing a body of ``length`` bytes."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {length}",
    ]
    if expect:
        lines.append("Expect: 100-continue")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def request_bytes(
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/",
) -> bytes:
    """A whole HTTP/1.1 request with a Content-Length, as bytes."""
    return request_head(len(body), headers, method, path) + body


def read_interim(tls: ssl.SSLSocket) -> bytes:
    """
    Read the server's ``100 Continue``: it is sent once the headers are
    parsed, so the request is then in the server's hands (in flight).
    """
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = tls.recv(1)
        if not chunk:
            raise AssertionError(f"connection closed before 100 Continue: {data!r}")
        data += chunk
    assert data.startswith(b"HTTP/1.1 100 "), data
    return data


def start_request(
    port: int, context: ssl.SSLContext, body: bytes, headers: dict[str, str]
) -> ssl.SSLSocket:
    """Send a POST's headers and the first half of its body; the rest is due."""
    tls = connect(port, context)
    tls.sendall(request_head(len(body), headers, expect=True))
    read_interim(tls)
    tls.sendall(body[: len(body) // 2])
    return tls


class SlowRequest:
    """
    A POST whose headers and first body byte are sent now and the rest on
    ``finish()``: a request certainly in flight in between.
    """

    def __init__(self, d, headers: dict[str, str], body: bytes) -> None:
        self.body = body
        self.connection = https(d)
        self.connection.putrequest("POST", "/")
        for name, value in headers.items():
            self.connection.putheader(name, value)
        self.connection.putheader("Content-Length", str(len(body)))
        self.connection.endheaders(body[:1])

    def finish(self) -> Response:
        """Send the rest of the body and read the answer."""
        try:
            self.connection.send(self.body[1:])
            return _response(self.connection.getresponse())
        finally:
            self.connection.close()


# ------------------------------------------------------------------- answers


def read_reply(sock: socket.socket, method: str = "POST") -> Response:
    """The next response on a raw connection, its body read."""
    reply = http.client.HTTPResponse(sock, method=method)
    reply.begin()
    return _response(reply)


def parse_replies(data: bytes) -> list[Response]:
    """Split what a server wrote into its responses (Content-Length framed)."""
    replies = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("ascii").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        assert len(rest) >= length, f"a response cut short: {data!r}"
        replies.append(Response(int(status), headers, rest[:length]))
        data = rest[length:]
    return replies


def parse_reply(data: bytes) -> Response:
    """The one response in ``data`` (the bytes a server wrote, then closed)."""
    [reply] = parse_replies(data)
    return reply


@dataclass
class Closed:
    """How a connection ended: after how long, with which bytes, and how."""

    seconds: float
    data: bytes
    how: str  # "eof", "reset" or "open" (still open at the timeout)


def wait_closed(sock: socket.socket, timeout: float = 10) -> Closed:
    """Read until the server closes ``sock``; everything it sent meanwhile."""
    started = time.monotonic()
    data = b""
    how = "open"
    while (left := started + timeout - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionError, ssl.SSLError):
            how = "reset"
            break
        if not chunk:
            how = "eof"
            break
        data += chunk
    return Closed(time.monotonic() - started, data, how)


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Every byte the server sends until it closes (or resets) the connection."""
    closed = wait_closed(sock, timeout)
    assert closed.how != "open", f"still open after {timeout} s: {closed.data!r}"
    return closed.data


@dataclass
class Trickled:
    """What a trickling client saw."""

    sent: int  # pieces sent after the first
    answered_after: float | None  # seconds from the first byte to the answer
    data: bytes  # everything the server sent


def trickle(
    sock: socket.socket,
    first: bytes,
    pieces: list[bytes],
    interval: float,
    limit: float = 10,
) -> Trickled:
    """
    Send ``first``, then one of ``pieces`` every ``interval`` seconds, until
    the server answers and closes (or ``limit`` seconds pass): a client that
    keeps sending, too slowly.
    """
    started = time.monotonic()
    sock.sendall(first)
    sent, answered, data = 0, None, b""
    next_piece = started + interval
    while time.monotonic() - started < limit:
        sock.settimeout(max(0.001, next_piece - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        except (ConnectionError, ssl.SSLError):
            break
        if chunk == b"":
            break
        if chunk:
            if answered is None:
                answered = time.monotonic() - started
            data += chunk
            continue
        if sent < len(pieces) and answered is None:
            try:
                sock.sendall(pieces[sent])
            except CLOSED:
                continue  # the server closed; read what it said
            sent += 1
        next_piece = time.monotonic() + interval
    return Trickled(sent, answered, data)


# ----------------------------------------------------------------------- TLS


def served_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """The SHA-256 fingerprint of the certificate a new connection is given."""
    with connect(port, context) as tls:
        return sha256(tls.getpeercert(binary_form=True))


def handshake(port: int, context: ssl.SSLContext) -> dict[str, Any]:
    """
    Blocking: complete a TLS handshake with 127.0.0.1:port as "localhost" and
    say what was negotiated.  Run it in a thread, never on the reactor.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return {
            "version": tls.version(),
            "cipher": tls.cipher()[0],
            "compression": tls.compression(),
            "peercert": tls.getpeercert(),
        }


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight ``context`` would send, produced in memory, no socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()
