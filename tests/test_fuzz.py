"""
Random request bytes through the real channel, routes and store: a
WebhookSite driven over a ``StringTransport`` (``Wire``) with a real SQLite
store in a temporary file, its deadlines on a fake clock.  Whatever arrives
— valid and invalid request lines, random header names and values (non-ASCII,
CR/LF games, huge lines), Content-Length mismatches, chunked bodies valid and
broken, random JSON documents or bytes, gzip of either, cut into random
pieces — every answer is well-formed HTTP/1.1 with a JSON body, none is a
5xx, no traceback is written or logged, and each request is stored entirely
(all incidents a 200 named) or not at all.

The pure rules have their own property tests in test_rules.py; these are
about the wire.
"""

from __future__ import annotations

import base64
import gc
import gzip
import json
import re
import sqlite3
from contextlib import closing

import pytest
import pytest_twisted
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.credentials import BASIC_HEADER, PASSWORD
from support.inprocess import Wire, make_site
from support.store import row_counts
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

MAX_HEADER = 4096
MAX_BODY = 4096
WEBHOOK_PATHS = [b"/", b"/instance/execute/x", b"/xsoar/instance/execute/y"]


@pytest.fixture(scope="module")
def fuzz_site(tmp_path_factory):
    """One site and store for every example; each example compares row counts."""
    db = tmp_path_factory.mktemp("fuzz") / "gwebhook.sqlite"
    site, store = make_site(db, max_header_bytes=MAX_HEADER, max_body_bytes=MAX_BODY)
    yield site, db
    store.close()


@pytest.fixture(scope="module")
def logged_failures():
    """Every event logged with a failure (a traceback) while these tests run."""
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


# -- strategies --------------------------------------------------------------
# A request is drawn as a sender would send it, with a few of its aspects
# (request line, headers, credentials, document, body bytes, framing) made
# hostile, so that requests reach every stage: refused by the channel, by
# the credentials or by the parser, or stored.

ASPECTS = ["line", "headers", "credentials", "document", "body", "framing"]
TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

usual_request_lines = st.one_of(
    st.tuples(st.sampled_from([b"POST", b"PUT"]), st.sampled_from(WEBHOOK_PATHS)),
    st.tuples(st.sampled_from([b"POST", b"PUT"]), st.sampled_from(WEBHOOK_PATHS)),
    st.tuples(st.sampled_from([b"POST", b"PUT"]), st.sampled_from(WEBHOOK_PATHS)),
    st.tuples(
        st.sampled_from([b"GET", b"DELETE", b"POST"]),
        st.sampled_from([b"/healthz", b"/nope", b"/?a=b", b"/instance/execute/"]),
    ),
).map(lambda mp: mp[0] + b" " + mp[1] + b" HTTP/1.1")
hostile_request_lines = st.one_of(
    st.builds(
        lambda m, p, v: m + b" " + p + b" " + v,
        st.one_of(st.text(TOKEN, min_size=1, max_size=8).map(str.encode), st.binary()),
        st.one_of(
            st.text(max_size=30).map(lambda t: ("/" + t).encode("utf-8")),
            st.sampled_from([b"//", b"http://localhost/", b"/%00", b""]),
            # "*" is answered by Twisted itself: see test_hostile.py.
            st.binary(max_size=30).filter(lambda p: p != b"*"),
        ),
        st.sampled_from(
            [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"http/1.1", b""]
        ),
    ),
    st.binary(max_size=40),
    st.integers(MAX_HEADER - 50, MAX_HEADER + 50).map(
        lambda n: b"POST /" + b"a" * n + b" HTTP/1.1"
    ),
)

usual_headers = st.lists(
    st.one_of(
        st.sampled_from(
            [b"Content-Type: application/json", b"Content-Type: text/plain",
             b"Content-Type: application/x-www-form-urlencoded",
             b"Content-Type: multipart/form-data; boundary=x",
             b"User-Agent: fuzz/1.0", b"Connection: close", b"Connection: keep-alive",
             b"Expect: 100-continue", b"Accept: */*"]
        ),
        st.builds(
            lambda n, v: n.encode() + b": " + v.encode(),
            st.text(TOKEN, min_size=1, max_size=20),
            st.text(PRINTABLE, max_size=40),
        ),
    ),
    max_size=3,
)  # fmt: skip
hostile_header = st.one_of(
    st.builds(
        lambda n, v: n + b": " + v,
        st.one_of(
            st.sampled_from(
                [b"Content-Length", b"Transfer-Encoding", b"Content-Encoding",
                 b"Authorization", b"Host", b"Expect"]
            ),
            st.text(max_size=10).map(lambda t: t.encode("utf-8")),
            st.binary(max_size=10),
        ),
        st.one_of(
            st.sampled_from(
                [b"0", b"-1", b"99999999", b"chunked", b"gzip, chunked", b"br",
                 b"identity", b"a\r\nX-Injected: 1", b"a\rb", b"a\nb",
                 b"a\r\n\r\nGET /"]
            ),
            st.text(max_size=40).map(lambda t: t.encode("utf-8")),
            st.binary(max_size=40),
        ),
    ),
    st.integers(MAX_HEADER - 99, MAX_HEADER + 99).map(lambda n: b"X-Big: " + b"v" * n),
    st.sampled_from([b"no colon", b": no name", b" folded continuation"]),
)  # fmt: skip
hostile_headers = st.tuples(usual_headers, hostile_header).map(
    lambda pair: [*pair[0], pair[1]]
)

