"""
The read API (/api/v1/): its refusals, its OpenAPI document checked against
real answers, paging, and long polls driven by a fake clock.  In-process
through the daemon's own ``makeService`` (``support.inprocess``), over a
real store; the throttle and the kept samples, which ``make_site`` does not
configure, against a real daemon.  Several processes, token sources and
load are in test_api_processes.py.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote, unquote

import pytest
import pytest_twisted
from jsonschema import Draft202012Validator
from support.credentials import AUTH, BASIC_HEADER, HEADERS, USERNAME, basic
from support.http import Response, send
from support.inprocess import Wire, make_site
from support.openapi import Document
from support.store import incidents_by_id, row_counts
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.python import usage

from gwebhook.answers import NOT_FOUND_MESSAGE
from gwebhook.tap import Options

TOKENS = ("api-token-one", "api-token-two")
BEARER = {"Authorization": f"Bearer {TOKENS[0]}"}
SENDER = {"Authorization": BASIC_HEADER}
NO_TOKEN_401 = {"error": "missing or wrong API token; send Authorization: Bearer"}
API_PATH_404 = {"error": "no such API path; see /api/v1/openapi.json"}
PAGE_TAKES = "this path takes after, limit, instance, wait"
BAD_CURSOR = (
    "after: not a cursor of this gwebhook; pass back the next of a page, "
    "or leave after out to start from the beginning"
)
SERVED_PATHS = {
    "/api/v1/incidents",
    "/api/v1/incidents/{id}",
    "/api/v1/samples",
    "/api/v1/openapi.json",
    # The console's (tests/test_console_api.py checks their answers).
    "/api/v1/incidents/{id}/body",
    "/api/v1/recent",
    "/api/v1/instances",
    "/api/v1/deliveries",
    "/api/v1/deliveries/redeliver",
    "/api/v1/health",
    "/api/v1/mapping/preview",
}
POST_PATHS = {"/api/v1/deliveries/redeliver", "/api/v1/mapping/preview"}


# -- the site, and talking to it ----------------------------------------------


@pytest.fixture
def make_api(tmp_path, monkeypatch):
    """
    ``make_api()``: a site with API tokens (GWEBHOOK_API_TOKENS, as the
    daemon reads its environment), its long polls running; every site made
    shares the store file, as processes of one daemon do.
    """
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", "  ".join(TOKENS))
    made = []

    def make():
        site, store = make_site(tmp_path / "gwebhook.sqlite", max_body_bytes=100_000)
        site.store = store
        site.polls = site.resource.api.polls
        site.polls.startService()
        made.append(site)
        return site

    yield make
    for site in made:
        if site.polls.running:
            site.polls.stopService()
        site.store.close()


@pytest.fixture
def api(make_api):
    return make_api()


def request_bytes(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode("utf-8") + (body or b"")


async def exchange(site, data: bytes) -> Response:
    """One request on a new connection to ``site``; its answer."""
    w = Wire(site)
    try:
        w.send(data)
        if not w.written():  # answered at once when refused by the channel
            await w.finished()
        return w.reply()
    finally:
        w.close()


async def get(site, path: str, headers: dict[str, str] | None = None) -> Response:
    return await exchange(
        site, request_bytes("GET", path, BEARER if headers is None else headers)
    )


async def post(site, objects: Any, path: str = "/") -> list[dict[str, Any]]:
    """Post ``objects`` as a sender; the incidents it was answered with."""
    reply = await exchange(
        site, request_bytes("POST", path, SENDER, json.dumps(objects).encode())
    )
    assert reply.status == 200, reply
    return reply.json()


async def eventually(predicate, timeout: float = 5.0) -> None:
    """Let the real reactor run (the store's threads) until ``predicate()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.005)


def assert_refused(reply: Response, status: int, message: str) -> None:
    assert (reply.status, reply.json()) == (status, {"error": message}), reply
    assert reply.headers["content-type"] == "application/json"


# -- 400: each parameter ---------------------------------------------------------

BAD_PAGE_QUERIES = [
    ("foo=1", f"foo: unknown parameter; {PAGE_TAKES}"),
    ("after=&Limit=5", f"Limit: unknown parameter; {PAGE_TAKES}"),
    ("limit=1&limit=2", "limit: given 2 times; give it once"),
    ("after=&after=", "after: given 2 times; give it once"),
    ("instance=a&instance=a&instance=b", "instance: given 3 times; give it once"),
    ("wait=1&wait=1", "wait: given 2 times; give it once"),
    ("after=xyz", BAD_CURSOR),
    ("after=1", BAD_CURSOR),  # an id is not a cursor
    ("after=" + "ZzE6" + "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAx", BAD_CURSOR),  # 21 digits
    ("after=ZzE6LTE", BAD_CURSOR),  # g1:-1
    ("after=ZzI6NQ", BAD_CURSOR),  # g2:5
    ("limit=0", "limit: '0' is not a whole number from 1 to 1000"),
    ("limit=1001", "limit: '1001' is not a whole number from 1 to 1000"),
    ("limit=-1", "limit: '-1' is not a whole number from 1 to 1000"),
    ("limit=1.5", "limit: '1.5' is not a whole number from 1 to 1000"),
    ("limit=ten", "limit: 'ten' is not a whole number from 1 to 1000"),
    ("limit=", "limit: '' is not a whole number from 1 to 1000"),
    ("wait=-1", "wait: '-1' is not a number of seconds from 0 to 60"),
    ("wait=60.5", "wait: '60.5' is not a number of seconds from 0 to 60"),
    ("wait=soon", "wait: 'soon' is not a number of seconds from 0 to 60"),
    ("wait=nan", "wait: 'nan' is not a number of seconds from 0 to 60"),
    ("wait=1_0", "wait: '1_0' is not a number of seconds from 0 to 60"),
    ("wait=1e1", "wait: '1e1' is not a number of seconds from 0 to 60"),
    ("wait=inf", "wait: 'inf' is not a number of seconds from 0 to 60"),
    ("wait=", "wait: '' is not a number of seconds from 0 to 60"),
    ("instance=", "instance: empty; give an instance name or leave it out"),
    ("instance=%FF", "instance: not UTF-8"),
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("query", "message"), BAD_PAGE_QUERIES)
async def test_a_bad_page_parameter_is_a_400_naming_it(api, query, message):
    reply = await get(api, "/api/v1/incidents?" + query)
    assert_refused(reply, 400, message)
    assert reply.headers["cache-control"] == "no-store"


@pytest_twisted.ensureDeferred
async def test_a_limit_of_unicode_digits_is_a_400(api):
    reply = await get(api, "/api/v1/incidents?limit=%C2%B2")  # "²"
    assert reply.status == 400, reply
    assert_refused(reply, 400, "limit: '²' is not a whole number from 1 to 1000")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/samples?limit=1",
         "limit: unknown parameter; this path takes instance"),
        ("/api/v1/samples?instance=a&instance=b",
         "instance: given 2 times; give it once"),
        ("/api/v1/samples?instance=%FF", "instance: not UTF-8"),
        ("/api/v1/samples?instance=",
         "instance: empty; give an instance name or leave it out"),
    ],
)  # fmt: skip
async def test_a_bad_samples_parameter_is_a_400_naming_it(api, path, message):
    assert_refused(await get(api, path), 400, message)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "path", ["/api/v1/incidents/1?x=1", "/api/v1/openapi.json?x=1"]
)  # noqa: E501
async def test_a_parameter_where_none_is_taken_is_a_400_that_says_so(api, path):
    await post(api, {"name": "one"})
    reply = await get(api, path)
    assert reply.status == 400
    message = reply.json()["error"]
    assert message.startswith("x: unknown parameter"), message
    assert not message.endswith("takes "), message


