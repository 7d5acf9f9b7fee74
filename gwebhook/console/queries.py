"""
The read queries the console's pages need beyond those of ``gwebhook.readback``
(docs/reference.md 11): the newest incidents a page at a time, a request's
exact body, incidents per minute, the forwards' queues.  Each runs on the
store's read connection (``IncidentStore.read``) and touches only what its
page shows: an index range, never the whole store.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gwebhook.readback import newest_id, samples, summary
from gwebhook.store.deliveries import items
from gwebhook.timestamps import format_utc

_SUMMARY = "SELECT id, name, type, occurred, created, instance FROM incidents"
_BEFORE = _SUMMARY + " WHERE id < ? ORDER BY id DESC LIMIT ?"
_BEFORE_OF = _SUMMARY + " WHERE instance = ? AND id < ? ORDER BY id DESC LIMIT ?"
_BODY = (
    "SELECT r.body, r.headers FROM incidents i JOIN requests r ON r.id = i.request_id"
    " WHERE i.id = ?"
)
_CREATED_FROM = "SELECT id, created FROM incidents WHERE id >= ? ORDER BY id LIMIT 1"
_PER_MINUTE = (
    "SELECT substr(created, 1, 16), count(*) FROM incidents WHERE id >= ?"
    " AND created >= ? GROUP BY substr(created, 1, 16)"
)
_QUEUED = "SELECT count(*) FROM deliveries WHERE forward = ? AND state = ?"
_FORWARDS = "SELECT DISTINCT forward FROM deliveries"


def recent(
    db, before: int | None, limit: int, instance: str | None
) -> tuple[list[dict[str, Any]], int]:
    """
    At most ``limit`` incident summaries older than ``before`` (None: the
    newest), newest first; and the newest id committed (where to wait from).
    """
    newest = newest_id(db)
    top = newest + 1 if before is None else before
    if instance is None:
        rows = db.execute(_BEFORE, (top, limit))
    else:
        rows = db.execute(_BEFORE_OF, (instance, top, limit))
    return [summary(row) for row in rows], newest


def body(db, incident_id: int) -> tuple[bytes, str] | None:
    """The exact body of the incident's request and its headers' JSON, or None."""
    row = db.execute(_BODY, (incident_id,)).fetchone()
    if row is None:
        return None
    return bytes(row[0]), row[1]


def per_minute(db, now: float, minutes: int = 60) -> tuple[str, list[int]]:
    """
    Incidents created in each of the last ``minutes`` minutes, oldest first
    (the last is the minute running now), and the first minute's start.
    The first incident of the span is found by its id (ids grow with time),
    so only the span's incidents are read, however large the store.
    """
    end = datetime.fromtimestamp(now, UTC).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes - 1)
    since = format_utc(start)
    # Compared by minute: "10:00:00.5Z" sorts before "10:00:00Z" as text.
    minute_key = since[:16]
    first = _first_id_since(db, minute_key)
    counts = {}
    if first is not None:
        counts = dict(db.execute(_PER_MINUTE, (first, minute_key)).fetchall())
    series = []
    for n in range(minutes):
        minute = format_utc(start + timedelta(minutes=n))[:16]
        series.append(int(counts.get(minute, 0)))
    return since, series


def _first_id_since(db, since: str) -> int | None:
    """The first incident id created at ``since`` or later (binary search)."""
    low, high = 0, newest_id(db)
    if high == 0:
        return None
    found = None
    while low <= high:
        middle = (low + high) // 2
        row = db.execute(_CREATED_FROM, (middle,)).fetchone()
        if row is None:
            high = middle - 1
        elif row[1] >= since:
            found = row[0]
            high = middle - 1
        else:
            low = row[0] + 1
    return found


def queues(db, configured: tuple[str, ...]) -> list[dict[str, Any]]:
    """
    Each forward's pending and dead counts: those configured, and any the
    store still holds deliveries of (a forward since removed).
    """
    names = list(configured)
    for (name,) in db.execute(_FORWARDS).fetchall():
        if name not in names:
            names.append(name)
    out = []
    for name in names:
        counts = {
            state: int(db.execute(_QUEUED, (name, state)).fetchone()[0])
            for state in ("pending", "dead")
        }
        out.append({"name": name, "configured": name in configured, **counts})
    return out


def sample_elements(db, instance: str) -> list[Any]:
    """The instance's samples, oldest first, each the element as its sender sent it."""
    ids = tuple(int(kept["id"]) for kept in samples(db, instance))
    if not ids:
        return []
    return [element for _, element in items(db, ids, raw=True)]
