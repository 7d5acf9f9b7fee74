"""
The incident store: the only place the request path touches SQL.

Writes go through ``twisted.enterprise.adbapi`` on one connection (SQLite has
one writer anyway).  Group commit: requests that arrive while a commit is
under way wait and are committed together in the next transaction, so one
fsync serves many requests; each request is answered only after the
transaction holding it commits, and a failed transaction fails every request
in it.  The processes of ``--workers N`` each have a store of their own on
the same file and take turns under a writer lock (see ``writerlock``).
Another DB-API database replaces this module's SQL, not its interface.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from twisted.enterprise import adbapi
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from gwebhook import schema
from gwebhook.model import IncidentDraft, ReceivedRequest, StoredIncident
from gwebhook.timestamps import format_utc
from gwebhook.writerlock import WriterLock

# Samples kept of each instance that keeps them: its most recent incidents.
SAMPLE_COUNT = 20
# Requests per transaction at most, so one commit's latency stays bounded.
MAX_BATCH = 512


# Made once: json.dumps with options builds a new encoder at every call.
_encode_details = json.JSONEncoder(ensure_ascii=False).encode

# The first id never given in a table: after the newest row, and after every
# row deleted since (AUTOINCREMENT keeps that in sqlite_sequence, which
# follows the ids given explicitly too).
_NEXT_ID = (
    "SELECT 1 + max("
    " coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),"
    " coalesce((SELECT max(id) FROM {table}), 0))"
)
# Both tables' next ids in one statement: each statement is a trip out of
# Python and back (the GIL given up and taken again) on a shared core.
_NEXT_IDS = "SELECT ({}), ({})".format(
    _NEXT_ID.format(table="requests"), _NEXT_ID.format(table="incidents")
)

# Rows per INSERT statement at most (990 values: under SQLite's oldest limit
# of 999).  One statement for many rows does SQLite's per-statement
# work (AUTOINCREMENT's bookkeeping) once, and lets go of the GIL once:
# sqlite3 releases it around every step, and on a core the reactor shares,
# each release can be a switch to the reactor thread and back.
ROWS_PER_INSERT = 99
_INSERT_INCIDENTS = (
    "INSERT INTO incidents (id, request_id, position, name, type, occurred,"
    " created, details, instance, fields) VALUES "
)
_INCIDENT_WIDTH = 10


_INSERT_REQUESTS = (
    "INSERT INTO requests (id, received, client, method, path, headers, body,"
    " instance, client_cert) VALUES "
)
_REQUEST_WIDTH = 9

_INSERT_SAMPLES = "INSERT INTO samples (incident_id) VALUES "
# An instance's samples past its SAMPLE_COUNT most recent.  The samples
# table is small (SAMPLE_COUNT rows for each instance that keeps them).
_TRIM_SAMPLES = (
    "DELETE FROM samples WHERE incident_id IN (SELECT s.incident_id FROM samples s"
    " JOIN incidents i ON i.id = s.incident_id WHERE i.instance = ?"
    " ORDER BY s.incident_id DESC LIMIT -1 OFFSET ?)"
)


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_incidents(rows: int) -> str:
    """The statement inserting ``rows`` incidents: placeholders only, no data."""
    return _INSERT_INCIDENTS + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_requests(rows: int) -> str:
    """The statement inserting ``rows`` requests: placeholders only, no data."""
    return _INSERT_REQUESTS + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)


@functools.lru_cache(maxsize=SAMPLE_COUNT)
def _insert_samples(rows: int) -> str:
    """The statement inserting ``rows`` samples: placeholders only, no data."""
    return _INSERT_SAMPLES + ", ".join(["(?)"] * rows)


def _insert_rows(cursor, statement, width: int, values: list) -> None:
    """Insert ``values`` (rows of ``width`` flattened) 99 rows a statement."""
    step = ROWS_PER_INSERT * width
    for start in range(0, len(values), step):
        chunk = values[start : start + step]
        cursor.execute(statement(len(chunk) // width), chunk)


def _request_row(request_id: int, request: ReceivedRequest) -> tuple:
    """A request's row for ``_insert_requests``."""
    return (
        request_id,
        request.received,
        request.client,
        request.method,
        request.path,
        _encode_details(request.headers),
        request.body,
        request.instance,
        None if request.client_cert is None else _encode_details(request.client_cert),
    )