@pytest_twisted.ensureDeferred
async def test_good_parameters_are_taken(api):
    """The edges of each range are served, and an empty after is the beginning."""
    [first] = await post(api, {"name": "one"})
    for query in ("limit=1", "limit=1000", "wait=0", "after=", "instance=default"):
        reply = await get(api, "/api/v1/incidents?" + query)
        assert reply.status == 200, (query, reply)
        assert [i["id"] for i in reply.json()["incidents"]] == [first["id"]]


# -- 401, 405, 404 ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKENS[0][:-1]}"},  # a prefix of a token
        {"Authorization": f"Bearer {TOKENS[0]}x"},
        {"Authorization": f"Basic {TOKENS[0]}"},
        {"Authorization": TOKENS[0]},
        {"Authorization": f"Bearer {TOKENS[0]} {TOKENS[1]}"},
        {"X-Api-Token": TOKENS[0]},
        SENDER,  # a sender's credential is no API token
    ],
    ids=lambda h: repr(h)[:40],
)
@pytest.mark.parametrize(
    "path", ["/api/v1/incidents", "/api/v1/openapi.json", "/api/v1/nothing", "/api/"]
)
async def test_without_an_api_token_every_api_path_is_a_401(api, headers, path):
    """Not even whether a path exists is told without a token."""
    reply = await get(api, path, headers)
    assert_refused(reply, 401, NO_TOKEN_401["error"])
    assert reply.headers["www-authenticate"] == 'Bearer realm="gwebhook"'


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_each_token_is_taken_whatever_the_case_of_the_scheme(api, token, scheme):
    reply = await get(api, "/api/v1/incidents", {"Authorization": f"{scheme} {token}"})
    assert reply.status == 200
    assert reply.json()["incidents"] == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/", "/instance/execute/x"])
