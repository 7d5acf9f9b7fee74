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
# The last whole second stamped, its text and its zone: most lines share one.
_second: tuple[int, str, str] = (-1, "", "")


def timestamp(when: float | None) -> str:
    """
    ``when`` as ``formatTime(when, "%Y-%m-%dT%H:%M:%S.%f%z")`` writes it, but
    with the date and zone formatted once per second rather than per line:
    a busy daemon writes a line per request.
    """
    global _second
    if when is None:
        return "-"
    whole = int(when // 1)
    cached = _second
    if cached[0] != whole:
        cached = _second = (
            whole,
            formatTime(whole, "%Y-%m-%dT%H:%M:%S"),
            formatTime(whole, "%z"),
        )
    return f"{cached[1]}.{int((when - whole) * 1_000_000):06d}{cached[2]}"


def to_json(event: dict) -> str:
    """One event as one line of JSON."""
    record = {
        "time": timestamp(event.get("log_time")),
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
