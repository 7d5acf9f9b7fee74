"""
Connections that fail before TLS is up leave a log line an operator can act
on: plain HTTP sent to the TLS port is answered 400 in clear text and
logged; a failed handshake is logged with the client's address and what
went wrong; a flood of either is told in a few lines and one count.

The rate limiter runs on a ``task.Clock``; the connections are real, from
stdlib sockets in a thread, to the TLS listener in-process (over a plain
site: the TLS layer is what is tested) and to a real ``twistd``.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Site

from gwebhook.tls import (
    PLAIN_HTTP,
    FailureLog,
    TLSServerEndpoint,
    certificate_options,
    explain_handshake_failure,
    looks_like_plain_http,
)

SECRET = "Basic " + base64.b64encode(b"admin:never-in-a-log").decode()
PLAIN_REQUEST = (
    "POST /instance/execute/webhook HTTP/1.1\r\nHost: localhost\r\n"
    f"Authorization: {SECRET}\r\nContent-Length: 17\r\n\r\n"
    '{"name": "plain"}'
).encode()


class Lines:
    """What a FailureLog logged, as text."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.logger = Logger(namespace="gwebhook.tls", observer=self.events.append)

    def __call__(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


# ------------------------------------------------------------- the rate limit


def failure_log(
    window: float = 10, lines: int = 3
) -> tuple[FailureLog, task.Clock, Lines]:
    clock, seen = task.Clock(), Lines()
    return FailureLog(clock, window, lines, seen.logger), clock, seen


def test_a_failure_is_logged_at_once_with_address_and_reason():
    """The first failure from an address is one line naming it and why."""
    failures, clock, seen = failure_log()
    failures.failed("192.0.2.7", "TLS handshake failed: no cipher suite in common")
    assert seen() == ["192.0.2.7: TLS handshake failed: no cipher suite in common"]
    assert clock.getDelayedCalls() == []  # nothing held back, nothing to tell later


def test_repeats_from_one_address_are_counted_and_told_when_the_window_ends():
    """More failures from that address in the window are not logged one by one;
    one line at the window's end counts them."""
    failures, clock, seen = failure_log(window=10)
    for _ in range(50):
        failures.failed("192.0.2.7", PLAIN_HTTP)
        clock.advance(0.1)
    assert seen() == [f"192.0.2.7: {PLAIN_HTTP}"]
    clock.advance(5.5)  # past 10 s after the first
    assert seen()[1:] == [
        "49 more connections failed before TLS was up, from 1 client, "
        "in the last 10 s (not logged one by one)"
    ]
    assert clock.getDelayedCalls() == []


def test_each_reason_from_an_address_is_logged_once():
    """A sender that fails for a new reason gets a line for it: only repeats are
    held back."""
    failures, _, seen = failure_log()
    for why in [
        PLAIN_HTTP,
        "TLS handshake failed: a",
        PLAIN_HTTP,
        "TLS handshake failed: a",
    ]:
        failures.failed("192.0.2.7", why)
    assert seen() == [f"192.0.2.7: {PLAIN_HTTP}", "192.0.2.7: TLS handshake failed: a"]


def test_many_addresses_get_a_few_lines_and_one_count():
    """Failures from many addresses: the first few are logged, the rest counted
    with how many addresses they came from."""
    failures, clock, seen = failure_log(lines=3)
    for n in range(8):
        failures.failed(f"192.0.2.{n}", "TLS handshake failed: x")
    assert seen() == [f"192.0.2.{n}: TLS handshake failed: x" for n in range(3)]
    clock.advance(10)
    assert seen()[3:] == [
        "5 more connections failed before TLS was up, from 5 clients, "
        "in the last 10 s (not logged one by one)"
    ]


def test_an_ipv6_64_counts_as_one_client():
    """Addresses of one IPv6 /64 are one client: a host cannot dodge the limit by
    using a fresh address for each connection."""
    failures, clock, seen = failure_log()
    for n in range(1, 6):
        failures.failed(f"2001:db8:0:1::{n}", PLAIN_HTTP)
    assert seen() == [f"2001:db8:0:1::1: {PLAIN_HTTP}"]
    clock.advance(10)
    assert "4 more connections" in seen()[1] and "from 1 client," in seen()[1]


def test_after_the_window_an_address_is_logged_again():
    """Once the window has passed, the next failure from the same address is
    logged again."""
    failures, clock, seen = failure_log(window=10)
    failures.failed("192.0.2.7", "first")
    clock.advance(10)
    failures.failed("192.0.2.7", "second")
    assert seen() == ["192.0.2.7: first", "192.0.2.7: second"]


def test_flush_tells_the_count_at_once_and_leaves_no_timer():
    """flush (the listener stopping) logs what was held back now."""
    failures, clock, seen = failure_log()
    failures.failed("192.0.2.7", "x")
    failures.failed("192.0.2.7", "x")
    assert len(clock.getDelayedCalls()) == 1
    failures.flush()
    assert seen()[1].startswith("1 more connections failed before TLS was up")
    assert clock.getDelayedCalls() == []


# --------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("first", "plain"),
    [
        (b"GET / HTTP/1.1\r\n", True),
        (b"POST /instance/execute/x HTTP/1.1\r\n", True),
        (b"PRI * HTTP/2.0\r\n", True),
        (b"PO", True),  # a method word cut short is still not TLS
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", False),  # a ClientHello
        (b"SSH-2.0-OpenSSH_9.6\r\n", False),
        (b"get / HTTP/1.1\r\n", False),
        (b"", False),
    ],
)
def test_plain_http_is_told_from_tls_by_its_first_bytes(first, plain):
    """An uppercase method word then a space (or the end) is HTTP; TLS starts 0x16."""
    assert looks_like_plain_http(first) is plain