async def test_an_api_token_is_no_sender_credential(api, path):
    """A webhook sent with an API token is refused, and nothing is stored."""
    for token in TOKENS:
        for headers in ({"Authorization": f"Bearer {token}"}, basic_with(token)):
            body = b'{"name": "sent with an API token"}'
            reply = await exchange(api, request_bytes("POST", path, headers, body))
            assert reply.status == 401, reply
    assert row_counts(api.store.path) == {"requests": 0, "incidents": 0}


def basic_with(token: str) -> dict[str, str]:
    """The API token as a sender's Basic password."""
    return basic(USERNAME, token)


METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", ["/api/v1/incidents", "/api/v1/incidents/1"])
async def test_other_methods_are_a_405(api, method, path):
    reply = await exchange(api, request_bytes(method, path, SENDER))
    assert_refused(reply, 401, NO_TOKEN_401["error"])
    reply = await exchange(api, request_bytes(method, path, BEARER))
    assert_refused(reply, 405, "method not allowed; use GET or HEAD")
    assert reply.headers["allow"] == "GET, HEAD"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_other_methods_with_a_body_are_a_405_and_store_nothing(api, method):
    body = b'[{"name": "posted to the API"}]'
    reply = await exchange(
        api, request_bytes(method, "/api/v1/incidents", BEARER, body)
    )
    assert row_counts(api.store.path) == {"requests": 0, "incidents": 0}
    assert reply.status == 405, reply
    assert reply.headers["allow"] == "GET, HEAD"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/api/v1/incidents", "/healthz"])
async def test_a_get_with_a_body_is_a_400_that_says_so(api, path):
    """The method is right there; the body is what is wrong, and is not read."""
    reply = await exchange(api, request_bytes("GET", path, BEARER, b'{"x": 1}'))
    assert_refused(reply, 400, "GET takes no body; send it without one")
    assert row_counts(api.store.path) == {"requests": 0, "incidents": 0}


