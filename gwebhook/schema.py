"""
The SQLite schema, versioned with ``PRAGMA user_version`` and brought up to
date synchronously at start-up, so a bad path fails before the reactor runs.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# Each entry upgrades the schema from version N to N + 1.  Append, never edit.
MIGRATIONS: list[str] = [
    """
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
    """,
    # 2: one row the health check rewrites to prove the store takes commits.
    """
    CREATE TABLE health (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        checked TEXT NOT NULL
    );
    """,
    # 3: instances.  Every row stored before belongs to the default instance
    # and has no extra fields.  ADD COLUMN with a constant default rewrites
    # no row, so even a large store upgrades at once; only the index reads
    # the incidents.
    """
    ALTER TABLE incidents ADD COLUMN instance TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE incidents ADD COLUMN fields TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE requests ADD COLUMN instance TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE requests ADD COLUMN client_cert TEXT;
    CREATE INDEX incidents_by_instance ON incidents (instance, id);
    """,
    # 4: duplicates.  What an instance remembers of each composite key (the
    # incident it created, as its answer lists it) and of each idempotency
    # key (the answer, as JSON), until ``expires`` (seconds since the epoch).
    # The primary keys are what make a key's first request the only one: a
    # second row for it cannot be written.  Requests keep their X-Request-Id.
    """
    ALTER TABLE requests ADD COLUMN x_request_id TEXT;
    CREATE TABLE dedup_keys (
        instance TEXT NOT NULL,
        key TEXT NOT NULL,
        expires REAL NOT NULL,
        incident_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        occurred TEXT NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (instance, key)
    ) WITHOUT ROWID;
    CREATE INDEX dedup_keys_by_expiry ON dedup_keys (expires);
    CREATE TABLE dedup_requests (
        instance TEXT NOT NULL,
        key TEXT NOT NULL,
        expires REAL NOT NULL,
        x_request_id TEXT,
        answer TEXT NOT NULL,
        PRIMARY KEY (instance, key)
    ) WITHOUT ROWID;
    CREATE INDEX dedup_requests_by_expiry ON dedup_requests (expires);
    """,
    # 5: forwarding.  One row per incident and forward that takes it, queued
    # in the incident's own transaction; ``batch`` is the first incident id
    # of the request it was (or will again be) sent in, fixed once formed.
    # Times are seconds since the epoch.  ``forward_leases``: which node
    # delivers a forward now.
    """
    CREATE TABLE deliveries (
        forward TEXT NOT NULL,
        incident_id INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        batch INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt REAL NOT NULL DEFAULT 0,
        queued REAL NOT NULL,
        PRIMARY KEY (forward, incident_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_by_state ON deliveries (forward, state, incident_id);
    CREATE TABLE forward_leases (
        forward TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires REAL NOT NULL
    );
    """,
    # 6: the console's sessions, shared by every process of the daemon.
    # ``id_hash`` is the SHA-256 (hex) of the session's id: the id itself,
    # which the browser holds, is never stored.  Times are seconds since the
    # epoch; a session past ``expires`` is worth nothing and is deleted.
    """
    CREATE TABLE console_sessions (
        id_hash TEXT PRIMARY KEY,
        csrf TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires);
    """,
    # 7: which API token made each console session: its SHA-256 (hex), never
    # the token, so that a session whose token is no longer configured is
    # refused.  Sessions made before have none (NULL) and are refused too.
    """
    ALTER TABLE console_sessions ADD COLUMN token_hash TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# How long a writer waits for another process's lock before giving up (ms).
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The store cannot be opened or upgraded; the message says how to fix it."""


def configure(connection: sqlite3.Connection) -> None:
    """
    Settings every connection needs before its first write: WAL so readers
    (the ``gwebhook`` command) never block the daemon, FULL sync so a commit
    survives power loss, and a bounded wait for a lock held elsewhere.
    """
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")


def open_existing(
    path: str, write: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """
    Open a store that exists, for reading (or writing), never creating one;
    refuse a file that is not a store.  SQLite's own errors (a damaged file, a
    lock held too long) are left to the caller.
    """
    if not os.path.exists(path):
        raise StoreError(
            f"no store at {path}; give --db PATH (the daemon's default is "
            "gwebhook.sqlite in its working directory)"
        )
    mode = "rw" if write else "ro"
    connection = sqlite3.connect(
        f"{Path(path).resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None
    )
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error:
        connection.close()
        raise
    if version == 0:
        connection.close()
        raise StoreError(f"{path} is not a gwebhook store (no schema)")
    return connection


def create_or_upgrade(path: str) -> int:
    """
    Create the store at ``path``, or bring an existing one up to this
    gwebhook's schema; return the schema version.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(
            f"the directory {directory} of the store {path} does not exist; "
            "create it or give another --db"
        )
    try:
        # Bodies and headers are secrets of the senders': only the daemon's
        # user reads them (SQLite gives -wal and -shm the file's mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        connection = sqlite3.connect(path, isolation_level=None)
    except OSError as e:
        raise StoreError(
            f"cannot create the store {path}: {e.strerror}; give another --db"
        ) from e
    except sqlite3.Error as e:
        raise StoreError(
            f"cannot open the store {path}: {e}; check that the daemon may "
            "write the file and its directory, or give another --db"
        ) from e
    try:
        configure(connection)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {path} has schema version {version}, newer than this "
                f"gwebhook understands ({SCHEMA_VERSION}); upgrade gwebhook"
            )
        for number in range(version, SCHEMA_VERSION):
            connection.execute("BEGIN IMMEDIATE")
            # Another process may have upgraded the store since it was read.
            if connection.execute("PRAGMA user_version").fetchone()[0] > number:
                connection.execute("COMMIT")
                continue
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {number + 1}")
            connection.execute("COMMIT")
        return SCHEMA_VERSION
    except sqlite3.Error as e:
        raise StoreError(f"cannot use the store {path}: {e}; check --db") from e
    finally:
        connection.close()
