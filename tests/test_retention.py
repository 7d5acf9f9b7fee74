"""
Retention: ``gwebhook prune`` and the daemon's RetentionService delete
incidents received before a date, with their requests and samples rows.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
from support.credentials import AUTH, HEADERS
from support.daemon import assert_one_line_error, run_cli
from twisted.enterprise import adbapi
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher

from gwebhook import readback, retention, schema
from gwebhook.model import IncidentDraft, ReceivedRequest
from gwebhook.store import SQLiteStore
from gwebhook.timestamps import format_utc
from gwebhook.writerlock import SUFFIX

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def days_ago(days: float) -> str:
    return format_utc(NOW - timedelta(days=days))


def new_store(path: Path) -> sqlite3.Connection:
    """A store made as the daemon makes it, and a connection to write into it."""
    schema.create_or_upgrade(str(path))
    connection = sqlite3.connect(path, isolation_level=None)
    schema.configure(connection)
    return connection


def add_request(
    db: sqlite3.Connection,
    received: str,
    incidents: int = 1,
    body: bytes = b"{}",
    sampled: bool = False,
) -> list[int]:
    """Insert a request received at ``received`` and its incidents; their ids."""
    cursor = db.execute(
        "INSERT INTO requests (received, client, method, path, headers, body)"
        " VALUES (?, '127.0.0.1', 'POST', '/', '{}', ?)",
        (received, body),
    )
    request_id = cursor.lastrowid
    ids = []
    for position in range(incidents):
        cursor = db.execute(
            "INSERT INTO incidents (request_id, position, name, type, occurred,"
            " created, details) VALUES (?, ?, 'n', 'Unclassified', ?, ?, '{}')",
            (request_id, position, received, received),
        )
        ids.append(cursor.lastrowid)
        if sampled:
            db.execute("INSERT INTO samples (incident_id) VALUES (?)", (ids[-1],))
    return ids


def column(db: sqlite3.Connection | Path, query: str) -> list:
    """The first column of a query's rows, on a connection or a store file."""
    if isinstance(db, Path):
        with closing(sqlite3.connect(db)) as connection:
            return column(connection, query)
    return [row[0] for row in db.execute(query)]


def run_prune(*args: str) -> subprocess.CompletedProcess:
    return run_cli("prune", *args)


# prune() and cutoff(): the rules -------------------------------------------


def test_prune_deletes_old_incidents_their_requests_and_samples(tmp_path):
    """Incidents received before the date go with their requests and samples rows."""
    db = new_store(tmp_path / "s.sqlite")
    old = add_request(db, days_ago(40), incidents=2, sampled=True)
    older = add_request(db, days_ago(400), sampled=True)
    new = add_request(db, days_ago(10), incidents=2, sampled=True)
    db.execute("BEGIN")
    counts = retention.prune(db, days_ago(30))
    db.execute("COMMIT")
    assert counts == (3, 2)
    assert column(db, "SELECT id FROM incidents ORDER BY id") == new
    assert column(db, "SELECT incident_id FROM samples ORDER BY 1") == new
    assert column(db, "SELECT received FROM requests") == [days_ago(10)]
    assert not set(old + older) & set(column(db, "SELECT id FROM incidents"))


def test_prune_compares_times_not_strings(tmp_path):
    """Fractions of a second count: only what was received strictly before goes."""
    db = new_store(tmp_path / "s.sqlite")
    add_request(db, "2024-05-01T00:00:00.500000Z")  # after the whole second
    add_request(db, "2024-05-01T00:00:00Z")  # exactly the cutoff
    add_request(db, "2024-04-30T23:59:59.999999Z")
    assert retention.prune(db.cursor(), "2024-05-01T00:00:00Z") == (1, 1)
    assert retention.prune(db.cursor(), "2024-05-01T00:00:00.250000Z") == (1, 1)
    assert column(db, "SELECT received FROM requests") == [
        "2024-05-01T00:00:00.500000Z"
    ]


def test_ids_are_never_reused_after_a_prune(tmp_path):
    """After everything is pruned, new incidents and requests get new ids."""
    db = new_store(tmp_path / "s.sqlite")
    before = [i for _ in range(3) for i in add_request(db, days_ago(50), 2)]
    assert retention.prune(db.cursor(), days_ago(0)) == (6, 3)
    db.execute("VACUUM")  # what gwebhook prune does next
    after = add_request(db, days_ago(0))
    assert after[0] > max(before)
    assert column(db, "SELECT id FROM requests") == [4]


