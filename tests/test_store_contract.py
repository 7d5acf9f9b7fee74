"""
What the incident store promises, whatever its database: every test here
runs on a SQLite file and on a fresh PostgreSQL database (``pg_database``),
through the one interface (``add``, ``write``, ``ping``) and read back
through the readers the ``gwebhook`` commands use (``list``, ``show``,
``export``, ``samples``), or else through the rows themselves.

Group commit and one request all or nothing; ids unique, increasing and
never given twice; samples; retention; duplicates (composite keys, request
keys, their window); instances; the health probe.  What only one database
has (SQLite's file and writer lock, PostgreSQL's sessions) is tested in
those backends' own modules.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest
import pytest_twisted
from support import postgres
from support.store import read_only
from twisted.internet.defer import DeferredList, gatherResults

from gwebhook import retention
from gwebhook.dedup import DedupConfig, Ticket, ticket
from gwebhook.model import Committed, IncidentDraft, ReceivedRequest
from gwebhook.readback import (
    ReadError,
    export_incidents,
    list_incidents,
    open_for_reading,
    samples,
    show_incident,
)
from gwebhook.store import SAMPLE_COUNT, IncidentStore, SQLiteStore, StoreUnavailable
from gwebhook.store.postgres import PostgresStore

RECEIVED = "2026-01-01T00:00:00Z"
CERT = {"subject": "CN=sensor-1.example.com,O=Example", "sha256": "ab" * 32}
KEYED = DedupConfig(("alertId",), None, 3600)
# Composite keys and a delivery header: the request key is its value.
DELIVERED = DedupConfig(("alertId",), "X-Delivery", 3600)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """A new, empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        s: IncidentStore = SQLiteStore(str(tmp_path / "store.sqlite"))
    else:
        s = PostgresStore(request.getfixturevalue("pg_database"))
    yield s
    s.close()


# Reading and writing rows behind the store's back --------------------------


def is_sqlite(store: IncidentStore) -> bool:
    return isinstance(store, SQLiteStore)


def rows(store: IncidentStore, sql: str, *params) -> list[tuple]:
    """The rows ``sql`` (``?`` placeholders) answers, on a connection of its own."""
    if is_sqlite(store):
        with contextlib.closing(read_only(Path(store.target))) as db:
            return [tuple(row) for row in db.execute(sql, params)]
    return postgres.psql_rows(store.target, sql.replace("?", "%s"), *params)


def execute(store: IncidentStore, sql: str, *params) -> None:
    """Run and commit one statement (``?`` placeholders), as another writer would."""
    if is_sqlite(store):
        connection = sqlite3.connect(store.target, timeout=10)
        with contextlib.closing(connection), connection:
            connection.execute(sql, params)
    else:
        postgres.psql_rows(store.target, sql.replace("?", "%s"), *params)


def reading(store: IncidentStore):
    """The store opened as ``gwebhook list/show/export/samples`` open it."""
    return contextlib.closing(open_for_reading(store.target))


def exported(store: IncidentStore, after: int = 0) -> list[dict]:
    with reading(store) as db:
        return list(export_incidents(db, after))


def names(store: IncidentStore) -> list[str]:
    """Every stored incident's name, oldest first, as ``gwebhook list`` gives them."""
    with reading(store) as db:
        return [i["name"] for i in list_incidents(db)]


def sample_names(store: IncidentStore, instance: str | None = None) -> list[str]:
    with reading(store) as db:
        return [i["name"] for i in samples(db, instance)]


# Requests and incidents ------------------------------------------------------


def sent(
    instance: str = "default",
    x_request_id: str | None = None,
    received: str = RECEIVED,
    client_cert: dict | None = None,
    headers: dict | None = None,
) -> ReceivedRequest:
    return ReceivedRequest(
        received,
        "127.0.0.1",
        "POST",
        "/instance/execute/" + instance,
        headers or {},
        b"[]",
        instance,
        client_cert,
        x_request_id,
    )


