"""
The console's sessions in the store, on a real SQLite file and a real
PostgreSQL database: two ``Sessions`` over two stores opened on one
database stand for two processes (or two nodes), each with its own clock.
A session made by one is known to the other, a logout on one ends it for
both, and the store keeps only the SHA-256 of its id.  The same through
real twistd processes is in test_console_processes.py.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
import pytest_twisted
from support import postgres
from support.store import read_only

from gwebhook import retention
from gwebhook.console.sessions import SESSION_SECONDS, Sessions, id_hash, token_hash
from gwebhook.store import IncidentStore, SQLiteStore
from gwebhook.store.postgres import PostgresStore

START = 1_800_000_000.0
TOKEN = b"sessions-token-1"
OTHER = b"sessions-token-2"


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite")
    return request.getfixturevalue("pg_database")


def open_store(target: str) -> IncidentStore:
    if target.startswith("postgresql:"):
        return PostgresStore(target)
    return SQLiteStore(target)


@pytest.fixture
def two(target):
    """Two processes' sessions over one database, their clocks at START."""
    clocks = [[START], [START]]
    stores = [open_store(target), open_store(target)]
    yield (
        [
            Sessions(lambda c=c: c[0], store=s, tokens=(TOKEN, OTHER))
            for c, s in zip(clocks, stores, strict=True)
        ],
        clocks,
    )
    for s in stores:
        s.close()


def rows(target: str, sql: str) -> list[tuple]:
    if target.startswith("postgresql:"):
        return postgres.psql_rows(target, sql)
    with contextlib.closing(read_only(Path(target))) as db:
        return [tuple(r) for r in db.execute(sql)]


@pytest_twisted.ensureDeferred
async def test_a_session_made_by_one_process_is_known_to_the_other(two, target):
    (a, b), _ = two
    made = await a.start(TOKEN)
    found = await b.find(made.id.encode())
    assert found == made
    assert made.expires == START + SESSION_SECONDS
    # Only the hash of the id is stored, and of the token that made it; the
    # CSRF token is the server's own.
    assert rows(
        target,
        "SELECT id_hash, csrf, created, expires, token_hash FROM console_sessions",
    ) == [
        (
            hashlib.sha256(made.id.encode()).hexdigest(),
            made.csrf,
            START,
            made.expires,
            hashlib.sha256(TOKEN).hexdigest(),
        )
    ]
    assert token_hash(TOKEN) == hashlib.sha256(TOKEN).hexdigest()
    assert id_hash(made.id) != made.id
    assert await a.live() == await b.live() == 1


@pytest_twisted.ensureDeferred
async def test_a_logout_on_one_process_ends_the_session_for_both(two, target):
    (a, b), _ = two
    made = await a.start(TOKEN)
    other = await a.start(TOKEN)
    assert await b.find(made.id.encode()) == made
    await b.end(made)
    assert await a.find(made.id.encode()) is None
    assert await b.find(made.id.encode()) is None
    assert await a.find(other.id.encode()) == other
    assert rows(target, "SELECT count(*) FROM console_sessions") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_a_session_ends_after_12_hours_and_its_row_goes(two, target):
    (a, b), clocks = two
    made = await a.start(TOKEN)
    clocks[1][0] = START + SESSION_SECONDS - 1
    assert await b.find(made.id.encode()) == made
    clocks[1][0] = START + SESSION_SECONDS
    assert await b.find(made.id.encode()) is None
    assert rows(target, "SELECT count(*) FROM console_sessions") == [(0,)]


@pytest_twisted.ensureDeferred
async def test_a_login_deletes_the_sessions_that_ended(two, target):
    (a, b), clocks = two
    old = [await a.start(TOKEN) for _ in range(3)]
    clocks[1][0] = START + SESSION_SECONDS + 1
    new = await b.start(TOKEN)
    assert rows(target, "SELECT count(*) FROM console_sessions") == [(1,)]
    assert await b.find(new.id.encode()) == new
    assert all([await b.find(s.id.encode()) is None for s in old])


@pytest_twisted.ensureDeferred
async def test_retention_deletes_the_sessions_that_ended(two, target):
    """The retention service's pass (and ``gwebhook prune``'s) takes them too."""
    (a, b), clocks = two
    old = await a.start(TOKEN)
    clocks[1][0] = START + 3600
    new = await b.start(TOKEN)
    await b.store.write(retention.forget_expired, START + SESSION_SECONDS)
    assert rows(target, "SELECT count(*) FROM console_sessions") == [(1,)]
    assert await a.find(old.id.encode()) is None
    assert await a.find(new.id.encode()) == new


@pytest.mark.parametrize(
    "cookie",
    [None, b"", b"A" * 43, b"x" * 5000, "é".encode(), b"\xff\xfe"],
)
@pytest_twisted.ensureDeferred
async def test_a_made_up_cookie_is_no_session(two, cookie):
    (a, _), _ = two
    await a.start(TOKEN)
    assert await a.find(cookie) is None


@pytest_twisted.ensureDeferred
async def test_a_session_whose_token_was_removed_is_refused_and_deleted(two, target):
    """
    The other process was started with only OTHER (TOKEN removed): TOKEN's
    session is refused there, and its row goes; OTHER's is still accepted.
    """
    (a, b), _ = two
    gone = await a.start(TOKEN)
    kept = await a.start(OTHER)
    b.use_tokens((OTHER,))
    assert await b.find(gone.id.encode()) is None
    assert await b.find(kept.id.encode()) == kept
    assert rows(target, "SELECT token_hash FROM console_sessions") == [
        (token_hash(OTHER),)
    ]
    assert await a.find(gone.id.encode()) is None
    assert await a.find(kept.id.encode()) == kept


@pytest_twisted.ensureDeferred
async def test_a_session_made_before_its_token_was_kept_is_refused(two, target):
    """A row of the schema before ``token_hash`` (NULL) names no token."""
    (a, b), _ = two
    old = await a.start(TOKEN)
    await a.store.write(
        lambda cursor: cursor.execute("UPDATE console_sessions SET token_hash = NULL")
    )
    assert await b.find(old.id.encode()) is None
    assert rows(target, "SELECT count(*) FROM console_sessions") == [(0,)]
