"""
Reading incidents back (docs/reference.md 5): read-only queries on the store,
safe while the daemon writes (WAL readers never block the writer).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from gwebhook.schema import StoreError, open_existing

# Whole statements, no string building: what runs is what you read here.
_LIST = (
    "SELECT i.id, i.name, i.type, i.occurred, i.created FROM incidents i"
    " WHERE i.id > ? ORDER BY i.id LIMIT ?"
)
_WHOLE = (
    "SELECT i.id, i.name, i.type, i.occurred, i.created, i.details,"
    " r.received, r.client, r.method, r.path, r.headers"
    " FROM incidents i JOIN requests r ON r.id = i.request_id"
)
_EXPORT = _WHOLE + " WHERE i.id > ? ORDER BY i.id"
_SHOW = _WHOLE + " WHERE i.id = ?"
_SAMPLES = _WHOLE + " JOIN samples s ON s.incident_id = i.id ORDER BY i.id"


class ReadError(Exception):
    """Nothing to read: no store, not a store, no such incident."""


def open_store(path: str) -> sqlite3.Connection:
    """Open an existing store read-only; never create one."""
    try:
        return open_existing(path)
    except StoreError as e:
        raise ReadError(str(e)) from None
    except sqlite3.DatabaseError as e:
        raise ReadError(f"cannot read {path} as a gwebhook store: {e}") from None


def _summary(row: tuple) -> dict[str, Any]:
    return {
        "id": str(row[0]),
        "name": row[1],
        "type": row[2],
        "occurred": row[3],
        "created": row[4],
    }


def _full(row: tuple) -> dict[str, Any]:
    incident = _summary(row)
    # The details' ``headers`` are the request's, kept once with it: the
    # stored details never hold that key (see payload.incidents_from).
    incident["rawJson"] = {**json.loads(row[5]), "headers": json.loads(row[10])}
    incident["request"] = {
        "received": row[6],
        "client": row[7],
        "method": row[8],
        "path": row[9],
    }
    return incident


def list_incidents(
    db: sqlite3.Connection, after: int = 0, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Incident summaries with id > ``after``, oldest first."""
    rows = db.execute(_LIST, (after, -1 if limit is None else limit))
    return map(_summary, rows)


def export_incidents(
    db: sqlite3.Connection, after: int = 0
) -> Iterator[dict[str, Any]]:
    """Whole incidents with id > ``after``, oldest first."""
    return map(_full, db.execute(_EXPORT, (after,)))


def show_incident(db: sqlite3.Connection, incident_id: str) -> dict[str, Any]:
    """One whole incident, with the request it came from."""
    try:
        number = int(incident_id)
    except ValueError:
        number = -1
    row = db.execute(_SHOW, (number,)).fetchone()
    if row is None:
        raise ReadError(f"no incident with id {incident_id!r}")
    return _full(row)


def samples(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """The kept samples (``--store-samples``), oldest first."""
    return [_full(row) for row in db.execute(_SAMPLES)]
