"""
The rules of the read API's query parameters (docs/reference.md 9 and 11),
pure functions shared by ``gwebhook.api`` and the console's endpoints: a
parameter given once, only known ones, the opaque cursor.  A bad one is
an :class:`ApiError` naming it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

MAX_LIMIT = 1000

_CURSOR_PREFIX = b"g1:"


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message naming the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def make_cursor(incident_id: int) -> str:
    """The opaque cursor that continues after ``incident_id``."""
    raw = _CURSOR_PREFIX + str(incident_id).encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_cursor(text: str) -> int:
    """The incident id a cursor continues after; ApiError 400 if it is none."""
    bad = ApiError(
        400,
        "after: not a cursor of this gwebhook; pass back the next of a page, "
        "or leave after out to start from the beginning",
    )
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    if not raw.startswith(_CURSOR_PREFIX):
        raise bad
    digits = raw[len(_CURSOR_PREFIX) :]
    if not digits.isdigit() or len(digits) > 19:
        raise bad
    return int(digits)


def single(args: Mapping[bytes, list[bytes]], name: str) -> str | None:
    """Parameter ``name`` (None if absent); ApiError 400 if given twice or not UTF-8."""
    values = args.get(name.encode("ascii"))
    if values is None:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name}: given {len(values)} times; give it once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: not UTF-8") from None


def check_known(args: Mapping[bytes, list[bytes]], known: tuple[str, ...]) -> None:
    """ApiError 400 naming the first parameter that is not one of ``known``."""
    for name in args:
        if name.decode("utf-8", "replace") not in known:
            shown = name.decode("utf-8", "replace")[:64]
            takes = (
                f"this path takes {', '.join(known)}"
                if known
                else "this path takes none"
            )
            raise ApiError(400, f"{shown}: unknown parameter; {takes}")
