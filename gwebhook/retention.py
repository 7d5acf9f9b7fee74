"""
Retention: delete incidents received before a date, with the requests that
carried them and the samples that point at them.

``prune`` is the SQL, for any DB-API cursor inside a transaction the caller
owns; ``prune_in_steps`` deletes the same rows a step at a time, telling a
progress bar how far it got.  ``prune_store`` is ``gwebhook prune``: one
transaction on the SQLite file, then the space given back to the file
system.  ``RetentionService`` runs ``prune`` in the daemon on a schedule.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from twisted.application import service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gwebhook import schema
from gwebhook.progress import Progress, Silent
from gwebhook.store import sessions
from gwebhook.timestamps import from_epoch, parse_occurred
from gwebhook.writerlock import WriterLock

log = Logger()

DEFAULT_INTERVAL = 3600.0  # seconds between two prunes in the daemon
START_DELAY = 10.0  # seconds from start-up to the daemon's first prune
SECONDS_PER_DAY = 86400

# Whole statements, no string building: what runs is what you read here.
# Stored times are format_utc's: "...T10:00:00Z" on a whole second, else
# "...T10:00:00.250000Z".  As strings "." sorts before "Z", so 10:00:00.25
# would sort before 10:00:00; without the "Z" the whole second is a prefix of
# every time inside it and string order is time order.  The age of an
# incident is the time its request was received.
_DELETE_SAMPLES = (
    "DELETE FROM samples WHERE incident_id IN (SELECT i.id FROM incidents i"
    " JOIN requests r ON r.id = i.request_id WHERE rtrim(r.received, 'Z') < ?)"
)
# Their forwarding queue rows too: a delivery of a deleted incident has
# nothing left to send.
_DELETE_DELIVERIES = (
    "DELETE FROM deliveries WHERE incident_id IN (SELECT i.id FROM incidents i"
    " JOIN requests r ON r.id = i.request_id WHERE rtrim(r.received, 'Z') < ?)"
)
_DELETE_INCIDENTS = (
    "DELETE FROM incidents WHERE request_id IN"
    " (SELECT id FROM requests WHERE rtrim(received, 'Z') < ?)"
)
_DELETE_REQUESTS = "DELETE FROM requests WHERE rtrim(received, 'Z') < ?"
# gwebhook prune deletes the same rows in steps of STEP request ids, oldest
# first, so that it can say how far it got; still in one transaction.  First
# what there is to delete: its incidents, and the requests' first and last id.
_TO_PRUNE = (
    "SELECT count(i.id), min(r.id), max(r.id) FROM requests r"
    " LEFT JOIN incidents i ON i.request_id = r.id WHERE rtrim(r.received, 'Z') < ?"
)
_DELETE_SAMPLES_STEP = (
    "DELETE FROM samples WHERE incident_id IN (SELECT id FROM incidents"
    " WHERE request_id IN (SELECT id FROM requests"
    " WHERE id BETWEEN ? AND ? AND rtrim(received, 'Z') < ?))"
)
_DELETE_INCIDENTS_STEP = (
    "DELETE FROM incidents WHERE request_id IN (SELECT id FROM requests"
    " WHERE id BETWEEN ? AND ? AND rtrim(received, 'Z') < ?)"
)
_DELETE_REQUESTS_STEP = (
    "DELETE FROM requests WHERE id BETWEEN ? AND ? AND rtrim(received, 'Z') < ?"
)
STEP = 1000  # request ids per step: a few thousand incidents at most, usually
# Duplicates' keys past their window (seconds since the epoch).
_FORGET_KEYS = "DELETE FROM dedup_keys WHERE expires <= ?"
_FORGET_REPLAYS = "DELETE FROM dedup_requests WHERE expires <= ?"


class PruneError(Exception):
    """``gwebhook prune`` could not do its work; the message says why."""


class StoreBusy(PruneError):
    """Another writer held the store longer than the busy timeout."""


def cutoff(text: str) -> str:
    """
    Normalise ``--before`` (an ISO-8601 date or date-time, UTC when it names
    no zone) to a stored time; raise ValueError for anything else.
    """
    try:
        return parse_occurred(text)
    except ValueError:
        raise ValueError(
            f"--before {text!r} is not an ISO-8601 date or date-time "
            "(e.g. 2024-05-01 or 2024-05-01T10:00:00+02:00)"
        ) from None


def summary(incidents: int, requests: int, before: str) -> str:
    """What a prune did, in words: ``deleted 3 incidents and 1 request ...``."""

    def count(number: int, noun: str) -> str:
        return f"{number} {noun}{'' if number == 1 else 's'}"

    return (
        f"deleted {count(incidents, 'incident')} and {count(requests, 'request')}"
        f" received before {before}"
    )


def prune(db, before: str) -> tuple[int, int]:
    """
    Delete the requests received before ``before`` (a stored UTC time, see
    ``cutoff``), their incidents and the samples rows pointing at those;
    return how many incidents and requests went.

    Runs inside the caller's transaction, on a DB-API connection or cursor:
    what adbapi's ``runInteraction`` passes, or a sqlite3 connection after
    ``BEGIN``.
    """
    cursor = db.cursor() if hasattr(db, "cursor") else db
    key = (before.rstrip("Z"),)
    cursor.execute(_DELETE_SAMPLES, key)
    cursor.execute(_DELETE_DELIVERIES, key)
    cursor.execute(_DELETE_INCIDENTS, key)
    incidents = cursor.rowcount
    cursor.execute(_DELETE_REQUESTS, key)
    requests = cursor.rowcount
    forget_expired(cursor, time.time())
    return incidents, requests


def prune_in_steps(
    db, before: str, progress: Progress | None = None
) -> tuple[int, int]:
    """
    ``prune`` as ``gwebhook prune`` runs it: the same rows deleted, in the
    caller's transaction, but STEP request ids at a time, telling
    ``progress`` how many incidents there are and how many each step
    deleted.  (The daemon's ``prune`` does without the count up front.)
    """
    progress = progress or Silent()
    cursor = db.cursor() if hasattr(db, "cursor") else db
    key = before.rstrip("Z")
    cursor.execute(_TO_PRUNE, (key,))
    total, first, last = cursor.fetchone()
    progress.total(int(total))
    # A delivery has no index by incident alone: one statement, one scan.
    cursor.execute(_DELETE_DELIVERIES, (key,))
    incidents = requests = 0
    if first is not None:
        for low in range(first, last + 1, STEP):
            step = (low, min(low + STEP - 1, last), key)
            cursor.execute(_DELETE_SAMPLES_STEP, step)
            cursor.execute(_DELETE_INCIDENTS_STEP, step)
            incidents += cursor.rowcount
            progress.advance(cursor.rowcount)
            cursor.execute(_DELETE_REQUESTS_STEP, step)
            requests += cursor.rowcount
    forget_expired(cursor, time.time())
    return incidents, requests


def forget_expired(db, now: float) -> int:
    """
    Forget the duplicates' keys (composite and idempotency) whose window
    ended by ``now`` (seconds since the epoch); return how many went.  In
    the caller's transaction, as ``prune``.
    """
    cursor = db.cursor() if hasattr(db, "cursor") else db
    cursor.execute(_FORGET_KEYS, (now,))
    keys = cursor.rowcount
    cursor.execute(_FORGET_REPLAYS, (now,))
    keys += cursor.rowcount
    # The console's ended sessions go too (not counted: they are no keys).
    sessions.forget_expired(cursor, now)
    return keys


# gwebhook prune -------------------------------------------------------------


def _is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(e)


def open_for_pruning(
    path: str, busy_timeout_ms: int = schema.BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """
    Open an existing gwebhook store for writing, never creating one, and
    configure it as the daemon does (WAL, full sync, a bounded wait for
    another writer's lock).
    """
    try:
        connection = schema.open_existing(
            path, write=True, busy_timeout_ms=busy_timeout_ms
        )
    except schema.StoreError as e:
        raise PruneError(str(e)) from None
    except sqlite3.Error as e:
        if _is_busy(e):
            raise StoreBusy(f"store {path} busy, try again") from None
        raise PruneError(f"cannot use {path} as a gwebhook store: {e}") from None
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version != schema.SCHEMA_VERSION:
            raise PruneError(
                f"{path} has schema version {version}, this gwebhook knows "
                f"{schema.SCHEMA_VERSION}; prune it with the gwebhook that runs it"
            )
        schema.configure(connection)
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    except sqlite3.Error as e:
        connection.close()
        if _is_busy(e):
            raise StoreBusy(f"store {path} busy, try again") from None
        raise PruneError(f"cannot use {path} as a gwebhook store: {e}") from None
    except PruneError:
        connection.close()
        raise
    return connection


def prune_store(
    path: str,
    before: str,
    busy_timeout_ms: int = schema.BUSY_TIMEOUT_MS,
    progress: Progress | None = None,
) -> tuple[int, int, bool]:
    """
    ``gwebhook prune``: ``prune_in_steps`` (telling ``progress``) in one
    transaction on the SQLite store at ``path``, then give the freed space
    back (VACUUM, then truncate the WAL).  Returns the incidents and
    requests deleted and whether the space was given back (not while
    another process kept the store busy).  Raises StoreBusy, with nothing
    deleted, when another writer holds the store longer than
    ``busy_timeout_ms``.
    """
    connection = open_for_pruning(path, busy_timeout_ms)
    try:
        try:
            # IMMEDIATE: take the write lock now, waiting up to the busy
            # timeout, rather than fail halfway when the daemon writes.
            connection.execute("BEGIN IMMEDIATE")
            incidents, requests = prune_in_steps(connection, before, progress)
            connection.execute("COMMIT")
        except sqlite3.Error as e:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if _is_busy(e):
                raise StoreBusy(
                    f"store {path} busy (another writer held it for "
                    f"{busy_timeout_ms / 1000:g} s), nothing deleted; try again"
                ) from None
            raise PruneError(f"cannot prune {path}: {e}; nothing deleted") from None
        return incidents, requests, _reclaim(connection)
    finally:
        connection.close()


def _reclaim(connection: sqlite3.Connection) -> bool:
    # The schema has auto_vacuum off, so only VACUUM shrinks the file; it
    # rewrites the whole store through the WAL, which the checkpoint then
    # copies back and truncates.  Freed pages would be reused anyway: a
    # failure here loses no data, only disk space until the next prune.
    try:
        if connection.execute("PRAGMA freelist_count").fetchone()[0]:
            connection.execute("VACUUM")
        busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error as e:
        if _is_busy(e):
            return False
        raise PruneError(f"deleted, but cannot reclaim the space: {e}") from None
    return busy == 0


def prune_postgres(
    uri: str,
    before: str,
    password: str | None = None,
    progress: Progress | None = None,
) -> tuple[int, int, bool]:
    """
    ``gwebhook prune`` on PostgreSQL: ``prune_in_steps`` (telling
    ``progress``) in one transaction under the
    database's writer lock, so it takes its turn with the nodes' writes.
    The space is PostgreSQL's to reuse (autovacuum): nothing to give back.
    """
    incidents, requests = write_once(uri, password, prune_in_steps, before, progress)
    return incidents, requests, True


def write_once(db: str, password: str | None, work, *args):
    """
    ``work(cursor, *args)`` in one write transaction on the store ``db``
    names, taking its turn with the daemon's writes (the writer lock of
    either database), for the commands that change a running store.
    Raises PruneError (StoreBusy) saying why nothing was done.
    """
    from gwebhook.database import is_postgres

    if is_postgres(db):
        import psycopg

        from gwebhook.database import redacted
        from gwebhook.store.postgres import QmarkCursor
        from gwebhook.store.postgres_schema import WRITER_LOCK, connect, connect_options

        try:
            connection = connect(db, connect_options(password))
        except schema.StoreError as e:
            raise PruneError(str(e)) from None
        try:
            with connection.transaction():
                cursor = QmarkCursor(connection.cursor())
                cursor.execute("SELECT pg_advisory_xact_lock(?)", (WRITER_LOCK,))
                return work(cursor, *args)
        except psycopg.Error as e:
            raise PruneError(
                f"cannot change {redacted(db)}: {e}; nothing changed"
            ) from None
        finally:
            connection.close()
    sqlite = open_for_pruning(db)
    try:
        lock = WriterLock(db)
        try:
            lock.acquire(schema.BUSY_TIMEOUT_MS / 1000)
        except (TimeoutError, OSError) as e:
            raise StoreBusy(
                f"store {db} busy ({e}), nothing changed; try again"
            ) from None
        try:
            sqlite.execute("BEGIN IMMEDIATE")
            try:
                result = work(sqlite.cursor(), *args)
                sqlite.execute("COMMIT")
            except BaseException:
                if sqlite.in_transaction:
                    sqlite.execute("ROLLBACK")
                raise
        finally:
            lock.release()
            lock.close()
    except sqlite3.Error as e:
        if _is_busy(e):
            raise StoreBusy(f"store {db} busy, nothing changed; try again") from None
        raise PruneError(f"cannot change {db}: {e}; nothing changed") from None
    finally:
        sqlite.close()
    return result


# In the daemon ---------------------------------------------------------------


class RetentionService(service.Service):
    """
    Deletes incidents received more than ``retain_days`` ago, and forgets
    the duplicates' keys past their window; with ``retain_days`` None, only
    the latter.  First
    ``start_delay`` seconds after start-up, then every ``interval`` seconds,
    through ``write`` (the store's: its one connection serialises the prune
    with the webhook writes, and its writer lock with other processes'), or
    else ``pool.runInteraction``.  A store
    error is logged and the prune tried again next time; the freed pages are
    reused by new incidents, so the file stops growing without a VACUUM.
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        retain_days: float | None,
        interval: float = DEFAULT_INTERVAL,
        clock: IReactorTime | None = None,
        start_delay: float = START_DELAY,
        write: Callable[..., Deferred] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None  # the global reactor when none is given
        self.pool = pool
        self._write = write or pool.runInteraction
        self.retain_days = retain_days
        self.interval = interval
        self.clock = clock
        self.start_delay = start_delay
        self._first: IDelayedCall | None = None
        self._loop: LoopingCall | None = None
        self._looping: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._first = self.clock.callLater(self.start_delay, self._begin)

    def _begin(self) -> None:
        self._first = None
        self._loop = LoopingCall(self.prune_once)
        self._loop.clock = self.clock
        self._looping = self._loop.start(self.interval, now=True)
        self._looping.addErrback(
            lambda failure: log.failure("retention stopped", failure)
        )

    def stopService(self) -> Deferred:
        """Stop scheduling; the Deferred fires once a prune under way is done."""
        super().stopService()
        if self._first is not None:
            self._first.cancel()
            self._first = None
        done, self._looping = self._looping, None
        if self._loop is not None:
            self._loop.stop()  # fires `done` now, or when the prune under way ends
            self._loop = None
        return done if done is not None else succeed(None)

    def prune_once(self) -> Deferred:
        """
        Prune what is older than ``retain_days`` now; fires with the counts
        (incidents, requests), or None after logging a failure.  Without
        ``retain_days``, forget the expired duplicates' keys only; fires with
        how many went.
        """
        if self.retain_days is None:
            d = maybeDeferred(self._write, forget_expired, self.clock.seconds())
            d.addCallbacks(self._forgotten, self._not_forgotten)
            return d
        before = from_epoch(self.clock.seconds() - self.retain_days * SECONDS_PER_DAY)
        d = maybeDeferred(self._write, prune, before)
        d.addCallbacks(
            self._pruned, self._failed, callbackArgs=(before,), errbackArgs=(before,)
        )
        return d

    def _pruned(self, counts: tuple[int, int], before: str) -> tuple[int, int]:
        incidents, requests = counts
        log.info(
            "retention: {summary}",
            summary=summary(incidents, requests, before),
            incidents=incidents,
            requests=requests,
            before=before,
        )
        return counts

    def _forgotten(self, keys: int) -> int:
        if keys:
            log.info(
                "retention: forgot {keys} duplicate keys past their window", keys=keys
            )
        return keys

    def _not_forgotten(self, failure: Failure) -> None:
        log.failure(
            "retention: cannot forget expired duplicate keys; trying again in "
            "{interval:g} s",
            failure,
            interval=self.interval,
        )

    def _failed(self, failure: Failure, before: str) -> None:
        if failure.check(self.pool.dbapi.Error):
            log.error(
                "retention: cannot delete incidents received before {before}: "
                "{error}; trying again in {interval:g} s",
                before=before,
                error=failure.getErrorMessage(),
                interval=self.interval,
            )
        else:
            log.failure(
                "retention: pruning failed; trying again in {interval:g} s",
                failure,
                interval=self.interval,
            )
