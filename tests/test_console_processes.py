"""
The console's sessions across real processes: ``twistd gwebhook --workers
2`` on one SQLite store (the kernel spreads new connections over both
processes), a daemon restarted, and two nodes on one PostgreSQL database.
A session made by any process is accepted by every one, a logout on one
is refused by all, and a restart keeps it (it is in the store) until it
ends.  Every request here is on a new connection.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time

from support.api import login
from support.credentials import AUTH
from support.daemon import Daemon, wait_for_log
from support.nodes import start_nodes
from support.postgres import psql_rows
from support.wait import wait_for

TOKEN = "console-processes-token"
ROUNDS = 40


def logout(d: Daemon, cookie: str, csrf: str) -> None:
    reply = d.request(
        "POST", "/console/logout", None, {"Cookie": cookie, "X-CSRF-Token": csrf}
    )
    assert reply.status == 303, reply
    assert "Max-Age=0" in reply.headers["set-cookie"]


def statuses(d: Daemon, cookie: str, rounds: int = ROUNDS) -> set[int]:
    """
    What the console's ``/console/session`` and the read API's
    ``/api/v1/incidents`` answer ``cookie``, over ``rounds`` connections each.
    """
    return {
        d.request("GET", path, None, {"Cookie": cookie}).status
        for _ in range(rounds)
        for path in ("/console/session", "/api/v1/incidents?limit=1")
    }


def session_lines(d: Daemon, status: int) -> tuple[int, ...]:
    """
    How many GET /console/session and GET /api/v1/incidents lines with
    ``status`` each process logged: (console main, console worker, API main,
    API worker).
    """
    counts = []
    for path in ("/console/session", "/api/v1/incidents"):
        lines = [
            line
            for line in d.log.read_text().splitlines()
            if f"GET {path} {status}" in line
        ]
        worker = sum("worker 1:" in line for line in lines)
        counts += [len(lines) - worker, worker]
    return tuple(counts)


def test_a_session_is_every_processes_and_a_logout_on_one_ends_it_on_all(
    daemon, tmp_path
):
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    # No throttle: the ended session's cookie is sent ROUNDS times over, to
    # see both processes refuse it (a browser drops it at the first 401).
    d = daemon(
        *AUTH, "--workers", "2", "--api-token-file", "tokens", "--auth-fail-limit", "0"
    )
    wait_for_log(d, "worker 1: gwebhook ready")
    cookie, csrf = login(d, TOKEN)
    assert statuses(d, cookie) == {200}
    # Both processes answered it (the worker's lines carry its name).
    wait_for(
        lambda: all(session_lines(d, 200)),
        what="both processes accepting the session",
    )
    logout(d, cookie, csrf)
    assert statuses(d, cookie) == {401}
    wait_for(
        lambda: all(session_lines(d, 401)),
        what="both processes refusing the ended session",
    )
    page = d.request("GET", "/console/", None, {"Cookie": cookie})
    assert b'name="token"' in page.body


def test_a_session_outlives_a_restart_until_it_ends(daemon, tmp_path):
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    d = daemon(*AUTH, "--api-token-file", "tokens")
    cookie, _ = login(d, TOKEN)
    d.stop()
    d.start()
    assert statuses(d, cookie, 3) == {200}
    with sqlite3.connect(d.db) as db:
        [(created, expires)] = db.execute(
            "SELECT created, expires FROM console_sessions"
        ).fetchall()
        assert expires - created == 12 * 3600
        # Its 12 hours are over (as if the clock had moved on).
        db.execute("UPDATE console_sessions SET expires = ?", (time.time() - 1,))
    assert statuses(d, cookie, 3) == {401}
    with sqlite3.connect(d.db) as db:
        assert db.execute("SELECT count(*) FROM console_sessions").fetchone() == (0,)


def test_removing_a_token_ends_its_sessions_at_the_restart(daemon, tmp_path):
    """
    The store keeps the SHA-256 of the token that made each session: once
    a token is out of the tokens file and the daemon restarted, its sessions
    are refused (and deleted), those of a token still there are not.
    """
    other = "console-processes-other-token"
    (tmp_path / "tokens").write_text(f"{TOKEN}\n{other}\n")
    d = daemon(*AUTH, "--api-token-file", "tokens")
    removed, _ = login(d, TOKEN)
    kept, _ = login(d, other)
    with sqlite3.connect(d.db) as db:
        stored = {
            row[0] for row in db.execute("SELECT token_hash FROM console_sessions")
        }
    assert stored == {hashlib.sha256(t.encode()).hexdigest() for t in (TOKEN, other)}
    assert statuses(d, removed, 3) == statuses(d, kept, 3) == {200}
    (tmp_path / "tokens").write_text(f"{other}\n")
    d.stop()
    d.start()
    assert statuses(d, removed, 3) == {401}
    assert statuses(d, kept, 3) == {200}
    page = d.request("GET", "/console/", None, {"Cookie": removed})
    assert b'name="token"' in page.body
    with sqlite3.connect(d.db) as db:
        assert db.execute("SELECT token_hash FROM console_sessions").fetchall() == [
            (hashlib.sha256(other.encode()).hexdigest(),)
        ]


def test_a_session_is_every_nodes_on_postgresql(pg_database, pki, tmp_path, started):
    tokens = tmp_path / "api.tokens"
    tokens.write_text(TOKEN + "\n")
    a, b = start_nodes(
        2, pg_database, [*AUTH, "--api-token-file", str(tokens)], tmp_path, pki, started
    )
    cookie, csrf = login(a, TOKEN)
    assert statuses(b, cookie, 5) == {200}
    [(stored,)] = psql_rows(pg_database, "SELECT id_hash FROM console_sessions")
    assert cookie.split("=", 1)[1] not in stored
    logout(b, cookie, csrf)
    assert statuses(a, cookie, 5) == {401}
    assert psql_rows(pg_database, "SELECT count(*) FROM console_sessions") == [(0,)]
    wait_for_log(a, "GET /console/session 401")
