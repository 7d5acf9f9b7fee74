"""--workers N: one port served by several processes writing one store."""

import os
import signal
import sqlite3
import time

from processes import basic, run_senders
from service_support import wait_for, wait_for_log

AUTH = ("--username", "admin", "--password", "pw", "--workers", "2")
HEADERS = basic("admin", "pw")


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
