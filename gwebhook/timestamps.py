"""Dates as gwebhook stores them: UTC, ISO-8601, ending in ``Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Epoch numbers above this are read as milliseconds: as seconds they would be
# past the year 5000, as milliseconds they are after March 1973.
_MILLISECONDS_FROM = 100_000_000_000

# UTC as most senders write it, which is nearly how it is stored already.
_UTC_WITH_Z = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z"
)


def format_utc(moment: datetime) -> str:
    """Render an aware datetime as UTC ISO-8601 with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def from_epoch(seconds: float) -> str:
    """Render a Unix time in seconds."""
    return format_utc(datetime.fromtimestamp(seconds, UTC))


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
        return _canonical_utc(value) or _iso_to_utc(value)
    raise ValueError("not a date-time string or epoch number")


def _canonical_utc(text: str) -> str | None:
    """
    The stored form of a UTC date-time written ``YYYY-MM-DDTHH:MM:SS[.f]Z``,
    or None for any other text (``_iso_to_utc`` decides what it is).  The
    same answer as ``_iso_to_utc`` in half the time: an array of
    incidents pays it once per element.
    """
    match = _UTC_WITH_Z.fullmatch(text)
    if match is None:
        return None
    try:
        # Only to check the calendar: the text is the answer, or nearly.
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if match.group(1) is None:
        return text
    if moment.microsecond == 0:
        return text[:19] + "Z"
    return f"{text[:19]}.{moment.microsecond:06d}Z"


def _iso_to_utc(value: str) -> str:
    """Any ISO-8601 date or date-time (no zone means UTC), in UTC."""
    text = value.strip()
    # fromisoformat also reads bare numbers such as "2024" as dates;
    # insist on at least a full calendar date.
    if len(text) < 10 or text[4] != "-":
        raise ValueError("not an ISO-8601 date-time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        # Python's own message for text it cannot read quotes the text: a
        # sender's value must not reach the answer or the access log.
        if repr(text) in str(e):
            raise ValueError("not an ISO-8601 date-time") from None
        raise  # e.g. "month must be in 1..12": says what, quotes nothing
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return format_utc(moment)
    except OverflowError as e:
        # 0001-01-01T00:00+01:00 is a valid string but no UTC time.
        raise ValueError("date-time out of range in UTC") from e
