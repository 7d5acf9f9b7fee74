"""
The console in a real browser: Debian's chromium, headless, driven by
Playwright against a real ``twistd gwebhook`` (TLS with the test CA, a
config file with instances and a forward, API tokens).  One browser and one
daemon serve the whole module; each test opens its own pages.

``GWEBHOOK_SCREENSHOTS=DIR`` also writes each page at 1280x800 into DIR
(docs/console/ holds the committed ones; see docs/console/README.md).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from support.browser import chromium_path, fill_store, why_no_browser
from support.daemon import Daemon, Processes, wait_for_log
from support.http import send
from support.receiver import Receiver, Reply
from support.wait import wait_for

from gwebhook.api import parse_cursor

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser())),
]

TOKEN = "console-browser-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
VIEWPORT = {"width": 1280, "height": 800}
CONFIG = """\
[api]
tokens_file = "tokens"

[[instance]]
name = "kept"
anonymous = true
store_samples = true

[[instance]]
name = "hostile"
anonymous = true
store_samples = true

[[instance]]
name = "fw"
anonymous = true

[[forward]]
name = "siem"
url = "{url}"
instances = ["fw"]
"""
WORKBENCH_INSTANCE = """
[[instance]]
name = "wb"
anonymous = true
store_samples = true
"""


# -- the browser, the daemon, a logged-in page ----------------------------------------


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path())
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def receiver():
    with Receiver(None) as r:
        r.answer(then=Reply(status=400, body=b'{"error": "refused by the test"}'))
        yield r


@pytest.fixture(scope="module")
def console_daemon(tmp_path_factory, pki, receiver):
    directory = tmp_path_factory.mktemp("console")
    (directory / "tokens").write_text(TOKEN + "\n")
    config = directory / "gwebhook.toml"
    config.write_text(CONFIG.format(url=receiver.url()) + WORKBENCH_INSTANCE)
    with Processes(directory, pki) as started:
        d = started("--allow-anonymous", "--store-samples", "--config", str(config))
        d.config = config
        yield d


def origin(d: Daemon) -> str:
    return f"https://127.0.0.1:{d.port}"


class Console:
    """A browser context logged in (or not) to a daemon, and what it asked for."""

    def __init__(self, browser, d: Daemon) -> None:
        self.d = d
        self.origin = origin(d)
        self.context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on(
            "dialog", lambda dialog: self.problems.append(f"dialog {dialog.message}")
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"error {e}"))
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.text}") if m.type == "error" else None
            ),
        )

    def login(self, token: str = TOKEN) -> None:
        self.page.goto(self.origin + "/console/")
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")

    def open(self, route: str, ready: str) -> None:
        self.page.goto(f"{self.origin}/console/#/{route}")
        self.page.wait_for_selector(ready)

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.origin + "/")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser, console_daemon):
    c = Console(browser, console_daemon)
    try:
        c.login()
        c.page.wait_for_selector("#incident-rows", state="attached")
        yield c
        assert c.foreign() == [], "the console asked another origin"
    finally:
        c.close()


def post(d: Daemon, body, path: str = "/", headers=None) -> list[dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = d.request(path=path, body=data, headers=headers)
    assert reply.status == 200, reply
    return reply.json()


def api(d: Daemon, path: str):
    reply = send(d, None, BEARER, method="GET", path=path)
    assert reply.status == 200, reply
    return reply.json()


def screenshot(c: Console, name: str) -> None:
    folder = os.environ.get("GWEBHOOK_SCREENSHOTS")
    if folder:
        c.page.wait_for_timeout(150)
        c.page.screenshot(path=str(Path(folder) / f"{name}.png"))


# -- login -----------------------------------------------------------------------------


def test_login_wrong_token_right_token_cookie_and_logout(browser, console_daemon):
    c = Console(browser, console_daemon)
    try:
        c.login("not-the-token")
        assert "not an API token" in c.page.inner_text("p.error")
        assert c.context.cookies() == []
        screenshot(c, "login")
        c.page.fill("input[name=token]", TOKEN)
        c.page.click("button[type=submit]")
        c.page.wait_for_selector("#incident-rows", state="attached")
        [cookie] = c.context.cookies()
        assert cookie["name"] == "__Host-gwebhook-session"
        assert TOKEN not in cookie["value"]
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (
            True,
            True,
            "Strict",
        )
        assert c.page.evaluate("document.cookie") == ""  # HttpOnly: not for scripts
        c.page.click("#logout")
        c.page.wait_for_selector("input[name=token]")
        reply = send(
            console_daemon,
            None,
            {"Cookie": f"{cookie['name']}={cookie['value']}"},
            method="GET",
            path="/api/v1/incidents",
        )
        assert reply.status == 401  # ended on the server, not only in the browser
        assert c.foreign() == []
    finally:
        c.close()


# -- incidents -------------------------------------------------------------------------


def test_an_incident_posted_while_the_page_is_open_appears_within_2_s(console):
    page = console.page
    page.wait_for_selector("#live.good", timeout=5000)  # the long poll is open
    [stored] = post(console.d, {"name": "arrives live", "type": "Live"})
    started = time.monotonic()
    page.wait_for_selector(f'#incident-rows tr[data-id="{stored["id"]}"]', timeout=2000)
    assert time.monotonic() - started < 2.0
    first = page.locator("#incident-rows tr").first
    assert first.get_attribute("data-id") == stored["id"]  # newest first
    assert "arrives live" in first.inner_text()


def test_the_incident_filter_shows_one_instance(console):
    post(console.d, {"name": "of kept"}, "/instance/execute/kept")
    post(console.d, {"name": "of fw"}, "/instance/execute/fw")
    console.open("incidents?instance=kept", "#incident-rows tr")
    cells = console.page.locator("#incident-rows td:nth-child(5)")
    # The unfiltered rows stay until the filtered page's answer replaces them.
    wait_for(
        lambda: set(cells.all_inner_texts()) == {"kept"},
        what="only the instance's incidents shown",
    )
    assert console.page.input_value("#instance-filter") == "kept"


def test_the_incident_page_shows_it_whole_and_its_exact_body(console):
    body = b'{"name": "detailed", "rawJson": {"user": "alice", "n": [1, 2]}}\n'
    [stored] = post(console.d, body, headers={"X-Sensor": "edge-7"})
    console.open(f"incident/{stored['id']}", "#body-text")
    page = console.page
    assert page.inner_text("#incident-name") == "detailed"
    assert json.loads(page.inner_text("#details pre")) == {"user": "alice", "n": [1, 2]}
    assert "edge-7" in page.inner_text("#headers")
    request = page.inner_text("#request")
    assert "POST" in request and "127.0.0.1" in request and "none" in request
    assert page.inner_text("#body-text") == body.decode()
    screenshot(console, "incident")
    with page.expect_download() as download:
        page.click("#download")
    assert Path(download.value.path()).read_bytes() == body


# -- samples ---------------------------------------------------------------------------


def test_the_samples_page_shows_an_instances_samples(console):
    for n in range(3):
        post(console.d, {"name": f"sample {n}", "seq": n}, "/instance/execute/kept")
    console.open("samples?instance=kept", "article.sample")
    names = console.page.locator("article.sample h2").all_inner_texts()
    assert [n.split(" ", 1)[1] for n in names][-3:] == [
        "sample 0",
        "sample 1",
        "sample 2",
    ]
    assert '"seq": 2' in console.page.locator(
        "article.sample pre"
    ).last.inner_text() or any(
        '"seq": 2' in t
        for t in console.page.locator("article.sample pre").all_inner_texts()
    )
    screenshot(console, "samples")


# -- the workbench ---------------------------------------------------------------------


def test_the_workbench_toml_is_accepted_on_sighup_with_the_same_results(console):
    d = console.d
    samples = [
        {
            "title": "disk full",
            "kind": "Infra",
            "at": 1714557600,
            "sev": 3,
            "host": "a",
        },
        {"title": "login storm", "kind": "Auth", "at": "2024-05-01T12:00:00+02:00"},
        {"title": 42, "kind": "Odd", "at": "2024-05-02", "sev": "high"},
    ]
    for sample in samples:
        post(d, sample, "/instance/execute/wb")
    console.open("workbench?instance=wb", "#preview tbody tr")
    page = console.page
    page.fill("#map-name", "title")
    page.fill("#map-type", "join(' ', ['WB', kind])")
    page.fill("#map-occurred", "at")
    page.click("#add-field")
    page.locator(".field-key").last.fill("severity")
    # The preview asked once every expression is in.
    with page.expect_response(
        lambda r: "mapping/preview" in r.url and "sev" in (r.request.post_data or "")
    ) as answered:
        page.locator(".field-expr").last.fill("sev")
    results = answered.value.json()["results"]
    assert [r["name"] for r in results] == ["disk full", "login storm", None]
    assert "map.name must give a string" in results[2]["errors"]["name"]
    shown = page.locator("#preview tbody tr .r-name").all_inner_texts()
    assert shown == ["disk full", "login storm", "null"]
    screenshot(console, "workbench")
    block = page.inner_text("#toml")
    assert block.startswith('[instance.map]\nname = "title"')

    # Pasted under the instance, the daemon takes it on SIGHUP ...
    d.config.write_text(d.config.read_text() + block)
    d.signal(signal.SIGHUP)
    wait_for_log(d, "configuration reloaded")
    # ... and stores what the preview said it would.
    for sample, result in zip(samples[:2], results[:2], strict=True):
        [stored] = post(d, sample, "/instance/execute/wb")
        incident = api(d, f"/api/v1/incidents/{stored['id']}")
        assert incident["name"] == result["name"]
        assert incident["type"] == result["type"]
        assert incident["occurred"] == result["occurred"]
        assert incident["fields"] == result["fields"]
    # The third, as the preview's error said, is refused at ingest.
    refused = d.request(
        path="/instance/execute/wb", body=json.dumps(samples[2]).encode()
    )
    assert refused.status == 400
    assert results[2]["errors"]["name"] in refused.json()["error"]


# -- deliveries ------------------------------------------------------------------------


def test_a_dead_delivery_is_shown_with_its_reason_and_redelivered(console, receiver):
    d = console.d
    [stored] = post(d, {"name": "to the siem"}, "/instance/execute/fw")
    wait_for(
        lambda: any(
            x["incident"] == stored["id"]
            for x in api(d, "/api/v1/deliveries?forward=siem&state=dead")["deliveries"]
        ),
        15,
        "its delivery dead (an earlier test's may be dead already)",
    )
    console.open("deliveries?forward=siem", f'#dead tr[data-incident="{stored["id"]}"]')
    page = console.page
    row = page.locator(f'#dead tr[data-incident="{stored["id"]}"]')
    assert "400" in row.inner_text()
    assert page.inner_text('#forwards tr[data-forward="siem"] .dead') != "0"
    screenshot(console, "deliveries")
    before = len(receiver.requests)
    receiver.answer(then=Reply(status=200))
    row.get_by_role("button", name="Redeliver").click()
    received = receiver.wait_for_requests(before + 1, timeout=15)
    assert received[-1].json()["name"] == "to the siem"
    dead = "/api/v1/deliveries?forward=siem&state=dead"
    wait_for(
        lambda: all(x["incident"] != stored["id"] for x in api(d, dead)["deliveries"]),
        15,
        "the incident's delivery no longer dead",
    )
    console.open("deliveries?forward=siem", "#forwards")
    assert page.locator(f'#dead tr[data-incident="{stored["id"]}"]').count() == 0


# -- health ----------------------------------------------------------------------------


def test_the_health_page_shows_the_store_the_rate_and_auth_failures(console):
    d = console.d
    assert send(d, b"{}", {}, path="/instance/execute/nobody").status in (200, 404)
    console.open("health", "#store-status")
    page = console.page
    assert page.inner_text("#store-status") == "ok"
    assert page.locator(".chart rect.bar").count() == 60
    assert "in the last hour" in page.inner_text("#rate")
    screenshot(console, "health")


# -- hostile payloads ------------------------------------------------------------------

HOSTILE = [
    {
        "name": "<script>window.__pwned = 'name'</script>",
        "type": "<img src=x onerror=\"window.__pwned='type'\">",
        "link": "javascript:window.__pwned='link'",
        "html": "<a href=\"javascript:window.__pwned='a'\">click</a>"
        "<svg onload=\"window.__pwned='svg'\">",
        "long": "A" * 200_000,
    },
    {"name": "deep", "nest": json.loads("[" * 400 + "1" + "]" * 400)},
    {"name": "x" * 5000, "</pre><script>window.__pwned='key'</script>": 1},
]


def test_hostile_payloads_are_shown_as_text_and_run_nothing(console):
    d = console.d
    ids = []
    for payload in HOSTILE:
        [stored] = post(
            d,
            payload,
            "/instance/execute/hostile",
            headers={"X-Evil": "<script>window.__pwned='header'</script>"},
        )
        ids.append(stored["id"])
    page = console.page
    console.open("incidents", f'#incident-rows tr[data-id="{ids[-1]}"]')
    visits = [f"incident/{i}" for i in ids] + [
        "samples?instance=hostile",
        "workbench?instance=hostile",
    ]
    for route in visits:
        page.goto(f"{console.origin}/console/#/{route}")
        page.wait_for_selector("h1")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__pwned") is None, route
        assert page.locator("img, svg:not(.chart), script:not([src])").count() == 0, (
            route
        )
        assert page.locator("a[href^='javascript']").count() == 0, route
    page.goto(f"{console.origin}/console/#/incident/{ids[0]}")
    page.wait_for_selector("#body-text")
    assert page.inner_text("#incident-name") == HOSTILE[0]["name"]
    assert "javascript:window.__pwned='link'" in page.inner_text("#details")
    assert "<script>window.__pwned='header'</script>" in page.inner_text("#headers")
    assert page.evaluate("window.__pwned") is None
    # No script tried and was stopped by the policy either.
    assert [p for p in console.problems if "Content Security Policy" in p] == []
    assert [p for p in console.problems if p.startswith("dialog")] == []


# -- every page, one origin ------------------------------------------------------------


def test_every_page_asks_only_its_own_origin(console):
    [stored] = post(console.d, {"name": "for the tour"})
    for route, ready in [
        ("incidents", "#incident-rows tr"),
        (f"incident/{stored['id']}", "#body-text"),
        ("samples?instance=kept", "article.sample"),
        ("workbench?instance=kept", "#preview-summary"),
        ("deliveries", "#forwards"),
        ("health", "#store-status"),
    ]:
        console.open(route, ready)
        console.page.wait_for_timeout(300)
    assert console.foreign() == []
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in console.requests)
    console.open("incidents", "#incident-rows tr")
    screenshot(console, "incidents")


def test_the_console_is_usable_on_a_narrow_window_and_by_keyboard(console):
    post(console.d, {"name": "seen on a phone " + "wide" * 100})
    page = console.page
    page.set_viewport_size({"width": 420, "height": 800})
    console.open("incidents", "#incident-rows tr")
    page.reload()
    page.wait_for_selector("#incident-rows tr")
    # Nothing wider than the window: no horizontal scrolling of the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    # Tab reaches the navigation and Enter follows it.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(3):  # Incidents, Samples, Workbench
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Workbench"
    page.keyboard.press("Enter")
    page.wait_for_selector("#preview-summary")
    assert page.url.endswith("#/workbench")


# -- 100,000 incidents -----------------------------------------------------------------


@pytest.fixture(scope="module")
def big_daemon(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("big")
    (directory / "tokens").write_text(TOKEN + "\n")
    d = Daemon(
        ["--allow-anonymous", "--store-samples", "--api-token-file", "tokens"],
        directory,
        pki,
    )
    fill_store(d.db, 100_000)
    with Processes(directory, pki) as started:
        started.started.append(d)
        d.start()
        yield d


def api_asked(c: Console, path: str) -> list[dict[str, str]]:
    """The query of every request the page made to ``path``, in order."""
    asked = []
    for url in c.requests:
        parts = urlsplit(url)
        if parts.path == path:
            asked.append(dict(parse_qsl(parts.query)))
    return asked


def test_the_incidents_page_asks_for_one_page_of_100000_and_shows_only_it(
    browser, big_daemon
):
    """
    With 100,000 incidents the page asks the API for the newest 50 (no
    cursor), shows exactly those, waits for what comes after the newest
    only, and asks for the next 50 older ones only when told to.  How fast
    the pages load is measured by bench/console_load.py, not here.
    """
    c = Console(browser, big_daemon)
    try:
        c.login()
        c.page.wait_for_selector("#incident-rows tr")
        rows = c.page.locator("#incident-rows tr")
        assert rows.count() == 50
        ids = [int(i) for i in rows.evaluate_all("rs => rs.map(r => r.dataset.id)")]
        assert ids == list(range(100_000, 99_950, -1))
        assert api_asked(c, "/api/v1/recent") == [{"limit": "50"}]
        # The live view waits for what is after the newest, a page at most.
        [poll] = wait_for(
            lambda: api_asked(c, "/api/v1/incidents"), what="the long poll"
        )
        assert parse_cursor(poll["after"]) == 100_000
        assert int(poll["limit"]) <= 100 and "wait" in poll
        # Older: the next page only, from the oldest shown.
        c.page.click("#older")
        c.page.wait_for_selector("#incident-rows tr:nth-child(100)")
        assert rows.count() == 100
        first, older = api_asked(c, "/api/v1/recent")
        assert older["limit"] == "50" and parse_cursor(older["before"]) == 99_951
        assert rows.last.get_attribute("data-id") == "99901"
        # One instance: its newest page.
        c.requests.clear()
        c.open("incidents?instance=bulk-2", "#incident-rows tr[data-id='99802']")
        assert api_asked(c, "/api/v1/recent") == [{"instance": "bulk-2", "limit": "50"}]
        assert rows.count() == 50
        assert rows.first.get_attribute("data-id") == "99998"
        # The other pages read one incident, or bounded lists, never the store.
        c.requests.clear()
        c.open("incident/54321", "#body-text")
        c.open("deliveries", "#forwards")
        c.open("health", "#store-status")
        assert api_asked(c, "/api/v1/deliveries") == [{"limit": "1"}]
        assert [u for u in c.requests if "/api/v1/recent" in u] == []
        assert c.foreign() == []
    finally:
        c.close()
