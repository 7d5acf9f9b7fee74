"""--workers N: one port served by several processes writing one store."""

import json
import os
import signal
import sqlite3
import time

import pytest
from support.credentials import HEADERS, PASSWORD, USERNAME, basic
from support.daemon import log_text, wait_for_log
from support.senders import run_senders
from support.wait import wait_for
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from gwebhook.logs import to_json
from gwebhook.workerpool import STABLE_AFTER_SECONDS, WorkerPool, _Worker, respawn_delay

AUTH = ("--username", USERNAME, "--password", PASSWORD, "--workers", "2")


def workers_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_both_processes_serve_and_every_acknowledged_incident_is_stored(daemon):
    """With two workers, both processes answer requests and nothing is lost."""
    d = daemon(*AUTH)
    wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    senders = run_senders(d, HEADERS, 6, then=lambda: None, after=2.0)
    acknowledged = [a for s in senders for a in s.acknowledged]
    assert len(acknowledged) > 50
    assert all(status == 200 for s in senders for status in s.statuses)
    # New connections, one after another, go to whichever process is free.
    for n in range(40):
        reply = d.request(body=b'{"name": "c%d"}' % n, headers=HEADERS)
        assert reply.status == 200
        acknowledged += [(int(i["id"]), i["name"]) for i in reply.json()]
    with sqlite3.connect(d.db) as db:
        stored = set(db.execute("SELECT id, name FROM incidents"))
    assert set(acknowledged) <= stored
    assert len({i for i, _ in acknowledged}) == len(acknowledged), (
        "an id was given twice"
    )
    log = wait_for_log(d, "worker 1: 127.0.0.1 POST / 200")
    served_by_main = [
        line
        for line in log.splitlines()
        if "POST / 200" in line and "worker 1:" not in line
    ]
    assert served_by_main, "the main process served nothing"


def test_a_worker_that_dies_is_replaced(daemon):
    """A worker killed outright is replaced and the port keeps being served."""
    d = daemon(*AUTH)
    [first] = wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    os.kill(first, signal.SIGKILL)
    [second] = wait_for(
        lambda: [w for w in workers_of(d.process.pid) if w != first],
        what="a new worker",
    )
    assert second != first
    wait_for_log(d, "worker 1 exited")
    for _ in range(10):
        assert d.request(body=b'{"name": "after"}', headers=HEADERS).status == 200


def test_a_sighup_while_a_worker_starts_is_a_reload_not_its_end(daemon):
    """
    The main process passes each SIGHUP on at once, also to a worker still
    starting (importing, reading its configuration): the worker reloads
    once it runs, and is not ended by the signal's default action.
    """
    d = daemon(*AUTH)
    [first] = wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    wait_for_log(d, "worker 1: gwebhook ready")
    os.kill(first, signal.SIGKILL)
    # Its replacement, signalled within milliseconds of being spawned.
    [second] = wait_for(
        lambda: [w for w in workers_of(d.process.pid) if w != first],
        what="a new worker",
    )
    os.kill(second, signal.SIGHUP)
    wait_for_log(d, "worker 1: gwebhook ready", 2)
    wait_for_log(d, "worker 1: certificate reloaded")
    time.sleep(0.5)
    assert alive(second)
    assert log_text(d).count("worker 1 exited") == 1


def test_sigterm_stops_every_worker(daemon):
    """SIGTERM to the main process stops the workers too, and it exits."""
    d = daemon(*AUTH)
    workers = wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    assert d.request(body=b'{"name": "x"}', headers=HEADERS).status == 200
    assert d.stop() == -signal.SIGTERM
    wait_for(lambda: not any(alive(w) for w in workers), what="the workers to exit")


def test_workers_do_not_outlive_a_killed_main_process(daemon):
    """When the main process is killed outright, its workers stop as well."""
    d = daemon(*AUTH)
    workers = wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    d.kill()
    wait_for(
        lambda: not any(alive(w) for w in workers), what="orphaned workers to exit"
    )


def test_the_password_is_not_on_any_command_line(daemon, tmp_path):
    """Workers get their configuration through the environment, not argv."""
    secret = "pw-" + os.urandom(6).hex()
    password_file = tmp_path / "password"
    password_file.write_text(secret)
    d = daemon(
        "--username", "admin", "--password-file", str(password_file), "--workers", "3"
    )
    workers = wait_for(
        lambda: len(workers_of(d.process.pid)) == 2 and workers_of(d.process.pid)
    )
    for pid in workers:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert secret.encode() not in f.read()
    time.sleep(0.5)
    assert d.request(body=b"{}", headers=basic("admin", secret)).status == 200