def draft(name, details: dict | None = None, fields: dict | None = None):
    return IncidentDraft(
        name, "Unclassified", "2026-01-01T00:00:00Z", details or {}, fields or {}
    )


def keyed_drafts(details: list[dict]) -> list[IncidentDraft]:
    return [draft(str(d.get("name", "n")), d) for d in details]


def keyed(details: list[dict], config: DedupConfig = KEYED, header=None) -> Ticket:
    values = None if header is None else [header.encode()]
    return ticket(config, values, details)


async def add_keyed(
    store, details: list[dict], t: Ticket | None, keep=False, **request
) -> Committed:
    return await store.add(sent(**request), keyed_drafts(details), keep, t)


def outcomes(results) -> list:
    """Each request's incidents as committed, or the error it failed with."""
    return [value.incidents if ok else value.value for ok, value in results]


NOT_JSON = {"x": {1, 2}}  # a set: json cannot encode it


# Group commit, one request all or nothing ------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_share_transactions_each_answered_its_own(store):
    """
    50 requests added at once are committed in fewer transactions than
    requests; each is answered with its own incidents, in order, with
    increasing ids, and stored as answered, with its own request.
    """
    statements: list[str] = []
    if is_sqlite(store):
        await store.pool.runWithConnection(
            lambda connection: connection.set_trace_callback(statements.append)
        )
    adds = [
        store.add(sent(x_request_id=f"x{i}"), [draft(f"r{i}a"), draft(f"r{i}b")])
        for i in range(50)
    ]
    results = await gatherResults(adds)
    assert [[s.name for s in r.incidents] for r in results] == [
        [f"r{i}a", f"r{i}b"] for i in range(50)
    ]
    ids = [int(s.id) for r in results for s in r.incidents]
    assert len(set(ids)) == 100 and ids == sorted(ids)
    # A transaction stamps its incidents with one creation time (to the
    # microsecond): as many distinct times as transactions.
    assert all(len({s.created for s in r.incidents}) == 1 for r in results)
    transactions = len({s.created for r in results for s in r.incidents})
    assert 1 <= transactions < 50
    # ...which the database counts the same way.
    if is_sqlite(store):
        assert statements.count("BEGIN IMMEDIATE") == transactions
        assert statements.count("COMMIT") == transactions
    else:
        # A row's xmin is the transaction that wrote it (here the batch's
        # one savepoint in it): one per batch.
        [(writers,)] = rows(store, "SELECT count(DISTINCT xmin::text) FROM incidents")
        assert writers == transactions
    stored = [
        (e["id"], e["name"], e["created"], e["request"]["id"]) for e in exported(store)
    ]
    assert stored == [
        (s.id, s.name, s.created, f"x{i}")
        for i, r in enumerate(results)
        for s in r.incidents
    ]
    assert rows(store, "SELECT count(*) FROM requests") == [(50,)]


@pytest_twisted.ensureDeferred
async def test_a_request_that_cannot_be_encoded_fails_alone(store):
    """
    A request whose details are not JSON fails, alone: the others of its
    batch are stored and answered; nothing of it is stored, not even its
    incidents that could be.
    """
    adds = [
        store.add(sent(), [draft("first")]),  # a batch of its own
        store.add(sent(), [draft("good")]),
        store.add(sent(), [draft("ok"), draft("bad", NOT_JSON)]),
        store.add(sent(), [draft("also good")]),
    ]
    results = outcomes(await DeferredList(adds, consumeErrors=True))
    assert isinstance(results[2], TypeError)
    assert [[s.name for s in r] for i, r in enumerate(results) if i != 2] == [
        ["first"],
        ["good"],
        ["also good"],
    ]
    assert names(store) == ["first", "good", "also good"]
    assert rows(store, "SELECT count(*) FROM requests") == [(3,)]