def _incident_rows(
    first_id: int,
    request_id: int,
    instance: str,
    drafts: Sequence[IncidentDraft],
    created: str,
) -> list:
    """A request's incidents, numbered from ``first_id``, as flat row values."""
    values: list = []
    for position, (name, kind, occurred, details, fields) in enumerate(drafts):
        values += (
            first_id + position,
            request_id,
            position,
            name,
            kind,
            occurred,
            created,
            _encode_details(details),
            instance,
            # Most incidents have none: no encoder call for them.
            _encode_details(fields) if fields else "{}",
        )
    return values


def _stored(
    first_id: int, drafts: Sequence[IncidentDraft], created: str
) -> list[StoredIncident]:
    """What the sender is told of a request's incidents once committed."""
    return [
        StoredIncident(str(first_id + position), name, kind, occurred, created)
        for position, (name, kind, occurred, _, _) in enumerate(drafts)
    ]


# SQLite's primary result code (the low byte of an extended one) after which
# the store's connection is closed and the next call opens another.  SQLite
# opens a file it may not write read-only, whatever the URI asks (mode=rw
# only stops it creating one), and that connection never writes again, even
# once the file may be written.  Other faults (an I/O error, a full disk)
# leave a connection that writes once they clear; keeping it keeps the
# write-ahead log as it is, where closing the last connection would
# checkpoint it in the middle of the fault.
_SQLITE_READONLY = 8


