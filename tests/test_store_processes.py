"""
Two processes writing one store, each through its own SQLiteStore and
reactor, as the processes of ``--workers N`` do.  Run as a script, this file
is one such writer, driven by lines on its standard input.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a writer waiting for the other may lose once the other commits: its own
# commit, not one of SQLite's busy-handler sleeps (which reach 100 ms).
PROMPT_SECONDS = 0.05
# How long the first writer keeps its transaction open before committing.
# SQLite's busy handler would retry the second writer 228 ms and 328 ms after
# it started waiting: a release in between would leave it asleep ~80 ms.
HOLD_SECONDS = 0.25


# -- the writer (run as a script) --------------------------------------------


def writer(db: str) -> None:
    """
    Serve commands from stdin, one per line, answering on stdout:

    - ``add NAME COUNT``: store one request of COUNT incidents; answer
      ``stored MONOTONIC-TIME ID,ID,...`` once it is committed;
    - ``hold SECONDS``: store one request whose transaction stays open that
      long, answering ``holding`` once it is open and ``stored ...`` as above.
    """
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from gwebhook.model import IncidentDraft, ReceivedRequest
    from gwebhook.store import SQLiteStore

    class HoldingStore(SQLiteStore):
        """A store whose next transaction waits, open, before its commit."""

        hold = 0.0

        def _check_file(self) -> None:
            super()._check_file()
            if self.hold:
                hold, self.hold = self.hold, 0.0
                reactor.callFromThread(commands.say, "holding")
                time.sleep(hold)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def say(self, line: str) -> None:
            self.transport.write(line.encode("ascii") + b"\n")

        def lineReceived(self, line: bytes) -> None:
            verb, *args = line.decode("ascii").split()
            if verb == "add":
                self.add(args[0], int(args[1]))
            elif verb == "hold":
                store.hold = float(args[0])
                self.add("held", 1)

        def add(self, name: str, count: int) -> None:
            request = ReceivedRequest(
                "2026-01-01T00:00:00Z", "127.0.0.1", "POST", "/", {}, b"[]", "w", None
            )
            drafts = [
                IncidentDraft(f"{name}-{i}", "T", "2026-01-01T00:00:00Z", {"i": i}, {})
                for i in range(count)
            ]
            d = store.add(request, drafts, keep_samples=False)
            d.addCallback(
                lambda stored: self.say(
                    f"stored {time.monotonic():.6f} "
                    + ",".join(f"{s.id}={s.name}" for s in stored.incidents)
                )
            )
            d.addErrback(lambda failure: self.say(f"failed {failure.value!r}"))

        def connectionLost(self, reason) -> None:
            store.close()
            reactor.stop()

    store = HoldingStore(db)
    commands = Commands()
    stdio.StandardIO(commands)
    reactor.run()


# -- the tests ----------------------------------------------------------------


class Writer:
    """One writer process, read line by line with deadlines."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self._buffer = b""

    def send(self, line: str) -> None:
        self.process.stdin.write(line.encode("ascii") + b"\n")
        self.process.stdin.flush()

    def line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no answer from writer {self.process.pid}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"writer {self.process.pid} exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("ascii")

    def stored(self, timeout: float = 10.0) -> tuple[float, dict[int, str]]:
        """The time of the next acknowledgement, and the ids it gave."""
        answer = self.line(timeout)
        verb, when, ids = answer.split(" ", 2)
        assert verb == "stored", answer
        pairs = (pair.split("=") for pair in ids.split(","))
        return float(when), {int(i): name for i, name in pairs}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process.stdout.close()


def start_writers(db: Path, count: int) -> list[Writer]:
    from gwebhook import schema

    schema.create_or_upgrade(str(db))
    return [Writer(db) for _ in range(count)]


def stored_rows(db: Path) -> dict[int, str]:
    import sqlite3

    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT id, name FROM incidents"))


def test_two_processes_store_everything_they_acknowledge(tmp_path):
    """Two processes adding at once: every acknowledged incident is stored once."""
    db = tmp_path / "shared.sqlite"
    writers = start_writers(db, 2)
    try:
        acknowledged: dict[int, str] = {}
        for burst in range(20):
            for n, w in enumerate(writers):
                for request in range(8):
                    w.send(f"add w{n}b{burst}r{request} 5")
            for w in writers:
                for _ in range(8):
                    _, ids = w.stored()
                    assert not ids.keys() & acknowledged.keys()
                    acknowledged.update(ids)
    finally:
        for w in writers:
            w.stop()
    assert len(acknowledged) == 2 * 20 * 8 * 5
    assert stored_rows(db) == acknowledged


def test_a_waiting_writer_commits_as_soon_as_the_other_is_done(tmp_path):
    """
    A process whose write waits for another's transaction commits within
    moments of the other's commit, not after one of SQLite's busy sleeps.
    """
    db = tmp_path / "shared.sqlite"
    first, second = start_writers(db, 2)
    try:
        late = []
        for _ in range(3):
            first.send(f"hold {HOLD_SECONDS}")
            assert first.line() == "holding"
            second.send("add waiting 1")
            released, held = first.stored()
            committed, waited = second.stored()
            assert max(held) < min(waited)
            late.append(committed - released)
    finally:
        first.stop()
        second.stop()
    assert sorted(late)[1] < PROMPT_SECONDS, late


if __name__ == "__main__":
    writer(sys.argv[1])
