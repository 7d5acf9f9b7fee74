"""
Store faults under a running ``twistd gwebhook``, each made for real: a file
size limit on the daemon's process (the disk is full), a second process
holding SQLite's write lock past the daemon's 5 s busy timeout, the store
file renamed away, a store the daemon's user may not write, and SIGKILL in
the middle of a load.  Through each the daemon answers 503 with Retry-After
and a JSON reason, acknowledges nothing it did not keep, logs the fault once,
and serves again once the fault is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import pwd
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from support.credentials import AUTH, HEADERS
from support.daemon import TWISTD, Processes, log_lines
from support.http import https, send
from support.store import assert_no_half_requests, incidents_by_id, row_counts

from gwebhook.schema import create_or_upgrade

# Every test here starts twistd.
pytestmark = pytest.mark.process

UNAVAILABLE = "incident store unavailable; retry later"


def post(d, *names: str, timeout: float = 15):
    body = [{"name": n} for n in names]
    return send(d, json.dumps(body).encode(), HEADERS, timeout=timeout)


def assert_unavailable(reply) -> None:
    """503, Retry-After and the JSON reason."""
    assert reply.status == 503, (reply.status, reply.body)
    assert reply.headers["retry-after"] == "5"
    assert reply.json() == {"error": UNAVAILABLE}


def health(d) -> int:
    return send(d, None, method="GET", path="/healthz").status


def acknowledge(reply, acknowledged: dict[int, str]) -> None:
    acknowledged.update((int(i["id"]), i["name"]) for i in reply.json())


def assert_kept(d, acknowledged: dict[int, str]) -> None:
    """Every acknowledged incident is stored under its id; no request is half stored."""
    stored = incidents_by_id(d.db)
    assert {i: stored.get(i) for i in acknowledged} == acknowledged
    assert_no_half_requests(d.db)


# -- disk full ---------------------------------------------------------------


def ignores_sigxfsz(pid: int) -> bool:
    """Whether SIGXFSZ is ignored by ``pid`` (Python ignores it at start-up)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGXFSZ - 1) & 1)
    return False


