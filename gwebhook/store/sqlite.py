"""
The SQLite store: one file, the default.  Writes go through one connection
in one thread (SQLite has one writer anyway); the processes of
``--workers N`` each have a store of their own on the same file and take
turns under a writer lock (see ``writerlock``), held for exactly one
transaction including its commit.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from twisted.enterprise import adbapi

from gwebhook import schema
from gwebhook.store.base import IncidentStore
from gwebhook.writerlock import WriterLock

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

# SQLite's primary result code (the low byte of an extended one) after which
# the store's connection is closed and the next call opens another.  SQLite
# opens a file it may not write read-only, whatever the URI asks (mode=rw
# only stops it creating one), and that connection never writes again, even
# once the file may be written.  Other faults (an I/O error, a full disk)
# leave a connection that writes once they clear; keeping it keeps the
# write-ahead log as it is, where closing the last connection would
# checkpoint it in the middle of the fault.
_SQLITE_READONLY = 8


def _reading(connection: sqlite3.Connection) -> None:
    connection.execute(f"PRAGMA busy_timeout = {schema.BUSY_TIMEOUT_MS}")


class SQLiteStore(IncidentStore):
    """The store in the SQLite file ``path``, created or upgraded here."""

    def __init__(self, path: str) -> None:
        super().__init__()
        schema.create_or_upgrade(path)
        self.path = self.target = path
        # The file prepared here is the store: a connection opened later (the
        # first, or one after a fault) must be to this file, not to one put
        # in its place since.
        self._inode = os.stat(path).st_ino
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
        # WAL: readers never block the writer, nor it them.
        self.readers = adbapi.ConnectionPool(
            "sqlite3",
            f"{Path(path).resolve().as_uri()}?mode=ro",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
            cp_min=1,
            cp_max=1,
            cp_openfun=_reading,
        )

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

    def close(self) -> None:
        super().close()
        self._writer_lock.close()

    # -- the backend's part ----------------------------------------------------

    def _transaction(self, connection, work, *args):
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

    def _next_ids(self, cursor) -> tuple[int, int]:
        # Explicit ids advance sqlite_sequence: nothing to do afterwards.
        return cursor.execute(_NEXT_IDS).fetchone()

    def _probe(self, connection, write: bool) -> None:
        self._check_file()
        if write:
            self._transaction(connection, self._touch_health)
        else:
            cursor = connection.cursor()
            cursor.execute("SELECT count(*) FROM sqlite_master").fetchall()

    def _is_fault(self, error: BaseException) -> bool:
        # SQLite's ways of saying "not now": full, locked, read-only, an I/O
        # error, a damaged file.  (A bare DatabaseError is a damaged file;
        # its subclasses IntegrityError and the like are not faults.)
        return isinstance(error, sqlite3.OperationalError) or (
            type(error) is sqlite3.DatabaseError
        )

    def _spoils_connection(self, error: BaseException) -> bool:
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == _SQLITE_READONLY

    # -- the file ----------------------------------------------------------------

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
