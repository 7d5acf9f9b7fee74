"""
The webhook routes over a real TLS socket, in-process: the daemon's own TLS
options, channel, routes and store, and a treq client that trusts only the
root CA (so every answer also proves the intermediate was served).
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass

import pytest
import pytest_twisted
from support import credentials
from support.credentials import BASIC, BASIC_HEADER, PASSWORD
from support.inprocess import serve_tls
from support.store import row_counts, stored_incidents

from gwebhook.credentials import Credentials

BEARER = Credentials.from_options("_header:Authorization", "Bearer XXX")
NOTHING = {"requests": 0, "incidents": 0}
SOME_FIELD = b'{"name":"incident created via generic webhook","rawJson":{"some_field":"some_value"}}'  # noqa: E501


@pytest.fixture
def serve(tmp_path, pki):
    """Start the routes over TLS with given credentials; everything closed after."""
    servers = []

    async def start(credentials=BASIC, **options):
        db = tmp_path / f"gwebhook-{len(servers)}.sqlite"
        server = await serve_tls(db, pki.cert, pki.key, pki.ca, credentials, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        pytest_twisted.blockon(server.close())


@dataclass
class Answer:
    status: int
    headers: object
    body: bytes

    def header(self, name: str) -> list[str] | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return None if values is None else [v.decode("ascii") for v in values]

    def json(self):
        assert self.header("content-type") == ["application/json"]
        return json.loads(self.body)


async def send(server, body=b"{}", headers=None, method="POST", path="/") -> Answer:
    response = await server.client.request(
        method, server.url(path), data=body, headers=headers or {}
    )
    return Answer(response.code, response.headers, await response.content())


def basic(**more):
    return {"Authorization": BASIC_HEADER, **more}


def assert_error(answer: Answer, status: int, message: str, server) -> None:
    """The status, the JSON reason (exactly, or its start when it ends in '...')."""
    assert answer.status == status, answer.body
    error = answer.json()
    assert list(error) == ["error"]
    if message.endswith("..."):
        assert error["error"].startswith(message[:-3]), error
    else:
        assert error["error"] == message
    assert row_counts(server.db) == NOTHING


# -- the reference documents' examples ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_basic_auth_curl_example(serve):
    """The 2025 docs' ``curl -u user:pass`` example is stored and answered with it."""
    server = await serve()
    answer = await send(
        server,
        SOME_FIELD,
        basic(**{"Content-Type": "application/json"}),
        path="/xsoar/instance/execute/my_instance_01",
    )
    assert answer.status == 200, answer.body
    [incident] = answer.json()
    assert set(incident) == {"id", "name", "type", "occurred", "created"}
    assert incident["name"] == "incident created via generic webhook"
    assert incident["type"] == "Unclassified"
    assert isinstance(incident["id"], str)
    [stored] = stored_incidents(server.db)
    assert str(stored["id"]) == incident["id"]
    assert stored["details"]["some_field"] == "some_value"
    assert set(stored["details"]) == {"some_field", "headers"}
    assert stored["path"] == "/xsoar/instance/execute/my_instance_01"


@pytest.mark.parametrize("token", ["Bearer XXX", "Basic MYIvOkEyMw=="])
@pytest_twisted.ensureDeferred
async def test_header_token_example(serve, token):
    """``_header:Authorization`` with the documented token values is accepted."""
    server = await serve(Credentials.from_options("_header:Authorization", token))
    headers = {"Authorization": token, "Content-Type": "application/json"}
    answer = await send(server, SOME_FIELD, headers)
    assert answer.status == 200, answer.body
    [stored] = stored_incidents(server.db)
    assert "authorization" not in stored["details"]["headers"]
    assert "authorization" not in stored["request_headers"]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
@pytest_twisted.ensureDeferred
async def test_auth_header_v1_example(serve, content_type):
    """The v1 ``--auth-header`` example (raw_json, no JSON Content-Type) is stored."""
    server = await serve(Credentials.from_options("_header:Authorization", "token"))
    body = b'{"name":"incident created via generic webhook","raw_json":{"some_field":"some_value"}}'  # noqa: E501
    headers = {"Authorization": "token"}
    if content_type:
        headers["Content-Type"] = content_type
    answer = await send(server, body, headers, path="/instance/execute/webhook")
    assert answer.status == 200, answer.body
    assert answer.json()[0]["name"] == "incident created via generic webhook"
    [stored] = stored_incidents(server.db)
    details = stored["details"]
    assert details["some_field"] == "some_value"
    assert details["headers"].get("content-type") == content_type
    assert stored["body"] == body