def _spoils_connection(error: Exception) -> bool:
    """Whether ``error`` calls for a new connection before the next try."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 and later
    if code is not None:
        return code & 0xFF == _SQLITE_READONLY
    # Python 3.10 gives only SQLite's message.
    return isinstance(error, sqlite3.OperationalError) and (
        "readonly database" in str(error)
    )


class StoreUnavailable(Exception):
    """The store could not commit (full, locked, read-only); retry later."""


# One request waiting for its commit: what to store, whether its incidents
# are kept as samples of its instance, and who waits for the answer.
_Waiting = tuple[ReceivedRequest, Sequence[IncidentDraft], bool, Deferred]
# The same, as the pool's thread gets it.
_Entry = tuple[ReceivedRequest, Sequence[IncidentDraft], bool]


class IncidentStore:
    """
    Stores requests and their incidents; durable before it answers.  Keeps
    the SAMPLE_COUNT most recent incidents of each instance whose requests
    say to keep samples.
    """

    def __init__(self, path: str) -> None:
        schema.create_or_upgrade(path)
        self.path = path
        # The file prepared here is the store: a connection opened later (the
        # first, or one after a fault) must be to this file, not to one put
        # in its place since.
        self._inode = os.stat(path).st_ino
        self._waiting: list[_Waiting] = []
        self._committing = False
        self._writer_lock = WriterLock(path)
        # Public for the other writers of the same file (retention).  Its one
        # thread runs every call of the store, on the one connection
        # pool.connect() gives that thread: opened on first use, and again
        # after a fault that spoiled it (see _on_connection).
        self.pool = adbapi.ConnectionPool(
            "sqlite3",
            # mode=rw: never create a store here (create_or_upgrade did).
            f"{Path(path).resolve().as_uri()}?mode=rw",
            uri=True,
            check_same_thread=False,
            isolation_level="",
            cp_min=1,
            cp_max=1,
            cp_openfun=self._opened,
            # Room for the multi-row INSERTs of every size (2 x 99, and 20).
            cached_statements=256,
        )
        # The reactor the pool uses: the one installed by now (by twistd, or
        # the tests), imported here as adbapi does, not when this module is.
        from twisted.internet import reactor

        # (Twisted types the global reactor's common interfaces only; every
        # reactor runs calls from threads.)
        self._reactor = cast(IReactorFromThreads, reactor)

    def _opened(self, connection: sqlite3.Connection) -> None:
        # A connection refused here is not the pool's: close it, or its
        # descriptors stay open until the garbage collector finds it.
        try:
            if self._file_changed():
                raise self._file_gone()
            schema.configure(connection)
        except BaseException:
            connection.close()
            raise

    def _run(self, work, *args) -> Deferred:
        """``work(connection, *args)`` in the pool's thread; fires with its result."""
        return threads.deferToThreadPool(
            self._reactor, self.pool.threadpool, self._on_connection, work, *args
        )

    def _on_connection(self, work, *args):
        """
        ``work`` on the pool's connection, in its thread.  After an error that
        leaves a connection unable to write although the store is fine again
        (read-only), the connection is closed, so that the next call opens a
        new one: the store recovers without a restart, as from every other
        fault.  (Not adbapi's runWithConnection: its rollback after a failure
        would use the connection closed here.  ``work`` ends its own
        transactions, so its commit and rollback add nothing.)
        """
        connection = self.pool.connect()
        try:
            return work(connection, *args)
        except sqlite3.Error as e:
            if _spoils_connection(e):
                self.pool.disconnect(connection)
            raise

    def _check_file(self) -> None:
        """
        Refuse to commit into a store file that was removed or replaced: the
        open connection would write to a file nobody will ever read again.
        """
        if self._file_changed():
            raise self._file_gone()

    def _file_changed(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except OSError:
            return True

    def _file_gone(self) -> sqlite3.OperationalError:
        return sqlite3.OperationalError(
            f"the store file {self.path} was removed or replaced; "
            "put it back, or restart gwebhook to start a new one"
        )

    def add(
        self,
        request: ReceivedRequest,
        drafts: Sequence[IncidentDraft],
        keep_samples: bool = False,
    ) -> Deferred[list[StoredIncident]]:
        """
        Commit the request and its incidents together; fire with them.  With
        ``keep_samples`` (its instance's setting) they are kept as samples of
        the request's instance too.
        """
        d: Deferred[list[StoredIncident]] = Deferred()
        self._waiting.append((request, drafts, keep_samples, d))
        if not self._committing:
            self._commit_next()
        return d

    def _commit_next(self) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._committing = True
        entries = [(r, i, k) for r, i, k, _ in batch]
        done = self._run(self._write, self._insert_batch, entries)
        done.addErrback(self._unavailable)
        done.addBoth(self._committed, [d for _, _, _, d in batch])

    def _committed(self, result, waiters: list[Deferred]) -> None:
        self._committing = False
        if self._waiting:
            self._commit_next()
        if isinstance(result, Failure):
            for d in waiters:
                d.errback(result)
        else:
            for d, stored in zip(waiters, result, strict=True):
                if isinstance(stored, Failure):
                    d.errback(stored)
                else:
                    d.callback(stored)

    def ping(self, write: bool = False) -> Deferred[None]:
        """
        Succeed when the store answers; with ``write``, when it takes a
        durable commit (a fault such as a full disk shows only then).  Fails
        with StoreUnavailable otherwise.
        """
        d = self._run(self._probe, write)
        d.addErrback(self._unavailable)
        return d

    def _probe(self, connection, write: bool) -> None:
        self._check_file()
        if write:
            self._write(connection, self._touch_health)
        else:
            cursor = connection.cursor()
            cursor.execute("SELECT count(*) FROM sqlite_master").fetchall()

    @staticmethod
    def _touch_health(cursor: sqlite3.Cursor) -> None:
        cursor.execute(
            "INSERT OR REPLACE INTO health (id, checked) VALUES (1, ?)",
            (format_utc(datetime.now(UTC)),),
        )

    def write(self, work, *args) -> Deferred:
        """
        Run ``work(cursor, *args)`` in a write transaction of its own, under
        the writer lock, as the store's own batches are (for retention).
        Fails with the database's own error.
        """
        return self._run(self._write, work, *args)

    def close(self) -> None:
        self.pool.close()
        self._writer_lock.close()

    def _write(self, connection, work, *args):
        """
        Run ``work(cursor, *args)`` in one write transaction and commit it,
        all under the writer lock (in the pool's thread).  The lock is let go
        only once the commit or rollback is done: the next writer must not
        start waiting on SQLite's lock, whose busy handler sleeps.
        """
        try:
            self._writer_lock.acquire(schema.BUSY_TIMEOUT_MS / 1000)
        except TimeoutError as e:
            # As SQLite says it when its own lock is held too long: a 503.
            raise sqlite3.OperationalError(f"database is locked: {e}") from e
        except OSError as e:
            raise sqlite3.OperationalError(
                f"cannot take the writer lock {self._writer_lock.path}: "
                f"{e.strerror}; let the daemon's user create and write it"
            ) from e
        try:
            cursor = connection.cursor()
            # Explicit, so savepoints nest in it instead of each RELEASE
            # committing on its own.  IMMEDIATE takes SQLite's write lock now,
            # waiting at most the busy timeout for writers that skip ours.
            cursor.execute("BEGIN IMMEDIATE")
            try:
                result = work(cursor, *args)
                self._check_file()
                cursor.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may have ended the transaction already.
                with contextlib.suppress(sqlite3.Error):
                    cursor.execute("ROLLBACK")
                raise
        finally:
            self._writer_lock.release()
        return result

    def _insert_batch(
        self, cursor: sqlite3.Cursor, batch: list[_Entry]
    ) -> list[list[StoredIncident] | Failure]:
        """
        Every request of the batch, in the transaction ``_write`` opened.

        First all of them at once: the requests in one multi-row INSERT, the
        incidents in another (100 rows a statement), with ids chosen here
        under the write lock.  Should that fail for something one request
        carries (not a fault of the store), it is undone and done again a
        request at a time, each under a savepoint, so only that one fails.
        A fault of the store itself fails the batch.
        """
        created = format_utc(datetime.now(UTC))
        request_id, incident_id = cursor.execute(_NEXT_IDS).fetchone()
        try:
            results = self._insert_all(cursor, batch, request_id, incident_id, created)
        except sqlite3.OperationalError:
            raise
        except Exception:
            # Undone whole (the batch is all this transaction holds; the
            # writer lock is still ours), then done again a request at a time.
            cursor.execute("ROLLBACK")
            cursor.execute("BEGIN IMMEDIATE")
            request_id, incident_id = cursor.execute(_NEXT_IDS).fetchone()
            results = self._insert_each(cursor, batch, request_id, incident_id, created)
        self._keep_samples(cursor, batch, results)
        return results

    @staticmethod
    def _insert_all(
        cursor: sqlite3.Cursor,
        batch: list[_Entry],
        request_id: int,
        incident_id: int,
        created: str,
    ) -> list[list[StoredIncident] | Failure]:
        """The whole batch in two kinds of statement; raises if any row fails."""
        requests: list = []
        incidents: list = []
        results: list[list[StoredIncident] | Failure] = []
        for request, drafts, _ in batch:
            requests += _request_row(request_id, request)
            incidents += _incident_rows(
                incident_id, request_id, request.instance, drafts, created
            )
            results.append(_stored(incident_id, drafts, created))
            request_id += 1
            incident_id += len(drafts)
        _insert_rows(cursor, _insert_requests, _REQUEST_WIDTH, requests)
        _insert_rows(cursor, _insert_incidents, _INCIDENT_WIDTH, incidents)
        return results

    @staticmethod
    def _insert_each(
        cursor: sqlite3.Cursor,
        batch: list[_Entry],
        request_id: int,
        incident_id: int,
        created: str,
    ) -> list[list[StoredIncident] | Failure]:
        """The batch a request at a time: one that cannot be stored fails alone."""
        results: list[list[StoredIncident] | Failure] = []
        for entry in batch:
            cursor.execute("SAVEPOINT request")
            try:
                [stored] = IncidentStore._insert_all(
                    cursor, [entry], request_id, incident_id, created
                )
            except sqlite3.OperationalError:
                raise
            except Exception:
                cursor.execute("ROLLBACK TO request")
                results.append(Failure())
            else:
                assert isinstance(stored, list)  # _insert_all raises on failure
                results.append(stored)
                request_id += 1
                incident_id += len(stored)
            cursor.execute("RELEASE request")
        return results

    @staticmethod
    def _keep_samples(
        cursor: sqlite3.Cursor,
        batch: list[_Entry],
        results: list[list[StoredIncident] | Failure],
    ) -> None:
        """
        The incidents stored of the requests that keep samples, as samples of
        their instances; then each of those instances' SAMPLE_COUNT most
        recent only.  Statements per instance, not per incident.
        """
        kept: dict[str, list[int]] = {}
        for (request, _, keep), stored in zip(batch, results, strict=True):
            if keep and isinstance(stored, list) and stored:
                latest = (int(s.id) for s in stored[-SAMPLE_COUNT:])
                kept.setdefault(request.instance, []).extend(latest)
        for instance, ids in kept.items():
            newest = ids[-SAMPLE_COUNT:]
            cursor.execute(_insert_samples(len(newest)), newest)
            cursor.execute(_TRIM_SAMPLES, (instance, SAMPLE_COUNT))

    @staticmethod
    def _unavailable(failure):
        # SQLite's ways of saying "not now" (full, locked, read-only, I/O
        # error, damaged file): the request may succeed once the fault clears.
        # Programming and integrity errors are bugs and stay what they are.
        error = failure.value
        if isinstance(error, sqlite3.OperationalError) or (
            type(error) is sqlite3.DatabaseError
        ):
            raise StoreUnavailable(str(error)) from error
        return failure
