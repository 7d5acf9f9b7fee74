"""
The incident store's behaviour, whatever the database: group commit, one
request all or nothing, duplicates decided in the transaction, samples.
Requests that arrive while a commit is under way wait and are committed
together in the next transaction, so one durable commit serves many; each
is answered only after the transaction holding it commits, and a failed
transaction fails every request in it.

Each backend (``sqlite``, ``postgres``) subclasses :class:`IncidentStore`
with how it connects, how a write transaction is taken and committed, how
ids are handed out, and which of its errors mean "not now".  The SQL here is
written with ``?`` placeholders and is the same for both; ``sql()``
converts it to the backend's.  Every call runs in the pool's one thread, on
the one connection ``pool.connect()`` gives it.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import cast

from twisted.enterprise import adbapi
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from gwebhook import jsontext
from gwebhook.dedup import Ticket
from gwebhook.model import Committed, IncidentDraft, ReceivedRequest, StoredIncident
from gwebhook.timestamps import format_utc

# Samples kept of each instance that keeps them: its most recent incidents.
SAMPLE_COUNT = 20
# Requests per transaction at most, so one commit's latency stays bounded.
MAX_BATCH = 512


_encode_details = jsontext.encode

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
    " instance, client_cert, x_request_id) VALUES "
)
_REQUEST_WIDTH = 10

# Duplicates: what an instance remembers of composite keys and idempotency
# keys.  A plain INSERT, not OR IGNORE or OR REPLACE: should a key be
# written twice, the primary key fails the transaction rather than let
# a second set of incidents be created for it.
_INSERT_KEYS = (
    "INSERT INTO dedup_keys (instance, key, expires, incident_id, name, type,"
    " occurred, created) VALUES "
)
_KEY_WIDTH = 8
_INSERT_REPLAYS = (
    "INSERT INTO dedup_requests (instance, key, expires, x_request_id, answer) VALUES "
)
_REPLAY_WIDTH = 5
# Looked up for a whole batch at once, an instance at a time.
_KEYS_PER_LOOKUP = 500
_LOOK_UP_KEYS = (
    "SELECT key, expires, incident_id, name, type, occurred, created"
    " FROM dedup_keys WHERE instance = ? AND key IN "
)
_LOOK_UP_REPLAYS = (
    "SELECT key, expires, x_request_id, answer FROM dedup_requests"
    " WHERE instance = ? AND key IN "
)
# A key past its expiry is forgotten before it is remembered again.
_FORGET_KEY = "DELETE FROM dedup_keys WHERE instance = ? AND key = ?"
_FORGET_REPLAY = "DELETE FROM dedup_requests WHERE instance = ? AND key = ?"

# Forwarding: each new incident queued for every forward that takes its
# instance, in the incident's own transaction.
_INSERT_DELIVERIES = "INSERT INTO deliveries (forward, incident_id, queued) VALUES "
_DELIVERY_WIDTH = 3

_INSERT_SAMPLES = "INSERT INTO samples (incident_id) VALUES "
# An instance's samples older than its SAMPLE_COUNT most recent.  The
# samples table is small (SAMPLE_COUNT rows for each instance that keeps
# them).  Written out whole: SQLite's "LIMIT -1 OFFSET" is not PostgreSQL's.
_TRIM_SAMPLES = (
    "DELETE FROM samples WHERE incident_id IN (SELECT s.incident_id FROM samples s"
    " JOIN incidents i ON i.id = s.incident_id WHERE i.instance = ?"
    " AND s.incident_id < (SELECT min(incident_id) FROM (SELECT t.incident_id"
    " FROM samples t JOIN incidents j ON j.id = t.incident_id WHERE j.instance = ?"
    " ORDER BY t.incident_id DESC LIMIT ?) newest))"
)


def _row(width: int) -> str:
    """One row's placeholders: ``(?, ?, ...)``, ``width`` of them."""
    return "(" + ", ".join(["?"] * width) + ")"


@functools.lru_cache(maxsize=256)
def _insert(prefix: str, width: int, rows: int) -> str:
    """``prefix`` (an INSERT up to VALUES) for ``rows`` rows of ``width``: no data."""
    return prefix + ", ".join([_row(width)] * rows)


_placeholders = functools.lru_cache(maxsize=64)(_row)


