"""
The real server pieces wired in-process, for tests that need more than the
pure rules but no ``twistd``: a channel driven byte by byte over a
``StringTransport``, and a TLS listener on 127.0.0.1 with a treq client.
"""

from __future__ import annotations

import time
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
from gwebhook.credentials import HEADER_PREFIX, Credentials
from gwebhook.store import SQLiteStore
from gwebhook.tap import Options, makeService
from gwebhook.tls import FailureLog, TLSServerEndpoint, certificate_options
from support.credentials import BASIC
from support.http import Response, parse_replies


def _credential_args(credentials: Credentials | None) -> list[str]:
    if credentials is None:
        return ["--allow-anonymous"]
    if credentials.basic:
        username = credentials.username.decode("utf-8")
    else:
        username = HEADER_PREFIX + credentials.header
    return ["--username", username, "--password", credentials.secret.decode("utf-8")]


def make_site(
    db: Path,
    credentials: Credentials | None = BASIC,
    max_header_bytes: int = 4096,
    max_body_bytes: int = 1000,
    incident_type: str | None = None,
    clock=None,
    config_file: Path | None = None,
    auth_fail_limit: int = 0,
) -> tuple[WebhookSite, SQLiteStore]:
    """
    The site the daemon serves, wired by its own ``makeService`` over a real
    store at ``db``, its time from ``clock`` (default: a ``Clock`` set to
    now, which the test advances to drive every deadline), with
    ``--config config_file`` if given.  No throttle unless
    ``auth_fail_limit``, so a test may fail authentication as often as it
    likes.
    """
    if clock is None:
        clock = task.Clock()
        clock.advance(time.time())
    config = Options()
    config.parseOptions(
        [
            "--no-tls",
            "--interface",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            str(db),
            "--max-header-bytes",
            str(max_header_bytes),
            "--max-body-bytes",
            str(max_body_bytes),
            "--auth-fail-limit",
            str(auth_fail_limit),
            *(["--incident-type", incident_type] if incident_type else []),
            *(["--config", str(config_file)] if config_file else []),
            *_credential_args(credentials),
        ]
    )
    daemon = makeService(config, reactor=clock)
    return daemon.site, daemon.store


@dataclass
class Wire:
    """A connection to a site that the test feeds bytes into."""

    site: WebhookSite
    transport: StringTransport = field(default_factory=StringTransport)

    def __post_init__(self) -> None:
        # The site's clock: a test's Clock for make_site's sites, so deadlines
        # leave nothing on the reactor and the test drives them.
        self.clock = self.site.reactor
        self.protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def written(self) -> bytes:
        return self.transport.value()

    def replies(self) -> list[Response]:
        return parse_replies(self.written())

    def reply(self) -> Response:
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
    store: SQLiteStore
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
        db, credentials, max_header_bytes, max_body_bytes, incident_type, reactor
    )
    endpoint = TLSServerEndpoint(
        endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        certificate_options(str(cert), str(key)),
        onHandshakeFailure=lambda: None,
        failures=FailureLog(reactor),
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
