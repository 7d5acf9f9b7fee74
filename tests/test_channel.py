"""
Channel limits at the byte level: a WebhookSite over the real routes and
store, driven through ``buildProtocol`` on a ``StringTransport`` (StubTreq
builds its own Site, so it cannot see these limits).
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from support.credentials import BASIC_HEADER
from support.inprocess import Wire, make_site
from support.store import row_counts, stored_incidents
from twisted.internet.defer import gatherResults
from twisted.logger import globalLogPublisher

from gwebhook.answers import NOT_FOUND_MESSAGE

MAX_HEADER = 4096
MAX_BODY = 1000


@pytest.fixture
def db(tmp_path):
    return tmp_path / "gwebhook.sqlite"


@pytest.fixture
def site(db):
    """Basic credentials, 4096 header bytes, 1000 body bytes."""
    site, store = make_site(db, max_header_bytes=MAX_HEADER, max_body_bytes=MAX_BODY)
    site.store = store
    yield site
    store.close()


@pytest.fixture
def anonymous_site(db):
    """No credentials: any request that got past the channel would be stored."""
    site, store = make_site(
        db, credentials=None, max_header_bytes=MAX_HEADER, max_body_bytes=MAX_BODY
    )
    site.store = store
    yield site
    store.close()


@pytest.fixture
def wire(site):
    w = Wire(site)
    yield w
    w.close()


@pytest.fixture
def open_wire(anonymous_site):
    w = Wire(anonymous_site)
    yield w
    w.close()


def head(*lines: bytes, request_line: bytes = b"POST / HTTP/1.1") -> bytes:
    return b"\r\n".join([request_line, b"Host: localhost", *lines, b"", b""])


def post(body: bytes, *lines: bytes) -> bytes:
    return head(b"Content-Length: %d" % len(body), *lines) + body


async def assert_refused(w: Wire, status: int, message: str) -> None:
    """One JSON error answered, the connection closing, and nothing stored."""
    reply = w.reply()
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["connection"] == "close"
    assert reply.json() == {"error": message}
    assert w.transport.disconnecting
    # Anything the routes had handed to the store would be written by now.
    await w.site.store.ping()
    assert row_counts(w.site.store.path) == {"requests": 0, "incidents": 0}


def header_message(limit: int = MAX_HEADER) -> str:
    return f"request line and headers are over the limit of {limit} bytes"


BODY_MESSAGE = f"body is over the limit of {MAX_BODY} bytes"


# -- header limits -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_header_block_over_limit_is_431(open_wire):
    """A header block over --max-header-bytes is answered 431 with a JSON reason."""
    lines = [b"X-Filler-%03d: %s" % (i, b"v" * 80) for i in range(60)]
    open_wire.send(post(b"{}", *lines))
    await assert_refused(open_wire, 431, header_message())


@pytest_twisted.ensureDeferred
async def test_one_huge_header_line_is_431(open_wire):
    """One header line over the limit is answered 431, not dropped silently."""
    open_wire.send(post(b"{}", b"X-Big: " + b"a" * 10_000))
    await assert_refused(open_wire, 431, header_message())


@pytest_twisted.ensureDeferred
async def test_huge_header_line_refused_before_it_ends(open_wire):
    """A header line growing past the limit is refused before its end arrives."""
    open_wire.send(b"POST / HTTP/1.1\r\nX-Big: ")
    assert open_wire.written() == b""
    for _ in range(5):
        open_wire.send(b"a" * 1000)
    await assert_refused(open_wire, 431, header_message())


@pytest_twisted.ensureDeferred
async def test_huge_request_line_is_431(open_wire):
    """A request line over the limit is answered 431."""
    open_wire.send(head(request_line=b"POST /" + b"a" * 5000 + b" HTTP/1.1"))
    await assert_refused(open_wire, 431, header_message())


def test_header_block_exactly_at_limit_passes(wire):
    """A request line plus headers of exactly the limit reaches the routes."""
    base = head(b"X-Pad: ")
    wire.send(head(b"X-Pad: " + b"p" * (MAX_HEADER - len(base))))
    assert wire.reply().status == 401


@pytest_twisted.ensureDeferred
async def test_header_block_one_byte_over_limit_is_431(wire):
    """A request line plus headers of one byte over the limit is answered 431."""
    base = head(b"X-Pad: ")
    wire.send(head(b"X-Pad: " + b"p" * (MAX_HEADER - len(base) + 1)))
    await assert_refused(wire, 431, header_message())


def test_header_limit_counts_each_request_of_a_connection_afresh(wire):
    """Header bytes of earlier requests on a kept-alive connection do not count."""
    filler = [b"X-Filler-%02d: %s" % (i, b"v" * 80) for i in range(30)]
    for _ in range(3):
        wire.send(head(*filler))
    assert [r.status for r in wire.replies()] == [401, 401, 401]
    assert not wire.transport.disconnecting


def test_many_small_headers_under_limit_pass(db):
    """More headers than Twisted's count limit of 500 pass when within the bytes."""
    site, store = make_site(db, max_header_bytes=65536)
    w = Wire(site)
    try:
        w.send(head(*[b"X-%d: v" % i for i in range(1000)]))
        assert w.reply().status == 401
    finally:
        w.close()
        store.close()


