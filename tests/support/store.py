"""Reading a store file the way a test checks it: read-only, never creating it."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any


def read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection to the store (never creates it)."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def row_counts(db: Path) -> dict[str, int]:
    """How many rows the requests and incidents tables hold."""
    with contextlib.closing(read_only(db)) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("requests", "incidents")
        }


def incidents_by_id(db: Path) -> dict[int, str]:
    """Every stored incident's name, by id, oldest first."""
    with contextlib.closing(read_only(db)) as connection:
        return dict(connection.execute("SELECT id, name FROM incidents ORDER BY id"))


def stored_incidents(db: Path) -> list[dict[str, Any]]:
    """Every stored incident, oldest first, with its request's row."""
    with contextlib.closing(read_only(db)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT incidents.*, requests.method, requests.path,"
            " requests.headers AS request_headers, requests.body"
            " FROM incidents JOIN requests ON requests.id = incidents.request_id"
            " ORDER BY incidents.id"
        ).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["request_headers"] = json.loads(item["request_headers"])
        # As `gwebhook show` reads them: the request's headers, kept once.
        item["details"] = {
            **json.loads(item["details"]),
            "headers": item["request_headers"],
        }
        out.append(item)
    return out


def assert_no_half_requests(db: Path) -> int:
    """
    Each stored request has exactly the incidents its stored body carried,
    in order; the store passes SQLite's integrity check.  Returns how many
    requests were checked.
    """
    with contextlib.closing(read_only(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        bodies = dict(connection.execute("SELECT id, body FROM requests"))
        stored: dict[int, list[tuple[int, str]]] = {rid: [] for rid in bodies}
        for rid, position, name in connection.execute(
            "SELECT request_id, position, name FROM incidents ORDER BY id"
        ):
            stored[rid].append((position, name))
    for rid, body in bodies.items():
        document = json.loads(body)
        objects = document if isinstance(document, list) else [document]
        expected = [(p, o.get("name")) for p, o in enumerate(objects)]
        assert stored[rid] == expected, f"request {rid} is stored in part"
    return len(bodies)