@pytest_twisted.ensureDeferred
async def test_fields_that_cannot_be_encoded_fail_their_request_alone(store):
    adds = [
        store.add(sent(), [draft("first")]),
        store.add(sent(), [draft("second")]),
        store.add(sent(), [draft("bad", fields=NOT_JSON)]),
        store.add(sent(), [draft("third")]),
    ]
    results = outcomes(await DeferredList(adds, consumeErrors=True))
    assert isinstance(results[2], TypeError)
    assert names(store) == ["first", "second", "third"]
    assert rows(store, "SELECT count(*) FROM requests") == [(3,)]


@pytest_twisted.ensureDeferred
async def test_a_value_the_driver_refuses_fails_its_request_alone(store):
    """
    A value the database driver refuses to bind (after the batch's requests
    were inserted) undoes the batch's first try: its request is not kept,
    the others are, with ids unique and increasing.  The error is the
    request's own, not "store unavailable".
    """
    adds = [
        store.add(sent(), [draft("first")]),
        store.add(sent(), [draft("one")]),
        store.add(sent(), [draft("two"), draft(object())]),
        store.add(sent(), [draft("three")]),
    ]
    results = outcomes(await DeferredList(adds, consumeErrors=True))
    assert isinstance(results[2], Exception)
    assert not isinstance(results[2], StoreUnavailable), results[2]
    kept = [r[0] for i, r in enumerate(results) if i != 2]
    assert [s.name for s in kept] == ["first", "one", "three"]
    assert names(store) == ["first", "one", "three"]
    assert rows(store, "SELECT count(*) FROM requests") == [(3,)]
    ids = [int(s.id) for s in kept]
    assert ids == sorted(set(ids))


@pytest_twisted.ensureDeferred
async def test_headers_are_stored_once_per_request(store):
    """Many incidents of one request share its headers; show gives them back."""
    headers = {"x-big": "v" * 10_000}
    drafts = [draft(f"n{i}", {"name": f"n{i}", "i": i}) for i in range(200)]
    stored = (await store.add(sent(headers=headers), drafts)).incidents
    [(total,)] = rows(store, "SELECT sum(length(details)) FROM incidents")
    assert total < 200 * 100
    [(kept,)] = rows(store, "SELECT length(headers) FROM requests")
    assert kept > 10_000
    with reading(store) as db:
        shown = show_incident(db, stored[7].id)
    assert shown["rawJson"] == {"name": "n7", "i": 7, "headers": headers}


# Ids -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ids_are_not_reused_after_the_newest_rows_are_deleted(store):
    """
    An incident id or request id once given is never given again, even
    after the newest incidents and their requests were deleted.
    """
    await store.add(sent(), [draft("kept")])
    gone = (await store.add(sent(), [draft("a"), draft("b"), draft("c")])).incidents
    [(newest_request,)] = rows(store, "SELECT max(id) FROM requests")
    execute(store, "DELETE FROM incidents WHERE id >= ?", int(gone[0].id))
    execute(store, "DELETE FROM requests WHERE id = ?", newest_request)
    assert names(store) == ["kept"]
    [after] = (await store.add(sent(), [draft("after")])).incidents
    assert int(after.id) == int(gone[-1].id) + 1
    assert rows(store, "SELECT max(id) FROM requests") == [(newest_request + 1,)]
    # Everything deleted: still no id given twice.
    execute(store, "DELETE FROM incidents")
    execute(store, "DELETE FROM requests")
    [last] = (await store.add(sent(), [draft("last")])).incidents
    assert int(last.id) == int(after.id) + 1


