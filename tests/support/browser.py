"""
A real browser for the console's tests: Debian's chromium, headless, driven
by Playwright's Python package (never a browser Playwright downloads).  The
tests skip, saying why, only where neither can be had.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from gwebhook.schema import create_or_upgrade

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    """The chromium to drive: $GWEBHOOK_CHROMIUM, else Debian's, else None."""
    given = os.environ.get("GWEBHOOK_CHROMIUM")
    if given:
        return given
    for path in CHROMIUM_PATHS:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install '.[test]')"
    if chromium_path() is None:
        return "no chromium (apt-get install chromium)"
    return None


def fill_store(db: Path, count: int, instances: int = 4) -> None:
    """
    A store holding ``count`` incidents, one request each, written directly
    in one transaction (SQL, as fast as SQLite goes): created one second
    apart up to now, so the last hour holds 3,600 of them.
    """
    create_or_upgrade(str(db))
    now = time.time()
    connection = sqlite3.connect(db)
    try:
        with connection:
            connection.executemany(
                "INSERT INTO requests (id, received, client, method, path, headers,"
                " body, instance) VALUES (?, ?, '127.0.0.1', 'POST', '/', '{}', ?, ?)",
                (
                    (
                        n,
                        _iso(now - count + n),
                        b'{"name": "bulk %d"}' % n,
                        f"bulk-{n % instances}",
                    )
                    for n in range(1, count + 1)
                ),
            )
            connection.executemany(
                "INSERT INTO incidents (id, request_id, position, name, type, occurred,"
                " created, details, instance, fields)"
                " VALUES (?, ?, 0, ?, 'Bulk', ?, ?, ?, ?, '{}')",
                (
                    (
                        n,
                        n,
                        f"bulk {n}",
                        _iso(now - count + n),
                        _iso(now - count + n),
                        '{"name": "bulk %d", "n": %d}' % (n, n),
                        f"bulk-{n % instances}",
                    )
                    for n in range(1, count + 1)
                ),
            )
    finally:
        connection.close()


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + "Z"
