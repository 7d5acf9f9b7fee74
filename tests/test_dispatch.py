"""
The request path's cheap parts: the webhook's POST and PUT dispatched
without Klein (and everything else still through it), one deadline timer per
connection, counted request ids.  Driven over a ``StringTransport`` with a
fake clock, through the real site and store.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from support.credentials import BASIC_HEADER
from support.http import parse_replies
from support.inprocess import Wire, make_site
from support.store import row_counts
from twisted.logger import capturedLogs, formatEvent

from gwebhook.accesslog import next_request_id
from gwebhook.answers import NOT_FOUND_MESSAGE, incidents_json
from gwebhook.instances import is_webhook_path
from gwebhook.logs import to_json
from gwebhook.model import StoredIncident

AUTH = b"Authorization: " + BASIC_HEADER.encode()


@pytest.fixture
def site(tmp_path):
    site, store = make_site(tmp_path / "gwebhook.sqlite", max_body_bytes=10_000)
    site.store = store
    yield site
    store.close()


@pytest.fixture
def wire(site):
    w = Wire(site)
    yield w
    w.close()


def request(
    body: bytes, path: bytes = b"/", method: bytes = b"POST", *lines: bytes
) -> bytes:
    head = [
        method + b" " + path + b" HTTP/1.1",
        b"Host: localhost",
        AUTH,
        b"Content-Length: %d" % len(body),
        *lines,
    ]
    return b"\r\n".join([*head, b"", b""]) + body


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/", True),
        (b"/instance/execute/wallarm", True),
        (b"/xsoar/instance/execute/my-instance_1", True),
        (b"/instance/execute/", False),
        (b"/instance/execute/a/b", False),
        (b"/instance/execute/a%2Fb", False),
        (b"/instance/execute/caf%C3%A9", True),
        (b"/instance/execute/x/", False),
        (b"/xsoar/instance/execute", False),
        (b"//", False),
        (b"/healthz", False),
        (b"/other", False),
        (b"", False),
    ],
)
def test_webhook_paths(path, expected):
    """The webhook paths take the direct way; the rest go through Klein."""
    assert is_webhook_path(path) is expected


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "path", [b"/", b"/instance/execute/a", b"/instance/execute/caf%C3%A9"]
)
async def test_webhook_stored_either_way(site, path):
    """A plain name or an escaped one (no instance's): stored, 200."""
    w = Wire(site)
    try:
        w.send(request(b'{"name": "x"}', path))
        await w.finished()
        assert w.reply().status == 200
        assert row_counts(site.store.path) == {"requests": 1, "incidents": 1}
    finally:
        w.close()


@pytest.mark.parametrize("path", [b"/", b"/instance/execute/a"])
def test_other_methods_on_a_webhook_path_are_still_405(wire, path):
    """Klein keeps answering what the direct way does not take."""
    wire.send(request(b"", path, b"GET"))
    reply = wire.reply()
    assert reply.status == 405
    assert reply.headers["allow"] == "POST, PUT"
    assert reply.json() == {"error": "method not allowed; use POST or PUT"}


def test_a_failing_handler_is_a_json_500_not_a_traceback(site, wire):
    """An exception in the direct way is answered as Klein's error handler would."""

    def broken(*args):
        raise RuntimeError("boom")

    site.store.add = broken
    wire.send(request(b'{"name": "x"}'))
    reply = wire.reply()
    assert reply.status == 500
    assert reply.json() == {"error": "internal error; the incident was not stored"}
    assert b"boom" not in wire.written()
    assert b"Traceback" not in wire.written()


def channel_timers(w: Wire) -> list:
    return [c for c in w.clock.getDelayedCalls() if c.func == w.protocol._tick]


def test_keep_alive_requests_share_one_timer(wire):
    """Many requests on one connection: still one deadline timer, never more."""
    for _ in range(5):
        wire.send(request(b"{"))  # a 400, answered at once, connection kept
        assert len(channel_timers(wire)) == 1
    replies = parse_replies(wire.written())
    assert [r.status for r in replies] == [400] * 5
    assert not wire.transport.disconnecting


def test_header_deadline_comes_before_the_idle_one(wire):
    """Headers started on an idle connection get 10 s, not the idle 60."""
    wire.clock.advance(5)
    wire.send(b"POST / HTTP/1.1\r\nHost: localhost\r\n")
    wire.clock.advance(9.9)
    assert wire.written() == b""
    wire.clock.advance(0.2)
    reply = wire.reply()
    assert reply.status == 408
    assert reply.json() == {"error": "request headers not received within 10 s"}


def test_body_deadline_counts_from_the_end_of_the_headers(wire):
    """The header deadline's timer firing in the body phase waits the body's."""
    wire.send(request(b'{"name": "x"}')[:-3])  # headers done, body short
    wire.clock.advance(11)  # past the header deadline: nothing yet
    assert wire.written() == b""
    wire.clock.advance(18.9)
    assert wire.written() == b""
    wire.clock.advance(0.2)
    reply = wire.reply()
    assert reply.status == 408
    assert reply.json() == {"error": "request body not received within 30 s"}


def test_idle_deadline_runs_from_the_last_answer(wire):
    """After an answer, the connection may idle 60 s, then it is closed silently."""
    wire.clock.advance(50)
    wire.send(request(b"{"))
    assert wire.reply().status == 400
    wire.clock.advance(59)
    assert not wire.transport.disconnecting
    wire.clock.advance(1.1)
    assert wire.transport.disconnecting
    assert len(wire.replies()) == 1


def test_closed_connection_leaves_no_timer(site):
    w = Wire(site)
    w.close()
    assert channel_timers(w) == []


def test_request_ids_are_random_hex():
    """Unique, 16 hex digits, and not a count anyone could read traffic from."""
    ids = [next_request_id() for _ in range(1000)]  # several reads of randomness
    assert len(set(ids)) == 1000
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    gaps = {int(b, 16) - int(a, 16) for a, b in zip(ids, ids[1:], strict=False)}
    assert len(gaps) > 990


def test_access_line_is_the_request_as_sent(wire):
    """The access line is formatted once; braces in a path are not a format."""
    with capturedLogs() as events:
        wire.send(request(b"{", b"/{x}/{{y}}"))
    [line] = [e for e in events if e.get("request_id")]
    text = formatEvent(line)
    client = line["client"]
    # Refused at the end of its headers: the body is never read.
    assert text.startswith(f"{client} POST /{{x}}/{{{{y}}}} 404 incidents=0 bytes=0 ")
    assert text.endswith(f"ms id={line['request_id']} refused: {NOT_FOUND_MESSAGE}")
    assert (line["status"], line["path"], line["bytes"]) == (404, "/{x}/{{y}}", 0)
    assert json.loads(to_json(line))["message"] == text


@given(
    st.lists(
        st.builds(
            StoredIncident,
            id=st.integers(min_value=1).map(str),
            name=st.text(),
            type=st.text(),
            occurred=st.text(),
            created=st.text(),
        ),
        max_size=20,
    )
)
def test_the_incidents_answer_is_json_dumps_of_the_summaries(stored):
    """The answer written directly is the one json.dumps writes, byte for byte."""
    expected = json.dumps([s.summary() for s in stored]).encode("utf-8")
    assert incidents_json(stored) == expected


def test_a_refused_body_leaves_its_reason_on_the_access_line(wire):
    """A 400 is logged with the reason the sender was given, as 401 and 429 are."""
    with capturedLogs() as events:
        wire.send(request(b"[1]"))
    [line] = [e for e in events if e.get("request_id")]
    assert line["status"] == 400
    assert line["reason"] == "refused: element 0 is not a JSON object"
    assert formatEvent(line).endswith(
        f"id={line['request_id']} refused: element 0 is not a JSON object"
    )
    assert wire.reply().json() == {"error": "element 0 is not a JSON object"}


def test_a_request_refused_at_the_end_of_its_headers_names_its_instance(site):
    """The access line of a 401 the channel gave says which instance refused it."""
    w = Wire(site)
    try:
        with capturedLogs() as events:
            w.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
        [line] = [e for e in events if e.get("request_id")]
        assert (line["status"], line["instance"]) == (401, "default")
        assert line["reason"] == "refused: missing or wrong credentials"
    finally:
        w.close()