@pytest_twisted.ensureDeferred
async def test_ids_after_a_failed_request_are_above_every_acknowledged_one(store):
    """A request that failed in its batch leaves no id to give twice."""
    batch = [
        store.add(sent(), [draft("first")]),
        store.add(sent(), [draft("bad", NOT_JSON)]),
        store.add(sent(), [draft("second"), draft("third")]),
    ]
    first, failed, rest = outcomes(await DeferredList(batch, consumeErrors=True))
    assert isinstance(failed, TypeError)
    acknowledged = [int(s.id) for s in first + rest]
    assert len(set(acknowledged)) == 3 and acknowledged == sorted(acknowledged)
    [after] = (await store.add(sent(), [draft("after")])).incidents
    assert int(after.id) > max(acknowledged)
    assert [int(i["id"]) for i in exported(store)] == [*acknowledged, int(after.id)]


# Samples ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_samples_are_the_20_most_recent_of_each_instance_keeping_them(store):
    """
    Each instance that keeps samples keeps its own 20 most recent incidents,
    whatever the others receive, in batches and alone; an instance that
    keeps none has none.
    """
    assert SAMPLE_COUNT == 20
    adds = []
    for i in range(30):
        adds.append(store.add(sent("a"), [draft(f"a{i}")], keep_samples=True))
        if i < 7:
            adds.append(store.add(sent("b"), [draft(f"b{i}")], keep_samples=True))
        adds.append(store.add(sent("c"), [draft(f"c{i}")], keep_samples=False))
    await gatherResults(adds)
    # One request of several incidents, alone in its transaction.
    await store.add(sent("b"), [draft(f"b{i}") for i in range(7, 12)], True)
    assert sample_names(store, "a") == [f"a{i}" for i in range(10, 30)]
    assert sample_names(store, "b") == [f"b{i}" for i in range(12)]
    assert sample_names(store, "c") == []
    assert sorted(sample_names(store)) == sorted(
        [f"a{i}" for i in range(10, 30)] + [f"b{i}" for i in range(12)]
    )
    # A flood of one instance leaves the others' samples as they were.
    await store.add(sent("b"), [draft(f"B{i}") for i in range(300)], True)
    assert sample_names(store, "a") == [f"a{i}" for i in range(10, 30)]
    assert sample_names(store, "b") == [f"B{i}" for i in range(280, 300)]
    assert rows(store, "SELECT count(*) FROM samples") == [(40,)]


@pytest_twisted.ensureDeferred
async def test_a_request_that_fails_leaves_no_sample(store):
    adds = [
        store.add(sent("a"), [draft("first")], keep_samples=True),
        store.add(sent("a"), [draft("bad", NOT_JSON)], keep_samples=True),
        store.add(sent("a"), [draft("second")], keep_samples=True),
    ]
    await DeferredList(adds, consumeErrors=True)
    assert sample_names(store, "a") == ["first", "second"]


@pytest_twisted.ensureDeferred
async def test_duplicates_are_not_kept_as_samples(store):
    """Only the incidents a request creates are samples, not those it repeats."""
    first = [{"alertId": 1, "name": "one"}]
    await add_keyed(store, first, keyed(first), keep=True)
    await add_keyed(store, first, keyed(first), keep=True)
    mixed = [{"alertId": 1, "name": "again"}, {"alertId": 2, "name": "two"}]
    await add_keyed(store, mixed, keyed(mixed), keep=True)
    assert sample_names(store) == ["one", "two"]
    assert rows(store, "SELECT count(*) FROM samples") == [(2,)]


# Retention -------------------------------------------------------------------

OLD = "2024-01-01T00:00:00Z"
CUTOFF = "2025-06-01T00:00:00Z"
# Just before and just after the cutoff: compared as times, not strings.
JUST_BEFORE = "2025-05-31T23:59:59.500000Z"
JUST_AFTER = "2025-06-01T00:00:00.250000Z"


async def prune_through(store: IncidentStore, how: str, before: str):
    """(incidents, requests) deleted: in the store's transaction, or as the command."""
    if how == "write":
        return await store.write(retention.prune, before)
    if is_sqlite(store):
        incidents, requests, _ = retention.prune_store(store.target, before)
    else:
        incidents, requests, _ = retention.prune_postgres(store.target, before)
    return incidents, requests


