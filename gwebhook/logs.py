"""
A JSON-lines log observer: ``twistd --logger gwebhook.logs.json_observer``.
One object per event, with the event's own named fields (client, status,
request_id, ...) so a log shipper needs no parsing; Twisted's internals
(``log_*`` keys, objects) are left out.
"""

from __future__ import annotations

import json
import sys
from typing import IO

from twisted.logger import FileLogObserver, formatEvent, formatTime

_SCALARS = (str, int, float, bool, type(None))


def to_json(event: dict) -> str:
    """One event as one line of JSON."""
    record = {
        "time": formatTime(event.get("log_time"), "%Y-%m-%dT%H:%M:%S.%f%z"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if (
            not key.startswith("log_")
            and key not in record
            and isinstance(value, _SCALARS)
        ):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


def json_observer(stream: IO[str] | None = None) -> FileLogObserver:
    """A log observer writing JSON lines to ``stream`` (default stdout)."""
    return FileLogObserver(stream or sys.stdout, to_json)
