"""
When a forwarder looks at its queue, in-process: a real SQLite store, a
``Forwarder`` on the reactor and a receiver of the test's own
(tests/support/receiver.py) over HTTP.  Commits wake a forwarder whose
queue was empty, but not one waiting for a batch's next attempt; and a
steady stream of commits goes out in batches of what arrived meanwhile, not
in one request per commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from support.receiver import Receiver, Reply
from twisted.internet import reactor, task

from gwebhook import forward
from gwebhook.config import parse_config
from gwebhook.forward import LINGER, Forwarder
from gwebhook.metrics import Metrics
from gwebhook.model import IncidentDraft, ReceivedRequest
from gwebhook.store import SQLiteStore
from gwebhook.store import deliveries as queue

FORWARD = "central"
REQUEST = ReceivedRequest(
    "2026-01-01T00:00:00Z", "127.0.0.1", "POST", "/", {}, b"{}", "default", None
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(None) as r:
        yield r


class Forwarding:
    """A store, its forwarder to ``receiver``, and when the forwarder took."""

    def __init__(self, tmp_path: Path, receiver: Receiver, batch: int) -> None:
        document = {
            "forward": [{"name": FORWARD, "url": receiver.url(), "batch": batch}]
        }
        [config] = parse_config(document, str(tmp_path / "gw.toml"), {}).forwards
        self.store = SQLiteStore(str(tmp_path / "store.sqlite"))
        self.store.forward_routes = ((FORWARD, None),)
        self.takes: list[float] = []
        write = self.store.write

        def counted(work, *args):
            if work is queue.take:
                self.takes.append(time.monotonic())
            return write(work, *args)

        self.store.write = counted  # type: ignore[method-assign]
        self.forwarder = Forwarder(config, self.store, reactor, Metrics(), "test")
        self.number = 0

    async def add(self) -> None:
        """One incident, in a commit of its own."""
        self.number += 1
        draft = IncidentDraft(
            f"incident {self.number}", "Test", "2026-01-01T00:00:00Z", {}, {}
        )
        await self.store.add(REQUEST, [draft])

    async def stop(self) -> None:
        await self.forwarder.stopService()
        self.store.close()


def names(receiver: Receiver) -> list[str]:
    sent = []
    for request in receiver.requests:
        document = request.json()
        sent += [
            e["name"] for e in (document if isinstance(document, list) else [document])
        ]
    return sent


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_commits_do_not_wake_a_forwarder_waiting_to_retry(tmp_path, receiver):
    """
    While a batch waits for its next attempt (Retry-After: 5, room enough
    for the commits on a busy machine), commits queue more but make the
    forwarder take nothing (each take is a write transaction); at the
    attempt the batch goes again, then the rest, in order.
    """
    receiver.answer(Reply(503, {"Retry-After": "5"}))
    forwarding = Forwarding(tmp_path, receiver, batch=100)
    forwarding.forwarder.startService()
    try:
        await forwarding.add()
        await until(lambda: len(receiver.requests) == 1)
        await sleep(0.2)
        before = len(forwarding.takes)
        for _ in range(30):
            await forwarding.add()
            await sleep(0.02)
        assert len(forwarding.takes) == before
        await until(lambda: len(names(receiver)) == 32)
        assert names(receiver) == [f"incident {i}" for i in [1, 1, *range(2, 32)]]
    finally:
        await forwarding.stop()


@pytest_twisted.ensureDeferred
async def test_a_stream_of_commits_goes_in_batches_not_a_request_each(
    tmp_path, receiver, monkeypatch
):
    """
    100 commits of one incident, 10 ms apart, reach the receiver whole and
    in order in far fewer requests than commits: after a batch that was not
    full the forwarder lets the queue fill for LINGER before the next.  A
    lone incident to an idle forwarder goes at once: with the idle poll
    longer than the test's patience, only the commit's wake can send it.
    """
    monkeypatch.setattr(forward, "IDLE_POLL", 600.0)
    forwarding = Forwarding(tmp_path, receiver, batch=100)
    forwarding.forwarder.startService()
    try:
        await until(lambda: len(forwarding.takes) == 1)
        await sleep(0.2)  # idle: the queue was found empty
        await forwarding.add()
        await until(lambda: len(receiver.requests) == 1)
        started = time.monotonic()
        for _ in range(99):
            await forwarding.add()
            await sleep(0.01)
        await until(lambda: len(names(receiver)) == 100)
        elapsed = time.monotonic() - started
        assert names(receiver) == [f"incident {i}" for i in range(1, 101)]
        # At most one request per LINGER (and one more) over however long
        # the commits took (~1-2 s on a quiet machine); one per commit
        # without it.  Bounded by the time it took, not by a guess of it.
        assert len(receiver.requests) <= 2 + elapsed / LINGER, (
            len(receiver.requests),
            elapsed,
        )
    finally:
        await forwarding.stop()