RIGHT = b"Authorization: " + BASIC_HEADER.encode()
hostile_credentials = st.sampled_from(
    [
        [b"Authorization: Basic " + base64.b64encode(b"admin:wrong")],
        [b"Authorization: Bearer " + PASSWORD.encode()],
        [b"Authorization: Basic !!!"],
        [],
        [RIGHT, RIGHT],
    ]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
usual_incident = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=30),
        "type": st.text(max_size=10),
        "occurred": st.one_of(
            st.sampled_from(
                ["2024-05-01T10:00:00Z", "2024-05-01T10:00", "2024-05-01T12:00+02:00"]
            ),
            st.integers(0, 2**32),
            st.integers(10**12, 2 * 10**12),
        ),
        "rawJson": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "raw_json": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "extra": json_values,
    },
)
hostile_incident = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values,
        "type": json_values,
        "occurred": st.one_of(
            json_values, st.sampled_from(["yesterday", "", "2024-13-45T99:99:99"])
        ),
        "rawJson": json_values,
    },
)
usual_documents = st.one_of(usual_incident, st.lists(usual_incident, max_size=5))
hostile_documents = st.one_of(
    st.lists(st.one_of(usual_incident, hostile_incident, json_values), max_size=4),
    hostile_incident,
    json_values,
)
hostile_bodies = st.one_of(
    st.binary(max_size=300),
    st.just(b""),
    st.integers(MAX_BODY - 10, MAX_BODY + 10).map(
        lambda n: b'{"name": "big", "pad": "' + b"p" * (n - 26) + b'"}'
    ),
    st.just(b"[" * 3000 + b"]" * 3000),
    st.just(b'{"name": "\xff\xfe"}'),
)


def chunk(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)


def framing(draw, body: bytes, hostile: bool) -> tuple[list[bytes], bytes]:
    """Header lines that frame ``body``, and the bytes that follow the headers."""
    how = draw(
        st.sampled_from(["off by", "none", "broken"])
        if hostile
        else st.sampled_from(["length", "length", "length", "chunked"])
    )
    if how == "length":
        return [b"Content-Length: %d" % len(body)], body
    if how == "off by":
        delta = draw(st.sampled_from([-5, -2, -1, 1, 2, 5]))
        return [b"Content-Length: %d" % max(0, len(body) + delta)], body
    if how == "none":
        return [], body
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    chunks = chunk(
        [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    )
    stream = chunks + b"0\r\n\r\n"
    if how == "broken":
        stream = draw(
            st.sampled_from(
                [
                    b"zz\r\n" + stream,
                    stream[:-2],
                    b"%x\r\n" % (len(body) + 10) + body + b"\r\n0\r\n\r\n",
                    chunks.replace(b"\r\n", b"\n") + b"0\r\n\r\n",
                    b"-1\r\n" + stream,
                    b"1;ext=" + b"x" * 5000 + b"\r\na\r\n0\r\n\r\n",
                ]
            )
        )
    return [b"Transfer-Encoding: chunked"], stream


PIPELINED = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + RIGHT + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"\r\n",
]


@st.composite
def raw_requests(draw) -> bytes:
    """One request's bytes, sometimes followed by a second (pipelined) one."""
    hostile = draw(st.sets(st.sampled_from(ASPECTS), max_size=3))
    line = draw(hostile_request_lines if "line" in hostile else usual_request_lines)
    if "body" in hostile:
        body = draw(hostile_bodies)
    else:
        document = hostile_documents if "document" in hostile else usual_documents
        body = json.dumps(draw(document)).encode("utf-8")
        if draw(st.integers(0, 9)) == 0:
            body = b"\xef\xbb\xbf" + body  # a BOM
    encoding = []
    if draw(st.integers(0, 4)) == 0:
        body = gzip.compress(body)
        encoding = [b"Content-Encoding: gzip"]
    framed, body = framing(draw, body, "framing" in hostile)
    headers = [
        b"Host: localhost",
        *(draw(hostile_credentials) if "credentials" in hostile else [RIGHT]),
        *encoding,
        *framed,
    ]
    extras = draw(hostile_headers if "headers" in hostile else usual_headers)
    where = draw(st.integers(0, len(headers)))
    headers[where:where] = extras
    data = b"\r\n".join([line, *headers]) + b"\r\n\r\n" + body
    if draw(st.integers(0, 5)) == 0:
        data += draw(st.sampled_from(PIPELINED))
    return data