@pytest_twisted.ensureDeferred
async def test_head_is_a_get_without_a_body(api):
    await post(api, [{"name": "a"}, {"name": "b"}])
    got = await get(api, "/api/v1/incidents")
    w = Wire(api)
    try:
        w.send(request_bytes("HEAD", "/api/v1/incidents", BEARER))
        await w.finished()
        head, _, rest = w.written().partition(b"\r\n\r\n")
    finally:
        w.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: application/json" in head
    assert rest == b""
    assert len(got.json()["incidents"]) == 2


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "path",
    [
        "/api/",
        "/api/v1",
        "/api/v1/",
        "/api/v2/incidents",
        "/api/v1/incident",
        "/api/v1/openapi.yaml",
        "/api/v1/samples/1",
        "/api/v1/Incidents",
    ],
)
async def test_an_unknown_api_path_is_a_404(api, path):
    assert_refused(await get(api, path), 404, API_PATH_404["error"])


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("incident", "shown"),
    [
        ("99", "'99'"),
        ("0", "'0'"),
        ("x", "'x'"),
        ("-1", "'-1'"),
        ("%31", "'%31'"),
        ("", "''"),
        ("1/x", "'1/x'"),
        ("1" * 20, repr("1" * 20)),
    ],
)
async def test_an_unknown_incident_is_a_404(api, incident, shown):
    await post(api, {"name": "one"})
    reply = await get(api, f"/api/v1/incidents/{incident}")
    assert_refused(reply, 404, f"no incident with id {shown}")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "path",
    ["/api/", "/api/v1/incidents", "/api/v1/openapi.json", "/api/v1/incidents/1"],
)
@pytest.mark.parametrize("headers", [BEARER, {}], ids=["token", "none"])
async def test_without_tokens_the_api_is_any_unknown_path(
    tmp_path, monkeypatch, path, headers
):
    """No tokens configured: /api/ is a 404 like /nothing, with or without one."""
    monkeypatch.delenv("GWEBHOOK_API_TOKENS", raising=False)
    site, store = make_site(tmp_path / "gwebhook.sqlite")
    site.store = store
    try:
        await post(site, {"name": "one"})
        reply = await get(site, path, headers)
        other = await get(site, "/nothing", headers)
        assert (reply.status, reply.body) == (404, other.body)
        assert reply.json() == {"error": NOT_FOUND_MESSAGE}
        assert "www-authenticate" not in reply.headers
    finally:
        store.close()


# -- the OpenAPI document, against real answers ------------------------------------


async def served_document(site) -> Document:
    reply = await get(site, "/api/v1/openapi.json")
    assert reply.status == 200
    document = reply.json()
    assert document["openapi"].startswith("3.1")
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    return Document(document)


@pytest_twisted.ensureDeferred
async def test_the_document_is_openapi_3_1_of_exactly_the_served_paths(api):
    doc = (await served_document(api)).document
    assert set(doc["paths"]) == SERVED_PATHS
    for path, item in doc["paths"].items():
        assert set(item) == ({"post"} if path in POST_PATHS else {"get"}), path
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert doc["components"]["securitySchemes"]["session"]["in"] == "cookie"
    assert doc["security"] == [{"token": []}, {"session": []}]
    # The parameters it names are those the server takes, and no other.
    names = {
        path: {p["name"] for p in item["get"].get("parameters", [])}
        for path, item in doc["paths"].items()
        if path not in POST_PATHS
    }
    assert names == {
        "/api/v1/incidents": {"after", "limit", "instance", "wait"},
        "/api/v1/incidents/{id}": {"id"},
        "/api/v1/samples": {"instance"},
        "/api/v1/openapi.json": set(),
        "/api/v1/incidents/{id}/body": {"id"},
        "/api/v1/recent": {"before", "limit", "instance"},
        "/api/v1/instances": set(),
        "/api/v1/deliveries": {"forward", "state", "limit"},
        "/api/v1/health": set(),
    }
    # Each is taken: a query the document describes is served.
    reply = await get(api, "/api/v1/incidents?after=&limit=5&instance=x&wait=0")
    assert reply.status == 200
    assert (await get(api, "/api/v1/samples?instance=x")).status == 200


