"""
The PostgreSQL schema, versioned in ``gwebhook_schema`` and brought up to
date at start-up under a session advisory lock, so that nodes starting
together upgrade it once (the others wait, then find it done).  Connecting
fails here, before the reactor runs, with one line naming what failed and
the fix.
"""

from __future__ import annotations

from typing import Any

from gwebhook.schema import StoreError

# Advisory lock keys (any two bigints no other application of the database
# uses): the upgrade's, held for the session, and the writers', held for one
# transaction.
MIGRATION_LOCK = 0x67776562686F6F6B  # "gwebhook"
WRITER_LOCK = 0x67776562686F6F6C

# How long a node waits to connect, and how soon a silent peer is noticed.
CONNECT_TIMEOUT = 5
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}

# Each entry upgrades the schema from version N to N + 1.  Append, never edit.
# Version 1 is everything SQLite's schema version 4 holds.
MIGRATIONS: list[str] = [
    """
    CREATE SEQUENCE requests_id_seq AS bigint;
    CREATE SEQUENCE incidents_id_seq AS bigint;
    CREATE TABLE requests (
        id bigint PRIMARY KEY,
        received text NOT NULL,
        client text NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        headers text NOT NULL,
        body bytea NOT NULL,
        instance text NOT NULL DEFAULT 'default',
        client_cert text,
        x_request_id text
    );
    CREATE TABLE incidents (
        id bigint PRIMARY KEY,
        request_id bigint NOT NULL REFERENCES requests (id),
        position integer NOT NULL,
        name text NOT NULL,
        type text NOT NULL,
        occurred text NOT NULL,
        created text NOT NULL,
        details text NOT NULL,
        instance text NOT NULL DEFAULT 'default',
        fields text NOT NULL DEFAULT '{}'
    );
    CREATE INDEX incidents_by_request ON incidents (request_id);
    CREATE INDEX incidents_by_instance ON incidents (instance, id);
    CREATE TABLE samples (
        incident_id bigint PRIMARY KEY REFERENCES incidents (id)
    );
    CREATE TABLE health (
        id integer PRIMARY KEY CHECK (id = 1),
        checked text NOT NULL
    );
    CREATE TABLE dedup_keys (
        instance text NOT NULL,
        key text NOT NULL,
        expires double precision NOT NULL,
        incident_id bigint NOT NULL,
        name text NOT NULL,
        type text NOT NULL,
        occurred text NOT NULL,
        created text NOT NULL,
        PRIMARY KEY (instance, key)
    );
    CREATE INDEX dedup_keys_by_expiry ON dedup_keys (expires);
    CREATE TABLE dedup_requests (
        instance text NOT NULL,
        key text NOT NULL,
        expires double precision NOT NULL,
        x_request_id text,
        answer text NOT NULL,
        PRIMARY KEY (instance, key)
    );
    CREATE INDEX dedup_requests_by_expiry ON dedup_requests (expires);
    """,
    # 2: forwarding.  One row per incident and forward that takes it, queued
    # in the incident's own transaction; ``batch`` is the first incident id
    # of the request it was (or will again be) sent in, fixed once formed.
    # Times are seconds since the epoch.  ``forward_leases``: which node
    # delivers a forward now.
    """
    CREATE TABLE deliveries (
        forward TEXT NOT NULL,
        incident_id bigint NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        batch bigint,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt double precision NOT NULL DEFAULT 0,
        queued double precision NOT NULL,
        PRIMARY KEY (forward, incident_id)
    );
    CREATE INDEX deliveries_by_state ON deliveries (forward, state, incident_id);
    CREATE TABLE forward_leases (
        forward TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires double precision NOT NULL
    );
    """,
    # 3: the console's sessions, shared by every node (SQLite's version 6).
    """
    CREATE TABLE console_sessions (
        id_hash text PRIMARY KEY,
        csrf text NOT NULL,
        created double precision NOT NULL,
        expires double precision NOT NULL
    );
    CREATE INDEX console_sessions_by_expiry ON console_sessions (expires);
    """,
    # 4: which API token made each console session (SQLite's version 7):
    # its SHA-256 (hex), never the token; NULL for sessions made before.
    """
    ALTER TABLE console_sessions ADD COLUMN token_hash text;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def connect_options(password: str | None = None) -> dict[str, Any]:
    """
    psycopg.connect's keyword arguments besides the URI.  Cursors are raw:
    they take PostgreSQL's own ``$1`` placeholders, which psycopg sends as
    they are, where it would parse every statement of ``%s`` placeholders
    again that has more than 50 (the store's multi-row INSERTs).
    """
    import psycopg

    options: dict[str, Any] = {
        "cursor_factory": psycopg.RawCursor,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "gwebhook",
        "autocommit": True,
        **_KEEPALIVES,
    }
    if password is not None:
        options["password"] = password
    return options


def connect(uri: str, options: dict[str, Any]):
    """A connection to ``uri``, or StoreError saying what failed and the fix."""
    import psycopg

    from gwebhook.database import redacted

    try:
        return psycopg.connect(uri, **options)
    except psycopg.Error as e:
        raise StoreError(
            f"cannot connect to {redacted(uri)}: {_first_line(e)}; {_fix(e)}"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _fix(error: Exception) -> str:
    """The likely fix for a failed connection, from what libpq said."""
    text = str(error)
    if "password authentication failed" in text or "no password supplied" in text:
        return (
            "give the password with --db-password-file (or PGPASSWORD, or "
            "~/.pgpass), and check the user name in --db"
        )
    if "does not exist" in text and "database" in text:
        return "create the database (createdb NAME) or name another in --db"
    if "does not exist" in text and "role" in text:
        return "create the user (createuser NAME) or name another in --db"
    if "Connection refused" in text or "timeout" in text or "could not" in text:
        return "check that PostgreSQL runs and listens at the host and port of --db"
    return "check --db and the database's logs"


def create_or_upgrade(uri: str, options: dict[str, Any]) -> int:
    """
    Create gwebhook's tables in the database, or bring them up to this
    gwebhook's schema; return the version.  Raises StoreError.
    """
    import psycopg

    from gwebhook.database import redacted

    connection = connect(uri, options)
    try:
        with connection:
            connection.execute("SELECT pg_advisory_lock($1)", (MIGRATION_LOCK,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS gwebhook_schema (version integer NOT NULL)"
            )
            row = connection.execute(
                "SELECT max(version) FROM gwebhook_schema"
            ).fetchone()
            version = row[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database {redacted(uri)} has gwebhook schema version "
                    f"{version}, newer than this gwebhook understands "
                    f"({SCHEMA_VERSION}); upgrade gwebhook"
                )
            for number in range(version, SCHEMA_VERSION):
                with connection.transaction():
                    connection.execute(MIGRATIONS[number])
                    connection.execute("DELETE FROM gwebhook_schema")
                    connection.execute(
                        "INSERT INTO gwebhook_schema (version) VALUES ($1)",
                        (number + 1,),
                    )
            connection.execute("SELECT pg_advisory_unlock($1)", (MIGRATION_LOCK,))
        return SCHEMA_VERSION
    except psycopg.Error as e:
        raise StoreError(
            f"cannot use the database {redacted(uri)}: {_first_line(e)}; "
            "check that the user of --db may create tables there"
        ) from None
