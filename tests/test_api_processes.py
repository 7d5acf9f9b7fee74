"""
The read API of real ``twistd gwebhook`` processes: where its tokens come
from (and the start-ups refused for them), long polls woken by this
process's commits and by another process's (``--workers 2``), answered when
the daemon stops, a consumer that misses nothing while senders post, and a
thousand consumers waiting at once.
"""

from __future__ import annotations

import json
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from support.api import token_file
from support.credentials import AUTH, HEADERS
from support.daemon import (
    TWISTD,
    Daemon,
    last_line,
    log_text,
    run_twistd,
    wait_for_log,
)
from support.http import Response, connect, read_reply, request_head, send
from support.instances import instance, post, read_back, write_config
from support.senders import Honest, run_senders
from support.store import incidents_by_id, row_counts
from support.wait import wait_for

pytestmark = pytest.mark.process

TOKEN = "api-token-one"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def api_get(
    d: Daemon,
    path: str,
    headers: dict[str, str] = BEARER,
    timeout: float = 10,
    source: str = "127.0.0.1",
) -> Response:
    """GET ``path`` on a new connection."""
    return send(d, None, headers, source, "GET", path, timeout)


def incidents(d: Daemon, query: str = "", timeout: float = 10) -> dict:
    reply = api_get(d, "/api/v1/incidents?" + query, timeout=timeout)
    assert reply.status == 200, reply
    return reply.json()


def newest_cursor(d: Daemon) -> str:
    """Where a consumer that has seen everything stored so far waits."""
    after = ""
    while page := incidents(d, f"limit=1000&after={after}"):
        after = quote(page["next"])
        if not page["incidents"]:
            return after
    raise AssertionError("unreachable")


def timed_get(d: Daemon, path: str, timeout: float = 70) -> tuple[Response, float]:
    """A GET and the moment (monotonic) its answer was in."""
    reply = api_get(d, path, timeout=timeout)
    return reply, time.monotonic()


def post_one(d: Daemon, name: str, path: str = "/") -> tuple[dict, str, float]:
    """A webhook on a new connection: its incident, request id, when answered."""
    reply = d.request(
        path=path, body=json.dumps({"name": name}).encode(), headers=HEADERS
    )
    assert reply.status == 200, reply
    [stored] = reply.json()
    return stored, reply.headers["x-request-id"], time.monotonic()


def processes_of(d: Daemon) -> dict[str, str]:
    """Which process wrote each access line so far, by request id."""
    found = {}
    for line in log_text(d).splitlines():
        if " id=" in line:
            rid = line.split(" id=", 1)[1].split()[0]
            found[rid] = (
                line.split("worker ", 1)[1].split(":", 1)[0]
                if "worker " in line
                else "main"
            )
    return found


def served_by(d: Daemon, request_id: str) -> str:
    """Which process wrote the access line of ``request_id``: main or worker N."""
    line = wait_for(
        lambda: next(
            (ln for ln in log_text(d).splitlines() if f"id={request_id}" in ln), None
        ),
        5,
        f"the access line of {request_id}",
    )
    return line.split("worker ", 1)[1].split(":", 1)[0] if "worker " in line else "main"


# -- where the tokens come from --------------------------------------------------------


def test_each_token_of_the_token_file_is_taken(daemon, tmp_path):
    """One per line, blank lines and spaces around them skipped; the file wins."""
    tokens = tmp_path / "api-tokens"
    tokens.write_text("  first-token \n\n\tsecond-token\nthird-token", "utf-8")
    d = daemon(
        *AUTH,
        "--api-token-file",
        str(tokens),
        env={"GWEBHOOK_API_TOKENS": "from-the-environment"},
    )
    for token in ("first-token", "second-token", "third-token"):
        reply = api_get(d, "/api/v1/incidents", {"Authorization": f"Bearer {token}"})
        assert reply.status == 200, (token, reply)
    for token in ("from-the-environment", "fourth-token", "first-token second-token"):
        reply = api_get(d, "/api/v1/incidents", {"Authorization": f"Bearer {token}"})
        assert reply.status == 401, (token, reply)
    assert d.request(headers=HEADERS).status == 200


