"""
Progress of ``gwebhook export`` and ``gwebhook prune`` on large stores: the
real command, its standard error on a pseudo-terminal, shows a bar there;
piped, standard error stays empty; either way standard output is the same,
byte for byte.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import sqlite3
import struct
import subprocess
import termios
import threading
from contextlib import closing
from pathlib import Path

import pytest
from support.daemon import GWEBHOOK

from gwebhook import cli, retention, schema
from gwebhook.store.postgres_schema import connect_options
from gwebhook.store.postgres_schema import create_or_upgrade as create_pg_schema

INCIDENTS = 20_000
OLD = "2020-01-01T00:00:00Z"  # half the requests, before the cutoff
NEW = "2030-01-01T00:00:00Z"  # the other half, after it
CUTOFF = "2025-01-01"

# One request and one incident for each n of 1..N; odd n received OLD, even
# n NEW, so old and new alternate through every step of a prune.  Two in
# every 100 incidents are samples, two in every 10 queued for a forward.
_REQUESTS = (
    "INSERT INTO requests (id, received, client, method, path, headers, body)"
    " SELECT n, CASE WHEN n % 2 = 1 THEN ? ELSE ? END, '192.0.2.1', 'POST',"
    " '/hook', '{\"content-type\": \"application/json\"}', ?"
    " FROM ({numbers}) AS numbers"
)
_INCIDENTS = (
    "INSERT INTO incidents (id, request_id, position, name, type, occurred,"
    " created, details, instance, fields)"
    " SELECT n, n, 0, 'alert ' || n, 'Unclassified', '2024-05-01T10:00:00Z',"
    " '2024-05-01T10:00:00Z', '{\"alert\": \"disk full on host ' || n || '\"}',"
    " 'default', '{}' FROM ({numbers}) AS numbers"
)
_SAMPLES = (
    "INSERT INTO samples (incident_id) SELECT n FROM ({numbers}) AS numbers"
    " WHERE n % 100 IN (1, 2)"
)
_DELIVERIES = (
    "INSERT INTO deliveries (forward, incident_id, queued) SELECT 'siem', n, 0"
    " FROM ({numbers}) AS numbers WHERE n % 10 IN (1, 2)"
)
_SQLITE_NUMBERS = (
    "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < ?)"
    " SELECT n FROM s WHERE n > 0"
)
_PG_NUMBERS = "SELECT generate_series(1, ?) AS n"


def fill_sqlite(path: Path, count: int = INCIDENTS) -> Path:
    """A store the daemon made, holding ``count`` requests and incidents."""
    schema.create_or_upgrade(str(path))
    with closing(sqlite3.connect(path)) as db, db:
        for statement, params in _fills(_SQLITE_NUMBERS, count):
            db.execute(statement, params)
    return path


def _fills(numbers: str, count: int):
    body = b'{"alert": "disk full"}'
    yield _REQUESTS.replace("{numbers}", numbers), (OLD, NEW, body, count)
    yield _INCIDENTS.replace("{numbers}", numbers), (count,)
    yield _SAMPLES.replace("{numbers}", numbers), (count,)
    yield _DELIVERIES.replace("{numbers}", numbers), (count,)


def fill_postgres(uri: str, count: int = INCIDENTS) -> str:
    import psycopg

    create_pg_schema(uri, connect_options())
    with psycopg.connect(uri) as db:
        for statement, params in _fills(_PG_NUMBERS, count):
            # psycopg's placeholders are %s, and its % sign %%.
            db.execute(statement.replace("%", "%%").replace("?", "%s"), params)
    return uri


def counts(path: Path) -> tuple[int, ...]:
    with closing(sqlite3.connect(path)) as db:
        return tuple(
            db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("requests", "incidents", "samples", "deliveries")
        )


def on_terminal(*args: str, timeout: float = 30) -> tuple[int, bytes, bytes]:
    """
    Run ``gwebhook ARGS`` with standard error on a pseudo-terminal of 100
    columns (standard output a pipe); its status, standard output, and what
    the terminal received.
    """
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            [GWEBHOOK, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        terminal = -1
        out, _ = process.communicate(timeout=timeout)
        reader.join(10)
        assert not reader.is_alive()
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    return process.returncode, out, bytes(shown)


def piped(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run ``gwebhook ARGS`` with standard output and standard error piped."""
    return subprocess.run(
        [GWEBHOOK, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def final_bar(shown: bytes) -> str:
    """The bar as last drawn: tqdm redraws it in place after a carriage return."""
    return shown.decode().replace("\r\n", "\n").split("\r")[-1].strip()


# export -----------------------------------------------------------------------


@pytest.mark.process
def test_export_shows_progress_on_a_terminal_and_writes_the_same_lines(tmp_path):
    store = str(fill_sqlite(tmp_path / "big.sqlite"))

    status, out, shown = on_terminal("export", "--db", store)
    assert status == 0, shown

    bar = final_bar(shown)
    assert bar.startswith("export: 100%"), bar
    assert "20000/20000" in bar, bar  # the total was known up front
    assert "incidents/s" in bar, bar
    assert shown.count(b"\r") >= 2  # drawn, then redrawn as it went

    quiet = piped("export", "--db", store)
    assert quiet.returncode == 0
    assert quiet.stderr == b""  # not a terminal: no progress, nothing at all
    assert out == quiet.stdout  # the progress changed nothing on stdout
    lines = out.splitlines()
    assert len(lines) == INCIDENTS
    assert lines[0].startswith(b'{"id": "1", "name": "alert 1"')
    assert lines[-1].startswith(b'{"id": "20000", "name": "alert 20000"')


@pytest.mark.process
def test_export_after_an_id_counts_only_what_it_exports(tmp_path):
    store = str(fill_sqlite(tmp_path / "big.sqlite"))
    status, out, shown = on_terminal("export", "--db", store, "--after", "15000")
    assert status == 0, shown
    bar = final_bar(shown)
    assert bar.startswith("export: 100%"), bar
    assert "5000/5000" in bar, bar
    assert out == piped("export", "--db", store, "--after", "15000").stdout
    assert len(out.splitlines()) == 5000


@pytest.mark.process
def test_export_of_an_empty_store_on_a_terminal(tmp_path):
    store = str(fill_sqlite(tmp_path / "empty.sqlite", count=0))
    status, out, shown = on_terminal("export", "--db", store)
    assert (status, out, shown) == (0, b"", b"")  # nothing to do: no bar


@pytest.mark.process
def test_export_error_on_a_terminal_is_one_line(tmp_path):
    """No store: the one-line error, and no bar drawn before it."""
    status, out, shown = on_terminal("export", "--db", str(tmp_path / "none"))
    assert (status, out) == (1, b"")
    text = shown.decode()
    assert text.startswith("gwebhook: ") and text.count("\n") == 1, text
    assert "%" not in text


# prune ------------------------------------------------------------------------


@pytest.mark.process
def test_prune_shows_progress_on_a_terminal_and_says_the_same(tmp_path):
    store = fill_sqlite(tmp_path / "big.sqlite")
    twin = Path(shutil.copy(store, tmp_path / "twin.sqlite"))

    status, out, shown = on_terminal("prune", "--db", str(store), "--before", CUTOFF)
    assert status == 0, shown
    bar = final_bar(shown)
    assert bar.startswith("prune: 100%"), bar
    assert "10000/10000" in bar, bar  # the old half, counted up front
    assert shown.count(b"\r") >= 2

    quiet = piped("prune", "--db", str(twin), "--before", CUTOFF)
    assert quiet.returncode == 0
    assert quiet.stderr == b""
    assert out == quiet.stdout
    assert out == (
        b"deleted 10000 incidents and 10000 requests received before "
        b"2025-01-01T00:00:00Z\n"
    )
    # The even half stays, with its samples and deliveries.
    assert counts(store) == counts(twin) == (10_000, 10_000, 200, 2000)


@pytest.mark.process
def test_prune_of_nothing_on_a_terminal(tmp_path):
    store = str(fill_sqlite(tmp_path / "big.sqlite", count=10))
    status, out, shown = on_terminal("prune", "--db", store, "--before", "2000-01-01")
    assert (status, shown) == (0, b"")  # nothing to delete: no bar
    assert out.startswith(b"deleted 0 incidents and 0 requests")


@pytest.mark.process
def test_prune_error_on_a_terminal_is_one_line(tmp_path):
    """Not a store: the one-line error, and no bar drawn before it."""
    bad = tmp_path / "notes.txt"
    bad.write_text("not a store\n" * 100)
    status, out, shown = on_terminal("prune", "--db", str(bad), "--before", CUTOFF)
    assert (status, out) == (1, b"")
    text = shown.decode()
    assert text.startswith("gwebhook: ") and text.count("\n") == 1, text
    assert "%" not in text


@pytest.mark.process
def test_prune_on_postgresql_shows_progress_on_a_terminal(pg_database):
    fill_postgres(pg_database)

    status, out, shown = on_terminal("prune", "--db", pg_database, "--before", CUTOFF)
    assert status == 0, shown
    bar = final_bar(shown)
    assert bar.startswith("prune: 100%"), bar
    assert "10000/10000" in bar, bar
    assert out == (
        b"deleted 10000 incidents and 10000 requests received before "
        b"2025-01-01T00:00:00Z\n"
    )

    # Piped, and nothing left to delete: no progress, the same kind of line.
    quiet = piped("prune", "--db", pg_database, "--before", CUTOFF)
    assert (quiet.returncode, quiet.stderr) == (0, b"")
    assert quiet.stdout.startswith(b"deleted 0 incidents and 0 requests")
    exported = piped("export", "--db", pg_database)
    assert exported.stderr == b""
    assert len(exported.stdout.splitlines()) == 10_000


# the steps delete what prune deletes ------------------------------------------


@pytest.mark.parametrize("step", [1, 7, 1000, 50_000])
def test_prune_in_steps_deletes_what_prune_deletes(tmp_path, monkeypatch, step):
    """
    Old and new requests alternating, with a gap in the ids left by an
    earlier prune: every step size deletes exactly what the daemon's
    one-statement prune deletes, and reports each incident once.
    """
    store = fill_sqlite(tmp_path / "s.sqlite", count=3000)
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("DELETE FROM samples WHERE incident_id BETWEEN 1000 AND 1999")
        db.execute("DELETE FROM deliveries WHERE incident_id BETWEEN 1000 AND 1999")
        db.execute("DELETE FROM incidents WHERE id BETWEEN 1000 AND 1999")
        db.execute("DELETE FROM requests WHERE id BETWEEN 1000 AND 1999")
    twin = Path(shutil.copy(store, tmp_path / "twin.sqlite"))
    monkeypatch.setattr(retention, "STEP", step)

    class Tally:
        showing = True
        told: int | None = None
        done = 0

        def total(self, count: int | None) -> None:
            self.told = count

        def advance(self, count: int) -> None:
            self.done += count

        def close(self) -> None:
            pass

    tally = Tally()
    before = retention.cutoff(CUTOFF)
    with closing(sqlite3.connect(store, isolation_level=None)) as db:
        db.execute("BEGIN")
        stepped = retention.prune_in_steps(db, before, tally)
        db.execute("COMMIT")
    with closing(sqlite3.connect(twin, isolation_level=None)) as db:
        db.execute("BEGIN")
        whole = retention.prune(db, before)
        db.execute("COMMIT")

    assert stepped == whole == (1000, 1000)
    assert tally.told == tally.done == 1000
    for table in ("requests", "incidents", "samples", "deliveries"):
        query = f"SELECT * FROM {table} ORDER BY 1"  # noqa: S608
        with closing(sqlite3.connect(store)) as a, closing(sqlite3.connect(twin)) as b:
            assert a.execute(query).fetchall() == b.execute(query).fetchall()


# in-process, so that the fast run (and tqdm's lowest version) draws it too ----


def main_on_terminal(monkeypatch, *args: str) -> tuple[int, str, bytes]:
    """``gwebhook ARGS`` in this process, its standard error a pseudo-terminal."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    out = io.StringIO()
    with open(terminal, "w", encoding="utf-8", closefd=True) as stderr:
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.stderr", stderr)
        status = cli.main(list(args))
        stderr.flush()
        monkeypatch.undo()
    shown = bytearray()
    os.set_blocking(controller, False)
    try:
        while chunk := os.read(controller, 65536):
            shown.extend(chunk)
    except (BlockingIOError, OSError):
        pass
    finally:
        os.close(controller)
    return status, out.getvalue(), bytes(shown)


def test_export_and_prune_draw_in_process(tmp_path, monkeypatch):
    store = str(fill_sqlite(tmp_path / "s.sqlite", count=3000))

    status, out, shown = main_on_terminal(monkeypatch, "export", "--db", store)
    assert status == 0
    assert len(out.splitlines()) == 3000
    bar = final_bar(shown)
    assert bar.startswith("export: 100%") and "3000/3000" in bar, bar

    status, out, shown = main_on_terminal(
        monkeypatch, "prune", "--db", store, "--before", CUTOFF
    )
    assert status == 0
    assert out.startswith("deleted 1500 incidents and 1500 requests")
    bar = final_bar(shown)
    assert bar.startswith("prune: 100%") and "1500/1500" in bar, bar


def test_no_terminal_no_bar_in_process(tmp_path, monkeypatch, capfd):
    store = str(fill_sqlite(tmp_path / "s.sqlite", count=3000))
    assert cli.main(["export", "--db", store]) == 0
    assert cli.main(["prune", "--db", store, "--before", CUTOFF]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert len(out.splitlines()) == 3001  # the lines, then the summary