@st.composite
def pieces(draw) -> list[bytes]:
    """A raw request cut where the network might cut it."""
    data = draw(raw_requests())
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=5))))
    return [
        data[a:b]
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)
        if data[a:b]
    ]


# -- the connection -------------------------------------------------------------


class NetworkTransport(StringTransport):
    """
    A StringTransport that, like Twisted's TCP and TLS transports, accepts
    ``unregisterProducer`` when no producer is registered (HTTPChannel
    unregisters on each ``loseConnection``; StringTransport would raise).
    """

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


# -- reading what the server wrote ---------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\x20-\x7e]+")
HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([\x20-\x7e]*)")


def parse_strictly(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response in ``data``, each checked to be well-formed HTTP/1.x."""
    responses = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"unterminated response head: {data[:200]!r}"
        status_line, *lines = head.split(b"\r\n")
        match = STATUS_LINE.fullmatch(status_line)
        assert match, f"bad status line {status_line!r}"
        status = int(match.group(1))
        headers: dict[str, str] = {}
        for line in lines:
            header = HEADER_LINE.fullmatch(line)
            assert header, f"bad header line {line!r}"
            headers[header.group(1).decode().lower()] = header.group(2).decode()
        if 100 <= status < 200:
            responses.append((status, headers, b""))
            data = rest
            continue
        assert "content-length" in headers, headers
        length = int(headers["content-length"])
        assert len(rest) >= length, "response body cut short"
        responses.append((status, headers, rest[:length]))
        data = rest[length:]
    return responses


@inlineCallbacks
def settle(wire: Wire):
    """Wait until no request of the connection is being handled (bounded)."""
    for _ in range(20):
        channel = wire.protocol
        if not (channel._handlingRequest and channel.requests):
            return
        done = channel.requests[0].notifyFinish()
        yield done.addErrback(lambda _: None)
    raise AssertionError("requests kept being handled")


def stored_names(db, ids: list[int]) -> dict[int, str]:
    with closing(sqlite3.connect(db)) as connection:
        marks = ",".join("?" * len(ids))
        query = f"SELECT id, name FROM incidents WHERE id IN ({marks})"  # noqa: S608
        return dict(connection.execute(query, ids))


# -- the property --------------------------------------------------------------


class FailureLogged(Exception):
    """Something logged a failure (a traceback) while the example ran."""


# pytest-twisted runs each example's coroutine on the reactor, so the store's
# commits (adbapi threads) complete before the example's checks.
# 200 examples take about 45 s on two idle cores; every example commits to a
# real store and collects garbage, so a loaded CI machine needs the room the
# timeout below gives (the whole run of examples is one pytest test).
@pytest.mark.timeout(600)
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sent=pieces())
@pytest_twisted.ensureDeferred
async def test_any_bytes_get_well_formed_answers_and_all_or_nothing(
    fuzz_site, logged_failures, sent
):
    """
    Any request bytes get well-formed JSON answers, no 5xx, and are stored
    whole or not at all.
    """
    site, db = fuzz_site
    logged_failures.clear()
    before = row_counts(db)
    wire = Wire(site, NetworkTransport())
    try:
        for piece in sent:
            if wire.transport.disconnecting:
                break
            wire.send(piece)
            await settle(wire)
        # Anything still unfinished meets its deadline (408) on the fake clock.
        wire.clock.advance(3600)
        await settle(wire)
        wire.clock.advance(3600)
    finally:
        wire.close()
    written = wire.written()
    assert b"Traceback" not in written
    # A failure left in a Deferred is logged when the Deferred is collected.
    gc.collect()
    if logged_failures:
        raise FailureLogged(logged_failures[0]["log_failure"].getTraceback())

    created: list[tuple[int, str]] = []
    kept_requests = 0
    answers = parse_strictly(written)
    event(f"answers: {sorted({status for status, _, _ in answers})}")
    for status, headers, body in answers:
        assert status < 500, (status, body)
        if status < 200:
            continue
        assert headers.get("content-type") == "application/json", headers
        document = json.loads(body)
        if status == 200 and isinstance(document, list):
            kept_requests += bool(document)
            created += [(int(i["id"]), i["name"]) for i in document]
            assert all(
                set(i) == {"id", "name", "type", "occurred", "created"}
                for i in document
            )
        elif status in (200, 503) and "status" in document:
            assert list(document) == ["status"]  # /healthz
        else:
            assert status >= 400, (status, document)
            assert list(document) == ["error"] and isinstance(document["error"], str)
    after = row_counts(db)
    assert after["requests"] - before["requests"] == kept_requests
    assert after["incidents"] - before["incidents"] == len(created)
    event(f"stored: {bool(created)}")
    if created:
        assert stored_names(db, [i for i, _ in created]) == dict(created)
