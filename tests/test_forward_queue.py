"""
The forwarding queue's SQL (``gwebhook.store.deliveries``) on a real SQLite
store, without a daemon: batches formed in id order and fixed, marked
delivered, retried and given up, redelivered; and a batch's work that does
not grow with what the forward delivered before (the table keeps every
delivered incident); the ``xsoar`` elements written from the stored text.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator

import pytest
import pytest_twisted

from gwebhook import forward
from gwebhook.model import IncidentDraft, ReceivedRequest
from gwebhook.schema import configure, create_or_upgrade
from gwebhook.store import IncidentStore, SQLiteStore
from gwebhook.store import deliveries as queue
from gwebhook.store.postgres import PostgresStore

FORWARD = "central"
HOLDER = "node-1"
NOW = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Iterator[IncidentStore]:
    """A new, empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        s: IncidentStore = SQLiteStore(str(tmp_path / "store.sqlite"))
    else:
        s = PostgresStore(request.getfixturevalue("pg_database"))
    yield s
    s.close()


def _queue(cursor, forward: str, ids: range) -> None:
    cursor.executemany(
        "INSERT INTO deliveries (forward, incident_id, queued) VALUES (?, ?, ?)",
        [(forward, i, NOW) for i in ids],
    )


def _states(db, forward: str) -> dict[int, tuple[str, int | None, int]]:
    rows = db.execute(
        "SELECT incident_id, state, batch, attempts FROM deliveries"
        " WHERE forward = ? ORDER BY incident_id",
        (forward,),
    )
    return {i: (s, b, a) for i, s, b, a in rows}


async def queued(store: IncidentStore, ids: range, forward: str = FORWARD) -> None:
    """Incidents queued for ``forward``, as the store queues them."""
    await store.write(_queue, forward, ids)


async def states(store: IncidentStore) -> dict[int, tuple[str, int | None, int]]:
    return await store.read(_states, FORWARD)


async def take(store: IncidentStore, size: int = 3, delivered: int | None = None):
    return await store.write(queue.take, FORWARD, HOLDER, NOW, size, 30.0, delivered)


@pytest_twisted.ensureDeferred
async def test_batches_are_formed_in_id_order_fixed_and_marked_by_the_next_take(
    store,
):
    """
    The oldest pending incidents form a batch named by its first; it stays
    the same until delivered (marked by the next take), and only the
    forward's own incidents are in it.
    """
    await queued(store, range(1, 8))
    await queued(store, range(1, 8), forward="other")
    first = await take(store)
    assert (first.batch.first, first.batch.ids, first.pending) == (1, (1, 2, 3), 7)
    await queued(store, range(8, 10))
    # Not yet marked: the same batch again, new incidents or not.
    assert (await take(store)).batch.ids == (1, 2, 3)
    second = await take(store, delivered=1)
    assert (second.batch.first, second.batch.ids, second.pending) == (4, (4, 5, 6), 6)
    third = await take(store, delivered=4)
    assert third.batch.ids == (7, 8, 9)
    assert (await take(store, delivered=7)).batch is None
    now = await states(store)
    assert {s for s, _, _ in now.values()} == {"delivered"}
    assert [b for _, b, _ in now.values()] == [1, 1, 1, 4, 4, 4, 7, 7, 7]
    other = await store.read(_states, "other")
    assert {s for s, _, _ in other.values()} == {"pending"}


@pytest_twisted.ensureDeferred
async def test_a_retried_batch_is_the_same_and_a_dead_one_is_passed_over(store):
    """A retry keeps the batch whole and counts the attempt; dead goes on."""
    await queued(store, range(1, 6))
    await take(store)
    await store.write(queue.retry, FORWARD, 1, "answered 503", NOW + 5)
    again = await take(store)
    assert (again.batch.ids, again.batch.attempts) == ((1, 2, 3), 1)
    assert again.batch.next_attempt == NOW + 5
    assert await store.write(queue.dead, FORWARD, 1, "answered 400", True) == 3
    after = await take(store)
    assert (after.batch.first, after.batch.ids) == (4, (4, 5))
    assert (await states(store))[1] == ("dead", 1, 2)