@pytest_twisted.ensureDeferred
async def test_real_answers_match_the_document(api):
    doc = await served_document(api)
    doc.check("/api/v1/incidents", empty := await get(api, "/api/v1/incidents"))
    assert empty.json()["incidents"] == []
    await post(api, [{"name": "a", "severity": 3}, {"name": "b", "labels": [1, 2]}])
    await post(api, {"name": "c"}, "/xsoar/instance/execute/elsewhere")
    page = await get(api, "/api/v1/incidents?limit=2")
    doc.check("/api/v1/incidents", page)
    assert len(page.json()["incidents"]) == 2
    one = await get(api, "/api/v1/incidents/3")
    doc.check("/api/v1/incidents/{id}", one)
    assert one.json()["request"]["path"] == "/xsoar/instance/execute/elsewhere"
    doc.check("/api/v1/samples", await get(api, "/api/v1/samples"))
    doc.check("/api/v1/incidents", await get(api, "/api/v1/incidents?limit=0"))
    doc.check("/api/v1/incidents", await get(api, "/api/v1/incidents", {}))
    doc.check("/api/v1/incidents/{id}", await get(api, "/api/v1/incidents/77"))
    doc.check("/api/v1/openapi.json", await get(api, "/api/v1/openapi.json", {}))


@pytest_twisted.ensureDeferred
async def test_the_document_is_strict_enough_to_catch_a_wrong_answer(api):
    """The checks above can fail: answers bent out of shape are refused."""
    doc = await served_document(api)
    [stored] = await post(api, {"name": "a"})
    page = (await get(api, "/api/v1/incidents")).json()
    incident = (await get(api, f"/api/v1/incidents/{stored['id']}")).json()
    wrong_pages = [
        {"incidents": page["incidents"]},
        {**page, "extra": 1},
        {**page, "incidents": [{**incident, "id": 1}]},
        {**page, "incidents": [{k: v for k, v in incident.items() if k != "request"}]},
        {**page, "incidents": [{**incident, "secret": "x"}]},
        {**page, "next": 5},
    ]
    page_schema = doc.schema_of("/api/v1/incidents", 200)
    for wrong in wrong_pages:
        assert not page_schema.is_valid(wrong), wrong
    assert page_schema.is_valid(page)
    error = doc.schema_of("/api/v1/incidents", 400)
    assert not error.is_valid({"error": "x", "detail": "y"})
    assert not error.is_valid(page)


@pytest_twisted.ensureDeferred
async def test_every_400_is_documented(api):
    doc = await served_document(api)
    await post(api, {"name": "a"})
    doc.check("/api/v1/incidents/{id}", await get(api, "/api/v1/incidents/1?x=1"))
    doc.check("/api/v1/openapi.json", await get(api, "/api/v1/openapi.json?x=1"))


@pytest.mark.process
def test_real_answers_over_tls_match_the_document(daemon, tmp_path):
    """A real daemon's answers, samples kept, a 429 included."""
    tokens = tmp_path / "tokens"
    tokens.write_text("\n".join(TOKENS) + "\n")
    d = daemon(*AUTH, "--store-samples", "--api-token-file", str(tokens))

    def api_get(path: str, headers=BEARER, source="127.0.0.1") -> Response:
        return send(d, None, headers, source, "GET", path)

    doc = Document(api_get("/api/v1/openapi.json").json())
    for n in range(3):
        assert d.request(body=b'{"name": "s%d"}' % n, headers=HEADERS).status == 200
    samples = api_get("/api/v1/samples")
    doc.check("/api/v1/samples", samples)
    assert [s["name"] for s in samples.json()] == ["s0", "s1", "s2"]
    assert api_get("/api/v1/samples?instance=default").json() == samples.json()
    assert api_get("/api/v1/samples?instance=other").json() == []
    page = api_get("/api/v1/incidents")
    doc.check("/api/v1/incidents", page)
    assert page.json()["incidents"] == samples.json()
    for _ in range(10):
        api_get("/api/v1/incidents", {}, "127.0.0.9")
    throttled = api_get("/api/v1/incidents", BEARER, "127.0.0.9")
    assert throttled.status == 429
    doc.check("/api/v1/incidents", throttled)


