"""
``twistd`` with the store disabled: the benchmark's scenario e only.

    python bench/discard_twistd.py -n --pidfile= gwebhook --port ... --db ...

takes exactly twistd's arguments and runs twistd's own entry point, after
one change: ``IncidentStore.add`` answers at once as if it had committed and
writes nothing (every element a new incident: no duplicates are looked for).  Everything else is as under twistd: the store file is still
prepared and opened at start-up, the routes, TLS, logging and shutdown are
untouched.  What the difference from scenario b measures is what storing
costs.  One critical line in the log says incidents are NOT stored.

The patch lives in this process only: gwebhook's ``--workers N`` starts
workers that would store normally, so bench.py never combines the two.
This is deliberately not part of gwebhook: a production daemon has no way to
drop what it acknowledges.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gwebhook import model
from gwebhook.model import IncidentDraft, ReceivedRequest, StoredIncident
from gwebhook.store import IncidentStore
from gwebhook.timestamps import format_utc

log = Logger(namespace="bench.discard_twistd")


def disable_store() -> None:
    """
    Make every ``IncidentStore`` answer without writing.  ``IncidentStore``
    is the class every store is (the SQLite store itself, or since the
    PostgreSQL backend the base class of both), so patching its ``add``
    reaches the store the daemon opens; its ``__init__`` still runs whole.
    """
    ids = itertools.count(1)
    original_init = IncidentStore.__init__
    # What add answers with: Committed (a request's incidents, new or
    # duplicates) since durable dedup, a plain list before.
    committed = getattr(model, "Committed", None)

    def __init__(self: IncidentStore, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)  # the file is prepared and opened
        # Once twistd's logging has begun: before that, Twisted also copies
        # critical events to stderr, and the line would appear twice.  Its
        # path is read then: a subclass sets it after this __init__.
        from twisted.internet import reactor

        reactor.callWhenRunning(
            lambda: log.critical(
                "bench/discard_twistd.py: incidents are NOT stored in {path}; "
                "this daemon is for benchmarks only",
                path=getattr(self, "path", None) or getattr(self, "target", "?"),
            )
        )

    def add(
        self: IncidentStore,
        request: ReceivedRequest,
        drafts: Sequence[IncidentDraft],
        keep_samples: bool = False,
        ticket: object = None,
    ) -> Deferred:
        created = format_utc(datetime.now(UTC))
        stored = [
            StoredIncident(
                id=str(next(ids)),
                name=d.name,
                type=d.type,
                occurred=d.occurred,
                created=created,
            )
            for d in drafts
        ]
        return succeed(committed(stored) if committed else stored)

    IncidentStore.__init__ = __init__
    IncidentStore.add = add


def main() -> None:
    disable_store()
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    sys.exit(run())


if __name__ == "__main__":
    main()