@pytest.mark.parametrize(
    ("reasons", "meaning"),
    [
        (["unsupported protocol"], "only TLS versions older than 1.2"),
        (["no shared cipher"], "no cipher suite in common"),
        (["tlsv1 alert unknown ca"], "does not accept the server's certificate"),
        (["wrong version number"], "not TLS"),
        (["something new"], "TLS error (something new)"),
    ],
)
def test_openssl_reasons_are_explained_and_kept(reasons, meaning):
    """The log says what OpenSSL's reason means, and keeps its words."""
    explained = explain_handshake_failure(reasons)
    assert meaning in explained
    assert reasons[0] in explained


# ------------------------------------------------------ over a real socket


@dataclass
class Listener:
    """The TLS listener in-process, its failure log on a Clock."""

    port: int
    clock: task.Clock
    lines: Lines
    closed: list[None] = field(default_factory=list)  # connections lost pre-handshake

    async def settled(self, connections: int, timeout: float = 5) -> None:
        """Wait until ``connections`` connections failed before TLS was up."""
        deadline = time.monotonic() + timeout
        while len(self.closed) < connections:
            assert time.monotonic() < deadline, (self.closed, self.lines())
            await task.deferLater(reactor, 0.01)


class Ok(Resource):
    isLeaf = True

    def render(self, request) -> bytes:
        return b"ok"


@pytest.fixture
def listener(pki):
    seen, clock = Lines(), task.Clock()
    served = Listener(0, clock, seen)
    endpoint = TLSServerEndpoint(
        endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        certificate_options(str(pki.cert), str(pki.key)),
        onHandshakeFailure=lambda: served.closed.append(None),
        failures=FailureLog(clock, lines=5, logger=seen.logger),
    )
    port = pytest_twisted.blockon(endpoint.listen(Site(Ok())))
    served.port = port.getHost().port
    yield served
    pytest_twisted.blockon(port.stopListening())