# -- the throttle ---------------------------------------------------------------------


@pytest.mark.process
def test_repeated_wrong_tokens_are_throttled_per_client(daemon, tmp_path):
    """Ten failures from one address: then 429 with Retry-After, even for a token."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS[0] + "\n")
    d = daemon(*AUTH, "--api-token-file", str(tokens), "--auth-fail-limit", "3")

    def api_get(headers, source) -> Response:
        return send(d, None, headers, source, "GET", "/api/v1/incidents")

    wrong = {"Authorization": "Bearer wrong"}
    assert [api_get(wrong, "127.0.0.2").status for _ in range(3)] == [401] * 3
    for headers in (wrong, BEARER, {}):
        reply = api_get(headers, "127.0.0.2")
        assert reply.status == 429, reply
        assert 1 <= int(reply.headers["retry-after"]) <= 60
        assert reply.json()["error"].startswith("too many failed authentications")
    # Another address is not held back.
    assert api_get(BEARER, "127.0.0.3").status == 200
    # A sender's failures and the API's are counted alike: that address is
    # refused on the webhook too.
    assert send(d, b"{}", HEADERS, "127.0.0.2").status == 429


@pytest.mark.process
def test_wrong_tokens_are_throttled_when_senders_are_anonymous(daemon, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS[0] + "\n")
    d = daemon("--allow-anonymous", "--api-token-file", str(tokens))
    wrong = {"Authorization": "Bearer wrong"}
    statuses = [
        send(d, None, wrong, method="GET", path="/api/v1/incidents").status
        for _ in range(11)
    ]
    assert statuses == [401] * 10 + [429]


# -- paging ---------------------------------------------------------------------------


async def follow(site, query: str = "", limit: int = 100) -> list[list[dict]]:
    """Every page from the beginning until an empty one (included)."""
    pages, after = [], ""
    while True:
        reply = await get(site, f"/api/v1/incidents?limit={limit}&after={after}{query}")
        assert reply.status == 200, reply
        page = reply.json()
        pages.append(page["incidents"])
        if not page["incidents"]:
            assert page["next"] == after
            return pages
        after = quote(page["next"])


@pytest_twisted.ensureDeferred
async def test_250_incidents_are_three_pages_of_100_then_an_empty_one(api):
    names = [f"incident-{n}" for n in range(250)]
    for start in range(0, 250, 10):
        await post(api, [{"name": n} for n in names[start : start + 10]])
    stored = incidents_by_id(api.store.path)
    pages = await follow(api)
    assert [len(p) for p in pages] == [100, 100, 50, 0]
    seen = [(int(i["id"]), i["name"]) for p in pages for i in p]
    assert seen == sorted(stored.items())
    assert [name for _, name in seen] == names
    # The default limit is 100; the largest takes everything.
    assert len((await get(api, "/api/v1/incidents")).json()["incidents"]) == 100
    whole = (await get(api, "/api/v1/incidents?limit=1000")).json()
    assert [int(i["id"]) for i in whole["incidents"]] == list(stored)
    # Each is what /api/v1/incidents/<id> shows.
    for incident in (whole["incidents"][0], whole["incidents"][-1]):
        shown = await get(api, f"/api/v1/incidents/{incident['id']}")
        assert shown.json() == incident


@pytest_twisted.ensureDeferred
async def test_the_next_of_an_empty_page_continues_there(api):
    first = await post(api, [{"name": "a"}, {"name": "b"}])
    page = (await get(api, "/api/v1/incidents")).json()
    assert [i["id"] for i in page["incidents"]] == [i["id"] for i in first]
    end = page["next"]
    empty = (await get(api, f"/api/v1/incidents?after={quote(end)}")).json()
    assert empty == {"incidents": [], "next": end}
    later = await post(api, {"name": "c"})
    page = (await get(api, f"/api/v1/incidents?after={quote(end)}")).json()
    assert [i["id"] for i in page["incidents"]] == [later[0]["id"]]
    assert page["next"] != end


@pytest_twisted.ensureDeferred
async def test_the_instance_filter(api):
    """Every incident of the command line's instance is 'default's; no one's else."""
    for n in range(5):
        await post(api, [{"name": f"{n}-a"}, {"name": f"{n}-b"}])
    everything = await follow(api, limit=3)
    mine = await follow(api, "&instance=default", limit=3)
    assert mine == everything
    assert [len(p) for p in mine] == [3, 3, 3, 1, 0]
    nobody = (await get(api, "/api/v1/incidents?instance=nobody")).json()
    start = (await get(api, "/api/v1/incidents?limit=1")).json()["next"]
    assert nobody["incidents"] == []
    # An empty page of a filter starts where it was asked to start.
    nobody = (
        await get(api, f"/api/v1/incidents?instance=nobody&after={quote(start)}")
    ).json()
    assert nobody == {"incidents": [], "next": start}


# -- long polls, on a fake clock ------------------------------------------------------


class Waiting:
    """A consumer's long poll, held open on its own connection."""

    def __init__(self, site, query: str) -> None:
        self.wire = Wire(site)
        self.wire.send(request_bytes("GET", "/api/v1/incidents?" + query, BEARER))

    @property
    def answered(self) -> bool:
        return bool(self.wire.written())

    def reply(self) -> Response:
        return self.wire.reply()

    def close(self) -> None:
        self.wire.close()


