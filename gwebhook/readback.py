"""
Reading incidents back (docs/reference.md 5): read-only queries on the store,
safe while the daemon writes (WAL readers never block the writer).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any, NamedTuple

from gwebhook.database import is_postgres
from gwebhook.schema import StoreError, open_existing


class _Queries(NamedTuple):
    """The statements of each way of reading, for one schema."""

    list: str
    list_of: str  # one instance's
    export: str
    show: str
    samples: str
    samples_of: str  # one instance's


# Whole statements, no string building: what runs is what you read here.
_SUMMARY = "SELECT i.id, i.name, i.type, i.occurred, i.created, i.instance"
_WHOLE = (
    "SELECT i.id, i.name, i.type, i.occurred, i.created, i.instance, i.fields,"
    " i.details, r.received, r.client, r.method, r.path, r.headers, r.client_cert,"
    " r.x_request_id FROM incidents i JOIN requests r ON r.id = i.request_id"
)
_QUERIES = _Queries(
    list=_SUMMARY + " FROM incidents i WHERE i.id > ? ORDER BY i.id LIMIT ?",
    list_of=_SUMMARY + " FROM incidents i WHERE i.instance = ? AND i.id > ?"
    " ORDER BY i.id LIMIT ?",
    export=_WHOLE + " WHERE i.id > ? ORDER BY i.id",
    show=_WHOLE + " WHERE i.id = ?",
    samples=_WHOLE + " JOIN samples s ON s.incident_id = i.id ORDER BY i.id",
    samples_of=_WHOLE + " JOIN samples s ON s.incident_id = i.id"
    " WHERE i.instance = ? ORDER BY i.id",
)

# The same of a store not yet upgraded to instances (schema version 2 or
# older, until its daemon starts again): every incident is the default
# instance's, without fields, and no request had a client certificate.
_SUMMARY_BEFORE_INSTANCES = (
    "SELECT i.id, i.name, i.type, i.occurred, i.created, 'default'"
)
_WHOLE_BEFORE_INSTANCES = (
    "SELECT i.id, i.name, i.type, i.occurred, i.created, 'default', '{}',"
    " i.details, r.received, r.client, r.method, r.path, r.headers, NULL, NULL"
    " FROM incidents i JOIN requests r ON r.id = i.request_id"
)
_QUERIES_BEFORE_INSTANCES = _Queries(
    list=_SUMMARY_BEFORE_INSTANCES
    + " FROM incidents i WHERE i.id > ? ORDER BY i.id LIMIT ?",
    list_of=_SUMMARY_BEFORE_INSTANCES
    + " FROM incidents i WHERE ? = 'default' AND i.id > ? ORDER BY i.id LIMIT ?",
    export=_WHOLE_BEFORE_INSTANCES + " WHERE i.id > ? ORDER BY i.id",
    show=_WHOLE_BEFORE_INSTANCES + " WHERE i.id = ?",
    samples=_WHOLE_BEFORE_INSTANCES
    + " JOIN samples s ON s.incident_id = i.id ORDER BY i.id",
    samples_of=_WHOLE_BEFORE_INSTANCES + " JOIN samples s ON s.incident_id = i.id"
    " WHERE ? = 'default' ORDER BY i.id",
)
# The same of a store with instances but not yet the requests' X-Request-Id
# (schema version 3): the one column read as NULL.
_QUERIES_BEFORE_REQUEST_IDS = _Queries(
    *(q.replace("r.x_request_id", "NULL") for q in _QUERIES)
)
# The first schema versions with instances, and with request ids.
_INSTANCES_SINCE = 3
_REQUEST_IDS_SINCE = 4


def _queries(db) -> _Queries:
    """The statements that read this store's schema version."""
    if getattr(db, "current_schema", False):
        return _QUERIES  # a reader of a schema this gwebhook keeps current
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version >= _REQUEST_IDS_SINCE:
        return _QUERIES
    if version >= _INSTANCES_SINCE:
        return _QUERIES_BEFORE_REQUEST_IDS
    return _QUERIES_BEFORE_INSTANCES


# More rows than any store holds.
_NO_LIMIT = 2**62


class ReadError(Exception):
    """Nothing to read: no store, not a store, no such incident."""


def open_for_reading(db: str, password: str | None = None):
    """
    Open an existing store for reading; never create one: a SQLite file
    read-only, or a PostgreSQL database (``password`` if given) whose
    schema this gwebhook reads.
    """
    if is_postgres(db):
        return _open_postgres(db, password)
    path = db
    try:
        return open_existing(path)
    except StoreError as e:
        raise ReadError(str(e)) from None
    except sqlite3.DatabaseError as e:
        raise ReadError(f"cannot read {path} as a gwebhook store: {e}") from None