def _insert_rows(cursor, prefix: str, width: int, values: list) -> None:
    """Insert ``values`` (rows of ``width`` flattened) 99 rows a statement."""
    step = ROWS_PER_INSERT * width
    for start in range(0, len(values), step):
        chunk = values[start : start + step]
        cursor.execute(_insert(prefix, width, len(chunk) // width), chunk)


def _request_row(request_id: int, request: ReceivedRequest) -> tuple:
    """A request's row for ``_INSERT_REQUESTS``."""
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
        request.x_request_id,
    )


def _incident_rows(
    first_id: int,
    request_id: int,
    instance: str,
    numbered: Sequence[tuple[int, IncidentDraft]],
    created: str,
) -> list:
    """
    A request's new incidents, numbered from ``first_id``, as flat row
    values; each with its position among the request's elements.
    """
    values: list = []
    for offset, (position, (name, kind, occurred, details, fields)) in enumerate(
        numbered
    ):
        values += (
            first_id + offset,
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


class _Memory:
    """
    What one transaction knows of duplicates: the composite keys and
    idempotency keys the store remembered when it began (less those past
    their expiry, which are noted to be forgotten before they are written
    again), and those its own requests added since, so that a request sees
    the ones before it in the same batch.  Keyed by (instance, key).
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self.keys: dict[tuple[str, str], StoredIncident] = {}
        self.replays: dict[tuple[str, str], Committed] = {}
        self.expired_keys: set[tuple[str, str]] = set()
        self.expired_replays: set[tuple[str, str]] = set()

    def copy(self) -> _Memory:
        other = _Memory(self.now)
        other.keys = dict(self.keys)
        other.replays = dict(self.replays)
        other.expired_keys = set(self.expired_keys)
        other.expired_replays = set(self.expired_replays)
        return other


def _replayed(earlier: Committed) -> Committed:
    """A request's answer given again: every entry a duplicate."""
    return Committed(
        [s if s.duplicate else s._replace(duplicate=True) for s in earlier.incidents],
        earlier.replay_of,
    )


def _chunks(items: list[str]) -> list[list[str]]:
    return [
        items[i : i + _KEYS_PER_LOOKUP] for i in range(0, len(items), _KEYS_PER_LOOKUP)
    ]


def _recall(cursor, batch: list[_Entry], now: float) -> _Memory:
    """What the store remembers of every key the batch's requests carry."""
    memory = _Memory(now)
    keys: dict[str, set[str]] = {}
    replays: dict[str, set[str]] = {}
    for request, _, _, ticket in batch:
        if ticket is None:
            continue
        wanted = {k for k in ticket.element_keys if k is not None}
        if wanted:
            keys.setdefault(request.instance, set()).update(wanted)
        if ticket.request_key is not None:
            replays.setdefault(request.instance, set()).add(ticket.request_key)
    for instance, wanted in keys.items():
        for chunk in _chunks(sorted(wanted)):
            statement = _LOOK_UP_KEYS + _placeholders(len(chunk))
            for key, expires, *incident in cursor.execute(
                statement, (instance, *chunk)
            ):
                if expires > now:
                    number, name, kind, occurred, created = incident
                    memory.keys[instance, key] = StoredIncident(
                        str(number), name, kind, occurred, created, True
                    )
                else:
                    memory.expired_keys.add((instance, key))
    for instance, wanted in replays.items():
        for chunk in _chunks(sorted(wanted)):
            statement = _LOOK_UP_REPLAYS + _placeholders(len(chunk))
            for key, expires, first, answer in cursor.execute(
                statement, (instance, *chunk)
            ):
                if expires > now:
                    memory.replays[instance, key] = Committed(
                        [
                            StoredIncident(*e)._replace(duplicate=True)
                            for e in json.loads(answer)
                        ],
                        first or "",
                    )
                else:
                    memory.expired_replays.add((instance, key))
    return memory


class StoreUnavailable(Exception):
    """The store could not commit (full, locked, read-only); retry later."""


# One request waiting for its commit: what to store, whether its incidents
# are kept as samples of its instance, how it is deduplicated (None: not),
# and who waits for the answer.
_Waiting = tuple[
    ReceivedRequest, Sequence[IncidentDraft], bool, Ticket | None, Deferred
]
# The same, as the pool's thread gets it.
_Entry = tuple[ReceivedRequest, Sequence[IncidentDraft], bool, Ticket | None]


def _next_after(
    results: list[Committed | Failure], request_id: int, incident_id: int
) -> tuple[int, int]:
    """The first request id and incident id after those the batch gave."""
    for committed in results:
        if isinstance(committed, Committed):
            created = [s for s in committed.incidents if not s.duplicate]
            if created:
                request_id += 1
                incident_id += len(created)
    return request_id, incident_id


class IncidentStore:
    """
    Stores requests and their incidents; durable before it answers.  Keeps
    the SAMPLE_COUNT most recent incidents of each instance whose requests
    say to keep samples.  A backend sets ``pool`` (an adbapi pool of one
    thread and one connection) and says how to write, number and fail.
    """

    pool: adbapi.ConnectionPool
    # Reads of the read API, on connections of their own in a thread of
    # their own: a large page never holds up a commit.
    readers: adbapi.ConnectionPool
    # What ``--db`` named, as it may be shown (no password).
    target: str

    def __init__(self) -> None:
        self._waiting: list[_Waiting] = []
        self._committing = False
        # Called, in the reactor, after each transaction that created
        # incidents commits, with the instances it created them for (the
        # read API's long polls and the forwarders wait on it).
        self.on_commit: list[Callable[[set[str]], object]] = []
        # The forwards' names and the instances each takes (None: every
        # one): new incidents are queued for them as they are stored.
        self.forward_routes: tuple[tuple[str, frozenset[str] | None], ...] = ()
        # The reactor the pool uses: the one installed by now (by twistd, or
        # the tests), imported here as adbapi does, not when this module is.
        from twisted.internet import reactor

        # (Twisted types the global reactor's common interfaces only; every
        # reactor runs calls from threads.)
        self._reactor = cast(IReactorFromThreads, reactor)

    # -- what each backend says ------------------------------------------------

    def _transaction(self, connection, work, *args):
        """
        Run ``work(cursor, *args)`` in one write transaction of the store's
        (under its writer lock) and commit it durably; return its result.
        """
        raise NotImplementedError

    def _next_ids(self, cursor) -> tuple[int, int]:
        """The first request id and incident id no request has had."""
        raise NotImplementedError

    def _ids_used(self, cursor, request_id: int, incident_id: int) -> None:
        """Ids below these were given in this transaction: never give them again."""

    def _probe(self, connection, write: bool) -> None:
        """Ask the database something; with ``write``, make a durable commit."""
        raise NotImplementedError

    def _is_fault(self, error: BaseException) -> bool:
        """
        Whether ``error`` is the database's "not now" (unreachable, full,
        locked, read-only...), as opposed to one request's data or a bug.
        """
        raise NotImplementedError

    def _spoils_connection(self, error: BaseException) -> bool:
        """Whether the connection must be replaced after ``error``."""
        return False

    def _reader(self, connection):
        """A read connection as the readers (``readback``) take it."""
        return connection

    def read(self, work, *args) -> Deferred:
        """
        ``work(db, *args)`` on a read connection, in the readers' thread
        (``db.execute`` takes the store's ``?`` SQL); fires with its result,
        or fails with StoreUnavailable when the database cannot answer.
        """
        d = self.readers.runWithConnection(self._reading, work, *args)
        d.addErrback(self._unavailable)
        return d

    def _reading(self, connection, work, *args):
        return work(self._reader(connection), *args)

    # -- the interface ---------------------------------------------------------

    def _run(self, work, *args) -> Deferred:
        """``work(connection, *args)`` in the pool's thread; fires with its result."""
        return threads.deferToThreadPool(
            self._reactor, self.pool.threadpool, self._on_connection, work, *args
        )

    def _on_connection(self, work, *args):
        """
        ``work`` on the pool's connection, in its thread.  After an error that
        leaves the connection unusable although the database is fine again
        (read-only SQLite, a lost PostgreSQL session), the connection is
        closed, so that the next call opens a new one: the store recovers
        without a restart.  (Not adbapi's runWithConnection: its rollback
        after a failure would use the connection closed here.  ``work`` ends
        its own transactions, so its commit and rollback add nothing.)
        """
        connection = self.pool.connect()
        try:
            return work(connection, *args)
        except Exception as e:
            if self._spoils_connection(e):
                self.pool.disconnect(connection)
            raise

    def add(
        self,
        request: ReceivedRequest,
        drafts: Sequence[IncidentDraft],
        keep_samples: bool = False,
        ticket: Ticket | None = None,
    ) -> Deferred[Committed]:
        """
        Commit the request and its incidents together; fire with them.  With
        ``keep_samples`` (its instance's setting) they are kept as samples of
        the request's instance too.  With a ``ticket`` (its instance's
        ``[instance.dedup]``), elements whose composite key the instance
        remembers create nothing, and a request whose idempotency key it
        remembers stores nothing and gets the earlier answer again; the keys
        of what it does create are remembered in the same transaction.
        """
        d: Deferred[Committed] = Deferred()
        self._waiting.append((request, drafts, keep_samples, ticket, d))
        if not self._committing:
            self._commit_next()
        return d

    def _commit_next(self) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        self._committing = True
        entries = [(r, i, k, t) for r, i, k, t, _ in batch]
        done = self._run(self._transaction, self._insert_batch, entries)
        done.addErrback(self._unavailable)
        done.addBoth(
            self._committed,
            [d for _, _, _, _, d in batch],
            [r.instance for r, _, _, _, _ in batch],
        )

    def _committed(self, result, waiters: list[Deferred], instances: list[str]) -> None:
        self._committing = False
        if self._waiting:
            self._commit_next()
        if isinstance(result, Failure):
            for d in waiters:
                d.errback(result)
        else:
            created = {
                instance
                for instance, c in zip(instances, result, strict=True)
                if isinstance(c, Committed) and len(c.incidents) > c.duplicates
            }
            if created:
                for listener in self.on_commit:
                    listener(created)
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

    @staticmethod
    def _touch_health(cursor) -> None:
        """The health check's durable commit: one row, rewritten."""
        now = (format_utc(datetime.now(UTC)),)
        cursor.execute("UPDATE health SET checked = ? WHERE id = 1", now)
        if cursor.rowcount == 0:
            cursor.execute("INSERT INTO health (id, checked) VALUES (1, ?)", now)

    def write(self, work, *args) -> Deferred:
        """
        Run ``work(cursor, *args)`` in a write transaction of its own, under
        the writer lock, as the store's own batches are (for retention).
        Fails with the database's own error.
        """
        return self._run(self._transaction, work, *args)

    def close(self) -> None:
        self.pool.close()
        self.readers.close()

    def _insert_batch(self, cursor, batch: list[_Entry]) -> list[Committed | Failure]:
        """
        Every request of the batch, in the transaction ``_transaction`` opened.

        First all of them at once: the requests in one multi-row INSERT, the
        incidents in another (99 rows a statement), with ids chosen here
        under the writer lock, and the duplicates decided against what the
        store remembers, read under the same lock.  Should that fail for
        something one request carries (not a fault of the database), it is
        undone to a savepoint and done again a request at a time, each under
        a savepoint of its own, so only that one fails.  A fault of the
        database itself fails the batch.
        """
        created = format_utc(datetime.now(UTC))
        now = time.time()
        request_id, incident_id = self._next_ids(cursor)
        cursor.execute("SAVEPOINT batch")
        try:
            memory = _recall(cursor, batch, now)
            results = self._insert_all(
                cursor, batch, request_id, incident_id, created, memory
            )
        except Exception as e:
            if self._is_fault(e):
                raise
            cursor.execute("ROLLBACK TO batch")
            memory = _recall(cursor, batch, now)
            results = self._insert_each(
                cursor, batch, request_id, incident_id, created, memory
            )
        cursor.execute("RELEASE batch")
        self._keep_samples(cursor, batch, results)
        self._ids_used(cursor, *_next_after(results, request_id, incident_id))
        return results

    def _insert_all(
        self,
        cursor,
        batch: list[_Entry],
        request_id: int,
        incident_id: int,
        created: str,
        memory: _Memory,
    ) -> list[Committed | Failure]:
        """
        The whole batch in a few kinds of statement; raises if any row
        fails.  A request's element whose composite key is remembered (or
        was created earlier in the batch) creates nothing and is answered
        with the earlier incident; a request whose idempotency key is
        remembered creates nothing and is answered as the earlier one was.
        """
        requests: list = []
        incidents: list = []
        deliveries: list = []
        routes = self.forward_routes
        keys: list = []
        replays: list = []
        forget_keys: list[tuple[str, str]] = []
        forget_replays: list[tuple[str, str]] = []
        results: list[Committed | Failure] = []
        for request, drafts, _, ticket in batch:
            instance = request.instance
            if ticket is None:
                new = list(enumerate(drafts))
                answer = _stored(incident_id, drafts, created)
            else:
                replay_key = (instance, ticket.request_key or "")
                if ticket.request_key is not None:
                    replay = memory.replays.get(replay_key)
                    if replay is not None:
                        results.append(_replayed(replay))
                        continue
                expires = memory.now + ticket.window
                new = []
                answer = []
                for position, (draft, key) in enumerate(
                    zip(drafts, ticket.element_keys, strict=True)
                ):
                    earlier = None if key is None else memory.keys.get((instance, key))
                    if earlier is not None:
                        answer.append(
                            earlier
                            if earlier.duplicate
                            else earlier._replace(duplicate=True)
                        )
                        continue
                    number = incident_id + len(new)
                    stored = StoredIncident(
                        str(number), draft.name, draft.type, draft.occurred, created
                    )
                    new.append((position, draft))
                    answer.append(stored)
                    if key is not None:
                        # Flagged a duplicate when (rarely) answered again.
                        memory.keys[instance, key] = stored
                        if (instance, key) in memory.expired_keys:
                            memory.expired_keys.discard((instance, key))
                            forget_keys.append((instance, key))
                        keys += (instance, key, expires, number, *stored[1:5])
                if ticket.request_key is not None:
                    # Flagged duplicates when (rarely) answered again.
                    memory.replays[replay_key] = Committed(
                        answer, request.x_request_id or ""
                    )
                    if replay_key in memory.expired_replays:
                        memory.expired_replays.discard(replay_key)
                        forget_replays.append(replay_key)
                    replays += (
                        *replay_key,
                        expires,
                        request.x_request_id,
                        _encode_details([s[:5] for s in answer]),
                    )
            if new:
                requests += _request_row(request_id, request)
                incidents += _incident_rows(
                    incident_id, request_id, instance, new, created
                )
                for forward, takes in routes:
                    if takes is None or instance in takes:
                        for number in range(incident_id, incident_id + len(new)):
                            deliveries += (forward, number, memory.now)
                request_id += 1
                incident_id += len(new)
            results.append(Committed(answer))
        if forget_keys:
            cursor.executemany(_FORGET_KEY, forget_keys)
        if forget_replays:
            cursor.executemany(_FORGET_REPLAY, forget_replays)
        _insert_rows(cursor, _INSERT_REQUESTS, _REQUEST_WIDTH, requests)
        _insert_rows(cursor, _INSERT_INCIDENTS, _INCIDENT_WIDTH, incidents)
        _insert_rows(cursor, _INSERT_KEYS, _KEY_WIDTH, keys)
        _insert_rows(cursor, _INSERT_REPLAYS, _REPLAY_WIDTH, replays)
        _insert_rows(cursor, _INSERT_DELIVERIES, _DELIVERY_WIDTH, deliveries)
        return results

    def _insert_each(
        self,
        cursor,
        batch: list[_Entry],
        request_id: int,
        incident_id: int,
        created: str,
        memory: _Memory,
    ) -> list[Committed | Failure]:
        """The batch a request at a time: one that cannot be stored fails alone."""
        results: list[Committed | Failure] = []
        for entry in batch:
            cursor.execute("SAVEPOINT request")
            # What this request would add to the memory goes if it fails.
            before = memory.copy()
            try:
                [committed] = self._insert_all(
                    cursor, [entry], request_id, incident_id, created, memory
                )
            except Exception as e:
                if self._is_fault(e):
                    raise
                cursor.execute("ROLLBACK TO request")
                memory = before
                results.append(Failure())
            else:
                assert isinstance(committed, Committed)  # _insert_all raises
                results.append(committed)
                created_here = [s for s in committed.incidents if not s.duplicate]
                if created_here:
                    request_id += 1
                    incident_id += len(created_here)
            cursor.execute("RELEASE request")
        return results

    @staticmethod
    def _keep_samples(
        cursor,
        batch: list[_Entry],
        results: list[Committed | Failure],
    ) -> None:
        """
        The incidents created of the requests that keep samples, as samples
        of their instances; then each of those instances' SAMPLE_COUNT most
        recent only.  Statements per instance, not per incident.
        """
        kept: dict[str, list[int]] = {}
        for (request, _, keep, _), committed in zip(batch, results, strict=True):
            if keep and isinstance(committed, Committed):
                created = [int(s.id) for s in committed.incidents if not s.duplicate]
                if created:
                    kept.setdefault(request.instance, []).extend(
                        created[-SAMPLE_COUNT:]
                    )
        for instance, ids in kept.items():
            newest = ids[-SAMPLE_COUNT:]
            cursor.execute(_insert(_INSERT_SAMPLES, 1, len(newest)), newest)
            cursor.execute(_TRIM_SAMPLES, (instance, instance, SAMPLE_COUNT))

    def _unavailable(self, failure: Failure) -> Failure:
        # The database's ways of saying "not now": the request may succeed
        # once the fault clears.  Programming and integrity errors are bugs
        # and stay what they are.
        error = failure.value
        if error is not None and self._is_fault(error):
            raise StoreUnavailable(str(error)) from error
        return failure