async def cursor_now(site) -> str:
    """The cursor of the newest incident (where a consumer starts waiting)."""
    reply = await get(site, "/api/v1/incidents?limit=1000")
    return quote(reply.json()["next"])


@pytest_twisted.ensureDeferred
async def test_a_long_poll_that_times_out_is_an_empty_page_with_the_same_next(api):
    await post(api, {"name": "before"})
    after = await cursor_now(api)
    clock = api.reactor
    consumer = Waiting(api, f"after={after}&wait=5")
    try:
        await eventually(lambda: api.polls.waiting == 1)
        clock.advance(4.9)
        await deferLater(reactor, 0.05)
        assert not consumer.answered
        clock.advance(0.1)
        await eventually(lambda: consumer.answered)
        reply = consumer.reply()
        assert reply.status == 200
        assert reply.json() == {"incidents": [], "next": after}
        assert api.polls.waiting == 0
    finally:
        consumer.close()


@pytest_twisted.ensureDeferred
async def test_a_commit_of_this_process_wakes_a_long_poll_at_once(api):
    after = await cursor_now(api)
    consumer = Waiting(api, f"after={after}&wait=30")
    try:
        await eventually(lambda: api.polls.waiting == 1)
        [stored] = await post(api, [{"name": "wake up"}])
        # No tick of the clock: the commit itself wakes it.
        await eventually(lambda: consumer.answered)
        page = consumer.reply().json()
        assert [i["id"] for i in page["incidents"]] == [stored["id"]]
        assert page["incidents"][0]["name"] == "wake up"
    finally:
        consumer.close()


@pytest_twisted.ensureDeferred
async def test_another_process_commit_wakes_a_long_poll_at_the_next_poll(make_api):
    """Another process's commit is seen by the poll of the store, every 0.5 s."""
    here, there = make_api(), make_api()
    consumer = Waiting(here, "wait=30")
    try:
        await eventually(lambda: here.polls.waiting == 1)
        [stored] = await post(there, {"name": "from elsewhere"})
        await deferLater(reactor, 0.1)
        assert not consumer.answered
        here.reactor.advance(0.5)
        await eventually(lambda: consumer.answered)
        page = consumer.reply().json()
        assert [i["id"] for i in page["incidents"]] == [stored["id"]]
        assert here.polls.waiting == 0
    finally:
        consumer.close()


