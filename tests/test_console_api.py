"""
The console's server side, in-process through the daemon's own
``makeService`` over a real store (``support.inprocess``): the login and
its session, the read API accepting the session (and a POST only with its
CSRF token), the headers of every console answer, the mapping preview's
answers against ingest's, and the new paths' answers against the OpenAPI
document.  The pages in a real browser are in test_console_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from jsonschema import Draft202012Validator
from support.credentials import BASIC_HEADER
from support.http import Response
from support.inprocess import Wire, make_site
from support.openapi import Document
from support.store import read_only, row_counts
from twisted.internet.task import Clock

from gwebhook import answers, api, readback
from gwebhook.answers import CONTENT_SECURITY_POLICY
from gwebhook.console import queries, resource
from gwebhook.console.preview import preview
from gwebhook.console.sessions import SESSION_SECONDS

TOKEN = "console-token-1"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SENDER = {"Authorization": BASIC_HEADER}
CSP = CONTENT_SECURITY_POLICY.decode()


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", TOKEN)
    site, store = make_site(tmp_path / "gwebhook.sqlite", max_body_bytes=100_000)
    site.store = store
    site.db = tmp_path / "gwebhook.sqlite"
    yield site
    store.close()


def raw(method: str, path: str, headers=None, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode("utf-8") + (body or b"")


async def ask(site, method, path, headers=None, body: bytes | None = None) -> Response:
    w = Wire(site)
    try:
        w.send(raw(method, path, headers, body))
        if not w.written():
            await w.finished()
        return w.reply()
    finally:
        w.close()


async def send(site, objects: Any) -> list[dict[str, Any]]:
    reply = await ask(site, "POST", "/", SENDER, json.dumps(objects).encode())
    assert reply.status == 200, reply
    return reply.json()


async def login(site, token: str = TOKEN) -> Response:
    form = b"token=" + token.encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return await ask(site, "POST", "/console/login", headers, form)


def cookie_of(reply: Response) -> str:
    return reply.headers["set-cookie"].split(";", 1)[0]


async def session(site) -> tuple[str, str]:
    """A logged-in session: (Cookie header value, CSRF token)."""
    cookie = cookie_of(await login(site))
    answer = await ask(site, "GET", "/console/session", {"Cookie": cookie})
    assert answer.status == 200
    return cookie, answer.json()["csrf"]


def assert_console_headers(reply: Response) -> None:
    assert reply.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"


# -- login and session -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_console_without_a_session_is_the_login_form(site):
    reply = await ask(site, "GET", "/console/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert b'name="token"' in reply.body and b'type="password"' in reply.body
    assert b"<script" not in reply.body
    assert_console_headers(reply)


@pytest_twisted.ensureDeferred
async def test_a_wrong_token_shows_an_error_and_sets_nothing(site):
    reply = await login(site, "not-the-token")
    assert reply.status == 401
    assert "set-cookie" not in reply.headers
    assert b"That is not an API token of this gwebhook." in reply.body
    assert_console_headers(reply)


@pytest_twisted.ensureDeferred
async def test_wrong_tokens_at_the_login_count_for_the_throttle(tmp_path, monkeypatch):
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", TOKEN)
    site, store = make_site(tmp_path / "gwebhook.sqlite", auth_fail_limit=3)
    try:
        for _ in range(3):
            assert (await login(site, "not-the-token")).status == 401
        # Now even the right token is refused from that address, unread.
        reply = await login(site)
        assert reply.status == 429
        assert int(reply.headers["retry-after"]) > 0
        assert "set-cookie" not in reply.headers
        assert b"Too many failed attempts from your address" in reply.body
        assert_console_headers(reply)
        # One throttle for the console and the read API.
        assert (await ask(site, "GET", "/api/v1/incidents", BEARER)).status == 429
        with contextlib.closing(read_only(tmp_path / "gwebhook.sqlite")) as db:
            assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (
                0,
            )
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_the_right_token_sets_a_strict_cookie_that_is_not_the_token(site):
    reply = await login(site)
    assert reply.status == 303
    assert reply.headers["location"] == "/console/"
    cookie = reply.headers["set-cookie"]
    name, value = cookie.split(";", 1)[0].split("=", 1)
    assert name == "__Host-gwebhook-session"
    assert TOKEN not in cookie and len(value) >= 40
    attributes = [a.strip() for a in cookie.split(";")[1:]]
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    assert f"Max-Age={SESSION_SECONDS}" in attributes
    # Two logins, two sessions.
    assert cookie_of(await login(site)) != cookie.split(";", 1)[0]
    page = await ask(site, "GET", "/console/", {"Cookie": cookie.split(";", 1)[0]})
    assert b'src="/console/static/js/app.js"' in page.body


@pytest_twisted.ensureDeferred
async def test_the_session_reads_the_api_and_logout_ends_it(site):
    await send(site, {"name": "one"})
    cookie, csrf = await session(site)
    page = await ask(site, "GET", "/api/v1/incidents", {"Cookie": cookie})
    assert page.status == 200
    assert [i["name"] for i in page.json()["incidents"]] == ["one"]
    assert_console_headers(page)
    # Logout needs the CSRF token too.
    refused = await ask(site, "POST", "/console/logout", {"Cookie": cookie})
    assert refused.status == 403
    out = await ask(
        site, "POST", "/console/logout", {"Cookie": cookie, "X-CSRF-Token": csrf}
    )
    assert out.status == 303
    assert "Max-Age=0" in out.headers["set-cookie"]
    after = await ask(site, "GET", "/api/v1/incidents", {"Cookie": cookie})
    assert after.status == 401
    assert (
        await ask(site, "GET", "/console/session", {"Cookie": cookie})
    ).status == 401


@pytest_twisted.ensureDeferred
async def test_a_made_up_session_reads_nothing(site):
    for cookie in ("__Host-gwebhook-session=" + "A" * 43, "__Host-gwebhook-session="):
        reply = await ask(site, "GET", "/api/v1/incidents", {"Cookie": cookie})
        assert reply.status == 401


MADE_UP = "__Host-gwebhook-session=" + "A" * 43


def assert_cookie_cleared(reply: Response) -> None:
    """The answer tells the browser to drop the session cookie, as it was set."""
    cookie = reply.headers["set-cookie"]
    assert cookie.split(";", 1)[0] == "__Host-gwebhook-session="
    attributes = {a.strip() for a in cookie.split(";")[1:]}
    assert attributes == {
        "Path=/",
        "Max-Age=0",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
    }


def session_rows(db) -> list[tuple]:
    with contextlib.closing(read_only(db)) as connection:
        return connection.execute("SELECT * FROM console_sessions").fetchall()


@pytest_twisted.ensureDeferred
async def test_made_up_cookies_count_for_the_throttle_and_are_cleared(
    tmp_path, monkeypatch
):
    """
    A cookie that names no session cost a store read: each counts as a
    failed authentication of the client (the fourth makes it wait), and
    each 401 clears the cookie; none is a wrong API token on the health page.
    """
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", TOKEN)
    db = tmp_path / "gwebhook.sqlite"
    site, store = make_site(db, auth_fail_limit=4)
    try:
        cookie, csrf = await session(site)
        made_up = {"Cookie": MADE_UP}
        reply = await ask(site, "GET", "/api/v1/incidents", made_up)
        assert reply.status == 401
        assert_cookie_cleared(reply)
        reply = await ask(site, "GET", "/console/session", made_up)
        assert reply.status == 401
        assert_cookie_cleared(reply)
        reply = await ask(site, "GET", "/console/", made_up)
        assert reply.status == 200 and b'name="token"' in reply.body
        assert_cookie_cleared(reply)
        health = await ask(site, "GET", "/api/v1/health", {"Cookie": cookie})
        assert health.json()["api_auth_failures"] == 0
        reply = await ask(
            site, "POST", "/console/logout", {**made_up, "X-CSRF-Token": csrf}
        )
        assert reply.status == 303
        assert_cookie_cleared(reply)
        stored = session_rows(db)
        # Four failures: every one of the client's requests waits now, unread.
        for method, path in [
            ("GET", "/api/v1/incidents"),
            ("GET", "/console/session"),
            ("GET", "/console/"),
            ("POST", "/console/logout"),
        ]:
            reply = await ask(site, method, path, made_up)
            assert reply.status == 429, path
            assert int(reply.headers["retry-after"]) > 0
            assert "set-cookie" not in reply.headers
            assert_console_headers(reply)
        for headers in ({"Cookie": cookie}, BEARER):
            reply = await ask(site, "GET", "/api/v1/incidents", headers)
            assert reply.status == 429
        # Nothing else changed: the real session is still there, no row more.
        assert session_rows(db) == stored and len(stored) == 1
        assert row_counts(db) == {"requests": 0, "incidents": 0}
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_an_ended_session_is_401_and_its_cookie_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", TOKEN)
    db = tmp_path / "gwebhook.sqlite"
    clock = Clock()
    clock.advance(1_800_000_000)
    site, store = make_site(db, clock=clock)
    try:
        cookie, _ = await session(site)
        assert (
            await ask(site, "GET", "/api/v1/recent", {"Cookie": cookie})
        ).status == 200
        clock.advance(SESSION_SECONDS)
        reply = await ask(site, "GET", "/api/v1/incidents", {"Cookie": cookie})
        assert reply.status == 401
        assert_cookie_cleared(reply)
        assert session_rows(db) == []
        reply = await ask(site, "GET", "/console/session", {"Cookie": cookie})
        assert reply.status == 401
        assert_cookie_cleared(reply)
    finally:
        store.close()


# -- CSRF on a POST made with the session --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_post_with_the_session_needs_its_csrf_token(site):
    cookie, csrf = await session(site)
    body = json.dumps({"instance": "default", "map": {"name": "title"}}).encode()
    for headers in (
        {"Cookie": cookie},
        {"Cookie": cookie, "X-CSRF-Token": "wrong"},
        {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        {"Cookie": cookie, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
    ):
        reply = await ask(site, "POST", "/api/v1/mapping/preview", headers, body)
        assert reply.status == 403, headers
        assert "CSRF" in reply.json()["error"] or "origin" in reply.json()["error"]
    good = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "https://localhost"}
    reply = await ask(site, "POST", "/api/v1/mapping/preview", good, body)
    assert reply.status == 200
    # A bearer of a token needs no CSRF token: no browser sends it by itself.
    reply = await ask(site, "POST", "/api/v1/mapping/preview", BEARER, body)
    assert reply.status == 200


@pytest_twisted.ensureDeferred
async def test_a_post_path_refuses_get_and_a_get_path_refuses_post(site):
    reply = await ask(site, "GET", "/api/v1/mapping/preview", BEARER)
    assert (reply.status, reply.headers["allow"]) == (405, "POST")
    reply = await ask(site, "POST", "/api/v1/health", BEARER)
    assert (reply.status, reply.headers["allow"]) == (405, "GET, HEAD")


# -- headers on every console answer ---------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/console/"),
        ("GET", "/console/nothing-here"),
        ("GET", "/console/static/js/app.js"),
        ("GET", "/console/static/console.css"),
        ("GET", "/console/session"),
        ("POST", "/console/"),
        ("GET", "/console"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_console_answer_carries_the_security_headers(site, method, path):
    reply = await ask(site, method, path)
    assert_console_headers(reply)


@pytest_twisted.ensureDeferred
async def test_without_api_tokens_the_console_is_404_with_the_headers(tmp_path):
    site, store = make_site(tmp_path / "gwebhook.sqlite")
    try:
        for path in ("/console/", "/console/static/js/app.js", "/console"):
            reply = await ask(site, "GET", path)
            assert reply.status == 404
            assert_console_headers(reply)
        reply = await ask(site, "POST", "/console/login", body=b"token=x")
        assert reply.status == 404
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_static_files_have_their_types_and_no_inline_script(site):
    js = await ask(site, "GET", "/console/static/js/app.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    index = await login(site)
    page = await ask(site, "GET", "/console/", {"Cookie": cookie_of(index)})
    # Every script is a file of the console, none inline; no other origin.
    assert page.body.count(b"<script") == 1
    assert b"http://" not in page.body and b"https://" not in page.body


@pytest_twisted.ensureDeferred
async def test_a_static_file_the_browser_holds_is_answered_304(site):
    """
    Every static file carries an entity tag of its content; asked with it
    in If-None-Match (alone, weak, or in a list), the answer is 304 without
    the file; with another tag, the whole file again.
    """
    first = await ask(site, "GET", "/console/static/js/app.js")
    assert first.status == 200
    tag = first.headers["etag"]
    assert tag == resource.entity_tag(first.body).decode()
    assert first.headers["cache-control"] == "no-cache"
    for given in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        again = await ask(
            site, "GET", "/console/static/js/app.js", {"If-None-Match": given}
        )
        assert (again.status, again.body) == (304, b""), given
        assert again.headers["etag"] == tag
        assert "content-type" not in again.headers
        assert "content-length" not in again.headers
        assert_console_headers(again)
    changed = await ask(
        site, "GET", "/console/static/js/app.js", {"If-None-Match": '"other"'}
    )
    assert (changed.status, changed.body) == (200, first.body)
    css = await ask(site, "GET", "/console/static/console.css")
    assert css.headers["etag"] != tag


@pytest.mark.parametrize(
    "header, matches",
    [
        (None, False),
        (b"", False),
        (b'"abc"', True),
        (b'W/"abc"', True),
        (b' "x" , W/"abc" ', True),
        (b"*", True),
        (b'"abcd"', False),
        (b"abc", False),
        (b'"x", "y"', False),
    ],
)
def test_if_none_match_is_read_as_rfc_9110_says(header, matches):
    assert resource.not_modified(header, b'"abc"') is matches


# -- the mapping preview -------------------------------------------------------------


async def preview_of(site, body: dict[str, Any]) -> Response:
    return await ask(
        site, "POST", "/api/v1/mapping/preview", BEARER, json.dumps(body).encode()
    )


@pytest_twisted.ensureDeferred
async def test_the_preview_is_what_ingest_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", TOKEN)
    config = tmp_path / "gwebhook.toml"
    config.write_text(
        '[[instance]]\nname = "wb"\nanonymous = true\nstore_samples = true\n'
    )
    samples = [
        {"title": "a", "kind": "X", "at": 1714557600, "sev": 3},
        {"title": "b", "kind": "Y", "at": "2024-05-01T12:00:00+02:00"},
        {"title": 7, "name": "own name"},
        {"rawJson": {"nested": True}, "occurred": "2024-01-01"},
    ]
    site, store = make_site(tmp_path / "gwebhook.sqlite")
    try:
        from gwebhook.config import load_config
        from gwebhook.instances import Instances

        site.instances = Instances(
            site.instances.default, load_config(str(config), {}).instances, None
        )
        for sample in samples:
            reply = await ask(
                site,
                "POST",
                "/instance/execute/wb",
                {},
                json.dumps(sample).encode(),
            )
            assert reply.status == 200
        asked = {
            "instance": "wb",
            "map": {"name": "title", "type": "kind", "occurred": "at"},
            "fields": {"severity": "sev", "broken": "(("},
        }
        reply = await preview_of(site, asked)
        assert reply.status == 200
        results = reply.json()["results"]
        assert [r["name"] for r in results] == [
            "a",
            "b",
            None,
            "Generic webhook triggered incident",
        ]
        assert [r["type"] for r in results] == [
            "X",
            "Y",
            "Unclassified",
            "Unclassified",
        ]
        assert results[0]["occurred"] == "2024-05-01T10:00:00Z"
        assert results[1]["occurred"] == "2024-05-01T10:00:00Z"
        assert results[2]["occurred"] is None
        assert results[3]["occurred"] == "2024-01-01T00:00:00Z"
        assert results[0]["fields"] == {"severity": 3}
        assert (
            "map.name must give a string, got a number" in results[2]["errors"]["name"]
        )
        # The expression that does not compile is in every result's errors.
        assert all("fields.broken" in r["errors"] for r in results)
        assert set(results[0]["errors"]) == {"fields.broken"}
        # The same, computed by the pure function from the elements as sent.
        assert (
            preview(samples, "wb", "Unclassified", asked["map"], asked["fields"])
            == results
        )
        assert row_counts(tmp_path / "gwebhook.sqlite")["incidents"] == 4
    finally:
        store.close()


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"instance": "nobody"}, 404, "instance: no instance named 'nobody'"),
        ({}, 400, "instance: give the name of an instance, a string"),
        ({"instance": "default", "extra": 1}, 400, "'extra': unknown key"),
        ({"instance": "default", "map": {"severity": "x"}}, 400, "map.severity"),
        (
            {"instance": "default", "map": {"name": 3}},
            400,
            "map.name: must be a string",
        ),
        ({"instance": "default", "fields": []}, 400, "fields: must be an object"),
        ([], 400, "body: not a JSON object"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_preview_request_is_refused_naming_what(
    site, body, status, message
):
    reply = await preview_of(site, body)
    assert reply.status == status
    assert message in reply.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_preview_request_that_is_not_json_is_400(site):
    reply = await ask(site, "POST", "/api/v1/mapping/preview", BEARER, b"{not json")
    assert reply.status == 400
    assert reply.json()["error"].startswith("body: not JSON")


@pytest_twisted.ensureDeferred
async def test_redeliver_takes_only_ids_of_ascii_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("GWEBHOOK_API_TOKENS", TOKEN)
    config = tmp_path / "gwebhook.toml"
    config.write_text('[[forward]]\nname = "central"\nurl = "http://127.0.0.1:9/"\n')
    db = tmp_path / "gwebhook.sqlite"
    site, store = make_site(db, config_file=config)

    def deliveries() -> list[tuple]:
        with contextlib.closing(read_only(db)) as connection:
            return connection.execute(
                "SELECT incident_id, state, attempts, queued FROM deliveries"
            ).fetchall()

    async def redeliver(ids: list[str]) -> Response:
        body = json.dumps({"forward": "central", "incidents": ids}).encode()
        return await ask(site, "POST", "/api/v1/deliveries/redeliver", BEARER, body)

    try:
        [stored] = await send(site, {"name": "to forward"})
        before = deliveries()
        assert len(before) == 1
        # Digits to str.isdigit, not to int(): a 400, not a 500.
        for ids in (["\u00b2"], [stored["id"] + "\u00b9"], ["\u0663"]):
            reply = await redeliver(ids)
            assert reply.status == 400, (ids, reply)
            assert reply.json() == {
                "error": "incidents: give 1 to 1000 incident ids, each a string of "
                "digits"
            }
            assert deliveries() == before
        reply = await redeliver([stored["id"]])
        assert reply.status == 200
        assert reply.json() == {"queued": 1}
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_a_console_post_body_over_its_limit_is_413_unread(site):
    reply = await ask(site, "POST", "/console/login", {}, b"token=" + b"x" * 9000)
    assert reply.status == 413
    assert_console_headers(reply)


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        ("POST", "/console/login", {}, b"token=" + b"x" * 9000, 413),
        ("POST", "/api/v1/mapping/preview", BEARER, b"x" * 70_000, 413),
        ("POST", "/console/", {}, b"token=x", 404),
        ("POST", "/console/session", {}, b"{}", 404),
        ("POST", "/api/v1/incidents", BEARER, b"{}", 405),
        ("GET", "/console/", {"X-Long": "x" * 5000}, None, 431),
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_channels_refusals_carry_the_security_headers(
    site, method, path, headers, body, status
):
    """Refused before any route reads it, by the channel: the same headers."""
    reply = await ask(site, method, path, headers, body)
    assert reply.status == status
    assert_console_headers(reply)
    assert reply.headers["x-frame-options"] == "DENY"
    assert row_counts(site.db) == {"requests": 0, "incidents": 0}


# -- the console's API paths against the OpenAPI document ---------------------------


@pytest_twisted.ensureDeferred
async def test_the_console_paths_answer_as_the_document_says(site):
    doc = Document((await ask(site, "GET", "/api/v1/openapi.json", BEARER)).json())
    for schema in doc.document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    await send(site, [{"name": f"n{i}"} for i in range(5)])
    recent = await ask(site, "GET", "/api/v1/recent?limit=2", BEARER)
    doc.check("/api/v1/recent", recent)
    assert [i["id"] for i in recent.json()["incidents"]] == ["5", "4"]
    older = recent.json()["older"]
    rest = await ask(site, "GET", f"/api/v1/recent?limit=10&before={older}", BEARER)
    doc.check("/api/v1/recent", rest)
    assert [i["id"] for i in rest.json()["incidents"]] == ["3", "2", "1"]
    assert rest.json()["older"] is None
    doc.check("/api/v1/recent", await ask(site, "GET", "/api/v1/recent?x=1", BEARER))
    doc.check("/api/v1/instances", await ask(site, "GET", "/api/v1/instances", BEARER))
    health = await ask(site, "GET", "/api/v1/health", BEARER)
    doc.check("/api/v1/health", health)
    assert health.json()["store"] == {"status": "ok", "database": "sqlite"}
    assert sum(health.json()["incidents_per_minute"]["counts"]) == 5
    deliveries = await ask(site, "GET", "/api/v1/deliveries", BEARER)
    doc.check("/api/v1/deliveries", deliveries)
    bad = await ask(site, "GET", "/api/v1/deliveries?state=gone", BEARER)
    doc.check("/api/v1/deliveries", bad)
    assert bad.status == 400
    body = await ask(site, "GET", "/api/v1/incidents/3/body", BEARER)
    assert body.status == 200
    assert body.headers["content-type"] == "application/octet-stream"
    assert json.loads(body.body) == [{"name": f"n{i}"} for i in range(5)]
    assert "attachment" in body.headers["content-disposition"]
    missing = await ask(site, "GET", "/api/v1/incidents/99/body", BEARER)
    assert missing.status == 404
    redeliver = await ask(
        site,
        "POST",
        "/api/v1/deliveries/redeliver",
        BEARER,
        json.dumps({"forward": "none", "dead": True}).encode(),
    )
    doc.check("/api/v1/deliveries/redeliver", redeliver, "post")
    assert redeliver.status == 404
    preview_answer = await preview_of(
        site, {"instance": "default", "map": {"name": "x"}}
    )
    doc.check("/api/v1/mapping/preview", preview_answer, "post")


# -- one home for what the console shares with the read API ----------------------------


def test_the_console_does_not_import_the_read_api():
    """
    The read API imports the console's guard and sessions; the console
    imports the parameter rules, not ``gwebhook.api``: no import cycle.
    """
    code = (
        "import sys, gwebhook.console.endpoints, gwebhook.console.resource;"
        "print('gwebhook.api' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_console_and_the_read_api_share_their_summaries_and_answers():
    assert queries.summary is readback.summary
    assert not hasattr(queries, "_summary")
    for module in (api, resource):
        assert module.write_later is answers.write_later
        assert module.write_failure is answers.write_failure
        assert not hasattr(module, "_write")


@pytest_twisted.ensureDeferred
async def test_a_store_that_cannot_commit_is_503_with_retry_after(site):
    """
    The shared answer of work that failed: with the store file moved away,
    a login and a logout (commits) are 503 with Retry-After, no traceback;
    with it back, they work.
    """
    cookie, csrf = await session(site)
    aside = site.db.with_name("aside.sqlite")
    site.db.rename(aside)
    try:
        out = {"Cookie": cookie, "X-CSRF-Token": csrf}
        for reply in [
            await login(site),
            await ask(site, "POST", "/console/logout", out),
        ]:
            assert reply.status == 503, reply
            assert reply.headers["retry-after"] == "5"
            assert reply.json() == {"error": "incident store unavailable; retry later"}
            assert_console_headers(reply)
    finally:
        aside.rename(site.db)
    assert (await login(site)).status == 303
