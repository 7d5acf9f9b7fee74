"""
Helpers for tests that attack a running daemon: TLS and plain TCP
connections from any address of 127.0.0.0/8, requests written as raw bytes,
answers read off the socket, an honest sender that keeps posting while an
attack runs, and what the store, the log and ``/proc`` say afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import Daemon, Response
from service_support import wait_for

# Errors a client sees when the server closes or resets under it (or stalls).
CLOSED = (OSError, http.client.HTTPException)


# ---------------------------------------------------------------- connections


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


def request_bytes(
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/",
) -> bytes:
    """A whole HTTP/1.1 request with a Content-Length, as bytes."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_reply(sock: socket.socket, method: str = "POST") -> Response:
    """The next response on a raw connection, its body read."""
    reply = http.client.HTTPResponse(sock, method=method)
    reply.begin()
    body = reply.read()
    return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body)


def parse_reply(data: bytes) -> Response:
    """The one response in ``data`` (bytes a server wrote, then closed)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert len(body) == int(headers["content-length"]), data
    return Response(int(status), headers, body)


def https(
    d: Daemon, source: str = "127.0.0.1", timeout: float = 10
) -> http.client.HTTPSConnection:
    """An HTTPS connection to ``d`` from ``source`` (not yet opened)."""
    return http.client.HTTPSConnection(
        "127.0.0.1",
        d.port,
        timeout=timeout,
        context=d.pki.client_context(),
        source_address=(source, 0),
    )


def send(
    d: Daemon,
    body: bytes | None = b"{}",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    method: str = "POST",
    path: str = "/",
    timeout: float = 10,
) -> Response:
    """One request to ``d`` on a new connection from ``source``."""
    connection = https(d, source, timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        return Response(
            reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        )
    finally:
        connection.close()


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


# -------------------------------------------------------------- honest sender


class Honest(threading.Thread):
    """
    Posts a uniquely named incident on a new connection every ``interval``
    seconds until stopped, recording each status and how long it took: the
    sender an attack must not keep from being served.  Use as a context
    manager around the attack.
    """

    def __init__(
        self,
        d: Daemon,
        headers: dict[str, str],
        source: str = "127.0.0.250",
        interval: float = 0.1,
    ) -> None:
        super().__init__(name="honest", daemon=True)
        self.d = d
        self.headers = headers
        self.source = source
        self.interval = interval
        self.stop = threading.Event()
        self.results: list[tuple[int, float]] = []
        self.acknowledged: dict[int, str] = {}
        self.failures: list[BaseException] = []

    def run(self) -> None:
        number = 0
        while not self.stop.is_set() and number < 1000:
            name = f"honest-{number}-{os.urandom(4).hex()}"
            number += 1
            started = time.monotonic()
            try:
                reply = send(
                    self.d,
                    json.dumps({"name": name}).encode(),
                    self.headers,
                    self.source,
                    timeout=5,
                )
            except CLOSED as e:
                self.failures.append(e)
                continue
            self.results.append((reply.status, time.monotonic() - started))
            if reply.status == 200:
                [incident] = reply.json()
                self.acknowledged[int(incident["id"])] = incident["name"]
            self.stop.wait(self.interval)

    def __enter__(self) -> Honest:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(15)
        assert not self.is_alive(), "the honest sender did not stop"

    def assert_served(self, at_least: int, within: float = 1.0) -> None:
        """Every request answered 200, quickly, and its incident stored."""
        assert not self.failures, self.failures
        assert len(self.results) >= at_least, self.results
        assert {status for status, _ in self.results} == {200}, self.results
        slowest = max(seconds for _, seconds in self.results)
        assert slowest < within, f"an honest request took {slowest:.2f} s"
        stored = incidents_by_id(self.d.db)
        assert {i: stored.get(i) for i in self.acknowledged} == self.acknowledged


# ---------------------------------------------------------------------- store


def read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection to the store (never creates it)."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def row_counts(db: Path) -> dict[str, int]:
    """How many rows the requests and incidents tables hold."""
    with contextlib.closing(read_only(db)) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("requests", "incidents")
        }


def incidents_by_id(db: Path) -> dict[int, str]:
    """Every stored incident's name, by id."""
    with contextlib.closing(read_only(db)) as connection:
        return dict(connection.execute("SELECT id, name FROM incidents"))


def assert_no_half_requests(db: Path) -> int:
    """
    Each stored request has exactly the incidents its stored body carried,
    in order; the store passes SQLite's integrity check.  Returns how many
    requests were checked.
    """
    with contextlib.closing(read_only(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        bodies = dict(connection.execute("SELECT id, body FROM requests"))
        stored: dict[int, list[tuple[int, str]]] = {rid: [] for rid in bodies}
        for rid, position, name in connection.execute(
            "SELECT request_id, position, name FROM incidents ORDER BY id"
        ):
            stored[rid].append((position, name))
    for rid, body in bodies.items():
        document = json.loads(body)
        objects = document if isinstance(document, list) else [document]
        expected = [(p, o.get("name")) for p, o in enumerate(objects)]
        assert stored[rid] == expected, f"request {rid} is stored in part"
    return len(bodies)


# -------------------------------------------------------------------- process


def log_lines(d: Daemon, containing: str) -> list[str]:
    """The lines of the daemon's log file that contain ``containing``."""
    text = d.log.read_text(encoding="utf-8") if d.log.exists() else ""
    return [line for line in text.splitlines() if containing in line]


def status_kib(pid: int, key: str = "VmRSS") -> int:
    """A ``/proc/PID/status`` figure in KiB (VmRSS by default)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def open_files(pid: int) -> dict[int, str]:
    """Every open file descriptor of process ``pid`` and what it points at."""
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found[int(entry.name)] = os.readlink(entry)
    return found


# One poller for all the test support: service_support.wait_for.
wait_until = wait_for