@pytest_twisted.ensureDeferred
async def test_data_after_refusal_is_ignored(open_wire):
    """After a refusal nothing more is read or answered on the connection."""
    open_wire.send(post(b"{}", b"X-Big: " + b"a" * 10_000))
    before = open_wire.written()
    open_wire.send(post(b'{"name": "sneaked"}'))
    assert open_wire.written() == before
    await assert_refused(open_wire, 431, header_message())


# -- printable ASCII ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_non_ascii_header_value_is_400(open_wire):
    """A header value holding UTF-8 bytes is answered 400 naming the header."""
    open_wire.send(post(b"{}", "X-Name: caf\u00e9".encode()))
    await assert_refused(
        open_wire, 400, "header 'X-Name' has a value that is not printable ASCII"
    )


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"a\x1bb", b"\xff"])
@pytest_twisted.ensureDeferred
async def test_control_or_high_byte_in_header_value_is_400(open_wire, value):
    """A header value with a control character or a high byte is answered 400."""
    open_wire.send(post(b"{}", b"X-Name: " + value))
    await assert_refused(
        open_wire, 400, "header 'X-Name' has a value that is not printable ASCII"
    )


@pytest_twisted.ensureDeferred
async def test_non_ascii_header_name_is_400(open_wire):
    """A header name holding UTF-8 bytes is answered 400."""
    open_wire.send(post(b"{}", "X-Caf\u00e9: v".encode()))
    await assert_refused(open_wire, 400, "a header name is not printable ASCII")


@pytest_twisted.ensureDeferred
async def test_non_ascii_request_line_is_400(open_wire):
    """A request line holding UTF-8 bytes is answered 400."""
    open_wire.send(head(request_line="POST /caf\u00e9 HTTP/1.1".encode()))
    await assert_refused(open_wire, 400, "request line is not printable ASCII")


@pytest_twisted.ensureDeferred
async def test_non_ascii_credential_header_is_400_before_auth(wire):
    """A non-ASCII Authorization value is refused by the channel, before the routes."""
    wire.send(post(b"{}", "Authorization: Basic caf\u00e9".encode()))
    await assert_refused(
        wire, 400, "header 'Authorization' has a value that is not printable ASCII"
    )


@pytest_twisted.ensureDeferred
async def test_malformed_request_line_is_400_json(open_wire):
    """A request line that is not HTTP is answered 400 with a JSON reason."""
    open_wire.send(b"NONSENSE\r\n\r\n")
    await assert_refused(open_wire, 400, "request is not valid HTTP/1.1")