# The main process's side of a worker, without processes: the real _Worker
# and WorkerPool, with a Clock for the reactor.


class FakeProcess:
    """What spawnProcess returns: records the signals sent to it."""

    def __init__(self, protocol, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def exit(self, code: int = 1) -> None:
        self.protocol.processEnded(Failure(ProcessTerminated(exitCode=code)))


class FakeReactor(Clock):
    """A clock that records the workers it is asked to spawn."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        process = FakeProcess(protocol, 1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append(process)
        return process


class EndedPool:
    """Just enough of a WorkerPool for a _Worker: records that it ended."""

    def __init__(self) -> None:
        self.ended_with: list[tuple[int, object]] = []

    def ended(self, index: int, why) -> None:
        self.ended_with.append((index, why))


def worker_events(events) -> list:
    return [e for e in events if e.get("log_namespace") == "gwebhook.workerpool"]


def test_stderr_is_relayed_in_whole_lines():
    """A worker's stderr arrives as whole lines, however it is chunked."""
    worker = _Worker(EndedPool(), 1)
    text = b'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: b'
    with capturedLogs() as events:
        for i in range(0, len(text), 7):
            worker.errReceived(text[i : i + 7])
        worker.errReceived(b"oom\n")
        worker.errReceived(b"no newline at the end")
        worker.processEnded(Failure(ProcessDone(0)))
    lines = [e["line"] for e in worker_events(events)]
    assert lines == [
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "ValueError: boom",
        "no newline at the end",
    ]
    assert all(e["log_level"] == LogLevel.warn for e in worker_events(events))
    assert worker.pool.ended_with[0][0] == 1


ODD_LINES = [
    b'{"level": "info", "message": "m", "format": "{boom}"}',
    b'{"message": "m", "log_format": "{boom}", "log_level": "nope"}',
    b'{"message": "m", "level": "format", "log_failure": "x"}',
    b'{"level": 5, "message": "m"}',
    b'{"level": ["info"], "message": "m"}',
    b'{"message": {"nested": true}, "worker": "w", "worker_message": "x"}',
    b'{"a-b": 1, "": 2, "log_namespace": 3, "time": [1], "traceback": {}}',
    b"[1, 2, 3]",
    b'"just a string"',
    b"null",
    b"{not json",
    b"\xff\xfe invalid utf-8",
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("line", ODD_LINES)
def test_any_stdout_line_is_relayed_without_raising(line):
    """Every line a worker writes becomes one event that both observers can render."""
    worker = _Worker(EndedPool(), 1)
    with capturedLogs() as events:
        worker.outReceived(line[:5])
        worker.outReceived(line[5:] + b"\n")
    [event] = worker_events(events)
    assert formatEvent(event).startswith("worker 1: ")
    assert "Unable to format" not in formatEvent(event)
    assert json.loads(to_json(event))["worker"] == 1
    assert event["log_level"] in LogLevel.iterconstants()


def test_a_record_keeps_its_level_message_and_scalar_fields():
    """A JSON record is relayed at its level with its message and scalar fields."""
    worker = _Worker(EndedPool(), 2)
    record = {
        "time": "t",
        "level": "warn",
        "namespace": "gwebhook.x",
        "message": "refused",
        "client": "127.0.0.1",
        "status": 401,
        "format": "{client}",
        "log_format": "{client}",
        "details": {"a": 1},
        "traceback": "Traceback ...",
    }
    with capturedLogs() as events:
        worker.outReceived(json.dumps(record).encode() + b"\n")
    [event] = worker_events(events)
    assert event["log_level"] == LogLevel.warn
    assert formatEvent(event) == "worker 2: refused"
    assert (event["client"], event["status"]) == ("127.0.0.1", 401)
    assert event["worker_traceback"] == "Traceback ..."
    assert "details" not in event and "format" not in event


def test_a_partial_last_line_is_relayed_when_the_worker_ends():
    """Output without a final newline is relayed when the worker exits."""
    worker = _Worker(EndedPool(), 1)
    with capturedLogs() as events:
        worker.outReceived(b'{"message": "last words"}')
        assert worker_events(events) == []
        worker.processEnded(Failure(ProcessDone(0)))
    assert [formatEvent(e) for e in worker_events(events)] == ["worker 1: last words"]


def test_respawn_delay_doubles_up_to_a_minute_and_resets_after_a_stable_run():
    """The wait before a replacement doubles to 60 s, and is 1 s after 30 s up."""
    delays, previous = [], None
    for _ in range(9):
        previous = respawn_delay(previous, uptime=0.5)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert respawn_delay(60, uptime=30) == 1
    assert respawn_delay(None, uptime=0) == 1


def pool(count: int) -> tuple[WorkerPool, FakeReactor]:
    reactor = FakeReactor()
    workers = WorkerPool(count, ["--port", "0"], None, 10.0, reactor)
    workers.startService()
    return workers, reactor


def fired(d):
    """The result of a Deferred that has fired already."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def pending(reactor: Clock) -> list[float]:
    return [call.getTime() - reactor.seconds() for call in reactor.getDelayedCalls()]


def test_a_worker_that_keeps_crashing_is_respawned_ever_more_slowly():
    """Crash after crash, the respawn waits 1, 2, 4 ... 60 s; 30 s up resets it."""
    workers, reactor = pool(1)
    with capturedLogs():
        for delay in [1, 2, 4, 8, 16, 32, 60, 60]:
            reactor.spawned[-1].exit()
            assert pending(reactor) == [pytest.approx(delay)]
            spawned = len(reactor.spawned)
            reactor.advance(delay - 0.01)
            assert len(reactor.spawned) == spawned
            reactor.advance(0.01)
            assert len(reactor.spawned) == spawned + 1
        reactor.advance(STABLE_AFTER_SECONDS)
        reactor.spawned[-1].exit()
    assert pending(reactor) == [pytest.approx(1)]
    workers.stopService()


def test_stopping_cancels_a_pending_respawn():
    """stopService leaves no respawn timer behind, and nothing is spawned later."""
    workers, reactor = pool(2)
    first, second = reactor.spawned
    with capturedLogs():
        first.exit()
    assert pending(reactor) == [pytest.approx(1)]
    stopped = workers.stopService()
    assert second.signals == ["TERM"]
    with capturedLogs():
        second.exit(0)
    assert fired(stopped) is None
    assert reactor.getDelayedCalls() == []
    reactor.advance(3600)
    assert len(reactor.spawned) == 2


def test_stopping_with_only_a_respawn_pending_cancels_it():
    """With every worker gone and one respawn pending, stopService ends at once."""
    workers, reactor = pool(1)
    with capturedLogs():
        reactor.spawned[0].exit()
    assert fired(workers.stopService()) is None
    assert reactor.getDelayedCalls() == []


def test_a_message_with_braces_is_relayed_as_written():
    """A worker's message is text, not a format: braces in a path stay braces."""
    worker = _Worker(EndedPool(), 3)
    message = "127.0.0.1 POST /{x}/{{y}} 404 id=1"
    with capturedLogs() as events:
        worker.outReceived(json.dumps({"message": message}).encode() + b"\n")
    [event] = worker_events(events)
    assert formatEvent(event) == f"worker 3: {message}"
    assert json.loads(to_json(event))["message"] == f"worker 3: {message}"


def cpus_of_threads(pid: int) -> set[str]:
    """The Cpus_allowed_list of every thread of ``pid``."""
    lists = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    lists.add(line.split()[1])
    return lists


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pin_cpus_puts_each_process_and_all_its_threads_on_its_own_cpu(daemon):
    """--pin-cpus: the main process on the first CPU, the worker on the next."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    d = daemon(*AUTH, "--pin-cpus")
    [worker] = wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    wait_for_log(d, "worker 1: gwebhook ready")
    # Both serve (their store threads started): every thread is pinned.
    for n in range(40):
        assert d.request(body=b'{"name": "p%d"}' % n, headers=HEADERS).status == 200
    wait_for_log(d, "worker 1: 127.0.0.1 POST / 200")
    assert cpus_of_threads(d.process.pid) == {str(first)}
    assert cpus_of_threads(worker) == {str(second)}
    wait_for_log(d, f"pinned to CPU {first}")


def test_without_pin_cpus_nothing_is_pinned(daemon):
    d = daemon(*AUTH)
    [worker] = wait_for(lambda: workers_of(d.process.pid), what="a worker process")
    mine = sorted(os.sched_getaffinity(0))
    assert len(os.sched_getaffinity(d.process.pid)) == len(mine)
    assert len(os.sched_getaffinity(worker)) == len(mine)
