"""
The incident store through a store that turns read-only and back, made so for
real: the immutable flag (``chattr +i``, which stops root too) on the store
file or its directory, or its own file system remounted read-only.  A write
through a descriptor already open then fails, and a file opened then is opened
read-only.  The store refuses commits meanwhile, keeps nothing of them, and
takes commits again once it may write, without being made anew; a running
``twistd gwebhook`` answers 503 meanwhile and 200 after, without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from gwebhook.model import IncidentDraft, ReceivedRequest
from gwebhook.store import SQLiteStore, StoreUnavailable

REQUEST = ReceivedRequest(
    "2026-01-01T00:00:00Z", "127.0.0.1", "POST", "/", {}, b"{}", "default", None
)


def draft(name: str) -> IncidentDraft:
    return IncidentDraft(name, "Unclassified", "2026-01-01T00:00:00Z", {}, {})


def chattr(flag: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chattr", flag, *map(str, paths)], capture_output=True, text=True, timeout=10
    )


class Immutable:
    """Sets and clears the immutable flag; clears every one it set at teardown."""

    def __init__(self) -> None:
        self.flagged: set[Path] = set()

    def set(self, *paths: Path) -> None:
        result = chattr("+i", *paths)
        assert result.returncode == 0, result.stderr
        self.flagged.update(paths)

    def clear(self, *paths: Path) -> None:
        result = chattr("-i", *paths)
        assert result.returncode == 0, result.stderr
        self.flagged.difference_update(paths)


@pytest.fixture
def immutable(tmp_path):
    """Skipped where the immutable flag cannot be set on files in ``tmp_path``."""
    probe = tmp_path / "probe"
    probe.touch()
    if shutil.which("chattr") is None or chattr("+i", probe).returncode != 0:
        pytest.skip("needs chattr +i: root, on a file system with the flag")
    chattr("-i", probe)
    flags = Immutable()
    yield flags
    if flags.flagged:
        chattr("-i", *flags.flagged)


@pytest.fixture
def store(tmp_path, immutable):
    s = SQLiteStore(str(tmp_path / "store.sqlite"))
    yield s
    s.close()


def names(store: SQLiteStore) -> list[str]:
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return [n for (n,) in db.execute("SELECT name FROM incidents ORDER BY id")]


def requests(store: SQLiteStore) -> int:
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return db.execute("SELECT count(*) FROM requests").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_a_store_read_only_when_first_used_takes_commits_once_writable(
    store, immutable
):
    """
    A store file that could not be written when the store first used it (so
    SQLite opened it read-only) is written once it can be: commits and the
    write probe fail meanwhile, and nothing of them is kept.
    """
    db = Path(store.path)
    immutable.set(db)
    for n in range(3):
        with pytest.raises(StoreUnavailable, match="readonly"):
            await store.add(REQUEST, [draft(f"refused {n}")])
    with pytest.raises(StoreUnavailable, match="readonly"):
        await store.ping(write=True)
    immutable.clear(db)
    await store.ping(write=True)
    [stored] = (await store.add(REQUEST, [draft("writable again")])).incidents
    assert stored.id == "1"
    assert names(store) == ["writable again"]
    assert requests(store) == 1


@pytest_twisted.ensureDeferred
async def test_a_store_read_only_after_commits_takes_commits_once_writable(
    store, immutable
):
    """
    A store file and its write-ahead log turned read-only after the store has
    committed: commits fail and keep nothing; once writable, they succeed and
    ids go on from the last acknowledged one.
    """
    [before] = (await store.add(REQUEST, [draft("before")])).incidents
    db = Path(store.path)
    wal = Path(store.path + "-wal")
    immutable.set(db, wal)
    for n in range(3):
        with pytest.raises(StoreUnavailable):
            await store.add(REQUEST, [draft(f"refused {n}")])
    with pytest.raises(StoreUnavailable):
        await store.ping(write=True)
    immutable.clear(db, wal)
    [after] = (await store.add(REQUEST, [draft("after")])).incidents
    assert int(after.id) == int(before.id) + 1
    assert names(store) == ["before", "after"]
    assert requests(store) == 2


@pytest_twisted.ensureDeferred
async def test_a_refused_commit_lets_go_of_the_writer_lock(store, immutable):
    """A commit refused for a read-only store does not keep the writer lock."""
    immutable.set(Path(store.path))
    with pytest.raises(StoreUnavailable):
        await store.add(REQUEST, [draft("refused")])
    other = os.open(store.path + "-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
    finally:
        os.close(other)


@pytest_twisted.ensureDeferred
async def test_a_file_put_in_the_stores_place_is_refused_after_a_fault(
    store, immutable, tmp_path
):
    """
    After a read-only fault the store opens its file again, but never a file
    put in its place since: that is refused until the store's own is back.
    """
    db = Path(store.path)
    immutable.set(db)
    with pytest.raises(StoreUnavailable, match="readonly"):
        await store.add(REQUEST, [draft("refused")])
    immutable.clear(db)
    aside = tmp_path / "aside.sqlite"
    os.rename(db, aside)
    shutil.copyfile(aside, db)  # the same content, another file
    with pytest.raises(StoreUnavailable, match="removed or replaced"):
        await store.add(REQUEST, [draft("into the copy")])
    os.replace(aside, db)
    await store.add(REQUEST, [draft("after")])
    assert names(store) == ["after"]


@pytest.fixture
def tmpfs(tmp_path):
    """A file system of its own in ``tmp_path``; skipped where it cannot be mounted."""
    mount = tmp_path / "mount"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        timeout=10,
    )
    if made.returncode != 0:
        pytest.skip("needs to mount a tmpfs: root, with CAP_SYS_ADMIN")
    yield mount
    if subprocess.run(["umount", str(mount)], timeout=10).returncode != 0:
        subprocess.run(["umount", "--lazy", str(mount)], check=True, timeout=10)
        pytest.fail("a file on the test's file system was left open")


def remount(mount: Path, mode: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(mount)], check=True, timeout=10
    )


@pytest_twisted.ensureDeferred
async def test_a_store_whose_file_system_turned_read_only_takes_commits_once_writable(
    tmpfs,
):
    """
    A store on a file system remounted read-only before the store first wrote
    refuses commits and the write probe; once read-write again, it takes them.
    """
    store = SQLiteStore(str(tmpfs / "store.sqlite"))
    try:
        remount(tmpfs, "ro")
        with pytest.raises(StoreUnavailable):
            await store.add(REQUEST, [draft("refused")])
        with pytest.raises(StoreUnavailable):
            await store.ping(write=True)
        remount(tmpfs, "rw")
        await store.add(REQUEST, [draft("after")])
        await store.ping(write=True)
        assert names(store) == ["after"]
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_a_store_whose_directory_turned_read_only_takes_commits_once_writable(
    immutable, tmp_path
):
    """
    A store whose directory turned read-only (SQLite cannot make its -wal and
    -shm files there) before it first wrote refuses commits; once the
    directory is writable, it takes them.
    """
    directory = tmp_path / "store"
    directory.mkdir()
    store = SQLiteStore(str(directory / "store.sqlite"))
    try:
        immutable.set(directory)
        with pytest.raises(StoreUnavailable):
            await store.add(REQUEST, [draft("refused")])
        immutable.clear(directory)
        await store.add(REQUEST, [draft("after")])
        assert names(store) == ["after"]
    finally:
        store.close()


# -- a running daemon ---------------------------------------------------------

USERNAME, PASSWORD = "admin", "pw"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()


def post(d, name: str):
    body = json.dumps([{"name": name}]).encode()
    return d.request(body=body, headers={"Authorization": AUTHORIZATION})


def log_lines(d, containing: str) -> list[str]:
    return [line for line in d.log.read_text().splitlines() if containing in line]


def stored(db: Path) -> tuple[dict[int, str], int]:
    """The incidents' names by id, and how many requests there are."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        incidents = dict(c.execute("SELECT id, name FROM incidents"))
        return incidents, c.execute("SELECT count(*) FROM requests").fetchone()[0]