@pytest.mark.parametrize("how", ["write", "command"])
@pytest_twisted.ensureDeferred
async def test_prune_deletes_what_was_received_before_the_cutoff(store, how):
    """
    prune deletes the requests received before the cutoff with their
    incidents and samples, all of it, and nothing received since; it
    forgets the duplicates' keys past their window, not the others.
    """
    await store.add(sent("a", received=OLD), [draft("old1"), draft("old2")], True)
    await store.add(sent("b", received=JUST_BEFORE), [draft("before")], True)
    await store.add(sent("a", received=JUST_AFTER), [draft("after")], True)
    await store.add(sent("b", received=RECEIVED), [draft("new")], True)
    expired = [{"alertId": 1}]
    await add_keyed(store, expired, keyed(expired, DELIVERED, "gone"))
    live = [{"alertId": 2}]
    await add_keyed(store, live, keyed(live, DELIVERED, "live"))
    # The first key's window ended long ago.
    execute(store, "UPDATE dedup_keys SET expires = 1 WHERE key = ?", '{"alertId":1}')
    execute(store, "UPDATE dedup_requests SET expires = 1 WHERE key = ?", "gone")

    assert await prune_through(store, how, CUTOFF) == (3, 2)

    assert names(store) == ["after", "new", "n", "n"]
    assert sample_names(store) == ["after", "new"]
    assert rows(store, "SELECT received FROM requests ORDER BY id") == [
        (JUST_AFTER,),
        (RECEIVED,),
        (RECEIVED,),
        (RECEIVED,),
    ]
    # No sample, incident or request left pointing at what went.
    assert rows(
        store,
        "SELECT count(*) FROM samples s LEFT JOIN incidents i ON i.id = s.incident_id"
        " WHERE i.id IS NULL",
    ) == [(0,)]
    assert rows(
        store,
        "SELECT count(*) FROM incidents i LEFT JOIN requests r ON r.id = i.request_id"
        " WHERE r.id IS NULL",
    ) == [(0,)]
    assert rows(store, "SELECT key FROM dedup_keys") == [('{"alertId":2}',)]
    assert rows(store, "SELECT key FROM dedup_requests") == [("live",)]
    # Nothing more to prune; the store goes on, its ids after those deleted.
    assert await prune_through(store, how, CUTOFF) == (0, 0)
    [later] = (await store.add(sent(), [draft("later")])).incidents
    assert int(later.id) == 8


@pytest_twisted.ensureDeferred
async def test_forget_expired_forgets_only_keys_past_their_window(store):
    short = DedupConfig(("alertId",), "X-Delivery", 1)
    await add_keyed(store, [{"alertId": 1}], keyed([{"alertId": 1}], short, "s"))
    await add_keyed(store, [{"alertId": 2}], keyed([{"alertId": 2}], DELIVERED, "l"))
    # Nothing had ended ten seconds ago.
    assert await store.write(retention.forget_expired, time.time() - 10) == 0
    forgotten = await store.write(retention.forget_expired, time.time() + 2)
    assert forgotten == 2  # the short key and the short request key
    assert rows(store, "SELECT key FROM dedup_keys") == [('{"alertId":2}',)]
    assert rows(store, "SELECT key FROM dedup_requests") == [("l",)]
    # Incidents stay; and what was forgotten is no longer a duplicate.
    assert names(store) == ["n", "n"]
    again = await add_keyed(store, [{"alertId": 1}], keyed([{"alertId": 1}]))
    assert not again.duplicates
    still = await add_keyed(store, [{"alertId": 2}], keyed([{"alertId": 2}]))
    assert still.duplicates == 1