@pytest.mark.parametrize(
    "lines",
    [
        [b"Content-Length: abc"],
        [b"Content-Length: 2", b"Content-Length: 2"],
        [b"Content-Length: 2", b"Transfer-Encoding: chunked"],
        [b"Content-Length: -2"],
        [b"Transfer-Encoding: gzip"],
        [b"No colon here"],
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_framing_is_400_json(open_wire, lines):
    """A malformed header or body framing is answered 400 with a JSON reason."""
    open_wire.send(head(*lines) + b"{}")
    await assert_refused(open_wire, 400, "request is not valid HTTP/1.1")


# -- body limits -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_declared_length_over_limit_is_413_before_body(open_wire):
    """A Content-Length of 50 MB is answered 413 right after the headers."""
    open_wire.send(head(b"Content-Length: 50000000"))
    await assert_refused(open_wire, 413, BODY_MESSAGE)


@pytest_twisted.ensureDeferred
async def test_declared_length_over_limit_gets_no_100_continue(open_wire):
    """With Expect: 100-continue, an over-long body is refused without a 100."""
    open_wire.send(head(b"Content-Length: 50000000", b"Expect: 100-continue"))
    assert b"100 Continue" not in open_wire.written()
    await assert_refused(open_wire, 413, BODY_MESSAGE)


@pytest_twisted.ensureDeferred
async def test_body_sent_after_413_is_ignored(open_wire):
    """Body bytes sent after the 413 anyway are neither read nor answered."""
    open_wire.send(head(b"Content-Length: 5000"))
    before = open_wire.written()
    open_wire.send(b"{" + b" " * 4998 + b"}")
    assert open_wire.written() == before
    await assert_refused(open_wire, 413, BODY_MESSAGE)


def test_declared_length_within_limit_gets_100_continue(wire):
    """With Expect: 100-continue, a sender's body within the limit is invited."""
    wire.send(
        head(
            b"Content-Length: 2",
            b"Expect: 100-continue",
            b"Authorization: " + BASIC_HEADER.encode(),
        )
    )
    assert wire.written() == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_declared_length_exactly_at_limit_passes(wire):
    """A body of exactly --max-body-bytes reaches the routes."""
    wire.send(post(b"{" + b" " * (MAX_BODY - 2) + b"}"))
    assert wire.reply().status == 401


@pytest_twisted.ensureDeferred
async def test_declared_length_one_over_limit_is_413(wire):
    """A Content-Length of one byte over the limit is answered 413."""
    wire.send(head(b"Content-Length: %d" % (MAX_BODY + 1)))
    await assert_refused(wire, 413, BODY_MESSAGE)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_limit_is_413(open_wire):
    """A chunked body that goes over the limit is answered 413 while it arrives."""
    open_wire.send(head(b"Transfer-Encoding: chunked"))
    open_wire.send(chunked(b"[" + b" " * 599)[:-5])
    assert open_wire.written() == b""
    open_wire.send(b"258\r\n" + b" " * 600 + b"\r\n")
    await assert_refused(open_wire, 413, BODY_MESSAGE)


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_limit_in_one_write_is_413(open_wire):
    """A whole chunked body over the limit, arriving at once, is answered 413."""
    body = chunked(b"[{}", b" " * 700, b" " * 700, b"]")
    open_wire.send(head(b"Transfer-Encoding: chunked") + body)
    await assert_refused(open_wire, 413, BODY_MESSAGE)


def test_chunked_body_within_limit_passes(wire):
    """A chunked body within the limit reaches the routes."""
    wire.send(head(b"Transfer-Encoding: chunked") + chunked(b"{", b" " * 900, b"}"))
    assert wire.reply().status == 401


# -- the small limits of the other paths that take a body --------------------

LOGIN_LIMIT = 100
PREVIEW_LIMIT = 300


@pytest.fixture
def console_site(db, monkeypatch):
    """
    The console served (an API token), its login and the preview given
    small limits of their own by the site; the channel's own is 1000.
    """
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", "channel-token")
    site, store = make_site(db, max_header_bytes=MAX_HEADER, max_body_bytes=MAX_BODY)
    site.store = store
    site.body_limits = {
        b"/console/login": LOGIN_LIMIT,
        b"/api/v1/mapping/preview": PREVIEW_LIMIT,
        b"/console/logout": 5000,
    }
    yield site
    store.close()


@pytest.fixture
def console_wire(console_site):
    w = Wire(console_site)
    yield w
    w.close()


def path_message(limit: int) -> str:
    return f"body is over the limit of {limit} bytes for this path"


def form(path: bytes, *lines: bytes) -> bytes:
    return head(
        b"Content-Type: application/x-www-form-urlencoded",
        *lines,
        request_line=b"POST " + path + b" HTTP/1.1",
    )


@pytest_twisted.ensureDeferred
async def test_a_body_over_its_paths_limit_is_413_before_it_is_read(console_wire):
    """A login form declared over the login's limit: 413 naming it, unread."""
    console_wire.send(
        form(b"/console/login", b"Content-Length: %d" % (LOGIN_LIMIT + 1))
    )
    await assert_refused(console_wire, 413, path_message(LOGIN_LIMIT))


@pytest_twisted.ensureDeferred
async def test_a_body_over_its_paths_limit_gets_no_100_continue(console_wire):
    console_wire.send(
        form(
            b"/api/v1/mapping/preview",
            b"Content-Length: %d" % (PREVIEW_LIMIT + 1),
            b"Expect: 100-continue",
        )
    )
    assert b"100 Continue" not in console_wire.written()
    await assert_refused(console_wire, 413, path_message(PREVIEW_LIMIT))


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_its_paths_limit_is_413_as_it_arrives(console_wire):
    """Chunked, the path's limit holds too: refused once the bytes pass it."""
    console_wire.send(form(b"/console/login", b"Transfer-Encoding: chunked"))
    console_wire.send(b"50\r\n" + b"token=" + b"x" * 74 + b"\r\n")
    assert console_wire.written() == b""
    console_wire.send(b"50\r\n" + b"x" * 80 + b"\r\n")
    await assert_refused(console_wire, 413, path_message(LOGIN_LIMIT))


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_over_its_paths_limit_in_one_write_is_413(console_wire):
    body = chunked(b"token=", b"x" * 60, b"x" * 60)
    console_wire.send(form(b"/console/login", b"Transfer-Encoding: chunked") + body)
    await assert_refused(console_wire, 413, path_message(LOGIN_LIMIT))


def test_a_body_within_its_paths_limit_reaches_the_route(console_wire):
    """A wrong token in a form at exactly the limit: the login page says so."""
    body = b"token=" + b"x" * (LOGIN_LIMIT - 6)
    console_wire.send(form(b"/console/login", b"Content-Length: %d" % len(body)) + body)
    reply = console_wire.reply()
    assert reply.status == 401
    assert b"not an API token" in reply.body


def test_a_chunked_body_within_its_paths_limit_reaches_the_route(console_wire):
    body = chunked(b"token=", b"x" * 40, b"x" * 40)
    console_wire.send(form(b"/console/login", b"Transfer-Encoding: chunked") + body)
    assert console_wire.reply().status == 401


@pytest_twisted.ensureDeferred
async def test_a_paths_limit_above_the_channels_is_held_to_the_channels(
    console_wire,
):
    """--max-body-bytes bounds every body: a path given more gets no more."""
    console_wire.send(form(b"/console/logout", b"Content-Length: %d" % (MAX_BODY + 1)))
    await assert_refused(console_wire, 413, BODY_MESSAGE)


@pytest_twisted.ensureDeferred
async def test_only_a_post_to_such_a_path_takes_a_body(console_wire):
    """GET with a body on the login path: refused unread, as on any other path."""
    console_wire.send(
        head(b"Content-Length: 5", request_line=b"GET /console/login HTTP/1.1")
        + b"token"
    )
    await assert_refused(console_wire, 404, NOT_FOUND_MESSAGE)


# -- bodies are JSON whatever the Content-Type -------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/form-data",
        b"multipart/form-data; boundary=xyz",
        b"application/x-www-form-urlencoded",
        b"text/plain",
    ],
)
@pytest_twisted.ensureDeferred
async def test_form_content_type_body_is_read_as_json(site, content_type):
    """A JSON body labelled as a form is stored as JSON; no form parser runs."""
    w = Wire(site)
    try:
        body = b'{"name": "form-labelled", "rawJson": {"k": "v&x=1"}}'
        w.send(
            post(
                body,
                b"Content-Type: " + content_type,
                b"Authorization: " + BASIC_HEADER.encode(),
            )
        )
        await w.finished()
        reply = w.reply()
        assert reply.status == 200, reply.body
        assert [i["name"] for i in reply.json()] == ["form-labelled"]
        [stored] = stored_incidents(site.store.path)
        assert stored["details"]["k"] == "v&x=1"
        assert stored["details"]["headers"]["content-type"] == content_type.decode()
        assert stored["body"] == body
    finally:
        w.close()


