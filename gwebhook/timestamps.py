"""Dates as gwebhook stores them: UTC, ISO-8601, ending in ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone

# Epoch numbers above this are read as milliseconds: as seconds they would be
# past the year 5000, as milliseconds they are after March 1973.
_MILLISECONDS_FROM = 100_000_000_000


def format_utc(moment: datetime) -> str:
    """Render an aware datetime as UTC ISO-8601 with a ``Z``."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def from_epoch(seconds: float) -> str:
    """Render a Unix time in seconds."""
    return format_utc(datetime.fromtimestamp(seconds, timezone.utc))


def parse_occurred(value: object) -> str:
    """
    Normalise an ``occurred`` value to UTC ISO-8601.

    Accepts an ISO-8601 date or date-time string (no zone means UTC) or a Unix
    epoch in seconds or milliseconds.  Raises ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a date")
    if isinstance(value, (int, float)):
        try:
            seconds = value / 1000 if abs(value) >= _MILLISECONDS_FROM else value
            return from_epoch(seconds)
        except (OverflowError, OSError, ValueError) as e:
            raise ValueError("epoch time out of range") from e
    if isinstance(value, str):
        text = value.strip()
        # fromisoformat also reads bare numbers such as "2024" as dates;
        # insist on at least a full calendar date.
        if len(text) < 10 or text[4] != "-":
            raise ValueError("not an ISO-8601 date-time")
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        try:
            return format_utc(moment)
        except OverflowError as e:
            # 0001-01-01T00:00+01:00 is a valid string but no UTC time.
            raise ValueError("date-time out of range in UTC") from e
    raise ValueError("not a date-time string or epoch number")