# Duplicates ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_remembered_key_creates_nothing_and_answers_the_first_incident(store):
    """The second element with a key is the first incident, flagged duplicate."""
    [first] = (
        await add_keyed(store, [{"alertId": 1}], keyed([{"alertId": 1}]))
    ).incidents
    details = [{"alertId": 1, "name": "again"}, {"alertId": 2}, {"other": 1}]
    again = await add_keyed(store, details, keyed(details))
    assert again.incidents[0] == first._replace(duplicate=True)
    assert [s.duplicate for s in again.incidents] == [True, False, False]
    assert again.duplicates == 1 and again.replay_of is None
    assert rows(store, "SELECT count(*) FROM incidents") == [(3,)]
    # The element's position in its request is kept, duplicates skipped.
    assert rows(
        store, "SELECT position FROM incidents WHERE id > ? ORDER BY id", int(first.id)
    ) == [(1,), (2,)]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_elements_repeating_one_of_the_same_request_are_duplicates(store):
    details = [{"alertId": 1}, {"alertId": 1, "name": "b"}, {}, {}, {"alertId": 1}]
    committed = await add_keyed(store, details, keyed(details))
    first = committed.incidents[0]
    assert committed.incidents[1] == committed.incidents[4]
    assert committed.incidents[1] == first._replace(duplicate=True)
    assert [s.duplicate for s in committed.incidents] == [
        False,
        True,
        False,
        False,
        True,
    ]
    assert rows(store, "SELECT count(*) FROM incidents") == [(3,)]
    assert rows(store, "SELECT count(*) FROM dedup_keys") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_keys_repeated_across_requests_of_one_batch_are_duplicates(store):
    """A request sees the keys of those before it in the same transaction."""
    one = [{"alertId": 1, "name": "one"}]
    adds = [
        store.add(sent(), [draft("alone")]),  # the next ones wait: one batch
        store.add(sent(), keyed_drafts(one), False, keyed(one)),
        store.add(sent(), keyed_drafts(one), False, keyed(one)),
        store.add(sent(), keyed_drafts(one), False, keyed(one)),
    ]
    _, first, second, third = await gatherResults(adds)
    assert not first.duplicates
    assert (
        second.incidents
        == third.incidents
        == [first.incidents[0]._replace(duplicate=True)]
    )
    assert names(store) == ["alone", "one"]


@pytest_twisted.ensureDeferred
async def test_keys_are_per_instance(store):
    """The same keys sent to two instances create incidents in each."""
    details = [{"alertId": 1}]
    for instance in ("a", "b"):
        committed = await add_keyed(
            store, details, keyed(details, DELIVERED, "d1"), instance=instance
        )
        assert not committed.duplicates and committed.replay_of is None
    again = await add_keyed(store, details, keyed(details), instance="b")
    assert again.duplicates == 1
    with reading(store) as db:
        assert [i["instance"] for i in list_incidents(db)] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_a_repeated_request_key_replays_the_answer_and_stores_nothing(store):
    details = [{"alertId": 1}, {"alertId": 1}, {"x": 1}]
    first = await add_keyed(
        store, details, keyed(details, DELIVERED, "d1"), x_request_id="A"
    )
    other = [{"something": "else"}]
    again = await add_keyed(
        store, other, keyed(other, DELIVERED, "d1"), x_request_id="B"
    )
    assert again.replay_of == "A"
    assert again.incidents == [s._replace(duplicate=True) for s in first.incidents]
    assert rows(store, "SELECT count(*) FROM requests") == [(1,)]
    assert rows(store, "SELECT count(*) FROM incidents") == [(2,)]
    # Another delivery id is another request; its keyed element is still a
    # duplicate of the first request's.
    third = await add_keyed(store, details, keyed(details, DELIVERED, "d2"))
    assert third.replay_of is None
    assert [s.duplicate for s in third.incidents] == [True, True, False]
    assert rows(store, "SELECT count(*) FROM requests") == [(2,)]


