"""Header rules: what may arrive on the wire and what is kept (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

# Visible ASCII, space and horizontal tab: everything else in a header line is
# refused (RFC 9110 5.5 allows obs-text, but no sender we serve needs it).
_ALLOWED = bytes(range(0x20, 0x7F)) + b"\t"


# RFC 9110 5.6.2: the characters of a header name.
_TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def is_token(name: str) -> bool:
    """Whether ``name`` can be a header name."""
    return bool(name) and all(c in _TOKEN for c in name)


def is_printable_ascii(line: bytes) -> bool:
    """Whether a request or header line holds only printable ASCII."""
    return not line.translate(None, _ALLOWED)


def headers_for_details(
    raw: Iterable[tuple[bytes, list[bytes]]], credential_header: str | None
) -> dict[str, str]:
    """
    The headers as stored with an incident: names in lowercase, repeated
    headers joined with ``", "``, the header carrying the credential removed.
    ``Authorization`` is never kept, whatever the mode: it holds a secret of
    someone's even when it is not ours.
    """
    dropped = {"authorization", credential_header}
    kept: dict[str, str] = {}
    for name, values in raw:
        key = name.decode("ascii").lower()
        if key in dropped:
            continue
        joined = ", ".join(v.decode("ascii", "replace") for v in values)
        kept[key] = f"{kept[key]}, {joined}" if key in kept else joined
    return kept