def test_tokens_from_the_environment(daemon):
    d = daemon(*AUTH, env={"GWEBHOOK_API_TOKENS": " env-one\tenv-two\n"})
    for token in ("env-one", "env-two"):
        reply = api_get(d, "/api/v1/incidents", {"Authorization": f"Bearer {token}"})
        assert reply.status == 200
    assert (
        api_get(d, "/api/v1/incidents", {"Authorization": "Bearer env"}).status == 401
    )


def test_a_config_that_holds_only_api(daemon, tmp_path):
    """A reader's daemon: [api] alone, no instance; webhooks are 404, stored nowhere."""
    tokens = token_file(tmp_path, "config-one", "config-two")
    config = write_config(tmp_path, f"[api]\ntokens_file = {json.dumps(str(tokens))}\n")
    d = daemon("--config", str(config))
    for token in ("config-one", "config-two"):
        reply = api_get(d, "/api/v1/incidents", {"Authorization": f"Bearer {token}"})
        assert reply.status == 200, reply
        assert reply.json()["incidents"] == []
    assert (
        api_get(d, "/api/v1/incidents", {"Authorization": "Bearer nope"}).status == 401
    )
    assert d.request(body=b'{"name": "x"}', headers=HEADERS).status == 404
    assert row_counts(d.db) == {"requests": 0, "incidents": 0}