@pytest_twisted.ensureDeferred
async def test_a_commit_of_another_instance_does_not_end_a_filtered_wait(api):
    """Woken for nothing of its instance, it waits on, until its own deadline."""
    consumer = Waiting(api, "instance=other&wait=10")
    try:
        await eventually(lambda: api.polls.waiting == 1)
        api.reactor.advance(4)
        await post(api, {"name": "not for it"})
        await deferLater(reactor, 0.1)
        assert not consumer.answered
        assert api.polls.waiting == 1
        api.reactor.advance(5.9)
        await deferLater(reactor, 0.05)
        assert not consumer.answered
        api.reactor.advance(0.1)
        await eventually(lambda: consumer.answered)
        assert consumer.reply().json()["incidents"] == []
    finally:
        consumer.close()


@pytest_twisted.ensureDeferred
async def test_a_consumer_that_goes_away_stops_waiting(api):
    consumers = [Waiting(api, "wait=60") for _ in range(3)]
    await eventually(lambda: api.polls.waiting == 3)
    consumers[0].close()
    await eventually(lambda: api.polls.waiting == 2)
    for c in consumers[1:]:
        c.close()
    await eventually(lambda: api.polls.waiting == 0)
    # Neither their timers nor the store's poll are left pending.
    assert api.reactor.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_stopping_answers_every_waiting_consumer(api):
    consumers = [Waiting(api, "wait=60") for _ in range(3)]
    try:
        await eventually(lambda: api.polls.waiting == 3)
        api.polls.stopService()
        await eventually(lambda: all(c.answered for c in consumers))
        for c in consumers:
            assert c.reply().status == 200
            assert c.reply().json()["incidents"] == []
    finally:
        for c in consumers:
            c.close()


@pytest_twisted.ensureDeferred
async def test_new_tokens_end_every_long_poll_waiting_or_reading(api):
    """
    When the API tokens change (a reload), a long poll ends empty, with the
    ``next`` it was given: one waiting, and one whose page was being read
    at that moment (what it read may have been stored after its token
    went).
    """
    after = await cursor_now(api)
    waiting = Waiting(api, f"after={after}&wait=30")
    try:
        await eventually(lambda: api.polls.waiting == 1)
        await post(api, {"name": "stored as the tokens change"})
        # A commit wakes the waiting one: it reads its page (in the readers'
        # thread) while the tokens change.
        assert api.polls.waiting == 0 and not waiting.answered
        api.polls.tokens_changed()
        await eventually(lambda: waiting.answered)
        assert waiting.reply().json() == {"incidents": [], "next": unquote(after)}
        # A poll begun under the new tokens gets the incident.
        reply = await get(api, f"/api/v1/incidents?after={after}&wait=30")
        assert [i["name"] for i in reply.json()["incidents"]] == [
            "stored as the tokens change"
        ]
        other = Waiting(api, f"after={await cursor_now(api)}&wait=30")
        await eventually(lambda: api.polls.waiting == 1)
        api.polls.tokens_changed()
        await eventually(lambda: other.answered)
        assert other.reply().json()["incidents"] == []
        other.close()
    finally:
        waiting.close()


@pytest_twisted.ensureDeferred
async def test_a_page_with_incidents_does_not_wait(api):
    await post(api, {"name": "there already"})
    reply = await get(api, "/api/v1/incidents?wait=60")
    assert len(reply.json()["incidents"]) == 1
    assert api.polls.waiting == 0


# -- start-up ---------------------------------------------------------------------


def test_a_refused_token_file_makes_no_store(tmp_path):
    db = tmp_path / "gwebhook.sqlite"
    options = Options(environ={})
    with pytest.raises(usage.UsageError, match="--api-token-file: cannot read"):
        options.parseOptions(
            [
                "--no-tls",
                "--interface",
                "127.0.0.1",
                "--port",
                "0",
                "--db",
                str(db),
                "--max-connections",
                "10",
                *AUTH,
                "--api-token-file",
                str(tmp_path / "nope"),
            ]  # fmt: skip
        )
    assert not db.exists()
