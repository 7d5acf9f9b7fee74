"""
The SQLite store's own behaviour: a full disk, a removed file, its mode, the
writer lock, sqlite_sequence.  What every store promises is in
test_store_contract.py, run on SQLite and PostgreSQL.
"""

import contextlib
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from gwebhook import schema
from gwebhook.model import IncidentDraft, ReceivedRequest
from gwebhook.store import SQLiteStore, StoreUnavailable
from gwebhook.writerlock import WriterLock

REQUEST = ReceivedRequest(
    "2026-01-01T00:00:00Z", "127.0.0.1", "POST", "/", {}, b"{}", "default", None
)


def draft(name, details=None, fields=None):
    return IncidentDraft(
        name, "Unclassified", "2026-01-01T00:00:00Z", details or {}, fields or {}
    )


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "store.sqlite"))
    yield s
    s.close()


def rows(store, sql):
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return db.execute(sql).fetchall()


def outcomes(results):
    """Each request's incidents as committed, or the error it failed with."""
    return [value.incidents if ok else value.value for ok, value in results]


@pytest_twisted.ensureDeferred
async def test_a_full_store_fails_the_whole_batch_and_keeps_nothing(store):
    """When the store cannot commit, every request of the batch is unavailable."""
    await store.add(REQUEST, [draft("before")])
    pages = rows(store, "PRAGMA page_count")[0][0]
    # Full: the store may not grow past its current size.
    await store.pool.runOperation(f"PRAGMA max_page_count = {pages}")
    big = "x" * 100_000
    adds = [store.add(REQUEST, [draft(f"big{i}", {"b": big})]) for i in range(5)]
    results = outcomes(await DeferredList(adds, consumeErrors=True))
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert rows(store, "SELECT name FROM incidents") == [("before",)]
    await store.pool.runOperation("PRAGMA max_page_count = 1073741823")
    [stored] = (await store.add(REQUEST, [draft("after")])).incidents
    assert stored.name == "after"


@pytest_twisted.ensureDeferred
async def test_a_removed_store_file_is_refused_until_it_is_back(store, tmp_path):
    """A store file moved away makes commits fail; putting it back makes them work."""
    await store.add(REQUEST, [draft("before")])
    aside = str(tmp_path / "aside.sqlite")
    os.rename(store.path, aside)
    with pytest.raises(StoreUnavailable, match="removed or replaced"):
        await store.add(REQUEST, [draft("lost")])
    os.rename(aside, store.path)
    [stored] = (await store.add(REQUEST, [draft("after")])).incidents
    assert rows(store, "SELECT name FROM incidents ORDER BY id") == [
        ("before",),
        ("after",),
    ]
    assert int(stored.id) == 2


@pytest_twisted.ensureDeferred
async def test_the_store_files_are_readable_by_their_owner_only(tmp_path):
    """The store holds senders' bodies and headers: it is created mode 0600."""
    path = tmp_path / "private.sqlite"
    store = SQLiteStore(str(path))
    try:
        await store.add(REQUEST, [draft("one")])
    finally:
        store.close()
    assert path.stat().st_mode & 0o777 == 0o600
    # Whoever may open the writer lock may hold it.
    lock = tmp_path / "private.sqlite-writer.lock"
    assert lock.stat().st_mode & 0o777 == 0o600


@pytest_twisted.ensureDeferred
async def test_a_writer_lock_that_cannot_be_opened_makes_the_store_unavailable(store):
    """Without its writer lock the store takes nothing, until the lock can be made."""
    lock = Path(store.path + "-writer.lock")
    lock.mkdir()
    with pytest.raises(StoreUnavailable, match="writer lock"):
        await store.add(REQUEST, [draft("lost")])
    lock.rmdir()
    await store.add(REQUEST, [draft("after")])
    assert rows(store, "SELECT name FROM incidents") == [("after",)]


@pytest_twisted.ensureDeferred
async def test_a_removed_writer_lock_is_made_again(store):
    """A writer lock removed under a running store is created again and used."""
    await store.add(REQUEST, [draft("before")])
    lock = Path(store.path + "-writer.lock")
    lock.unlink()
    await store.add(REQUEST, [draft("after")])
    assert lock.exists()


