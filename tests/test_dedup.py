"""
Duplicates in the store, on a real SQLite file: composite keys and
idempotency keys decided in the incidents' transaction, within one request,
across requests of one batch and across batches; their window; a request
that fails taking its keys with it.  The daemon's side (config, answers,
restarts, processes) is in test_dedup_processes.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import DeferredList, gatherResults

from gwebhook import retention, schema
from gwebhook.dedup import DedupConfig, Ticket, composite_key, request_key, ticket
from gwebhook.model import Committed, IncidentDraft, ReceivedRequest
from gwebhook.readback import open_for_reading, show_incident
from gwebhook.store import SQLiteStore


def sent(instance: str = "alerts", x_request_id: str = "r1") -> ReceivedRequest:
    return ReceivedRequest(
        "2026-01-01T00:00:00Z",
        "127.0.0.1",
        "POST",
        "/instance/execute/" + instance,
        {},
        b"[]",
        instance,
        None,
        x_request_id,
    )


def draft(details: dict) -> IncidentDraft:
    return IncidentDraft(
        str(details.get("name", "n")),
        "Unclassified",
        "2026-01-01T00:00:00Z",
        details,
        {},
    )


KEYED = DedupConfig(("alertId",), None, 3600)


def keyed(details: list[dict], config: DedupConfig = KEYED, header=None) -> Ticket:
    values = None if header is None else [header.encode()]
    return ticket(config, values, details)


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(str(tmp_path / "store.sqlite"))
    yield s
    s.close()


def rows(path: str, sql: str, *args) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


async def add(store, details: list[dict], t: Ticket | None, **request) -> Committed:
    return await store.add(sent(**request), [draft(d) for d in details], False, t)


# The rules -------------------------------------------------------------------


def test_the_composite_key_holds_the_keys_present_as_canonical_json():
    """Sorted keys, no spaces, nested objects sorted too; absent keys left out."""
    keys = ("b", "a", "c")
    assert composite_key({"a": 1, "b": {"y": 2, "x": "é"}}, keys) == (
        '{"a":1,"b":{"x":"é","y":2}}'
    )
    assert composite_key({"a": None, "z": 1}, keys) == '{"a":null}'
    assert composite_key({"z": 1}, keys) is None
    assert composite_key({}, keys) is None


def test_values_are_compared_as_json_text():
    """1, 1.0 and "1" are three keys; so are true and 1."""
    texts = {composite_key({"id": v}, ("id",)) for v in (1, 1.0, "1", True)}
    assert len(texts) == 4


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, None),
        ([], None),
        ([b""], None),
        ([b"  \t"], None),
        ([b" msg_1 "], "msg_1"),
        ([b"first", b"second"], "first"),
        ([b"x" * 257], None),
        ([b"x" * 256], "x" * 256),
    ],
)
def test_the_request_key_is_the_first_value_of_the_header(values, expected):
    assert request_key(values) == expected


def test_a_dedup_config_needs_keys_or_a_header_and_a_positive_window():
    with pytest.raises(ValueError):
        DedupConfig((), None)
    with pytest.raises(ValueError):
        DedupConfig(("id",), None, 0)


# In the store ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_remembered_key_creates_nothing_and_answers_the_first_incident(store):
    """The second element with a key is the first incident, flagged duplicate."""
    [first] = (await add(store, [{"alertId": 1}], keyed([{"alertId": 1}]))).incidents
    details = [{"alertId": 1, "name": "again"}, {"alertId": 2}, {"other": 1}]
    again = await add(store, details, keyed(details))
    assert again.incidents[0] == first._replace(duplicate=True)
    assert [s.duplicate for s in again.incidents] == [True, False, False]
    assert again.duplicates == 1 and again.replay_of is None
    assert rows(store.path, "SELECT count(*) FROM incidents") == [(3,)]
    # The element's position in its request is kept, duplicates skipped.
    assert rows(store.path, "SELECT position FROM incidents WHERE id > 1") == [
        (1,),
        (2,),
    ]


@pytest_twisted.ensureDeferred
async def test_elements_repeating_one_of_the_same_request_are_duplicates(store):
    details = [{"alertId": 1}, {"alertId": 1, "name": "b"}, {}, {}, {"alertId": 1}]
    committed = await add(store, details, keyed(details))
    first = committed.incidents[0]
    assert (
        committed.incidents[1]
        == committed.incidents[4]
        == first._replace(duplicate=True)
    )
    assert [s.duplicate for s in committed.incidents] == [
        False,
        True,
        False,
        False,
        True,
    ]
    assert rows(store.path, "SELECT count(*) FROM dedup_keys") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_keys_are_per_instance(store):
    """The same key sent to two instances creates an incident in each."""
    one = await add(store, [{"alertId": 1}], keyed([{"alertId": 1}]), instance="a")
    two = await add(store, [{"alertId": 1}], keyed([{"alertId": 1}]), instance="b")
    assert not one.duplicates and not two.duplicates


@pytest_twisted.ensureDeferred
async def test_a_repeated_request_key_replays_the_answer_and_stores_nothing(store):
    config = DedupConfig(("alertId",), "X-Delivery", 3600)
    details = [{"alertId": 1}, {"alertId": 1}, {"x": 1}]
    first = await add(store, details, keyed(details, config, "d1"), x_request_id="A")
    other = [{"something": "else"}]
    again = await add(store, other, keyed(other, config, "d1"), x_request_id="B")
    assert again.replay_of == "A"
    assert again.incidents == [s._replace(duplicate=True) for s in first.incidents]
    assert rows(store.path, "SELECT count(*) FROM requests") == [(1,)]
    assert rows(store.path, "SELECT count(*) FROM incidents") == [(2,)]
    # Another delivery id is another request; its keyed element is still a
    # duplicate of the first request's.
    third = await add(store, details, keyed(details, config, "d2"))
    assert third.replay_of is None
    assert [s.duplicate for s in third.incidents] == [True, True, False]


@pytest_twisted.ensureDeferred
async def test_sixteen_identical_requests_at_once_create_one_set(store):
    """All in one batch or several: one set of incidents, fifteen replays."""
    config = DedupConfig(("alertId",), "X-Delivery", 3600)
    details = [{"alertId": 7}, {"alertId": 8}]
    adds = [
        store.add(
            sent(x_request_id=f"r{n}"),
            [draft(d) for d in details],
            False,
            keyed(details, config, "same"),
        )
        for n in range(16)
    ]
    results = await gatherResults(adds)
    assert [r.replay_of for r in results] == [None] + ["r0"] * 15
    ids = {tuple(s.id for s in r.incidents) for r in results}
    assert len(ids) == 1
    assert rows(store.path, "SELECT count(*) FROM incidents") == [(2,)]


@pytest_twisted.ensureDeferred
async def test_a_key_past_its_window_is_forgotten(store):
    config = DedupConfig(("alertId",), "X-Delivery", 1)
    details = [{"alertId": 1}]
    first = await add(store, details, keyed(details, config, "d"))
    assert (await add(store, details, keyed(details, config, "d"))).replay_of == "r1"
    time.sleep(1.1)
    later = await add(store, details, keyed(details, config, "d"))
    assert later.replay_of is None and not later.duplicates
    assert later.incidents[0].id != first.incidents[0].id
    # Remembered again, once: the expired rows were replaced.
    assert rows(store.path, "SELECT incident_id FROM dedup_keys") == [
        (int(later.incidents[0].id),)
    ]
    assert rows(store.path, "SELECT count(*) FROM dedup_requests") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_a_request_that_fails_takes_its_keys_with_it(store):
    """A request that cannot be stored leaves no key: the next one creates."""
    good = [{"alertId": 1}]
    bad = [{"alertId": 2}, {"alertId": 3, "x": {1, 2}}]  # a set: not JSON
    later = [{"alertId": 2}, {"alertId": 1}]
    adds = [
        store.add(sent(), [draft(d) for d in good], False, keyed(good)),
        store.add(sent(), [draft(d) for d in bad], False, keyed(bad)),
        store.add(sent(), [draft(d) for d in later], False, keyed(later)),
    ]
    results = await DeferredList(adds, consumeErrors=True)
    (ok1, first), (ok2, failed), (ok3, third) = results
    assert ok1 and not ok2 and ok3
    assert failed.check(TypeError)
    # alertId 2 was never stored: the third request creates it; alertId 1
    # is the first request's.
    assert [s.duplicate for s in third.incidents] == [False, True]
    assert third.incidents[1] == first.incidents[0]._replace(duplicate=True)
    assert sorted(k for (k,) in rows(store.path, "SELECT key FROM dedup_keys")) == [
        '{"alertId":1}',
        '{"alertId":2}',
    ]


@pytest_twisted.ensureDeferred
async def test_duplicates_are_not_kept_as_samples(store):
    details = [{"alertId": 1}]
    await store.add(sent(), [draft(d) for d in details], True, keyed(details))
    await store.add(sent(), [draft(d) for d in details], True, keyed(details))
    assert rows(store.path, "SELECT count(*) FROM samples") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_show_names_the_request_an_incident_came_from(store):
    committed = await add(store, [{"a": 1}], None, x_request_id="0123456789abcdef")
    with contextlib.closing(open_for_reading(store.path)) as db:
        shown = show_incident(db, committed.incidents[0].id)
    assert shown["request"]["id"] == "0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_retention_forgets_expired_keys_only(store):
    short = DedupConfig(("alertId",), "X-Delivery", 1)
    long = DedupConfig(("alertId",), "X-Delivery", 3600)
    await add(store, [{"alertId": 1}], keyed([{"alertId": 1}], short, "s"))
    await add(store, [{"alertId": 2}], keyed([{"alertId": 2}], long, "l"))
    forgotten = await store.write(retention.forget_expired, time.time() + 2)
    assert forgotten == 2  # the short key and the short request
    assert rows(store.path, "SELECT key FROM dedup_keys") == [('{"alertId":2}',)]
    assert rows(store.path, "SELECT key FROM dedup_requests") == [("l",)]
    # prune (gwebhook prune, and --retain-days) forgets them too.
    await store.write(retention.prune, "2000-01-01T00:00:00Z")
    assert rows(store.path, "SELECT count(*) FROM dedup_keys") == [(1,)]


# The property ----------------------------------------------------------------

_VALUES = st.sampled_from([1, 1.0, "1", None, True, [1], {"x": 1}])
_ELEMENT = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), _VALUES, max_size=3)
_KEYS = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    requests=st.lists(st.lists(_ELEMENT, max_size=6), min_size=1, max_size=6),
    keys=_KEYS,
    together=st.booleans(),
)
def test_exactly_the_first_occurrence_of_each_composite_key_is_created(
    tmp_path_factory, requests, keys, together
):
    """
    For any requests of elements and any key set, committed one after the
    other or all in one batch: the incidents created are exactly the
    elements whose composite key had not occurred before (in sending order),
    plus every element without one; each duplicate is answered with the
    first occurrence's incident.  (The store's own transaction and SQL, run
    here in the test's thread rather than the pool's.)
    """
    store = SQLiteStore(str(tmp_path_factory.mktemp("p") / "s.sqlite"))
    connection = sqlite3.connect(store.path, isolation_level=None)
    config = DedupConfig(tuple(keys), None, 3600)
    entries = [
        (sent(), [draft(d) for d in r], False, ticket(config, None, r))
        for r in requests
        if r
    ]
    try:
        schema.configure(connection)
        if together:
            results = store._transaction(connection, store._insert_batch, entries)
        else:
            results = [
                committed
                for entry in entries
                for committed in store._transaction(
                    connection, store._insert_batch, [entry]
                )
            ]
        answers = [s for committed in results for s in committed.incidents]
        elements = [e for r in requests for e in r]
        first: dict[str, int] = {}
        created = []
        for position, element in enumerate(elements):
            key = composite_key(element, keys)
            if key is not None and key in first:
                earlier = answers[first[key]]
                assert answers[position] == earlier._replace(duplicate=True)
            else:
                assert not answers[position].duplicate
                created.append(answers[position].id)
                if key is not None:
                    first[key] = position
        stored = rows(store.path, "SELECT id FROM incidents ORDER BY id")
        assert [str(i) for (i,) in stored] == created
    finally:
        connection.close()
        store.close()
