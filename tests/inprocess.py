"""
The real server pieces wired in-process, for tests that need more than the
pure rules but no ``twistd``: a channel driven byte by byte over a
``StringTransport``, and a TLS listener on 127.0.0.1 with a treq client.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import endpoints, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import Certificate
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from gwebhook.channel import WebhookSite
from gwebhook.credentials import Credentials
from gwebhook.routes import WebhookRoutes
from gwebhook.store import IncidentStore
from gwebhook.tls import TLSServerEndpoint, certificate_options

BASIC = Credentials.from_options("admin", "s3cret")
BASIC_HEADER = "Basic YWRtaW46czNjcmV0"  # admin:s3cret


def count_rows(db: Path) -> dict[str, int]:
    """How many rows the requests and incidents tables hold."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("requests", "incidents")
        }


def stored_incidents(db: Path) -> list[dict[str, Any]]:
    """Every stored incident, oldest first, with its request's row."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT incidents.*, requests.method, requests.path,"
            " requests.headers AS request_headers, requests.body"
            " FROM incidents JOIN requests ON requests.id = incidents.request_id"
            " ORDER BY incidents.id"
        ).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["request_headers"] = json.loads(item["request_headers"])
        # As `gwebhook show` reads them: the request's headers, kept once.
        item["details"] = {
            **json.loads(item["details"]),
            "headers": item["request_headers"],
        }
        out.append(item)
    return out


def make_site(
    db: Path,
    credentials: Credentials | None = BASIC,
    max_header_bytes: int = 4096,
    max_body_bytes: int = 1000,
    incident_type: str | None = None,
) -> tuple[WebhookSite, IncidentStore]:
    """A WebhookSite over the real routes and a real store at ``db``."""
    store = IncidentStore(str(db))
    routes = WebhookRoutes(
        store, credentials, incident_type=incident_type, max_body_bytes=max_body_bytes
    )
    site = WebhookSite(
        routes.resource(),
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
        gate=routes.gate,  # as the daemon wires it
    )
    return site, store


@dataclass
class Reply:
    """One HTTP response read back from the bytes a server wrote."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_replies(data: bytes) -> list[Reply]:
    """Split what a server wrote into responses (Content-Length framed)."""
    replies = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("ascii").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        replies.append(Reply(status, headers, rest[:length]))
        data = rest[length:]
    return replies


@dataclass
class Wire:
    """A connection to a site that the test feeds bytes into."""

    site: WebhookSite
    transport: StringTransport = field(default_factory=StringTransport)
    clock: task.Clock = field(default_factory=task.Clock)

    def __post_init__(self) -> None:
        self.protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        # The idle timeout runs on a fake clock, so nothing is left on the reactor.
        self.protocol.callLater = self.clock.callLater
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def written(self) -> bytes:
        return self.transport.value()

    def replies(self) -> list[Reply]:
        return parse_replies(self.written())

    def reply(self) -> Reply:
        [reply] = self.replies()
        return reply

    def finished(self) -> Deferred:
        """Fire once the request being handled is answered."""
        if not self.protocol.requests:
            return succeed(None)
        return self.protocol.requests[-1].notifyFinish()

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@dataclass
class TLSServer:
    """The routes listening with TLS on 127.0.0.1, and a client that trusts the CA."""

    db: Path
    store: IncidentStore
    port: Any
    pool: HTTPConnectionPool
    client: HTTPClient

    @property
    def number(self) -> int:
        return self.port.getHost().port

    def url(self, path: str = "/") -> str:
        return f"https://localhost:{self.number}{path}"

    @inlineCallbacks
    def close(self):
        yield self.pool.closeCachedConnections()
        yield self.port.stopListening()
        self.store.close()


async def serve_tls(
    db: Path,
    cert: Path,
    key: Path,
    ca: Path,
    credentials: Credentials | None = BASIC,
    max_header_bytes: int = 65536,
    max_body_bytes: int = 10 * 1024 * 1024,
    incident_type: str | None = None,
) -> TLSServer:
    """Listen as the daemon does (TLS over TCP on 127.0.0.1, an ephemeral port)."""
    site, store = make_site(
        db, credentials, max_header_bytes, max_body_bytes, incident_type
    )
    endpoint = TLSServerEndpoint(
        endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        certificate_options(str(cert), str(key)),
    )
    try:
        port = await endpoint.listen(site)
    except BaseException:
        store.close()
        raise
    pool = HTTPConnectionPool(reactor, persistent=False)
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(ca.read_bytes()))
    client = HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    return TLSServer(db, store, port, pool, client)


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