def test_a_daemon_whose_store_turns_read_only_answers_503_then_200(spawn, immutable):
    """
    The store file and its write-ahead log turned read-only under a daemon
    that has written: webhooks get 503 with Retry-After and healthz 503, and
    nothing of them is kept; once writable, the same process stores webhooks
    and healthz is 200 again, each change logged once.
    """
    d = spawn("--username", USERNAME, "--password", PASSWORD)
    pid = d.process.pid
    first = post(d, "before")
    assert first.status == 200, first.body
    [before] = first.json()
    files = (d.db, d.db.with_name(d.db.name + "-wal"))
    immutable.set(*files)
    for n in range(3):
        reply = post(d, f"refused {n}")
        assert reply.status == 503, (reply.status, reply.body)
        assert reply.headers["retry-after"] == "5"
    assert d.request(method="GET", path="/healthz", body=None).status == 503
    immutable.clear(*files)
    reply = post(d, "after")
    assert reply.status == 200, reply.body
    [after] = reply.json()
    assert d.request(method="GET", path="/healthz", body=None).status == 200
    assert d.process.poll() is None and d.process.pid == pid  # no restart
    assert stored(d.db) == ({int(before["id"]): "before", int(after["id"]): "after"}, 2)
    [fault] = log_lines(d, "store unavailable, answering 503")
    assert "disk I/O error" in fault, fault
    assert len(log_lines(d, "store available again")) == 1