def _open_postgres(uri: str, password: str | None):
    from gwebhook.database import redacted
    from gwebhook.store.postgres_schema import SCHEMA_VERSION, connect, connect_options

    try:
        connection = connect(uri, connect_options(password))
    except StoreError as e:
        raise ReadError(str(e)) from None
    try:
        row = connection.execute("SELECT max(version) FROM gwebhook_schema").fetchone()
    except Exception:
        connection.close()
        raise ReadError(
            f"{redacted(uri)} is not a gwebhook store (no gwebhook_schema table)"
        ) from None
    if row[0] != SCHEMA_VERSION:
        connection.close()
        raise ReadError(
            f"{redacted(uri)} has gwebhook schema version {row[0]}, this gwebhook "
            f"reads {SCHEMA_VERSION}; use the gwebhook that writes it"
        )
    from gwebhook.store.postgres import PostgresReader

    return PostgresReader(connection)


def summary(row: tuple) -> dict[str, Any]:
    """An incident's summary from (id, name, type, occurred, created, instance)."""
    return {
        "id": str(row[0]),
        "name": row[1],
        "type": row[2],
        "occurred": row[3],
        "created": row[4],
        "instance": row[5],
    }


def whole(row: tuple) -> dict[str, Any]:
    incident = summary(row)
    incident["fields"] = json.loads(row[6])
    # The details' ``headers`` are the request's, kept once with it: the
    # stored details never hold that key (see payload.incidents_from).
    incident["rawJson"] = {**json.loads(row[7]), "headers": json.loads(row[12])}
    incident["request"] = {
        # The X-Request-Id it was answered with, as its access line says
        # id= (None for requests stored before gwebhook kept it).
        "id": row[14],
        "received": row[8],
        "client": row[9],
        "method": row[10],
        "path": row[11],
    }
    if row[13] is not None:
        incident["request"]["client_cert"] = json.loads(row[13])
    return incident


def list_incidents(
    db,
    after: int = 0,
    limit: int | None = None,
    instance: str | None = None,
) -> Iterator[dict[str, Any]]:
    """
    Incident summaries with id > ``after``, oldest first: every instance's,
    or only ``instance``'s.
    """
    queries = _queries(db)
    # No LIMIT -1 (SQLite's "no limit", an error to PostgreSQL): a bound never met.
    count = _NO_LIMIT if limit is None else limit
    if instance is None:
        rows = db.execute(queries.list, (after, count))
    else:
        rows = db.execute(queries.list_of, (instance, after, count))
    return map(summary, rows)


def export_incidents(db, after: int = 0) -> Iterator[dict[str, Any]]:
    """Whole incidents with id > ``after``, oldest first."""
    return map(whole, db.execute(_queries(db).export, (after,)))


def show_incident(db, incident_id: str) -> dict[str, Any]:
    """One whole incident, with the request it came from."""
    try:
        number = int(incident_id)
    except ValueError:
        number = -1
    row = db.execute(_queries(db).show, (number,)).fetchone()
    if row is None:
        raise ReadError(f"no incident with id {incident_id!r}")
    return whole(row)


# Pages of whole incidents, for the read API: the daemon's own store, always
# of this gwebhook's schema.
_PAGE = _WHOLE + " WHERE i.id > ? ORDER BY i.id LIMIT ?"
_PAGE_OF = _WHOLE + " WHERE i.instance = ? AND i.id > ? ORDER BY i.id LIMIT ?"
_NEWEST = "SELECT coalesce(max(id), 0) FROM incidents"
_NEWEST_BY_INSTANCE = (
    "SELECT instance, max(id) FROM incidents WHERE id > ? GROUP BY instance"
)


def incidents_page(
    db, after: int, limit: int, instance: str | None = None
) -> list[dict[str, Any]]:
    """
    At most ``limit`` whole incidents with id > ``after``, oldest first:
    every instance's, or only ``instance``'s.
    """
    if instance is None:
        rows = db.execute(_PAGE, (after, limit))
    else:
        rows = db.execute(_PAGE_OF, (instance, after, limit))
    return [whole(row) for row in rows]


def newest_by_instance(db, after: int) -> dict[str, int]:
    """The newest incident id of each instance that has one past ``after``."""
    return dict(db.execute(_NEWEST_BY_INSTANCE, (after,)))


def newest_id(db) -> int:
    """The id of the newest incident committed (0 when there is none)."""
    return int(db.execute(_NEWEST).fetchone()[0])


def samples(db, instance: str | None = None) -> list[dict[str, Any]]:
    """
    The kept samples, whole, oldest first: those of every instance that
    keeps them, or only ``instance``'s.
    """
    queries = _queries(db)
    if instance is None:
        rows = db.execute(queries.samples)
    else:
        rows = db.execute(queries.samples_of, (instance,))
    return [whole(row) for row in rows]


_COUNT_AFTER = "SELECT count(*) FROM incidents WHERE id > ?"


def count_incidents(db, after: int = 0) -> int:
    """How many incidents ``export_incidents(db, after)`` yields (at this moment)."""
    return int(db.execute(_COUNT_AFTER, (after,)).fetchone()[0])