@pytest.mark.parametrize(
    "text, stored",
    [
        ("2024-05-01", "2024-05-01T00:00:00Z"),
        ("2024-05-01T10:00", "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00+02:00", "2024-05-01T08:00:00Z"),
        ("2024-05-01T10:00:00.25Z", "2024-05-01T10:00:00.250000Z"),
    ],
)
def test_cutoff_is_utc_as_stored(text, stored):
    """--before is read as ISO-8601, UTC unless it names a zone, and stored form."""
    assert retention.cutoff(text) == stored


@pytest.mark.parametrize("text", ["yesterday", "2024", "1714521600", "2024-13-01", ""])
def test_cutoff_refuses_what_is_not_a_date(text):
    """A --before that is not an ISO-8601 date is refused, naming the option."""
    with pytest.raises(ValueError, match="--before"):
        retention.cutoff(text)


# gwebhook prune ------------------------------------------------------------


def test_prune_command_while_the_daemon_runs(daemon):
    """'gwebhook prune' deletes old incidents under a running daemon, which goes on."""
    d = daemon(*AUTH)
    answered = []
    for body in [b'{"name": "a"}', b'[{"name": "b"}, {"name": "c"}]', b'{"name": "d"}']:
        reply = d.request(body=body, headers=HEADERS)
        assert reply.status == 200, reply.body
        answered += reply.json()
    # Age the first two requests as if they came 40 days ago.
    with closing(sqlite3.connect(d.db, timeout=10, isolation_level=None)) as db:
        db.execute(
            "UPDATE requests SET received = ? WHERE id IN (1, 2)",
            (format_utc(datetime.now(UTC) - timedelta(days=40)),),
        )
    cutoff = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()

    result = run_prune("--db", str(d.db), "--before", cutoff)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        f"deleted 3 incidents and 2 requests received before {cutoff}T00:00:00Z\n"
    )
    reply = d.request(body=b'{"name": "e"}', headers=HEADERS)
    assert reply.status == 200, reply.body
    [latest] = reply.json()
    assert int(latest["id"]) > max(int(i["id"]) for i in answered)
    assert column(d.db, "SELECT name FROM incidents ORDER BY id") == ["d", "e"]
    assert column(d.db, "SELECT count(*) FROM requests") == [2]


@pytest.mark.process
def test_store_file_shrinks_after_a_big_prune(tmp_path):
    """After a big prune the file gives the space back, WAL included."""
    path = tmp_path / "s.sqlite"
    db = new_store(path)
    db.execute("BEGIN")
    for _ in range(300):
        add_request(db, days_ago(90), body=b"x" * 20_000)
    add_request(db, days_ago(1))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    full = path.stat().st_size
    assert full > 6_000_000

    result = run_prune("--db", str(path), "--before", days_ago(30))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 300 incidents and 300 requests ")
    assert path.stat().st_size < full / 20
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert column(path, "SELECT count(*) FROM incidents") == [1]


@pytest.mark.process
def test_prune_command_on_a_missing_store(tmp_path):
    """Pruning a store that does not exist is one line, status 1, creating nothing."""
    result = run_prune(
        "--db", str(tmp_path / "absent.sqlite"), "--before", "2024-01-01"
    )
    assert_one_line_error(result, 1)
    assert "no store at" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_prune_command_on_a_file_that_is_not_a_store(tmp_path):
    """A SQLite file without gwebhook's schema is refused and left as it was."""
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as other:
        other.execute("CREATE TABLE t (x)")
        other.commit()
    before = path.read_bytes()
    result = run_prune("--db", str(path), "--before", "2024-01-01")
    assert_one_line_error(result, 1)
    assert "not a gwebhook store" in result.stderr
    assert path.read_bytes() == before


@pytest.mark.process
def test_prune_command_with_a_bad_date(tmp_path):
    """A --before that is not a date is one line, status 2, and deletes nothing."""
    path = tmp_path / "s.sqlite"
    add_request(new_store(path), days_ago(400))
    result = run_prune("--db", str(path), "--before", "last week")
    assert_one_line_error(result, 2)
    assert "--before 'last week' is not an ISO-8601 date" in result.stderr
    assert column(path, "SELECT count(*) FROM incidents") == [1]