@pytest_twisted.ensureDeferred
async def test_any_payload_example(serve):
    """A payload without the documented fields is stored whole, with defaults."""
    server = await serve()
    body = b'{"string_field":"string_field_value","array_field":["item1","item2"]}'
    answer = await send(server, body, basic(**{"Content-Type": "application/json"}))
    assert answer.status == 200, answer.body
    [incident] = answer.json()
    assert incident["name"] == "Generic webhook triggered incident"
    assert incident["type"] == "Unclassified"
    # Without ``occurred``, it occurred when received: just before it was created.
    assert incident["occurred"].endswith("Z")
    assert incident["occurred"] <= incident["created"]
    [stored] = stored_incidents(server.db)
    assert stored["details"]["string_field"] == "string_field_value"
    assert stored["details"]["array_field"] == ["item1", "item2"]
    assert set(stored["details"]) == {"string_field", "array_field", "headers"}


@pytest_twisted.ensureDeferred
async def test_array_of_two_incidents_example(serve):
    """An array of two objects creates two incidents, answered and stored in order."""
    server = await serve()
    body = (
        b'[{"name":"incident1","rawJson":{"some_field":"some_value"}},'
        b' {"name":"incident2","rawJson":{"some_field":"some_value"}}]'
    )
    answer = await send(server, body, basic())
    assert answer.status == 200, answer.body
    incidents = answer.json()
    assert [i["name"] for i in incidents] == ["incident1", "incident2"]
    ids = [int(i["id"]) for i in incidents]
    assert ids[0] < ids[1]
    stored = stored_incidents(server.db)
    assert [(s["id"], s["name"], s["position"]) for s in stored] == [
        (ids[0], "incident1", 0),
        (ids[1], "incident2", 1),
    ]
    assert row_counts(server.db) == {"requests": 1, "incidents": 2}


@pytest_twisted.ensureDeferred
async def test_ids_are_never_reused(serve):
    """Each request's incidents get new ids, distinct from every earlier one."""
    server = await serve()
    seen = []
    for _ in range(3):
        answer = await send(server, b"[{}, {}]", basic())
        seen += [i["id"] for i in answer.json()]
    assert len(set(seen)) == 6


@pytest_twisted.ensureDeferred
async def test_put_is_accepted(serve):
    """A PUT is handled like a POST."""
    server = await serve()
    answer = await send(server, b'{"name": "by put"}', basic(), method="PUT")
    assert answer.status == 200, answer.body
    assert [s["method"] for s in stored_incidents(server.db)] == ["PUT"]


@pytest.mark.parametrize(
    "path", ["/", "/instance/execute/webhook", "/xsoar/instance/execute/my_instance_01"]
)
@pytest_twisted.ensureDeferred
async def test_webhook_paths(serve, path):
    """The root and XSOAR's /instance/execute/<name> paths all receive webhooks."""
    server = await serve()
    answer = await send(server, b'{"name": "x"}', basic(), path=path)
    assert answer.status == 200, answer.body
    assert [s["path"] for s in stored_incidents(server.db)] == [path]


@pytest_twisted.ensureDeferred
async def test_empty_array_answers_empty_list(serve):
    """An empty array answers 200 [] and stores nothing."""
    server = await serve()
    answer = await send(server, b"[]", basic())
    assert answer.status == 200
    assert answer.json() == []
    assert row_counts(server.db) == NOTHING


@pytest_twisted.ensureDeferred
async def test_occurred_is_answered_in_utc(serve):
    """An ``occurred`` with a zone is answered and stored normalised to UTC."""
    server = await serve()
    body = b'{"occurred": "2024-01-02T03:04:05+02:00"}'
    answer = await send(server, body, basic())
    assert answer.json()[0]["occurred"] == "2024-01-02T01:04:05Z"
    assert stored_incidents(server.db)[0]["occurred"] == "2024-01-02T01:04:05Z"