@pytest_twisted.ensureDeferred
async def test_sixteen_identical_requests_at_once_create_one_set(store):
    """All in one batch or several: one set of incidents, fifteen replays."""
    details = [{"alertId": 7}, {"alertId": 8}]
    adds = [
        store.add(
            sent(x_request_id=f"r{n}"),
            keyed_drafts(details),
            False,
            keyed(details, DELIVERED, "same"),
        )
        for n in range(16)
    ]
    results = await gatherResults(adds)
    assert [r.replay_of for r in results] == [None] + ["r0"] * 15
    assert len({tuple(s.id for s in r.incidents) for r in results}) == 1
    assert rows(store, "SELECT count(*) FROM incidents") == [(2,)]
    assert rows(store, "SELECT count(*) FROM requests") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_a_key_past_its_window_is_forgotten(store):
    short = DedupConfig(("alertId",), "X-Delivery", 1)
    details = [{"alertId": 1}]
    first = await add_keyed(
        store, details, keyed(details, short, "d"), x_request_id="r1"
    )
    assert (
        await add_keyed(store, details, keyed(details, short, "d"))
    ).replay_of == "r1"
    time.sleep(1.1)
    later = await add_keyed(store, details, keyed(details, short, "d"))
    assert later.replay_of is None and not later.duplicates
    assert later.incidents[0].id != first.incidents[0].id
    # Remembered again, once: the expired rows were replaced.
    assert rows(store, "SELECT incident_id FROM dedup_keys") == [
        (int(later.incidents[0].id),)
    ]
    assert rows(store, "SELECT count(*) FROM dedup_requests") == [(1,)]
    assert names(store) == ["n", "n"]


@pytest_twisted.ensureDeferred
async def test_a_request_that_fails_takes_its_keys_with_it(store):
    """A request that cannot be stored leaves no key: the next one creates."""
    good = [{"alertId": 1}]
    bad = [{"alertId": 2}, {"alertId": 3, "x": {1, 2}}]  # a set: not JSON
    later = [{"alertId": 2}, {"alertId": 1}]
    adds = [
        store.add(sent(), keyed_drafts(good), False, keyed(good, DELIVERED, "g")),
        store.add(sent(), keyed_drafts(bad), False, keyed(bad, DELIVERED, "b")),
        store.add(sent(), keyed_drafts(later), False, keyed(later, DELIVERED, "l")),
    ]
    (ok1, first), (ok2, failed), (ok3, third) = await DeferredList(
        adds, consumeErrors=True
    )
    assert ok1 and not ok2 and ok3
    assert failed.check(TypeError)
    # alertId 2 was never stored: the third request creates it; alertId 1
    # is the first request's.
    assert [s.duplicate for s in third.incidents] == [False, True]
    assert third.incidents[1] == first.incidents[0]._replace(duplicate=True)
    assert sorted(k for (k,) in rows(store, "SELECT key FROM dedup_keys")) == [
        '{"alertId":1}',
        '{"alertId":2}',
    ]
    # Its request key neither: sent again, it is a new request.
    assert sorted(k for (k,) in rows(store, "SELECT key FROM dedup_requests")) == [
        "g",
        "l",
    ]
    retry = await add_keyed(
        store, [{"alertId": 9}], keyed([{"alertId": 9}], DELIVERED, "b")
    )
    assert retry.replay_of is None and not retry.duplicates