def test_prune_waits_for_another_writer(tmp_path):
    """A prune waits for another writer's transaction to end, then does its work."""
    path = tmp_path / "s.sqlite"
    add_request(new_store(path), days_ago(40))
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    commit = threading.Timer(0.3, writer.execute, ["COMMIT"])
    commit.start()
    try:
        assert retention.prune_store(str(path), days_ago(30)) == (1, 1, True)
    finally:
        commit.join()
        writer.close()


def test_prune_of_a_busy_store_deletes_nothing(tmp_path):
    """A writer holding the store past the busy timeout makes prune refuse whole."""
    path = tmp_path / "s.sqlite"
    db = new_store(path)
    add_request(db, days_ago(40))
    db.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(retention.StoreBusy, match="busy.*nothing deleted"):
            retention.prune_store(str(path), days_ago(30), busy_timeout_ms=200)
    finally:
        db.execute("ROLLBACK")
    assert column(db, "SELECT count(*) FROM incidents") == [1]


def test_space_not_given_back_while_a_reader_holds_on(tmp_path):
    """A reader holding a snapshot delays the shrink; the deletion stands."""
    path = tmp_path / "s.sqlite"
    db = new_store(path)
    add_request(db, days_ago(40), body=b"x" * 100_000)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM requests").fetchone()
    try:
        pruned = retention.prune_store(str(path), days_ago(30), busy_timeout_ms=200)
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert pruned == (1, 1, False)
    assert column(db, "SELECT count(*) FROM requests") == [0]


# RetentionService in the daemon --------------------------------------------


@pytest.fixture
def store(tmp_path):
    """A store with an adbapi pool like the daemon's; the pool closed at teardown."""
    path = tmp_path / "s.sqlite"
    db = new_store(path)
    pool = adbapi.ConnectionPool(
        "sqlite3",
        str(path),
        check_same_thread=False,
        isolation_level="",
        cp_min=1,
        cp_max=1,
        cp_openfun=schema.configure,
    )
    yield db, pool
    pool.close()
    db.close()


@pytest.fixture
def reports():
    """The retention log events, as they are logged."""
    events: list[dict] = []

    def observe(event):
        if event.get("log_namespace") == "gwebhook.retention":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


async def logged(events: list[dict], count: int) -> None:
    """Wait (at most 5 s) until ``count`` retention events were logged."""
    deadline = time.monotonic() + 5
    while len(events) < count:
        assert time.monotonic() < deadline, events
        await deferLater(reactor, 0.01)


def service_at(
    pool, now: datetime, **kwargs
) -> tuple[retention.RetentionService, Clock]:
    clock = Clock()
    clock.rightNow = now.timestamp()
    return retention.RetentionService(
        pool, retain_days=30, clock=clock, **kwargs
    ), clock