def _missing(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    path = tmp_path / "nope"
    return (
        ["--api-token-file", str(path)],
        {},
        f"--api-token-file: cannot read {path}: No such file or directory; give a "
        "file the daemon can read, one token per line",
    )


def _directory(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    return (
        ["--api-token-file", str(tmp_path)],
        {},
        f"--api-token-file: cannot read {tmp_path}: Is a directory; give a file "
        "the daemon can read, one token per line",
    )


def _empty(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    path = tmp_path / "empty"
    path.write_text(" \n\n\t\n", "utf-8")
    return (
        ["--api-token-file", str(path)],
        {},
        f"--api-token-file: {path} holds no token; write one per line",
    )


def _not_ascii(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    path = token_file(tmp_path, "fine", "café")
    return (
        ["--api-token-file", str(path)],
        {},
        f"--api-token-file: {path}: token 2 is not printable ASCII; no "
        "Authorization header could carry it",
    )


def _empty_environment(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    return (
        [],
        {"GWEBHOOK_API_TOKENS": "   "},
        "GWEBHOOK_API_TOKENS holds no token; set it to tokens separated by spaces, "
        "or unset it",
    )


def _empty_in_config(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    path = token_file(tmp_path, name="empty")
    config = write_config(tmp_path, f"[api]\ntokens_file = {json.dumps(str(path))}\n")
    return (
        ["--config", str(config)],
        {},
        f"[api] tokens_file: {path} holds no token; write one per line",
    )


def _missing_in_config(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    path = tmp_path / "nope"
    config = write_config(tmp_path, f"[api]\ntokens_file = {json.dumps(str(path))}\n")
    return (
        ["--config", str(config)],
        {},
        f"{config}: api.tokens_file: cannot read {path}: No such file or "
        "directory; give a file the daemon can read, one API token per line",
    )


@pytest.mark.parametrize(
    "case",
    [
        _missing,
        _directory,
        _empty,
        _not_ascii,
        _empty_environment,
        _empty_in_config,
        _missing_in_config,
    ],
    ids=lambda case: case.__name__.strip("_"),
)
def test_a_token_source_that_gives_no_token_is_refused_in_one_line(
    tmp_path, pki, monkeypatch, case
):
    args, environ, message = case(tmp_path)
    monkeypatch.delenv("GWEBHOOK_API_TOKENS", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    result = run_twistd(
        [
            "--interface",
            "127.0.0.1",
            "--port",
            "0",
            "--no-tls",
            "--db",
            str(tmp_path / "gwebhook.sqlite"),
            "--max-connections",
            "10",
            *([] if "--config" in args else AUTH),
            *args,
        ],  # fmt: skip
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert last_line(result) == f"{TWISTD} -n: {message}"


# -- long polls ------------------------------------------------------------------------


def test_a_long_poll_is_answered_at_once_by_a_post_to_its_process(daemon, tmp_path):
    d = daemon(*AUTH, "--api-token-file", str(token_file(tmp_path, TOKEN)))
    post_one(d, "before")
    after = newest_cursor(d)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(timed_get, d, f"/api/v1/incidents?after={after}&wait=10")
        time.sleep(1)
        assert not waiting.done()
        stored, _, posted = post_one(d, "wake up")
        reply, answered = waiting.result(15)
    assert reply.status == 200
    assert [i["id"] for i in reply.json()["incidents"]] == [stored["id"]]
    assert answered - posted < 1.0, f"answered {answered - posted:.2f} s after the post"


def test_a_long_poll_that_times_out_is_an_empty_page_with_the_same_next(
    daemon, tmp_path
):
    d = daemon(*AUTH, "--api-token-file", str(token_file(tmp_path, TOKEN)))
    post_one(d, "before")
    after = newest_cursor(d)
    started = time.monotonic()
    page = incidents(d, f"after={after}&wait=1.5")
    took = time.monotonic() - started
    assert page == {"incidents": [], "next": after}
    assert 1.5 <= took < 3.0, took


def test_a_post_served_by_the_other_process_wakes_a_long_poll(daemon, tmp_path):
    """
    --workers 2: a consumer waits on one process, posts go to either, on new
    connections; where the post's process is not the consumer's, the poll of
    the store wakes it within 1.5 s.
    """
    d = daemon(
        *AUTH, "--workers", "2", "--api-token-file", str(token_file(tmp_path, TOKEN))
    )
    wait_for_log(d, "worker 1: gwebhook ready", timeout=15)
    rounds: list[tuple[str, str, float]] = []
    with ThreadPoolExecutor(1) as pool:
        for number in range(20):
            after = newest_cursor(d)
            waiting = pool.submit(
                timed_get, d, f"/api/v1/incidents?after={after}&wait=10"
            )
            time.sleep(0.3)
            stored, post_id, posted = post_one(d, f"round-{number}")
            reply, answered = waiting.result(15)
            assert reply.status == 200
            assert [i["id"] for i in reply.json()["incidents"]] == [stored["id"]]
            rounds.append(
                (
                    served_by(d, post_id),
                    served_by(d, reply.headers["x-request-id"]),
                    answered - posted,
                )
            )
            if sum(poster != waiter for poster, waiter, _ in rounds) >= 2:
                break
    crossed = [late for poster, waiter, late in rounds if poster != waiter]
    assert len(crossed) >= 2, rounds
    assert {p for p, _, _ in rounds} | {w for _, w, _ in rounds} == {"main", "1"}
    assert max(crossed) < 1.5, rounds
    same = [late for poster, waiter, late in rounds if poster == waiter]
    assert all(late < 1.0 for late in same), rounds


def test_sigterm_answers_a_waiting_consumer_at_once(daemon, tmp_path):
    d = daemon(*AUTH, "--api-token-file", str(token_file(tmp_path, TOKEN)))
    after = newest_cursor(d)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(timed_get, d, f"/api/v1/incidents?after={after}&wait=60")
        time.sleep(0.5)
        signalled = time.monotonic()
        d.signal(signal.SIGTERM)
        reply, answered = waiting.result(20)
    assert reply.status == 200
    assert reply.json() == {"incidents": [], "next": after}
    assert answered - signalled < 2.0, f"answered {answered - signalled:.2f} s late"
    # twistd re-raises SIGTERM after a clean stop: -15 is success.
    assert d.wait(15) == -signal.SIGTERM
    assert time.monotonic() - signalled < 5.0


# -- completeness under load -----------------------------------------------------------


class Follower(threading.Thread):
    """
    Follows ``next`` with long polls, a new connection each (so either
    process answers), until told to stop and then caught up.
    """

    def __init__(self, d: Daemon) -> None:
        super().__init__(name="follower", daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.pages: list[list[int]] = []
        self.request_ids: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        after = ""
        try:
            while True:
                stopping = self.stop.is_set()
                wait = 0 if stopping else 2
                reply = api_get(
                    self.d, f"/api/v1/incidents?limit=50&after={after}&wait={wait}"
                )
                assert reply.status == 200, reply
                self.request_ids.append(reply.headers["x-request-id"])
                page = reply.json()
                ids = [int(i["id"]) for i in page["incidents"]]
                self.pages.append(ids)
                after = quote(page["next"])
                if stopping and not ids:
                    return
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.failure = e


def test_a_consumer_following_next_sees_every_incident_once_in_order(daemon, tmp_path):
    d = daemon(
        *AUTH, "--workers", "2", "--api-token-file", str(token_file(tmp_path, TOKEN))
    )
    wait_for_log(d, "worker 1: gwebhook ready", timeout=15)
    follower = Follower(d)
    follower.start()
    try:
        senders = run_senders(d, HEADERS, 4, then=lambda: None, after=3.0)
    finally:
        follower.stop.set()
        follower.join(30)
    assert not follower.is_alive()
    assert follower.failure is None, follower.failure
    seen = [i for page in follower.pages for i in page]
    listed = [int(i["id"]) for i in read_back(d, "list")]
    acknowledged = {i for s in senders for i, _ in s.acknowledged}
    assert len(acknowledged) > 40, "the senders posted too little to tell"
    assert acknowledged <= set(listed)
    missed = sorted(set(listed) - set(seen))
    assert seen == listed, (missed, len(seen), len(set(seen)), follower.pages)
    assert seen == sorted(set(seen))
    # Both processes answered the follower.
    assert len(follower.request_ids) >= 10, follower.pages

    def logged() -> dict[str, str] | None:
        found = processes_of(d)
        return found if set(follower.request_ids) <= set(found) else None

    served = wait_for(logged, 5, "the follower's access lines")
    assert {served[rid] for rid in follower.request_ids} == {"main", "1"}


# -- a thousand consumers --------------------------------------------------------------

CONSUMERS = 1000


def answered_already(tls: ssl.SSLSocket) -> bool:
    """Whether the server has sent an answer on ``tls`` (read without blocking)."""
    tls.settimeout(0)
    try:
        tls.recv(1)  # an answer's first byte, or b"" if it was closed
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    return True


SOURCES = [f"127.0.0.{n}" for n in range(2, 6)]


def test_a_thousand_long_polls_wait_while_posts_are_served(daemon, tmp_path, pki):
    """
    1,000 consumers wait for instance alpha's incidents, each on its own TLS
    connection; a sender's posts to the default instance (each waking them
    all, to find nothing of theirs) are still answered promptly; alpha's
    first incident answers all 1,000.
    """
    config = write_config(tmp_path, instance("alpha", anonymous=True))
    d = daemon(
        *AUTH,
        "--config", str(config),
        "--api-token-file", str(token_file(tmp_path, TOKEN)),
        "--max-connections", str(CONSUMERS + 200),
        "--max-connections-per-client", str(CONSUMERS // len(SOURCES) + 50),
    )  # fmt: skip
    after = newest_cursor(d)
    ask = request_head(
        0, {**BEARER, "Host": "127.0.0.1"}, "GET",
        f"/api/v1/incidents?instance=alpha&after={after}&wait=40",
    )  # fmt: skip
    context = pki.client_context()
    consumers = []
    try:
        started = time.monotonic()

        def open_one(n: int) -> None:
            tls = connect(d.port, context, SOURCES[n % len(SOURCES)], timeout=10)
            consumers.append(tls)
            tls.sendall(ask)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(open_one, range(CONSUMERS)))
        opened = time.monotonic() - started
        with Honest(d, HEADERS, interval=0.2) as honest:
            time.sleep(3)
        honest.assert_served(at_least=5, within=3.0)
        slowest = max(seconds for _, seconds in honest.results)
        # None was answered: each went back to waiting.  (Readable they all
        # are: TLS 1.3's session tickets; a read finds no answer behind them.)
        time.sleep(0.3)
        assert [tls for tls in consumers if answered_already(tls)] == []
        answer = post(d, "/instance/execute/alpha", {"name": "for alpha"})
        posted = time.monotonic()
        assert answer.status == 200, answer
        [incident] = answer.json()
        for tls in consumers:
            tls.settimeout(max(0.1, posted + 15 - time.monotonic()))
            reply = read_reply(tls, "GET")
            assert reply.status == 200, reply
            page = json.loads(reply.body)
            assert [i["id"] for i in page["incidents"]] == [incident["id"]]
        answered = time.monotonic() - posted
    finally:
        for tls in consumers:
            tls.close()
    assert answered < 10, f"1,000 answered in {answered:.1f} s"
    assert incidents_by_id(d.db)[int(incident["id"])] == "for alpha"
    print(
        f"opened {CONSUMERS} in {opened:.1f} s; {len(honest.results)} posts, the "
        f"slowest {slowest:.2f} s; all {CONSUMERS} answered in {answered:.2f} s"
    )
