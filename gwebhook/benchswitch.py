"""
For the benchmark only: ``GWEBHOOK_BENCH_DISCARD=1`` replaces the store with
one that answers as if it had committed and keeps nothing, to measure what
storage costs.  Not an option on purpose: nobody should find it in --help.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from datetime import datetime, timezone

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gwebhook.model import IncidentDraft, ReceivedRequest, StoredIncident
from gwebhook.store import IncidentStore
from gwebhook.timestamps import format_utc

ENVIRONMENT_SWITCH = "GWEBHOOK_BENCH_DISCARD"

log = Logger()


class DiscardingStore(IncidentStore):
    """Answers like the store, keeps nothing.  Benchmarks only."""

    def __init__(self, path: str, keep_samples: bool = False) -> None:
        super().__init__(path, keep_samples)
        self._ids = itertools.count(1)
        log.critical(
            "{switch}=1: incidents are NOT stored; this daemon is for benchmarks only",
            switch=ENVIRONMENT_SWITCH,
        )

    def add(
        self, request: ReceivedRequest, drafts: Sequence[IncidentDraft]
    ) -> Deferred[list[StoredIncident]]:
        created = format_utc(datetime.now(timezone.utc))
        return succeed(
            [
                StoredIncident(
                    str(next(self._ids)), d.name, d.type, d.occurred, created
                )
                for d in drafts
            ]
        )


def store_class(environ=None) -> type[IncidentStore]:
    """The store the daemon should use."""
    environ = os.environ if environ is None else environ
    return DiscardingStore if environ.get(ENVIRONMENT_SWITCH) == "1" else IncidentStore