def test_disk_full_answers_503_logs_once_and_recovers_without_restart(spawn):
    """
    When the store cannot grow, webhooks get 503 and healthz 503, the fault is
    logged once, and once it can grow healthz and webhooks get 200 again.
    """
    d = spawn(*AUTH)
    pid = d.process.pid
    # Writing past RLIMIT_FSIZE raises SIGXFSZ, which would kill the daemon
    # unless ignored: Python ignores it, so write() fails with EFBIG instead.
    assert ignores_sigxfsz(pid)
    acknowledged: dict[int, str] = {}
    for n in range(2):
        reply = post(d, f"before-{n}")
        assert reply.status == 200
        acknowledge(reply, acknowledged)

    # Room for a few more commits (the WAL grows by a few pages each), then full.
    wal = d.db.with_name(d.db.name + "-wal")
    limit = max(f.stat().st_size for f in (d.db, wal, d.log)) + 65536
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        statuses, committed = [], wal.stat().st_size
        for n in range(40):
            reply = post(d, *[f"full-{n}-{k}" for k in range(5)])
            statuses.append(reply.status)
            if reply.status != 200:
                break
            acknowledge(reply, acknowledged)
            committed = wal.stat().st_size
        assert_unavailable(reply)
        assert statuses.count(200) >= 1, statuses
        # Now entirely full: not a page more, not even the health check's.
        resource.prlimit(
            pid, resource.RLIMIT_FSIZE, (committed, resource.RLIM_INFINITY)
        )
        for n in range(5):
            assert_unavailable(post(d, f"still-full-{n}"))
        assert health(d) == 503
    finally:
        resource.prlimit(
            pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
    assert d.process.poll() is None

    assert health(d) == 200
    reply = post(d, "after")
    assert reply.status == 200, reply.body
    acknowledge(reply, acknowledged)
    [fault] = log_lines(d, "store unavailable, answering 503")
    assert "disk I/O error" in fault or "full" in fault, fault
    assert len(log_lines(d, "store available again")) == 1
    assert_kept(d, acknowledged)
    names = set(incidents_by_id(d.db).values())
    assert not any(n.startswith("still-full") for n in names)


# -- locked ------------------------------------------------------------------


@pytest.mark.slow
def test_store_locked_past_busy_timeout_answers_503_then_recovers(spawn):
    """
    A write lock held by another process past 5 s gets 503; released, the next
    request is stored.
    """
    d = spawn(*AUTH)
    assert post(d, "before").status == 200
    holder = sqlite3.connect(d.db, isolation_level=None, timeout=1)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        reply = post(d, "while locked", timeout=15)
        waited = time.monotonic() - started
        assert_unavailable(reply)
        assert 4.5 <= waited < 7, waited
    finally:
        holder.rollback()
        holder.close()
    reply = post(d, "after")
    assert reply.status == 200
    [fault] = log_lines(d, "store unavailable, answering 503")
    assert "locked" in fault, fault
    assert set(incidents_by_id(d.db).values()) == {"before", "after"}


# -- removed or replaced -----------------------------------------------------


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_store_file_gone_answers_503_until_put_back_and_ids_continue(spawn, how):
    """
    A store file renamed away (or replaced by another file) gets 503 until the
    original is back.
    """
    d = spawn(*AUTH)
    first = post(d, "before")
    assert first.status == 200
    [before] = first.json()
    away = d.db.with_name("moved-away.sqlite")
    os.rename(d.db, away)
    if how == "replaced":
        shutil.copyfile(away, d.db)  # same content, another file
    try:
        assert_unavailable(post(d, "while gone"))
        assert_unavailable(post(d, "still gone"))
        assert health(d) == 503
    finally:
        os.replace(away, d.db)
    reply = post(d, "after")
    assert reply.status == 200
    [after] = reply.json()
    assert int(after["id"]) > int(before["id"])
    [fault] = log_lines(d, "store unavailable, answering 503")
    assert "removed or replaced" in fault
    assert health(d) == 200
    assert incidents_by_id(d.db) == {
        int(before["id"]): "before",
        int(after["id"]): "after",
    }


# -- read-only ---------------------------------------------------------------
# chmod does not stop root, so these daemons run as ``nobody`` (setpriv), in a
# directory nobody owns (SQLite makes its -wal and -shm files there), over a
# store whose owner the test changes.  A file already open for writing stays
# writable whatever its mode becomes, so a store can only turn read-only for
# the daemon before it opens it: at start-up, or before its first write (the
# store's connection is opened on first use).


def unprivileged_user() -> tuple[int, int] | None:
    """(uid, gid) of ``nobody`` when the daemon can be run as it here."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        return None
    probe = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
         "--clear-groups", TWISTD, "gwebhook", "--help"],
        capture_output=True,
        timeout=30,
        cwd="/",
    )  # fmt: skip
    return (user.pw_uid, user.pw_gid) if probe.returncode == 0 else None


class AsNobody:
    """Start daemons as ``nobody`` over a store in a directory nobody owns."""

    def __init__(self, pki, started: Processes, directory: Path, ids) -> None:
        self.uid, self.gid = ids
        self.started = started
        self.directory = directory
        self.db = directory / "gwebhook.sqlite"
        # The daemon reads its pair from here: pytest's directories are root's.
        self.pki = dataclasses.replace(
            pki, cert=directory / "server.crt", key=directory / "server.key"
        )
        shutil.copyfile(pki.cert, self.pki.cert)
        shutil.copyfile(pki.key, self.pki.key)
        os.chown(self.pki.key, self.uid, self.gid)
        os.chmod(self.pki.key, 0o600)
        create_or_upgrade(str(self.db))
        os.chown(directory, self.uid, self.gid)

    def own_store(self, by_nobody: bool) -> None:
        """Make the store nobody's (writable by it) or root's (read-only to it)."""
        owner = (self.uid, self.gid) if by_nobody else (0, 0)
        os.chown(self.db, *owner)
        os.chmod(self.db, 0o644)

    def spawn(self, start: bool = True):
        wrapper = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                   "--clear-groups"]  # fmt: skip
        return self.started(*AUTH, wrapper=wrapper, pki=self.pki, start=start)


@pytest.fixture
def as_nobody(pki):
    """Skipped where the daemon cannot be run as ``nobody``."""
    ids = unprivileged_user()
    if ids is None:
        pytest.skip("needs root, setpriv and a 'nobody' user able to run twistd")
    directory = Path(tempfile.mkdtemp(prefix="gwebhook-ro-", dir="/tmp"))
    os.chmod(directory, 0o755)  # noqa: S103 - nobody must reach it
    try:
        with Processes(directory, pki) as started:
            yield AsNobody(pki, started, directory, ids)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_store_the_daemon_cannot_write_is_refused_at_start_up(as_nobody):
    """
    A store its user may read but not write stops the daemon at start-up with
    one line naming --db.
    """
    as_nobody.own_store(by_nobody=False)
    d = as_nobody.spawn(start=False)
    assert d.wait(30) == 1
    last = [line for line in d.output().splitlines() if line.strip()][-1]
    assert "--db" in last and "Permission denied" in last, last
    assert "Traceback" not in d.output()


def test_store_turned_read_only_before_first_write_answers_503(as_nobody):
    """
    A store that turned read-only to the daemon before its first write gets
    503 with Retry-After, healthz 503, one log line, and nothing stored.
    """
    as_nobody.own_store(by_nobody=True)
    d = as_nobody.spawn()
    as_nobody.own_store(by_nobody=False)
    for n in range(3):
        assert_unavailable(post(d, f"read-only-{n}"))
    assert health(d) == 503
    [fault] = log_lines(d, "store unavailable, answering 503")
    assert "readonly" in fault, fault
    assert row_counts(d.db) == {"requests": 0, "incidents": 0}


def test_store_writable_again_is_used_without_restart(as_nobody):
    """
    A store that turned read-only to the running daemon gets 503 with
    Retry-After, healthz 503, and keeps nothing; once writable again, the same
    process stores webhooks and healthz is 200, each change logged once.
    """
    as_nobody.own_store(by_nobody=True)
    d = as_nobody.spawn()
    pid = d.process.pid
    as_nobody.own_store(by_nobody=False)
    for n in range(3):
        assert_unavailable(post(d, f"read-only-{n}"))
    assert health(d) == 503
    # The store is read here only at the end: SQLite run as root gives the
    # -wal and -shm files it opens to the store file's owner, root until now.
    as_nobody.own_store(by_nobody=True)
    reply = post(d, "writable again")
    assert reply.status == 200, reply.body
    [stored] = reply.json()
    assert health(d) == 200
    assert d.process.poll() is None and d.process.pid == pid  # no restart
    # Nothing of the three refused requests, whole or in part.
    assert row_counts(d.db) == {"requests": 1, "incidents": 1}
    assert incidents_by_id(d.db) == {int(stored["id"]): "writable again"}
    [fault] = log_lines(d, "store unavailable, answering 503")
    assert "readonly" in fault, fault
    assert len(log_lines(d, "store available again")) == 1


# -- crash consistency -------------------------------------------------------


class ArraySender(threading.Thread):
    """
    Posts arrays of 1-20 uniquely named incidents on one keep-alive
    connection until the daemon goes away; ``acknowledged`` maps the id of
    every incident answered 200 to its name.
    """

    def __init__(self, d, tag: str) -> None:
        super().__init__(name=tag, daemon=True)
        self.d = d
        self.tag = tag
        self.random = random.Random(tag)
        self.acknowledged: dict[int, str] = {}
        self.mismatches: list[tuple[list[str], bytes]] = []

    def run(self) -> None:
        connection = https(self.d, timeout=10)
        try:
            for sent in range(100_000):
                names = [
                    f"{self.tag}-q{sent}-e{k}"
                    for k in range(self.random.randint(1, 20))
                ]
                body = json.dumps([{"name": n, "rawJson": {"n": n}} for n in names])
                connection.request("POST", "/", body.encode(), HEADERS)
                reply = connection.getresponse()
                answer = reply.read()
                if reply.status != 200:
                    continue
                incidents = json.loads(answer)
                if [i["name"] for i in incidents] != names:
                    self.mismatches.append((names, answer))
                self.acknowledged.update((int(i["id"]), i["name"]) for i in incidents)
        except (OSError, http.client.HTTPException):
            return  # the daemon was killed
        finally:
            connection.close()


@pytest.mark.slow
def test_repeated_sigkill_under_load_loses_no_acknowledged_incident(spawn):
    """
    Five times, SIGKILL during a second of load from six senders: the store
    opens again, keeps every acknowledged incident under its id, and holds
    no request in part.
    """
    d = spawn(*AUTH)
    acknowledged: dict[int, str] = {}
    for round_ in range(5):
        senders = [ArraySender(d, f"k{round_}-s{n}") for n in range(6)]
        for s in senders:
            s.start()
        time.sleep(1.0)
        d.process.kill()
        d.process.wait(10)
        for s in senders:
            s.join(15)
        assert not any(s.is_alive() for s in senders), "a sender did not stop"
        assert not any(s.mismatches for s in senders)
        this_round = {i: n for s in senders for i, n in s.acknowledged.items()}
        assert this_round, f"round {round_}: nothing was acknowledged"
        assert not set(this_round) & set(acknowledged), "an id was reused"
        acknowledged.update(this_round)
        d.start()  # the store must open again
        assert_kept(d, acknowledged)
    assert d.request(method="GET", path="/healthz", body=None).status == 200
    with contextlib.closing(sqlite3.connect(d.db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