@pytest_twisted.ensureDeferred
async def test_service_prunes_after_start_then_every_interval(store, reports):
    """The first prune runs shortly after start-up, then one every interval."""
    db, pool = store
    add_request(db, days_ago(40))
    kept = add_request(db, days_ago(29.99))  # 30 days old within the hour
    service, clock = service_at(pool, NOW, interval=3600)
    service.startService()
    try:
        clock.advance(retention.START_DELAY - 1)
        assert reports == []
        clock.advance(1)
        await logged(reports, 1)
        assert (reports[0]["incidents"], reports[0]["requests"]) == (1, 1)
        cutoff = NOW + timedelta(seconds=retention.START_DELAY) - timedelta(days=30)
        assert reports[0]["before"] == format_utc(cutoff)
        assert formatEvent(reports[0]) == (
            "retention: deleted 1 incident and 1 request received before "
            + format_utc(cutoff)
        )
        assert column(db, "SELECT id FROM incidents") == kept

        clock.advance(3600 - 1)
        await deferLater(reactor, 0.1)
        assert len(reports) == 1
        clock.advance(1)
        await logged(reports, 2)
        assert (reports[1]["incidents"], reports[1]["requests"]) == (1, 1)
        assert column(db, "SELECT count(*) FROM incidents") == [0]
    finally:
        await service.stopService()
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_service_logs_a_store_error_and_tries_again(tmp_path, reports):
    """A prune that fails is logged, and the next one runs as planned."""
    path = tmp_path / "s.sqlite"
    pool = adbapi.ConnectionPool("sqlite3", str(path), check_same_thread=False)
    service, clock = service_at(pool, NOW, interval=60, start_delay=0)
    try:
        service.startService()
        clock.advance(0)  # no tables yet: the prune fails
        await logged(reports, 1)
        assert "no such table" in reports[0]["error"]
        assert "trying again in 60 s" in formatEvent(reports[0])
        assert service.running

        db = new_store(path)
        add_request(db, days_ago(31))
        db.close()
        clock.advance(60)
        await logged(reports, 2)
        assert (reports[1]["incidents"], reports[1]["requests"]) == (1, 1)
        await service.stopService()
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_service_stop_waits_for_the_prune_under_way(store, reports):
    """Stopping waits for a prune under way, and nothing runs after."""
    db, pool = store
    add_request(db, days_ago(40))
    service, clock = service_at(pool, NOW)
    service.startService()
    clock.advance(retention.START_DELAY)
    await service.stopService()
    assert len(reports) == 1
    assert column(db, "SELECT count(*) FROM incidents") == [0]
    clock.advance(10 * retention.DEFAULT_INTERVAL)
    await deferLater(reactor, 0.1)
    assert len(reports) == 1
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_service_stopped_before_its_first_prune(store, reports):
    """A service stopped before its first prune leaves nothing scheduled."""
    _, pool = store
    service, clock = service_at(pool, NOW)
    service.startService()
    await defer.ensureDeferred(service.stopService())
    clock.advance(retention.START_DELAY)
    assert clock.getDelayedCalls() == []
    assert reports == []


@pytest_twisted.ensureDeferred
async def test_service_prunes_under_the_stores_writer_lock(tmp_path, reports):
    """
    As the daemon wires it (``write=store.write``), a prune waits for the
    writer lock the worker processes take, and then runs.
    """
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(str(path))
    db = new_store(path)
    add_request(db, days_ago(40))
    holder = os.open(str(path) + SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's transaction
    service, clock = service_at(store.pool, NOW, start_delay=0, write=store.write)
    try:
        service.startService()
        clock.advance(0)
        await deferLater(reactor, 0.3)
        assert reports == []  # waiting for the lock
        assert column(db, "SELECT count(*) FROM incidents") == [1]
        fcntl.flock(holder, fcntl.LOCK_UN)
        await logged(reports, 1)
        assert (reports[0]["incidents"], reports[0]["requests"]) == (1, 1)
        assert column(db, "SELECT count(*) FROM incidents") == [0]
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        await service.stopService()
        store.close()
        db.close()


@pytest_twisted.ensureDeferred
async def test_each_instance_keeps_its_samples_through_a_prune(tmp_path):
    """
    A prune takes the samples of the incidents it deletes and no others:
    each instance keeps the samples it has left, and goes on keeping its 20
    most recent.
    """

    def sent(instance: str, received: str) -> ReceivedRequest:
        return ReceivedRequest(
            received, "127.0.0.1", "POST", "/", {}, b"{}", instance, None
        )

    def draft(name: str) -> IncidentDraft:
        return IncidentDraft(name, "Unclassified", days_ago(50), {}, {})

    def samples_of(instance: str) -> list[str]:
        with closing(readback.open_for_reading(str(path))) as db:
            return [s["name"] for s in readback.samples(db, instance)]

    path = tmp_path / "s.sqlite"
    store = SQLiteStore(str(path))
    try:
        for i in range(15):
            await store.add(sent("a", days_ago(40)), [draft(f"a{i}")], True)
            await store.add(sent("b", days_ago(10)), [draft(f"b{i}")], True)
        await store.add(sent("a", days_ago(5)), [draft("a-new")], True)
        incidents, requests, _ = retention.prune_store(str(path), days_ago(30))
        assert (incidents, requests) == (15, 15)
        assert samples_of("a") == ["a-new"]
        assert samples_of("b") == [f"b{i}" for i in range(15)]
        for i in range(25):
            await store.add(sent("b", days_ago(1)), [draft(f"B{i}")], True)
        assert samples_of("a") == ["a-new"]
        assert samples_of("b") == [f"B{i}" for i in range(5, 25)]
        assert column(path, "SELECT count(*) FROM samples") == [21]
    finally:
        store.close()
