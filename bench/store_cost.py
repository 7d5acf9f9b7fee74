"""
What the SQLite store's thread spends per request, in-process: the store's own
transaction (``_transaction`` around ``_insert_batch``, the code the daemon's
store thread runs) on a fresh file, for batches of several sizes, with the
thread's CPU time per request and per statement.  No reactor, no TLS: only
what a commit costs, alone on whatever core this runs on.

    taskset -c 0 bench/.venv/bin/python bench/store_cost.py
    taskset -c 0 bench/.venv/bin/python bench/store_cost.py --dedup --sizes 16
    taskset -c 0 bench/.venv/bin/python bench/store_cost.py --statements --sizes 1,16

Each request is bench/payloads/alert.json with an alertId of its own; with
``--dedup`` it is deduplicated as bench/instances/dedup.toml says (the
alertId, and a webhook-id header of its own), so every request is looked up
and remembered and none is a duplicate.  The file is made in a temporary
directory (``--dir`` to choose where: the disk decides what fdatasync costs).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from gwebhook import dedup, schema
from gwebhook.instances import command_line_instance
from gwebhook.model import ReceivedRequest
from gwebhook.payload import incidents_from, parse_json
from gwebhook.store.sqlite import SQLiteStore

ALERT = Path(__file__).with_name("payloads") / "alert.json"
RECEIVED = "2026-12-03T08:00:00Z"
HEADERS = {"content-type": "application/json", "user-agent": "wrk"}
DEDUP = dedup.DedupConfig(keys=("alertId",), header="webhook-id")


class _Timed:
    """A cursor that adds each statement's thread CPU time to ``spent``."""

    def __init__(self, cursor, spent: collections.Counter) -> None:
        self._cursor = cursor
        self._spent = spent

    def execute(self, sql, *args):
        return self._timed(self._cursor.execute, sql, *args)

    def executemany(self, sql, *args):
        return self._timed(self._cursor.executemany, sql, *args)

    def _timed(self, run, sql, *args):
        started = time.thread_time()
        try:
            return run(sql, *args)
        finally:
            self._spent[sql[:40]] += time.thread_time() - started

    def __getattr__(self, name):
        return getattr(self._cursor, name)


class _Connection:
    """What ``_transaction`` is given: a connection whose cursors may be timed."""

    def __init__(self, connection: sqlite3.Connection, spent) -> None:
        self._connection = connection
        self._spent = spent

    def cursor(self):
        cursor = self._connection.cursor()
        return cursor if self._spent is None else _Timed(cursor, self._spent)


def requests(deduplicated: bool):
    """Endless requests as the store gets them: (request, drafts, samples, ticket)."""
    alert = json.loads(ALERT.read_bytes())
    instance = command_line_instance(None, True, None, False)
    for n in itertools.count():
        alert["rawJson"]["alertId"] = f"store-cost-{n:012d}"
        body = json.dumps(alert).encode()
        drafts = incidents_from(parse_json(body), instance, RECEIVED)
        request = ReceivedRequest(
            received=RECEIVED,
            client="127.0.0.1",
            method="POST",
            path="/",
            headers=HEADERS,
            body=body,
            instance=instance.name,
            client_cert=None,
            x_request_id=f"{n:016x}",
        )
        ticket = None
        if deduplicated:
            header = [f"msg_{n:012d}".encode()]
            ticket = dedup.ticket(DEDUP, header, (d.details for d in drafts))
        yield request, drafts, False, ticket


def measure(path: str, size: int, count: int, deduplicated: bool, statements: bool):
    """CPU µs per request over ``count`` requests in batches of ``size``."""
    store = SQLiteStore(path)
    connection = sqlite3.connect(
        f"file:{path}?mode=rw",
        uri=True,
        check_same_thread=False,
        isolation_level="",
        cached_statements=256,
    )
    schema.configure(connection)
    spent: collections.Counter = collections.Counter()
    made = requests(deduplicated)
    try:
        # A warm-up, not counted: the statements prepared, the pages cached.
        warm = _Connection(connection, None)
        for _ in range(20):
            batch = [next(made) for _ in range(size)]
            store._transaction(warm, store._insert_batch, batch)
        timed = _Connection(connection, spent if statements else None)
        batches = max(1, count // size)
        total = 0.0
        for _ in range(batches):
            batch = [next(made) for _ in range(size)]
            started = time.thread_time()
            store._transaction(timed, store._insert_batch, batch)
            total += time.thread_time() - started
    finally:
        connection.close()
        store.close()
    done = batches * size
    return total / done * 1e6, {k: v / done * 1e6 for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--dedup", action="store_true")
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--dir", default=None)
    options = parser.parse_args()
    for size in (int(s) for s in options.sizes.split(",")):
        with tempfile.TemporaryDirectory(dir=options.dir) as directory:
            per_request, by_statement = measure(
                str(Path(directory) / "store.sqlite"),
                size,
                options.requests,
                options.dedup,
                options.statements,
            )
        print(f"{size:4d} requests per transaction: {per_request:7.1f} µs per request")
        for sql, cost in sorted(by_statement.items(), key=lambda kv: -kv[1]):
            print(f"        {cost:7.2f}  {sql}")


if __name__ == "__main__":
    main()
