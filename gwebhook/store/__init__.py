"""
The incident store: the only place the request path touches SQL.  One
interface (:class:`IncidentStore`), two databases: a SQLite file, the
default, and PostgreSQL for several nodes.  ``open_store`` picks the one
``--db`` names.
"""

from gwebhook.model import Committed
from gwebhook.store.base import (
    MAX_BATCH,
    SAMPLE_COUNT,
    IncidentStore,
    StoreUnavailable,
)
from gwebhook.store.sqlite import SQLiteStore

__all__ = [
    "MAX_BATCH",
    "SAMPLE_COUNT",
    "Committed",
    "IncidentStore",
    "SQLiteStore",
    "StoreUnavailable",
    "open_store",
]


def open_store(db: str) -> IncidentStore:
    """The store ``db`` names: a SQLite file's path."""
    return SQLiteStore(db)