@pytest_twisted.ensureDeferred
async def test_accepted_request_is_stored_and_connection_kept(site):
    """A request within every limit is answered 200 and the connection stays open."""
    w = Wire(site)
    try:
        w.send(
            post(
                b'[{"name": "a"}, {"name": "b"}]',
                b"Authorization: " + BASIC_HEADER.encode(),
            )
        )
        await w.finished()
        reply = w.reply()
        assert reply.status == 200
        assert [i["name"] for i in reply.json()] == ["a", "b"]
        assert reply.headers["server"] == "gwebhook"
        assert not w.transport.disconnecting
        assert row_counts(site.store.path) == {"requests": 1, "incidents": 2}
        assert json.loads(reply.body)[0]["id"] != json.loads(reply.body)[1]["id"]
    finally:
        w.close()


@pytest_twisted.ensureDeferred
async def test_a_refused_request_does_not_fail_those_arriving_with_it(site):
    """
    Of three requests arriving at once, the one whose body UTF-8 cannot hold
    (an unpaired surrogate escape) is answered 400 and stores nothing; the
    two others are answered 200 and stored.
    """
    wires = [Wire(site) for _ in range(3)]
    bodies = [b'{"name": "a"}', b'{"name": "\\ud800"}', b'{"name": "c"}']
    try:
        # All in one reactor turn: "a" commits alone, "c" in the next commit.
        for w, body in zip(wires, bodies, strict=True):
            w.send(post(body, b"Authorization: " + BASIC_HEADER.encode()))
        await gatherResults([w.finished() for w in wires])
        replies = [w.reply() for w in wires]
        assert [r.status for r in replies] == [200, 400, 200]
        assert replies[1].json() == {
            "error": "body is not JSON that UTF-8 can hold: "
            "an unpaired surrogate escape (\\udXXX)"
        }
        assert [i["name"] for i in stored_incidents(site.store.path)] == ["a", "c"]
        assert row_counts(site.store.path) == {"requests": 2, "incidents": 2}
    finally:
        for w in wires:
            w.close()