@pytest_twisted.ensureDeferred
async def test_redelivered_incidents_form_a_new_batch_after_the_formed_one(store):
    """
    Incidents queued again by hand (older than what is pending) are sent
    once the batch already formed is done, as a new batch named by the
    oldest of them.
    """
    await queued(store, range(1, 7))
    await take(store)
    await take(store, delivered=1)  # 4, 5, 6 now form a batch
    await store.write(queue.redeliver, FORWARD, [2, 3], NOW)
    # The formed batch is finished first: it is fixed.
    assert (await take(store)).batch.ids == (4, 5, 6)
    nxt = await take(store, delivered=4)
    assert (nxt.batch.first, nxt.batch.ids) == (2, (2, 3))
    assert (await take(store, delivered=2)).batch is None
    assert {s for s, _, _ in (await states(store)).values()} == {"delivered"}


def vm_steps(db: sqlite3.Connection, work: Callable[[], object]) -> int:
    """How many of SQLite's virtual machine instructions ``work`` ran (x100)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 100)
    try:
        work()
    finally:
        db.set_progress_handler(None, 0)
    return steps


def test_a_batch_costs_the_same_after_many_delivered_ones(tmp_path):
    """
    Taking a batch, marking it delivered with the next take, retrying it and
    giving it up each search only the pending incidents, not the 20,000 the
    forward delivered before (kept in the table): SQLite's work is that of a
    forward with no history.
    """

    def write(connection: sqlite3.Connection, work: Callable, *args):
        # One write transaction, as IncidentStore.write runs ``work``.
        connection.execute("BEGIN IMMEDIATE")
        result = work(connection.cursor(), *args)
        connection.execute("COMMIT")
        return result

    def opened(name: str) -> sqlite3.Connection:
        path = str(tmp_path / name)
        create_or_upgrade(path)
        connection = sqlite3.connect(path, isolation_level=None)
        configure(connection)
        return connection

    def cycle(connection: sqlite3.Connection, start: int) -> int:
        write(connection, _queue, FORWARD, range(start, start + 300))

        def run() -> None:
            taken = write(connection, queue.take, FORWARD, HOLDER, NOW, 100)
            first = taken.batch.first
            write(connection, queue.retry, FORWARD, first, "answered 503", NOW)
            write(connection, queue.take, FORWARD, HOLDER, NOW, 100, 30.0, first)
            write(connection, queue.dead, FORWARD, first + 100, "answered 400", True)

        return vm_steps(connection, run)

    with contextlib.closing(opened("fresh.sqlite")) as fresh:
        fresh_steps = cycle(fresh, 1)
    with contextlib.closing(opened("history.sqlite")) as history:
        write(history, _queue, FORWARD, range(1, 20_001))
        history.execute(
            "UPDATE deliveries SET state = 'delivered',"
            " batch = incident_id - (incident_id - 1) % 100"
        )
        history_steps = cycle(history, 20_001)
    assert history_steps < 2 * fresh_steps, (history_steps, fresh_steps)


@pytest_twisted.ensureDeferred
async def test_xsoar_elements_are_the_xsoar_body_of_what_was_stored(store):
    """
    The xsoar elements, written from the details' stored JSON text, are the
    elements ``element_body`` makes of the incidents read back whole: any
    text, numbers past 64 bits, nesting; never the request's headers.  The
    body of a batch is an array of them, of ``batch = 1`` the one object.
    """
    store.forward_routes = ((FORWARD, None),)
    request = ReceivedRequest(
        "2026-01-01T00:00:00Z",
        "127.0.0.1",
        "POST",
        "/",
        {"content-type": "application/json", "x-token": "secret-of-the-sender"},
        b"[]",
        "default",
        None,
    )
    details = {
        "text": 'quotes " and \\ and a line\nbreak, \u2028, é, 漢字, 🙂',
        "numbers": [0, -1, 2.5, 1e-07, 2**70, -(2**65)],
        "nested": {"a": [None, True, False, {"b": {}}, []]},
    }
    drafts = [
        IncidentDraft(
            'é "name" 漢字', "Type\u2028", "2026-01-01T00:00:00Z", details, {}
        ),
        IncidentDraft("plain", "Unclassified", "2026-01-02T00:00:00Z", {}, {"f": 1}),
    ]
    committed = await store.add(request, drafts)
    ids = tuple(int(s.id) for s in committed.incidents)
    texts = await store.read(queue.xsoar_elements, ids)
    items = await store.read(queue.items, ids)
    expected = [forward.element_body("xsoar", i, raw) for i, raw in items]
    assert [json.loads(t) for t in texts] == expected
    assert expected[0]["rawJson"] == details
    assert all("secret-of-the-sender" not in t for t in texts)
    assert json.loads(forward.joined(100, texts)) == expected
    assert json.loads(forward.joined(1, texts[:1])) == expected[0]
    assert json.loads(forward.joined(1, texts[:1])) == json.loads(
        forward.body("xsoar", 1, items[:1])
    )
