"""
Hostile clients against a running ``twistd gwebhook`` on 127.0.0.1: slow
senders (slowloris on headers, body and idle keep-alive, TLS handshakes never
finished), more connections than the caps allow, password guessing, and a
flood of requests that must not create anything.  Each attack runs while an
honest sender (from another address) keeps posting, and that sender must be
served throughout.  Client addresses other than 127.0.0.1 come from binding
the client socket to another address of 127.0.0.0/8 before connecting.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.credentials import AUTH, HEADERS, USERNAME, basic
from support.daemon import log_lines
from support.http import (
    CLOSED,
    connect,
    connect_raw,
    parse_reply,
    read_reply,
    request_bytes,
    send,
    trickle,
    wait_closed,
)
from support.metrics import sample, scrape
from support.ports import free_port
from support.senders import Honest
from support.store import incidents_by_id, row_counts
from support.wait import wait_for

# Every test here starts twistd.
pytestmark = pytest.mark.process

WRONG = basic(USERNAME, "not-the-password")
HEADERS_LINE = f"Authorization: {HEADERS['Authorization']}\r\n".encode("ascii")
TIMEOUTS = ["--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "1"]


def assert_json_error(reply, status: int, message: str | None = None) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()
    assert list(error) == ["error"] and isinstance(error["error"], str)
    if message is not None:
        assert error["error"] == message


def names_stored(d) -> set[str]:
    return set(incidents_by_id(d.db).values())


# -- slow clients ------------------------------------------------------------


def test_trickled_headers_get_408_one_second_after_the_first_byte(spawn):
    """
    A client sending a header line every 0.3 s gets 408 at the 1 s header deadline.
    """
    d = spawn(*AUTH, *TIMEOUTS)
    with Honest(d, HEADERS) as honest, connect(d.port, d.pki.client_context()) as tls:
        lines = [b"X-Trickle-%02d: still here\r\n" % i for i in range(30)]
        head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + HEADERS_LINE
        seen = trickle(tls, head, lines, interval=0.3, limit=8)
    assert seen.sent >= 3, "the attacker did not keep sending"
    assert seen.answered_after is not None, seen
    assert 0.9 <= seen.answered_after < 2.0, seen.answered_after
    reply = parse_reply(seen.data)
    assert_json_error(reply, 408, "request headers not received within 1 s")
    assert reply.headers["connection"] == "close"
    honest.assert_served(at_least=5)
    assert row_counts(d.db)["requests"] == len(honest.acknowledged)


def test_trickled_body_gets_408_one_second_after_the_headers(spawn):
    """
    A client sending its body a byte every 0.3 s gets 408 at the 1 s body deadline.
    """
    d = spawn(*AUTH, *TIMEOUTS)
    body = json.dumps({"name": "trickled body", "pad": "x" * 60}).encode()
    with Honest(d, HEADERS) as honest, connect(d.port, d.pki.client_context()) as tls:
        head = request_bytes(body, HEADERS)[: -len(body)]
        pieces = [body[i : i + 1] for i in range(len(body))]
        seen = trickle(tls, head, pieces, interval=0.3, limit=8)
    assert seen.sent >= 3, "the attacker did not keep sending"
    assert seen.answered_after is not None, seen
    assert 0.9 <= seen.answered_after < 2.0, seen.answered_after
    assert_json_error(
        parse_reply(seen.data), 408, "request body not received within 1 s"
    )
    honest.assert_served(at_least=5)
    assert "trickled body" not in names_stored(d)


def test_idle_keep_alive_connection_is_closed_silently(spawn):
    """
    A kept-alive connection that sends nothing more is closed, without a word, after
    1 s.
    """
    d = spawn(*AUTH, *TIMEOUTS)
    with Honest(d, HEADERS) as honest, connect(d.port, d.pki.client_context()) as tls:
        tls.sendall(request_bytes(b'{"name": "then idle"}', HEADERS))
        assert read_reply(tls).status == 200
        closed = wait_closed(tls, timeout=5)
    assert closed.how == "eof", closed
    assert closed.data == b"", "the idle close said something"
    assert 0.8 <= closed.seconds < 2.0, closed.seconds
    honest.assert_served(at_least=5)


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ids=["silent", "half-a-client-hello"],
)
def test_unfinished_tls_handshake_is_closed_by_the_idle_deadline(spawn, first_bytes):
    """
    A TCP client that never completes its TLS handshake is cut off after the 1 s
    idle deadline.
    """
    d = spawn(*AUTH, *TIMEOUTS)
    with Honest(d, HEADERS) as honest, connect_raw(d.port) as raw:
        raw.sendall(first_bytes)
        closed = wait_closed(raw, timeout=5)
    assert closed.how in ("eof", "reset"), closed
    assert closed.data == b""
    assert 0.8 <= closed.seconds < 2.0, closed.seconds
    honest.assert_served(at_least=5)


@pytest.mark.slow
def test_many_slow_clients_at_once_are_all_cut_off_and_honest_one_is_served(spawn):
    """
    Forty trickling and forty silent connections at once are all cut off on time
    while an honest sender is served.
    """
    d = spawn(*AUTH, *TIMEOUTS)
    context = d.pki.client_context()
    lines = [b"X-Trickle-%02d: still here\r\n" % i for i in range(30)]

    def trickler(n: int):
        with connect(d.port, context, source=f"127.0.1.{n + 1}") as tls:
            return trickle(tls, b"POST / HTTP/1.1\r\n", lines, 0.3, limit=8)

    def silent(n: int):
        with connect_raw(d.port, source=f"127.0.2.{n + 1}") as raw:
            return wait_closed(raw, timeout=8)

    started = time.monotonic()
    with Honest(d, HEADERS) as honest, ThreadPoolExecutor(80) as pool:
        trickled = [pool.submit(trickler, n) for n in range(40)]
        silents = [pool.submit(silent, n) for n in range(40)]
        trickled = [f.result(15) for f in trickled]
        silents = [f.result(15) for f in silents]
    took = time.monotonic() - started
    for seen in trickled:
        assert seen.answered_after is not None and seen.answered_after < 2.5, seen
        assert parse_reply(seen.data).status == 408
    for closed in silents:
        assert closed.how in ("eof", "reset") and closed.data == b"", closed
        assert closed.seconds < 2.5, closed.seconds
    assert took < 6, took
    honest.assert_served(at_least=5)
    assert row_counts(d.db)["requests"] == len(honest.acknowledged)


# -- connection caps ---------------------------------------------------------


def open_connections(metrics_port: int) -> float:
    return sample(scrape(metrics_port), "gwebhook_connections_open")


def test_connection_over_per_client_cap_gets_503_other_address_is_served(spawn):
    """
    The 4th connection from 127.0.0.1 gets 503 with Retry-After; 127.0.0.2 is
    served.
    """
    metrics = free_port()
    d = spawn(
        *AUTH, "--max-connections-per-client", "3", "--metrics-port", str(metrics)
    )
    context = d.pki.client_context()
    wait_for(lambda: open_connections(metrics) == 0, what="no connection open")
    held = [connect(d.port, context) for _ in range(3)]
    try:
        wait_for(lambda: open_connections(metrics) == 3, what="3 connections")
        # The handshake completes: the refusal is the answer to the first request.
        with connect(d.port, context) as fourth:
            fourth.sendall(request_bytes(b'{"name": "fourth"}', HEADERS))
            reply = read_reply(fourth)
            assert_json_error(
                reply, 503, "too many connections from this address; retry later"
            )
            assert reply.headers["retry-after"] == "5"
            assert reply.headers["connection"] == "close"
        assert send(d, b'{"name": "other address"}', HEADERS, "127.0.0.2").status == 200
        held[0].sendall(request_bytes(b'{"name": "held"}', HEADERS))
        assert read_reply(held[0]).status == 200
        held.pop().close()
        wait_for(lambda: open_connections(metrics) == 2, what="2 connections")
        assert send(d, b'{"name": "after one closed"}', HEADERS).status == 200
    finally:
        for tls in held:
            tls.close()
    assert names_stored(d) == {"other address", "held", "after one closed"}


def test_connection_over_total_cap_gets_503(spawn):
    """With --max-connections 5 the 6th open connection, from any address, gets 503."""
    metrics = free_port()
    d = spawn(*AUTH, "--max-connections", "5", "--metrics-port", str(metrics))
    context = d.pki.client_context()
    wait_for(lambda: open_connections(metrics) == 0, what="no connection open")
    held = [connect(d.port, context, source=f"127.0.0.{n + 1}") for n in range(5)]
    try:
        wait_for(lambda: open_connections(metrics) == 5, what="5 connections")
        reply = send(d, b'{"name": "sixth"}', HEADERS, source="127.0.0.6")
        assert_json_error(reply, 503, "too many connections; retry later")
        assert reply.headers["retry-after"] == "5"
        held.pop().close()
        wait_for(lambda: open_connections(metrics) == 4, what="4 connections")
        assert send(d, b'{"name": "after"}', HEADERS, source="127.0.0.6").status == 200
    finally:
        for tls in held:
            tls.close()
    assert names_stored(d) == {"after"}


# -- password guessing -------------------------------------------------------


def test_failed_authentications_block_one_address_for_the_window(spawn):
    """
    After 5 wrong passwords 127.0.0.1 gets 429 even with the right one until the
    window ends; others are served.
    """
    right = f"right-{os.urandom(6).hex()}"
    tried = f"guess-{os.urandom(6).hex()}"
    good, bad = basic("admin", right), basic("admin", tried)
    d = spawn(
        "--username", "admin", "--auth-fail-limit", "5", "--auth-fail-window", "2",
        env={"GWEBHOOK_PASSWORD": right},
    )  # fmt: skip
    started = time.monotonic()
    for _ in range(5):
        assert_json_error(send(d, b'{"name": "guess"}', bad), 401)
    blocked = send(d, b'{"name": "right but blocked"}', good)
    assert_json_error(blocked, 429, "too many failed authentications; retry later")
    retry_after = int(blocked.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert time.monotonic() - started < 2, "too slow to test the window"
    assert send(d, b'{"name": "other address"}', good, "127.0.0.3").status == 200
    for _ in range(3):  # more guesses while blocked change nothing
        assert send(d, b'{"name": "guess"}', bad).status == 429

    time.sleep(retry_after + 0.1)
    assert send(d, b'{"name": "after the window"}', good).status == 200

    [line] = log_lines(d, "refused for 2 s after 5 failed authentications")
    assert "127.0.0.1" in line and "127.0.0.3" not in line
    log = d.log.read_text(encoding="utf-8")
    assert tried not in log and right not in log
    assert names_stored(d) == {"other address", "after the window"}
    stored = b"".join(p.read_bytes() for p in d.directory.glob("gwebhook.sqlite*"))
    assert tried.encode() not in stored and right.encode() not in stored


class TracebackInLog(Exception):
    """The daemon logged a traceback."""


def assert_no_traceback(d) -> None:
    log = d.log.read_text(encoding="utf-8")
    if "Traceback" in log or "Unhandled" in log:
        at = log.index("Traceback") if "Traceback" in log else log.index("Unhandled")
        raise TracebackInLog(log[max(0, at - 300) : at + 1200])


REFUSED_THEN_CLOSED = (
    "defect: a request the channel refuses while reading its body (e.g. 413 for "
    "a chunked body over the limit, 400 for broken chunked framing) is still "
    "tracked as in flight; when its connection closes, "
    "WebhookSite._cutOff (gwebhook/channel.py, commit 63cae56) tries to log a "
    "499 for a request already answered and crashes on request.path None: "
    "'Unhandled error in Deferred' with an AttributeError traceback in the log; "
    "the crash skips _settled, so the request stays in _inFlight for good and "
    "SIGTERM waits the whole --shutdown-timeout, then logs it as cut off"
)


# -- a flood of requests that must create nothing ----------------------------

BODY_LIMIT = 65536
CUT = gzip.compress(b'{"name": "cut short"}')[:-6]
NESTED = b"[" * 5000 + b"]" * 5000
BOMB = gzip.compress(b"[" + b" " * (20 * BODY_LIMIT) + b"]")


def chunked(*chunks: bytes, end: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + end


def raw_request(head_lines: list[bytes], body: bytes = b"") -> bytes:
    return b"\r\n".join([b"POST / HTTP/1.1", b"Host: 127.0.0.1", *head_lines]) + (
        b"\r\n\r\n" + body
    )


AUTH_LINE = HEADERS_LINE.rstrip(b"\r\n")
WRONG_LINE = f"Authorization: {WRONG['Authorization']}".encode("ascii")


def length(body: bytes) -> bytes:
    return b"Content-Length: %d" % len(body)


# What each hostile request is, and which statuses may answer it: a 429 is
# allowed wherever the credentials are checked (at the end of the headers, or
# in the route), once the address has failed too often.
HOSTILE = {
    "wrong password": (
        raw_request([WRONG_LINE, length(b'{"name": "x"}')], b'{"name": "x"}'),
        {401, 429},
    ),
    "no credentials": (
        raw_request([length(b'{"name": "x"}')], b'{"name": "x"}'),
        {401, 429},
    ),
    "bad JSON, no credentials": (raw_request([length(b"{nope")], b"{nope"), {401, 429}),
    "gzip bomb, wrong password": (
        raw_request([WRONG_LINE, b"Content-Encoding: gzip", length(BOMB)], BOMB),
        {401, 429},
    ),
    "huge header": (
        raw_request([AUTH_LINE, b"X-Big: " + b"a" * 10_000, length(b"{}")], b"{}"),
        {431},
    ),
    "many headers": (
        raw_request([AUTH_LINE, *[b"X-%d: v" % i for i in range(2000)]]),
        {431},
    ),
    "non-ASCII header": (
        raw_request([AUTH_LINE, "X-Name: caf\u00e9".encode(), length(b"{}")], b"{}"),
        {400},
    ),
    "declared body over the limit": (
        raw_request([AUTH_LINE, b"Content-Length: 100000000"]),
        {413},
    ),
    "chunked body over the limit": (
        raw_request(
            [AUTH_LINE, b"Transfer-Encoding: chunked"],
            chunked(*[b" " * 8192] * 10),
        ),
        {413, 429},
    ),
    "broken chunked": (
        raw_request(
            [AUTH_LINE, b"Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n"
        ),
        {400, 429},
    ),
    "two lengths": (
        raw_request([AUTH_LINE, b"Content-Length: 2", b"Content-Length: 3"], b"{}"),
        {400},
    ),
    "bad JSON": (raw_request([AUTH_LINE, length(b"{nope")], b"{nope"), {400, 429}),
    "gzip bomb": (
        raw_request([AUTH_LINE, b"Content-Encoding: gzip", length(BOMB)], BOMB),
        {413, 429},
    ),
    "truncated gzip": (
        raw_request([AUTH_LINE, b"Content-Encoding: gzip", length(CUT)], CUT),
        {400, 429},
    ),
    "array with one bad element": (
        raw_request(
            [AUTH_LINE, length(b'[{"name": "a"}, 5, {"name": "b"}]')],
            b'[{"name": "a"}, 5, {"name": "b"}]',
        ),
        {400, 429},
    ),
    "deeply nested": (
        raw_request([AUTH_LINE, length(NESTED)], NESTED),
        {400, 413, 429},
    ),
}


def hostile_exchange(port: int, context, source: str, data: bytes):
    """Send one hostile request on a new connection; its answer, or the error."""
    try:
        with connect(port, context, source=source) as tls:
            tls.sendall(data)
            return read_reply(tls)
    except CLOSED as e:
        return e


@pytest.mark.slow
def test_flood_of_refused_requests_creates_nothing(spawn):
    """
    Three hundred unauthenticated, oversized or malformed requests from six
    addresses at once store nothing and get no 5xx.
    """
    d = spawn(
        *AUTH, "--max-body-bytes", str(BODY_LIMIT), "--max-header-bytes", "8192"
    )  # fmt: skip
    context = d.pki.client_context()
    kinds = list(HOSTILE)
    answers: list[tuple[str, object]] = []
    lock = threading.Lock()

    def attacker(n: int) -> None:
        for i in range(50):
            kind = kinds[(n * 7 + i) % len(kinds)]
            data, _ = HOSTILE[kind]
            answer = hostile_exchange(d.port, context, f"127.0.0.{10 + n}", data)
            with lock:
                answers.append((kind, answer))

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(attacker, n) for n in range(6)]:
            future.result(60)

    assert len(answers) == 300
    errors = [(kind, a) for kind, a in answers if isinstance(a, BaseException)]
    assert not errors, errors[:5]
    for kind, reply in answers:
        assert reply.status in HOSTILE[kind][1], (kind, reply.status, reply.body)
        assert_json_error(reply, reply.status)
    assert {kind for kind, _ in answers} == set(kinds)
    assert row_counts(d.db) == {"requests": 0, "incidents": 0}
    assert send(d, b'{"name": "afterwards"}', HEADERS, "127.0.0.200").status == 200
    assert row_counts(d.db) == {"requests": 1, "incidents": 1}
    assert d.process.poll() is None
    assert_no_traceback(d)


# -- probing -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["OPTIONS", "GET", "POST"])
def test_asterisk_target_is_answered_by_gwebhook_naming_no_version(spawn, method):
    """A request for '*' is answered like any other: Server 'gwebhook', a JSON error."""
    d = spawn(*AUTH)
    with connect(d.port, d.pki.client_context(), source="127.0.0.4") as tls:
        # With the right credentials, so that no check before routing answers.
        body = b"{}" if method == "POST" else b""
        tls.sendall(request_bytes(body, HEADERS, method=method, path="*"))
        reply = read_reply(tls, method)
    assert reply.headers["server"] == "gwebhook", reply.headers
    assert "x-request-id" in reply.headers
    assert_json_error(reply, reply.status)
    assert reply.status >= 400


@pytest.mark.parametrize(
    "data, status",
    [
        (
            raw_request(
                [AUTH_LINE, b"Transfer-Encoding: chunked"],
                chunked(*[b" " * 8192] * 10),
            ),
            413,
        ),
        (
            raw_request(
                [AUTH_LINE, b"Transfer-Encoding: chunked"], b"2\r\n{}\r\nzz\r\n"
            ),
            400,
        ),
    ],
    ids=["413", "400"],
)
def test_request_refused_in_its_body_is_logged_once_without_traceback(
    spawn, data, status
):
    """
    A request refused while its body is read, whose client then goes away,
    has one access line (its refusal) and no traceback in the log.
    """
    d = spawn(*AUTH, "--max-body-bytes", str(BODY_LIMIT))
    with connect(d.port, d.pki.client_context()) as tls:
        tls.sendall(data)
        reply = read_reply(tls)
    assert reply.status == status
    request_id = reply.headers["x-request-id"]
    wait_for(lambda: log_lines(d, request_id), what="the access line")
    # A failure in a Deferred is logged when the Deferred is collected, and
    # a traceback's reference cycle waits for Python's cyclic collector: give
    # the daemon some work so that it runs.
    with connect(d.port, d.pki.client_context()) as tls:
        for _ in range(300):
            tls.sendall(request_bytes(b"", method="GET", path="/healthz"))
            assert read_reply(tls, "GET").status == 200
    assert_no_traceback(d)
    assert len(log_lines(d, request_id)) == 1, log_lines(d, request_id)


class DrainWaited(Exception):
    """SIGTERM waited for a request that had been answered already."""


def test_sigterm_after_a_request_refused_in_its_body_exits_at_once(spawn):
    """
    A request refused while its body was read is not in flight: SIGTERM
    afterwards exits at once, without reporting anything cut off.
    """
    d = spawn(
        *AUTH, "--max-body-bytes", str(BODY_LIMIT), "--shutdown-timeout", "4"
    )  # fmt: skip
    data, _ = HOSTILE["chunked body over the limit"]
    with connect(d.port, d.pki.client_context()) as tls:
        tls.sendall(data)
        assert read_reply(tls).status == 413
    time.sleep(0.3)  # the connection is closed and forgotten
    status, took = d.terminate(timeout=15)
    assert status == -signal.SIGTERM
    if took > 2:
        raise DrainWaited(f"{took:.1f} s", log_lines(d, "cut off"))
    assert not log_lines(d, "cut off unanswered")
