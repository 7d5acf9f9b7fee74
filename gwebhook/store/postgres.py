"""
The PostgreSQL store: several gwebhook nodes on one database.

Each node's store has one connection in one thread, as with SQLite.  Every
write transaction first takes a transaction-level advisory lock, the
database's writer lock: the nodes' transactions commit one at a time, in
the order they took it.  That one choice gives the contract its guarantees
across nodes — ids handed out under the lock are in commit order (a reader
following ids misses nothing that commits later with a smaller id),
duplicates are decided against everything committed before, a request
duplicating one still being committed elsewhere waits for it — at the cost
of one transaction at a time on the database; group commit makes each one
carry many requests.

``synchronous_commit`` is set on for gwebhook's own sessions whatever the
database's default, so a ``200`` means the commit is on the database's disk.
"""

from __future__ import annotations

import contextlib
import functools

from twisted.enterprise import adbapi

from gwebhook.database import redacted
from gwebhook.store.base import IncidentStore
from gwebhook.store.postgres_schema import (
    WRITER_LOCK,
    connect_options,
    create_or_upgrade,
)


@functools.lru_cache(maxsize=1024)
def _numbered(statement: str) -> str:
    """A statement written with ``?`` placeholders, with PostgreSQL's ``$1``..."""
    parts = statement.split("?")
    numbered = [parts[0]]
    for number, part in enumerate(parts[1:], start=1):
        numbered.append(f"${number}{part}")
    return "".join(numbered)


class QmarkCursor:
    """
    A psycopg cursor that takes the store's ``?`` placeholders: the SQL of
    the store, retention and the readers is written once, for both
    databases.
    """

    def __init__(self, cursor) -> None:
        self._cursor = cursor

    def execute(self, statement: str, params=()) -> QmarkCursor:
        self._cursor.execute(_numbered(statement), params or None)
        return self

    def executemany(self, statement: str, rows) -> None:
        self._cursor.executemany(_numbered(statement), rows)

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    def __iter__(self):
        return iter(self._cursor)

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def close(self) -> None:
        self._cursor.close()


class PostgresReader:
    """
    A PostgreSQL connection that reads as the SQLite one does: ``execute``
    with ``?`` placeholders, ``close``.  Each statement is its own
    transaction (autocommit), as the SQLite readers' are.
    """

    # Every PostgreSQL schema gwebhook reads has it all (readback).
    current_schema = True

    def __init__(self, connection) -> None:
        self._connection = connection

    def execute(self, statement: str, params=()):
        return QmarkCursor(self._connection.cursor()).execute(statement, params)

    def close(self) -> None:
        self._connection.close()


class PostgresStore(IncidentStore):
    """
    The store in the PostgreSQL database ``uri`` names (a libpq URI),
    created or upgraded here; ``password``, when given, overrides libpq's
    own sources (``PGPASSWORD``, ``.pgpass``).
    """

    def __init__(self, uri: str, password: str | None = None) -> None:
        super().__init__()
        self.target = redacted(uri)
        options = connect_options(password)
        create_or_upgrade(uri, options)
        self.pool = adbapi.ConnectionPool(
            "psycopg",
            uri,
            cp_min=1,
            cp_max=1,
            cp_noisy=False,
            cp_openfun=_opened,
            **options,
        )
        self.readers = adbapi.ConnectionPool(
            "psycopg",
            uri,
            cp_min=1,
            cp_max=1,
            cp_noisy=False,
            # A lost session is found when its rollback fails: reconnect.
            cp_reconnect=True,
            **options,
        )

    def _reader(self, connection):
        return PostgresReader(connection)

    def _transaction(self, connection, work, *args):
        """
        ``work(cursor, *args)`` in one transaction under the database's writer
        lock, committed.  A connection lost during COMMIT leaves the outcome
        unknown: that is an error (a 503), never an acknowledgement.
        """
        cursor = QmarkCursor(connection.cursor())
        cursor.execute("BEGIN")
        try:
            cursor.execute("SELECT pg_advisory_xact_lock(?)", (WRITER_LOCK,))
            result = work(cursor, *args)
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
        return result

    def _next_ids(self, cursor) -> tuple[int, int]:
        # Under the writer lock: nobody else takes ids from the sequences
        # until this transaction ends, so the block from here is ours.
        return cursor.execute(
            "SELECT (SELECT last_value + is_called::int FROM requests_id_seq),"
            " (SELECT last_value + is_called::int FROM incidents_id_seq)"
        ).fetchone()

    def _ids_used(self, cursor, request_id: int, incident_id: int) -> None:
        # Sequences are not transactional: a rolled-back batch's ids are
        # still skipped, and none is ever given twice.
        cursor.execute(
            "SELECT setval('requests_id_seq', greatest(? - 1, 1), ? > 1),"
            " setval('incidents_id_seq', greatest(? - 1, 1), ? > 1)",
            (request_id, request_id, incident_id, incident_id),
        )

    def _probe(self, connection, write: bool) -> None:
        if write:
            self._transaction(connection, self._touch_health)
        else:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1").fetchall()

    def _is_fault(self, error: BaseException) -> bool:
        import psycopg

        # Unreachable, shut down, connection lost, disk full, out of
        # resources: all OperationalError; a closed connection is an
        # InterfaceError.  A value PostgreSQL refuses (DataError, such as
        # a NUL in a text) is the request's, not a fault.
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)

    def _spoils_connection(self, error: BaseException) -> bool:
        # After a lost or refused session, start from a new connection.
        return self._is_fault(error)


# A writer waits at most this long for the writer lock (as SQLite's busy
# timeout): then a 503, not a request hanging behind a node that froze.
LOCK_TIMEOUT = "5s"
# A session that stays in a transaction doing nothing this long (its node
# froze, or was cut off) is ended by PostgreSQL, and the lock it held with it.
IDLE_IN_TRANSACTION_TIMEOUT = "10s"


def _opened(connection) -> None:
    """
    Every writing session of gwebhook's: durable commits whatever the
    database's default; bounded waits for the writer lock; a frozen or
    cut-off node's session (and its lock) ended by the server, which also
    probes the connection itself.
    """
    connection.autocommit = True
    for setting, value in (
        ("synchronous_commit", "on"),
        ("lock_timeout", LOCK_TIMEOUT),
        ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT),
        ("tcp_keepalives_idle", "5"),
        ("tcp_keepalives_interval", "2"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "15000"),
    ):
        connection.execute(f"SET {setting} = '{value}'")
