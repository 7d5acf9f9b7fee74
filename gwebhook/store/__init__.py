"""
The incident store: the only place the request path touches SQL.  One
interface (:class:`IncidentStore`), two databases: a SQLite file, the
default, and PostgreSQL for several nodes.  ``open_store`` picks the one
``--db`` names.
"""

from gwebhook.database import DEFAULT_DB, is_postgres, read_password_file
from gwebhook.model import Committed
from gwebhook.schema import StoreError
from gwebhook.store.base import (
    MAX_BATCH,
    SAMPLE_COUNT,
    IncidentStore,
    StoreUnavailable,
)
from gwebhook.store.sqlite import SQLiteStore

__all__ = [
    "DEFAULT_DB",
    "MAX_BATCH",
    "SAMPLE_COUNT",
    "Committed",
    "IncidentStore",
    "SQLiteStore",
    "StoreError",
    "StoreUnavailable",
    "is_postgres",
    "open_store",
    "read_password_file",
]


def open_store(db: str, password: str | None = None) -> IncidentStore:
    """
    The store ``db`` names: a PostgreSQL URI (``postgresql://...``), with
    ``password`` if given, or else a SQLite file's path.  Creates or
    upgrades its schema; raises StoreError with a one-line message.
    """
    if is_postgres(db):
        # Here, not at the top: psycopg is loaded only by those who use it.
        from gwebhook.store.postgres import PostgresStore

        return PostgresStore(db, password)
    return SQLiteStore(db)