@pytest_twisted.ensureDeferred
async def test_configured_incident_type(serve):
    """An incident naming no type gets the configured --incident-type."""
    server = await serve(incident_type="Phishing")
    answer = await send(server, b'[{}, {"type": "Malware"}]', basic())
    assert [i["type"] for i in answer.json()] == ["Phishing", "Malware"]


# -- what is kept ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_details_hold_headers_without_the_credential(serve):
    """The kept headers are lowercase, joined, and lack the credential header."""
    server = await serve(Credentials.from_options("_header:X-Webhook-Token", "tok"))
    headers = {
        "X-Webhook-Token": "tok",
        "Authorization": "Bearer someone-elses",
        "X-Tag": ["a", "b"],
        "X-Sender": "Wallarm",
    }
    answer = await send(server, b'{"rawJson": {"k": 1}}', headers)
    assert answer.status == 200, answer.body
    [stored] = stored_incidents(server.db)
    kept = stored["details"]["headers"]
    assert kept["x-tag"] == "a, b"
    assert kept["x-sender"] == "Wallarm"
    assert kept["host"] == f"localhost:{server.number}"
    assert all(name == name.lower() for name in kept)
    for secret in ("x-webhook-token", "authorization"):
        assert secret not in kept
        assert secret not in stored["request_headers"]
    assert stored["request_headers"] == kept


@pytest_twisted.ensureDeferred
async def test_request_keeps_exact_body_bytes(serve):
    """The request's exact body bytes are kept, even a field the details overwrite."""
    server = await serve()
    body = (
        '  {"headers": {"mine": true},\n "name" : "caf\u00e9", "n": 1.50}\r\n'.encode()
    )
    answer = await send(server, body, basic())
    assert answer.status == 200, answer.body
    [stored] = stored_incidents(server.db)
    assert stored["body"] == body
    assert stored["name"] == "caf\u00e9"
    assert "mine" not in stored["details"]["headers"]


@pytest_twisted.ensureDeferred
async def test_large_body_is_kept_exactly(serve):
    """A body over 100 kB (spooled to a file by Twisted) is kept exactly."""
    server = await serve()
    padding = "".join(chr(0x20 + i % 90) for i in range(300_000)).replace('"', "'")
    padding = padding.replace("\\", "/")
    body = json.dumps({"name": "big", "rawJson": {"pad": padding}}).encode()
    answer = await send(server, body, basic())
    assert answer.status == 200, answer.body
    [stored] = stored_incidents(server.db)
    assert stored["body"] == body
    assert stored["details"]["pad"] == padding


@pytest_twisted.ensureDeferred
async def test_an_answer_larger_than_the_socket_takes_arrives_whole(serve):
    """
    An answer the socket cannot take at once (megabytes, to a client that
    reads only once the server has written: here both share the reactor)
    arrives whole and in order: what TLS sends at once and what the
    transport queues are one stream.
    """
    count = 40_000
    server = await serve(max_body_bytes=1_000_000)
    body = json.dumps([{"name": f"n{i}"} for i in range(count)]).encode()
    answer = await send(server, body, basic())
    assert answer.status == 200
    assert len(answer.body) > 4_000_000
    entries = answer.json()
    assert [e["name"] for e in entries] == [f"n{i}" for i in range(count)]
    assert [int(e["id"]) for e in entries] == list(range(1, count + 1))


@pytest.mark.parametrize(
    "name", ["X-Webhook-Token", "x-webhook-token", "X-WEBHOOK-TOKEN"]
)
@pytest_twisted.ensureDeferred
async def test_header_token_name_is_case_insensitive(serve, name):
    """The ``_header:`` name matches the request's header whatever its case."""
    server = await serve(Credentials.from_options("_header:X-Webhook-Token", "tok"))
    answer = await send(server, b"{}", {name: "tok"})
    assert answer.status == 200, answer.body
    assert "x-webhook-token" not in stored_incidents(server.db)[0]["details"]["headers"]