@pytest_twisted.ensureDeferred
async def test_a_stranger_is_refused_before_the_body_is_read(wire):
    """Wrong credentials get 401 at the end of the headers: no 100, no body read."""
    wire.send(
        head(
            b"Content-Length: 900",
            b"Expect: 100-continue",
            b"Authorization: Basic Zm9vOmJhcg==",
        )
    )
    assert b"100 Continue" not in wire.written()
    assert wire.reply().headers["www-authenticate"].startswith("Basic")
    await assert_refused(wire, 401, "missing or wrong credentials")


@pytest.mark.parametrize(
    "request_line",
    [
        b"POST * HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"POST /%ff HTTP/1.1",
        b"GET /a%c3 HTTP/1.1",
    ],
)
def test_odd_paths_are_answered_like_any_unknown_path(wire, request_line):
    """A path of "*" or one that is not UTF-8 is a JSON 404, as any unknown path."""
    wire.send(
        head(b"Authorization: " + BASIC_HEADER.encode(), request_line=request_line)
    )
    reply = wire.reply()
    assert reply.status == 404
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["server"] == "gwebhook"
    assert "x-request-id" in reply.headers
    assert reply.json() == {"error": NOT_FOUND_MESSAGE}


@pytest_twisted.ensureDeferred
async def test_a_request_cut_off_before_its_answer_has_an_access_line(wire):
    """A client that goes away while its request is handled still gets a log line."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        wire.send(post(b'{"name": "gone"}', b"Authorization: " + BASIC_HEADER.encode()))
        request = wire.protocol.requests[-1]
        wire.close()  # before the commit answers
        await wire.site.store.ping()
        lines = [e for e in events if e.get("request_id") == request.requestId]
    finally:
        globalLogPublisher.removeObserver(events.append)
    [line] = lines
    assert line["status"] == 499
    assert "cut off" in line["reason"]
