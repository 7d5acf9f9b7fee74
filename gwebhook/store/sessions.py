"""
The console's sessions in the store (docs/reference.md 11), so that every
process of the daemon, and every node sharing a PostgreSQL database, knows
a session made by any other, and a logout anywhere ends it everywhere.  A
row holds the SHA-256 of the session's id, never the id, and the SHA-256
of the API token that logged in, never the token.  Each function
runs through the store's public ``read`` (``db``) or ``write`` (``cursor``),
with the store's ``?`` SQL.
"""

from __future__ import annotations

_INSERT = (
    "INSERT INTO console_sessions (id_hash, csrf, created, expires, token_hash)"
    " VALUES (?, ?, ?, ?, ?)"
)
_FIND = (
    "SELECT csrf, created, expires, token_hash FROM console_sessions WHERE id_hash = ?"
)
_DELETE = "DELETE FROM console_sessions WHERE id_hash = ?"
_FORGET = "DELETE FROM console_sessions WHERE expires <= ?"
_COUNT = "SELECT count(*) FROM console_sessions WHERE expires > ?"


def insert(
    cursor, id_hash: str, csrf: str, created: float, expires: float, token_hash: str
) -> int:
    """
    Write a new session, made with the token whose SHA-256 is
    ``token_hash``, and delete those that ended by ``created`` (so that
    logins keep the table small even without retention); how many went.
    """
    forgotten = forget_expired(cursor, created)
    cursor.execute(_INSERT, (id_hash, csrf, created, expires, token_hash))
    return forgotten


def find(db, id_hash: str) -> tuple[str, float, float, str | None] | None:
    """
    The session's (csrf, created, expires, token_hash), or None; expired
    ones too.  ``token_hash`` is None for a session made before it was kept.
    """
    row = db.execute(_FIND, (id_hash,)).fetchone()
    if row is None:
        return None
    return (row[0], float(row[1]), float(row[2]), row[3])


def delete(cursor, id_hash: str) -> int:
    """End one session (a logout, or found expired); 1 if it was there."""
    cursor.execute(_DELETE, (id_hash,))
    return cursor.rowcount


def forget_expired(cursor, now: float) -> int:
    """Delete every session that ended by ``now``; how many went."""
    cursor.execute(_FORGET, (now,))
    return cursor.rowcount


def live(db, now: float) -> int:
    """How many sessions are live at ``now``."""
    return int(db.execute(_COUNT, (now,)).fetchone()[0])