def send_plain(port: int, source: str = "127.0.0.1") -> bytes:
    """Blocking: a plain-HTTP POST to the TLS port; everything answered."""
    with socket.socket() as raw:
        raw.settimeout(10)
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        raw.sendall(PLAIN_REQUEST)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
        return answer


def handshake(port: int, context: ssl.SSLContext) -> ssl.SSLError | None:
    """Blocking: a TLS handshake with 127.0.0.1:port; the client's error, if any."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            context.wrap_socket(raw, server_hostname="localhost").close()
        except ssl.SSLError as e:
            return e
    return None


@pytest_twisted.ensureDeferred
async def test_plain_http_is_answered_400_in_clear_text_and_logged(listener):
    """Plain HTTP to the TLS port gets a clear-text 400 saying to use https, and
    one log line naming the client; nothing it sent is logged."""
    answer = await deferToThread(send_plain, listener.port)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert "https://" in json.loads(body)["error"]
    await listener.settled(1)
    assert listener.lines() == [f"127.0.0.1: {PLAIN_HTTP}"]
    assert "never-in-a-log" not in "".join(listener.lines())
    assert "instance" not in "".join(listener.lines())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_old_tls_client_is_logged_with_the_reason(listener, pki):
    """A client offering only TLS 1.1 is refused, and the line says why."""
    context = pki.client_context()
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert await deferToThread(handshake, listener.port, context) is not None
    await listener.settled(1)
    [line] = listener.lines()
    assert line.startswith("127.0.0.1: TLS handshake failed: ")
    assert "older than 1.2" in line, line


@pytest_twisted.ensureDeferred
async def test_client_rejecting_the_certificate_is_logged_with_the_reason(listener):
    """A client that does not trust the certificate: the line says so."""
    untrusting = ssl.create_default_context()  # the system's CAs, not the test CA
    error = await deferToThread(handshake, listener.port, untrusting)
    assert isinstance(error, ssl.SSLCertVerificationError)
    await listener.settled(1)
    [line] = listener.lines()
    assert "does not accept the server's certificate" in line, line
    assert "unknown ca" in line, line


@pytest_twisted.ensureDeferred
async def test_a_connection_that_sends_nothing_is_not_logged(listener, pki):
    """A port probe (connect, close) is counted as a failed handshake, not logged."""

    def probe() -> None:
        socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()

    await deferToThread(probe)
    await listener.settled(1)
    assert listener.lines() == []
    assert await deferToThread(handshake, listener.port, pki.client_context()) is None


@pytest_twisted.ensureDeferred
async def test_a_flood_of_plain_http_is_a_few_lines_and_one_count(listener):
    """Twenty plain-HTTP connections from one address and eight from others: one
    line per address up to five, the rest counted once the window ends."""
    for _ in range(20):
        await deferToThread(send_plain, listener.port)
    for n in range(2, 10):
        await deferToThread(send_plain, listener.port, f"127.0.0.{n}")
    await listener.settled(28)
    clients = [line.split(":")[0] for line in listener.lines()]
    assert clients == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    listener.clock.advance(10)
    assert listener.lines()[5:] == [
        "23 more connections failed before TLS was up, from 5 clients, "
        "in the last 10 s (not logged one by one)"
    ]


# ------------------------------------------------------------- the daemon


def test_daemon_answers_plain_http_and_logs_it(spawn):
    """twistd gwebhook answers plain HTTP on its TLS port with 400 and logs a line
    naming the client, as wired by default."""
    d = spawn("--username", "admin", "--password", "pw")
    answer = send_plain(d.port)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    deadline = time.monotonic() + 5
    while PLAIN_HTTP not in d.log.read_text():
        assert time.monotonic() < deadline, d.log.read_text()
        time.sleep(0.05)
    [line] = [line for line in d.log.read_text().splitlines() if PLAIN_HTTP in line]
    assert f"127.0.0.1: {PLAIN_HTTP}" in line
    assert "never-in-a-log" not in d.log.read_text()
