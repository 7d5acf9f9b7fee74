"""
Duplicates: the rules (composite keys, request keys, the config's checks)
and a property of the store's batches on a real SQLite file.  What the store
promises of duplicates on both databases is in test_store_contract.py; the
daemon's side (config, answers, restarts, processes) in
test_dedup_processes.py.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwebhook import schema
from gwebhook.dedup import DedupConfig, composite_key, request_key, ticket
from gwebhook.model import IncidentDraft, ReceivedRequest
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


def rows(path: str, sql: str, *args) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.text(max_size=10), _JSON)
def test_the_one_key_composite_is_the_general_one(key, value):
    """The fast path for one key writes exactly what the general rule writes."""
    expected = json.dumps(
        {key: value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert composite_key({key: value, key + "x": 1}, (key,)) == expected