# Instances -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_incidents_and_requests_record_instance_fields_and_client_cert(store):
    """
    Each incident records its request's instance and its own fields, as JSON
    encoded as its details are; the request records the client certificate,
    or NULL; show gives them back, with the request's X-Request-Id.
    """
    fields = {"severity": 3, "tags": ["a", "é"]}
    [one, two] = (
        await store.add(
            sent("wallarm", "0123456789abcdef", client_cert=CERT),
            [draft("one", fields=fields), draft("two")],
        )
    ).incidents
    [three] = (await store.add(sent("other"), [draft("three")])).incidents
    assert rows(store, "SELECT id, instance, fields FROM incidents ORDER BY id") == [
        (int(one.id), "wallarm", '{"severity":3,"tags":["a","é"]}'),
        (int(two.id), "wallarm", "{}"),
        (int(three.id), "other", "{}"),
    ]
    assert rows(
        store, "SELECT instance, client_cert, x_request_id FROM requests ORDER BY id"
    ) == [
        ("wallarm", json.dumps(CERT, separators=(",", ":")), "0123456789abcdef"),
        ("other", None, None),
    ]
    with reading(store) as db:
        shown = show_incident(db, one.id)
        plain = show_incident(db, three.id)
    assert shown["instance"] == "wallarm"
    assert shown["fields"] == fields
    assert shown["request"]["id"] == "0123456789abcdef"
    assert shown["request"]["client_cert"] == CERT
    assert shown["request"]["path"] == "/instance/execute/wallarm"
    assert {k: shown[k] for k in ("id", "name", "type", "occurred", "created")} == {
        "id": one.id,
        "name": "one",
        "type": "Unclassified",
        "occurred": one.occurred,
        "created": one.created,
    }
    assert plain["instance"] == "other" and plain["fields"] == {}
    assert plain["request"]["id"] is None
    assert "client_cert" not in plain["request"]


@pytest_twisted.ensureDeferred
async def test_list_and_export_give_every_instance_in_id_order(store):
    """
    list and export give incidents oldest first, every instance's or one
    instance's; after and limit page through them; an unknown instance or
    incident reads as nothing.
    """
    expected: dict[str, list[str]] = {}
    adds = []
    for i in range(6):
        for instance in ("a", "b", "c")[: 1 + i % 3]:
            name = f"{instance}{i}"
            expected.setdefault(instance, []).append(name)
            adds.append(store.add(sent(instance), [draft(name)]))
    results = await gatherResults(adds)
    ids = [r.incidents[0].id for r in results]
    with reading(store) as db:
        listed = list(list_incidents(db))
        assert [i["id"] for i in listed] == ids
        for instance, wanted in expected.items():
            mine = list(list_incidents(db, instance=instance))
            assert [i["name"] for i in mine] == wanted
            assert {i["instance"] for i in mine} == {instance}
        assert list(list_incidents(db, instance="nobody")) == []
        page = list(list_incidents(db, after=int(ids[2]), limit=3))
        assert [i["id"] for i in page] == ids[3:6]
        whole = list(export_incidents(db))
        assert [i["id"] for i in whole] == ids
        assert [i["id"] for i in export_incidents(db, int(ids[-2]))] == ids[-1:]
        with pytest.raises(ReadError, match="no incident"):
            show_incident(db, str(int(ids[-1]) + 1))
    assert [{k: i[k] for k in listed[0]} for i in whole] == listed


@pytest_twisted.ensureDeferred
async def test_samples_read_back_per_instance(store):
    """samples gives each instance's own, whole, with their requests."""
    await store.add(sent("a", "ra", client_cert=CERT), [draft("a1")], True)
    await store.add(sent("b", "rb"), [draft("b1", fields={"f": 1})], True)
    await store.add(sent("c", "rc"), [draft("c1")], False)
    with reading(store) as db:
        [a] = samples(db, "a")
        [b] = samples(db, "b")
        assert samples(db, "c") == []
        assert [s["name"] for s in samples(db)] == ["a1", "b1"]
    assert a["request"]["id"] == "ra" and a["request"]["client_cert"] == CERT
    assert b["fields"] == {"f": 1} and b["instance"] == "b"


# The health probe ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ping_and_a_writing_ping_succeed(store):
    await store.ping()
    assert rows(store, "SELECT count(*) FROM health") == [(0,)]
    await store.ping(write=True)
    await store.ping(write=True)
    assert rows(store, "SELECT id FROM health") == [(1,)]
    # The probe's commit is a write transaction like the others: adds go on.
    [stored] = (await store.add(sent(), [draft("after")])).incidents
    assert names(store) == ["after"] and stored.name == "after"