@pytest_twisted.ensureDeferred
async def test_gzip_body_is_decompressed_and_kept_as_sent(serve):
    """A gzip body is read decompressed and kept as the bytes that were sent."""
    server = await serve()
    body = gzip.compress(b'{"name": "zipped"}')
    answer = await send(server, body, basic(**{"Content-Encoding": "gzip"}))
    assert answer.status == 200, answer.body
    [stored] = stored_incidents(server.db)
    assert stored["name"] == "zipped"
    assert stored["body"] == body


# -- routing errors ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/instance/execute/", "/instance/x/y"])
@pytest_twisted.ensureDeferred
async def test_unknown_path_is_404(serve, path):
    """A POST to an unknown path is answered 404 and stores nothing."""
    server = await serve()
    answer = await send(server, b'{"name": "x"}', basic(), path=path)
    assert_error(answer, 404, "no such path...", server)


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/", "/instance/execute/webhook"])
@pytest_twisted.ensureDeferred
async def test_other_method_is_405_with_allow(serve, method, path):
    """Another method on a webhook path is answered 405 with ``Allow: POST, PUT``."""
    server = await serve()
    answer = await send(server, b'{"name": "x"}', basic(), method=method, path=path)
    assert answer.header("allow") == ["POST, PUT"]
    assert_error(answer, 405, "method not allowed; use POST or PUT", server)


@pytest_twisted.ensureDeferred
async def test_head_is_405_with_allow(serve):
    """A HEAD on a webhook path is answered 405 with ``Allow`` and no body."""
    server = await serve()
    answer = await send(server, None, basic(), method="HEAD")
    assert answer.status == 405
    assert answer.header("allow") == ["POST, PUT"]
    assert answer.body == b""
    assert row_counts(server.db) == NOTHING


# -- credentials -------------------------------------------------------------

UNAUTHORIZED = "missing or wrong credentials"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic YWRtaW46d3Jvbmc=",  # admin:wrong
        credentials.basic("root", PASSWORD)["Authorization"],  # right password
        f"Bearer {PASSWORD}",
        "Basic not-base64",
    ],
)
@pytest_twisted.ensureDeferred
async def test_basic_mode_refusal_is_401_with_challenge(serve, authorization):
    """Missing or wrong Basic credentials get 401 with ``WWW-Authenticate: Basic``."""
    server = await serve()
    headers = {"Authorization": authorization} if authorization else {}
    answer = await send(server, b'{"name": "x"}', headers)
    [challenge] = answer.header("www-authenticate")
    assert challenge.startswith("Basic ")
    assert_error(answer, 401, UNAUTHORIZED, server)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer YYY"}, {"Authorization": "bearer XXX"}],
)
@pytest_twisted.ensureDeferred
async def test_header_mode_refusal_is_401_without_challenge(serve, headers):
    """A missing or wrong header token gets 401 with no Basic challenge."""
    server = await serve(BEARER)
    answer = await send(server, b'{"name": "x"}', headers)
    assert answer.header("www-authenticate") is None
    assert_error(answer, 401, UNAUTHORIZED, server)


def small_bomb() -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(deflater.compress(block) for _ in range(16)) + deflater.flush()


@pytest.mark.parametrize(
    ("body", "more"),
    [
        (b"{not json", {}),
        (b"", {}),
        (b"[1, 2]", {}),
        (b'{"name": "caf\xe9"}', {}),
        (b"{}", {"Content-Encoding": "br"}),
        (None, {"Content-Encoding": "gzip"}),
    ],
    ids=["not-json", "empty", "not-object", "not-utf8", "encoding", "gzip-bomb"],
)
@pytest_twisted.ensureDeferred
async def test_credentials_checked_before_body(serve, body, more):
    """Bad credentials with a bad body get 401, never a hint about the body."""
    server = await serve(BEARER, max_body_bytes=1024 * 1024)
    body = small_bomb() if body is None else body
    answer = await send(server, body, {"Authorization": "Bearer no", **more})
    assert_error(answer, 401, UNAUTHORIZED, server)


