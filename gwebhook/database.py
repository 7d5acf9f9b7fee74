"""
Where the store is: ``--db`` (a SQLite file or a PostgreSQL URI), the
database password, and how a URI may be shown.  No database is touched
here, and nothing heavy is imported: the ``gwebhook`` commands read this
before they know which database they need.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from gwebhook.schema import StoreError

# The store when neither --db nor a config file's db names one.
DEFAULT_DB = "gwebhook.sqlite"


def is_postgres(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def read_password_file(path: str) -> str:
    """
    The database password in ``path`` (one trailing newline ignored), or
    StoreError saying why it cannot be had.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise StoreError(
            f"cannot read the password file {path}: {e.strerror}; give a file "
            "the daemon can read, holding just the database password"
        ) from None
    except UnicodeDecodeError:
        raise StoreError(f"the password file {path} is not UTF-8 text") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise StoreError(
            f"the password file {path} is empty; write the database password in it"
        )
    return password


def redacted(uri: str) -> str:
    """``uri`` as it may be shown: without a password, if it held one."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
