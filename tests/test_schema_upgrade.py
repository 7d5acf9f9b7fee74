"""
A store written by the gwebhook before instances (schema version 2) is
upgraded in place: every incident it holds is kept, belongs to the default
instance and has no fields, and a real daemon serves and stores on it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from support.daemon import json_lines, run_cli

from gwebhook import schema

# The whole schema as version 2 of gwebhook wrote it, word for word: what
# the upgrade finds in the field.
V2_SCHEMA = """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received TEXT NOT NULL,
        client TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id INTEGER NOT NULL REFERENCES requests (id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        occurred TEXT NOT NULL,
        created TEXT NOT NULL,
        details TEXT NOT NULL
    );
    CREATE INDEX incidents_by_request ON incidents (request_id);
    CREATE TABLE samples (
        incident_id INTEGER PRIMARY KEY REFERENCES incidents (id)
    );
    CREATE TABLE health (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        checked TEXT NOT NULL
    );
    PRAGMA user_version = 2;
"""

# Everything version 2 kept of each incident and request.
V2_INCIDENTS = (
    "SELECT id, request_id, position, name, type, occurred, created, details"
    " FROM incidents WHERE id <= ? ORDER BY id"
)
V2_REQUESTS = (
    "SELECT id, received, client, method, path, headers, body FROM requests ORDER BY id"
)

EVERY_ID = 2**62

USERNAME, PASSWORD = "admin", "pw"
AUTH = ["--username", USERNAME, "--password", PASSWORD]
BASIC = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()


def write_v2_store(path: Path, requests: int = 16) -> None:
    """
    A version 2 store as its daemon left it (WAL, a health row): requests of
    one or two incidents, the 20 most recent of them kept as samples, and
    the newest incident deleted since (so its id is not to be given again).
    """
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(V2_SCHEMA)
        db.execute("BEGIN")
        for r in range(requests):
            received = f"2025-05-01T10:{r:02d}:00Z"
            request_id = db.execute(
                "INSERT INTO requests (received, client, method, path, headers, body)"
                " VALUES (?, '192.0.2.7', 'POST', '/', ?, ?)",
                (received, json.dumps({"x-sender": f"old-{r}"}), b'{"old": true}'),
            ).lastrowid
            for position in range(1 + r % 2):
                db.execute(
                    "INSERT INTO incidents (request_id, position, name, type,"
                    " occurred, created, details) VALUES (?, ?, ?, 'Old', ?, ?, ?)",
                    (
                        request_id,
                        position,
                        f"old-{r}-{position}",
                        received,
                        received,
                        json.dumps({"r": r, "position": position}),
                    ),
                )
        db.execute(
            "INSERT INTO samples (incident_id) SELECT id FROM incidents"
            " ORDER BY id DESC LIMIT 20"
        )
        db.execute(
            "INSERT INTO health (id, checked) VALUES (1, '2025-05-01T11:00:00Z')"
        )
        db.execute(
            "DELETE FROM samples WHERE incident_id = (SELECT max(id) FROM incidents)"
        )
        db.execute("DELETE FROM incidents WHERE id = (SELECT max(id) FROM incidents)")
        db.execute("COMMIT")


def cli(*args: str) -> str:
    """``gwebhook ARGS``, which must succeed quietly; its stdout."""
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def read(path: Path, query: str, *args) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(query, args).fetchall()


def columns(path: Path, table: str) -> list[str]:
    return [row[1] for row in read(path, f"PRAGMA table_info({table})")]


@pytest.fixture
def v2_store(tmp_path) -> Path:
    path = tmp_path / "gwebhook.sqlite"
    write_v2_store(path)
    return path


def test_a_version_2_store_is_upgraded_without_losing_anything(v2_store):
    """
    Upgrading keeps every request, incident, sample and id sequence as it
    was; old incidents and requests belong to the default instance, old
    incidents have no fields and old requests no client certificate.
    """
    incidents = read(v2_store, V2_INCIDENTS, EVERY_ID)
    requests = read(v2_store, V2_REQUESTS)
    samples = read(v2_store, "SELECT incident_id FROM samples ORDER BY incident_id")
    sequences = read(v2_store, "SELECT name, seq FROM sqlite_sequence ORDER BY name")
    assert len(incidents) == 23 and len(samples) == 19

    assert schema.create_or_upgrade(str(v2_store)) == schema.SCHEMA_VERSION == 7

    assert read(v2_store, "PRAGMA user_version") == [(7,)]
    assert read(v2_store, V2_INCIDENTS, EVERY_ID) == (incidents)
    assert read(v2_store, V2_REQUESTS) == requests
    assert read(v2_store, "SELECT incident_id FROM samples ORDER BY incident_id") == (
        samples
    )
    assert read(v2_store, "SELECT name, seq FROM sqlite_sequence ORDER BY name") == (
        sequences
    )
    assert read(v2_store, "SELECT DISTINCT instance, fields FROM incidents") == [
        ("default", "{}")
    ]
    assert read(
        v2_store, "SELECT DISTINCT instance, client_cert, x_request_id FROM requests"
    ) == [("default", None, None)]
    assert read(v2_store, "SELECT count(*) FROM dedup_keys") == [(0,)]
    assert read(v2_store, "SELECT count(*) FROM dedup_requests") == [(0,)]
    assert read(v2_store, "SELECT count(*) FROM console_sessions") == [(0,)]
    assert read(v2_store, "PRAGMA integrity_check") == [("ok",)]
    assert read(v2_store, "PRAGMA index_info(incidents_by_instance)") == [
        (0, columns(v2_store, "incidents").index("instance"), "instance"),
        (1, 0, "id"),
    ]
    # Once is enough: opening the upgraded store again changes nothing.
    assert schema.create_or_upgrade(str(v2_store)) == 7
    assert columns(v2_store, "incidents")[-2:] == ["instance", "fields"]
    assert columns(v2_store, "requests")[-3:] == [
        "instance",
        "client_cert",
        "x_request_id",
    ]


def test_processes_upgrading_one_store_at_once_all_succeed(v2_store):
    """
    Several openers upgrading the same version 2 store at the same moment
    (the daemon and its workers, the command) all succeed; it is upgraded once.
    """
    openers = 8
    start = threading.Barrier(openers)
    results: list[object] = []

    def upgrade() -> None:
        start.wait(10)
        try:
            results.append(schema.create_or_upgrade(str(v2_store)))
        except schema.StoreError as e:
            results.append(e)

    threads = [threading.Thread(target=upgrade) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [schema.SCHEMA_VERSION] * openers
    assert columns(v2_store, "incidents").count("instance") == 1


def test_the_daemon_serves_and_stores_on_an_upgraded_store(daemon, v2_store):
    """
    A real daemon started on a version 2 store upgrades it, stores new
    incidents after the old ones (never reusing an id), in the default
    instance, and keeps samples on from the old ones; the old incidents
    read back as the default instance's, as they were.
    """
    old = read(v2_store, V2_INCIDENTS, EVERY_ID)
    [(last_given,)] = read(
        v2_store, "SELECT seq FROM sqlite_sequence WHERE name = 'incidents'"
    )
    d = daemon(*AUTH, "--store-samples")
    assert d.db == v2_store
    reply = d.request(
        body=json.dumps([{"name": "new-0"}, {"name": "new-1"}]).encode(),
        headers={"Authorization": BASIC, "X-Sender": "new"},
    )
    assert reply.status == 200, reply.body
    new_ids = [int(incident["id"]) for incident in reply.json()]
    assert new_ids == [last_given + 1, last_given + 2]

    assert read(v2_store, V2_INCIDENTS, last_given) == old
    assert read(
        v2_store,
        "SELECT name, instance, fields FROM incidents WHERE id > ?",
        last_given,
    ) == [("new-0", "default", "{}"), ("new-1", "default", "{}")]
    samples = [i for (i,) in read(v2_store, "SELECT incident_id FROM samples")]
    assert sorted(samples) == sorted(samples)[-20:] and len(samples) == 20
    assert samples[-2:] == new_ids

    # Read back: one instance, the old incidents as they were.
    listed = json_lines(cli("--db", str(v2_store), "list", "--instance", "default"))
    assert [int(line["id"]) for line in listed] == [row[0] for row in old] + new_ids
    shown = json.loads(cli("--db", str(v2_store), "show", str(old[0][0])))
    assert (shown["name"], shown["instance"], shown["fields"]) == (
        "old-0-0",
        "default",
        {},
    )
    assert shown["rawJson"] == {"r": 0, "position": 0, "headers": {"x-sender": "old-0"}}
    assert "client_cert" not in shown["request"]
    kept = json.loads(cli("--db", str(v2_store), "samples", "--instance", "default"))
    assert [int(sample["id"]) for sample in kept] == samples


WHOLE_TABLES = (
    "SELECT * FROM requests",
    "SELECT * FROM incidents",
    "SELECT * FROM deliveries",
    "SELECT * FROM forward_leases",
)


def write_v5_store(path: Path) -> None:
    """
    A version 5 store (forwarding, before the console's sessions): the
    migrations are appended, never edited, so the first five are what that
    gwebhook ran.  One request, its incident, a delivery and a lease.
    """
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for migration in schema.MIGRATIONS[:5]:
            db.executescript(migration)
        db.execute("PRAGMA user_version = 5")
        db.execute(
            "INSERT INTO requests (id, received, client, method, path, headers,"
            " body) VALUES (1, '2026-01-01T00:00:00Z', '10.0.0.1', 'POST', '/',"
            " '{}', x'7b7d')"
        )
        db.execute(
            "INSERT INTO incidents (id, request_id, position, name, type, occurred,"
            " created, details) VALUES (1, 1, 0, 'n', 't', '2026-01-01T00:00:00Z',"
            " '2026-01-01T00:00:00Z', '{}')"
        )
        db.execute(
            "INSERT INTO deliveries (forward, incident_id, queued) VALUES ('f', 1, 1.5)"
        )
        db.execute(
            "INSERT INTO forward_leases (forward, holder, expires) VALUES ('f', 'n', 9)"
        )


def test_a_version_5_store_gains_the_console_sessions_and_keeps_the_rest(tmp_path):
    """
    Version 6 adds the console's sessions (by the SHA-256 of their id, with
    an index on when they end) and changes nothing else; version 7 the
    SHA-256 of the token that made each.
    """
    path = tmp_path / "v5.sqlite"
    write_v5_store(path)
    before = {query: read(path, query) for query in WHOLE_TABLES}

    assert schema.create_or_upgrade(str(path)) == 7

    assert read(path, "PRAGMA user_version") == [(7,)]
    for query, rows in before.items():
        assert read(path, query) == rows, query
    assert columns(path, "console_sessions") == [
        "id_hash",
        "csrf",
        "created",
        "expires",
        "token_hash",
    ]
    assert read(path, "SELECT count(*) FROM console_sessions") == [(0,)]
    assert read(path, "PRAGMA index_info(console_sessions_by_expiry)") == [
        (0, 3, "expires")
    ]
    # The hash is the key: a second row for one session cannot be written.
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        row = ("ab" * 32, "csrf", 1.0, 2.0, "cd" * 32)
        db.execute("INSERT INTO console_sessions VALUES (?, ?, ?, ?, ?)", row)
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO console_sessions VALUES (?, ?, ?, ?, ?)", row)
    assert read(path, "PRAGMA integrity_check") == [("ok",)]
    assert schema.create_or_upgrade(str(path)) == 7


SESSION_ROW = ("ab" * 32, "csrf", 1.0, 2.0)


def test_a_version_6_stores_sessions_gain_a_null_token_hash(tmp_path):
    """
    Version 7 adds ``token_hash`` to the console's sessions: a session made
    before it keeps its row, with NULL (no token: the console refuses it),
    and nothing else changes.
    """
    path = tmp_path / "v6.sqlite"
    write_v5_store(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(schema.MIGRATIONS[5])
        db.execute("PRAGMA user_version = 6")
        db.execute("INSERT INTO console_sessions VALUES (?, ?, ?, ?)", SESSION_ROW)
    before = {query: read(path, query) for query in WHOLE_TABLES}

    assert schema.create_or_upgrade(str(path)) == 7

    assert read(path, "PRAGMA user_version") == [(7,)]
    for query, rows in before.items():
        assert read(path, query) == rows, query
    assert read(path, "SELECT * FROM console_sessions") == [(*SESSION_ROW, None)]
    assert read(path, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.parametrize("version", [2, 3])
def test_a_postgresql_schema_is_upgraded_to_4(pg_database, version):
    """
    A database of PostgreSQL schema version 2 (forwarding) gains the
    console's sessions (3) and the token that made each (4); one of version
    3 keeps its sessions, with no token (the console refuses them).  The
    migrations are appended, never edited, so the first ones are what that
    gwebhook ran.
    """
    from support.postgres import connect, psql_rows

    from gwebhook.store import postgres_schema

    with connect(pg_database) as db:
        db.execute("CREATE TABLE gwebhook_schema (version integer NOT NULL)")
        for migration in postgres_schema.MIGRATIONS[:version]:
            db.execute(migration)
        db.execute("INSERT INTO gwebhook_schema (version) VALUES (%s)", (version,))
        db.execute(
            "INSERT INTO forward_leases (forward, holder, expires) VALUES ('f', 'n', 9)"
        )
        if version == 3:
            db.execute(
                "INSERT INTO console_sessions VALUES (%s, %s, %s, %s)", SESSION_ROW
            )
    options = postgres_schema.connect_options()

    assert postgres_schema.create_or_upgrade(pg_database, options) == 4

    assert psql_rows(pg_database, "SELECT version FROM gwebhook_schema") == [(4,)]
    assert psql_rows(
        pg_database,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'console_sessions' ORDER BY ordinal_position",
    ) == [("id_hash",), ("csrf",), ("created",), ("expires",), ("token_hash",)]
    sessions = [(*SESSION_ROW, None)] if version == 3 else []
    assert psql_rows(pg_database, "SELECT * FROM console_sessions") == sessions
    assert psql_rows(pg_database, "SELECT * FROM forward_leases") == [("f", "n", 9.0)]
    # Once up to date, starting again changes nothing.
    assert postgres_schema.create_or_upgrade(pg_database, options) == 4
    assert psql_rows(pg_database, "SELECT version FROM gwebhook_schema") == [(4,)]