# -- bad bodies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is empty; send a JSON object or array of objects"),
        (b'{"name": "caf\xe9"}', "body is not UTF-8 (byte 13)"),
        (b"name=incident", "body is not JSON: ..."),
        (b"{'name': 1}", "body is not JSON: ..."),
        (b'"just a string"', "body must be a JSON object or an array of objects"),
        (b'[{}, {}, "x"]', "element 2 is not a JSON object"),
        (b'{"rawJson": "x"}', "body: field 'rawJson' must be a JSON object"),
        (b'{"raw_json": [1]}', "body: field 'raw_json' must be a JSON object"),
        (b'{"occurred": "soon"}', "body: field 'occurred' is not a date-time: ..."),
        (b'{"occurred": true}', "body: field 'occurred' is not a date-time: ..."),
        (b'{"name": 1}', "body: field 'name' must be a string"),
        (b'{"type": null}', "body: field 'type' must be a string"),
        (b'{"name": "a\\u0000b"}', "body: field 'name' must not contain U+0000 (NUL)"),
        (b'[{"name": "ok"}, {"type": []}]', "element 1: field 'type' must be a string"),
        (b'{"a": NaN}', "body is not JSON: ..."),
        (b"[" * 100_000, "body is not JSON: nested too deeply"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_body_is_400_and_stores_nothing(serve, body, message):
    """A body that cannot become incidents is answered 400 saying why; none stored."""
    server = await serve()
    answer = await send(server, body, basic())
    assert_error(answer, 400, message, server)


@pytest_twisted.ensureDeferred
async def test_gzip_bomb_is_413(serve):
    """A gzip body inflating past --max-body-bytes is answered 413."""
    server = await serve(max_body_bytes=1024 * 1024)
    bomb = small_bomb()
    answer = await send(server, bomb, basic(**{"Content-Encoding": "gzip"}))
    message = f"decompressed body is over the limit of {1024 * 1024} bytes"
    assert_error(answer, 413, message, server)


@pytest_twisted.ensureDeferred
async def test_truncated_gzip_is_400(serve):
    """A gzip body cut short is answered 400."""
    server = await serve()
    body = gzip.compress(b'{"name": "x"}' * 20)
    answer = await send(server, body[:-20], basic(**{"Content-Encoding": "gzip"}))
    assert_error(answer, 400, "gzip body is truncated", server)


@pytest.mark.parametrize("coding", ["br", "deflate", "zstd"])
@pytest_twisted.ensureDeferred
async def test_unsupported_encoding_is_415(serve, coding):
    """A Content-Encoding other than identity or gzip is answered 415."""
    server = await serve()
    answer = await send(server, b"{}", basic(**{"Content-Encoding": coding}))
    message = "Content-Encoding is neither identity nor gzip; send one of those"
    assert_error(answer, 415, message, server)


@pytest_twisted.ensureDeferred
async def test_body_over_limit_is_413_over_tls(serve):
    """A body over --max-body-bytes is answered 413 over TLS too, storing nothing."""
    server = await serve(max_body_bytes=1000)
    answer = await send(server, b"[" + b" " * 2000 + b"]", basic())
    assert_error(answer, 413, "body is over the limit of 1000 bytes", server)


@pytest_twisted.ensureDeferred
async def test_occurred_too_large_is_400(serve):
    """An integer ``occurred`` beyond any date is answered 400 naming the field."""
    server = await serve()
    answer = await send(server, b'{"occurred": 1' + b"0" * 400 + b"}", basic())
    assert_error(answer, 400, "body: field 'occurred' is not a date-time: ...", server)


@pytest.mark.parametrize(
    "body", [b'{"name": "\\ud800"}', b'{"rawJson": {"k\\udfff": 1}}']
)
@pytest_twisted.ensureDeferred
async def test_lone_surrogate_is_refused_with_400(serve, body):
    """An escaped lone surrogate, which UTF-8 cannot hold, is a 400 storing nothing."""
    server = await serve()
    answer = await send(server, body, basic())
    message = "body is not JSON that UTF-8 can hold: an unpaired surrogate escape"
    assert_error(answer, 400, message + " (\\udXXX)", server)


@pytest_twisted.ensureDeferred
async def test_overflowing_number_is_refused_with_400(serve):
    """A number beyond a double is a 400 naming it, storing nothing."""
    server = await serve()
    answer = await send(server, b'{"n": 1e400}', basic())
    message = "body is not JSON: a number is too large for a double"
    assert_error(answer, 400, message, server)