@pytest_twisted.ensureDeferred
async def test_a_writer_lock_held_past_the_busy_timeout_is_a_503(store, monkeypatch):
    """
    Another process holding the writer lock too long (stopped, or waiting on
    someone's SQLite lock itself) makes this one unavailable, as SQLite's own
    busy timeout would: it does not hang.  Once let go, the store works.
    """
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 300)
    await store.add(REQUEST, [draft("before")])
    other = os.open(store.path + "-writer.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)  # another open file: another holder
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database is locked"):
            await store.add(REQUEST, [draft("lost")])
        assert 0.3 <= time.monotonic() - started < 3
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    await store.add(REQUEST, [draft("after")])
    assert rows(store, "SELECT name FROM incidents") == [("before",), ("after",)]


def test_the_writer_lock_is_let_go_when_checking_it_fails(tmp_path, monkeypatch):
    """A lock taken, then its check failing, is not kept: others can take it."""
    lock = WriterLock(str(tmp_path / "s.sqlite"))

    def broken(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(WriterLock, "_is_current", broken)
    with pytest.raises(OSError, match="Input/output"):
        lock.acquire(1)
    monkeypatch.undo()
    other = os.open(lock.path, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
    finally:
        os.close(other)
        lock.close()


@pytest_twisted.ensureDeferred
async def test_the_health_probe_sees_a_removed_store_file(store, tmp_path):
    """The store's health probe fails while its file is away, and passes when back."""
    await store.ping()
    aside = str(tmp_path / "aside.sqlite")
    os.rename(store.path, aside)
    with pytest.raises(StoreUnavailable):
        await store.ping()
    os.rename(aside, store.path)
    await store.ping(write=True)
    assert rows(store, "SELECT id FROM health") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_sqlite_keeps_counting_from_the_ids_the_store_gives(store):
    """Ids the store chooses advance SQLite's own sequence, for any other writer."""
    stored = (await store.add(REQUEST, [draft(f"n{i}") for i in range(250)])).incidents
    assert rows(store, "SELECT id, name, position FROM incidents ORDER BY id") == [
        (int(s.id), f"n{i}", i) for i, s in enumerate(stored)
    ]
    assert rows(store, "SELECT seq FROM sqlite_sequence WHERE name = 'incidents'") == [
        (int(stored[-1].id),)
    ]
    with sqlite3.connect(store.path) as db:
        db.execute("DELETE FROM incidents")
        db.execute(
            "INSERT INTO incidents (request_id, position, name, type, occurred,"
            " created, details) VALUES (1, 0, 'other', 't', 'o', 'c', '{}')"
        )
        [(other,)] = db.execute("SELECT id FROM incidents").fetchall()
        db.execute("DELETE FROM incidents")
    assert other == int(stored[-1].id) + 1
    [after] = (await store.add(REQUEST, [draft("after")])).incidents
    assert int(after.id) == other + 1


# -- instances ----------------------------------------------------------------


def sent_to(instance, client_cert=None):
    """A request for ``instance``, with the client certificate given, if any."""
    return ReceivedRequest(
        "2026-01-01T00:00:00Z", "127.0.0.1", "POST", "/", {}, b"{}", instance,
        client_cert,
    )  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_the_statements_of_a_request_do_not_grow_with_its_incidents(store):
    """
    A request of 250 incidents, kept as samples, runs no more statements than
    one of a single incident but the incident INSERTs of 99 rows each: the
    store makes no query per incident.
    """
    statements = []
    await store.pool.runWithConnection(
        lambda connection: connection.set_trace_callback(statements.append)
    )
    await store.add(sent_to("a"), [draft("one")], keep_samples=True)
    one = len(statements)
    statements.clear()
    await store.add(
        sent_to("a"), [draft(f"n{i}") for i in range(250)], keep_samples=True
    )
    assert len(statements) == one + 2, statements
