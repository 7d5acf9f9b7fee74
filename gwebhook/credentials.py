"""Who may send: the credential rules of docs/reference.md 3 (pure, no I/O)."""

from __future__ import annotations

import binascii
import hashlib
import hmac
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass

HEADER_PREFIX = "_header:"


@dataclass(frozen=True)
class Credentials:
    """
    What a request must carry.  ``header`` is the lowercase name of the header
    that holds the credential; ``username`` is None in header-token mode.
    """

    header: str
    secret: bytes
    username: bytes | None = None

    @classmethod
    def from_options(cls, username: str, password: str) -> Credentials:
        """Read XSOAR's username/password pair, including ``_header:NAME``."""
        if username.startswith(HEADER_PREFIX):
            name = username[len(HEADER_PREFIX) :].strip().lower()
            return cls(header=name, secret=password.encode("utf-8"))
        return cls(
            header="authorization",
            secret=password.encode("utf-8"),
            username=username.encode("utf-8"),
        )

    @property
    def field(self) -> bytes:
        """The header's name as Twisted's Headers look it up."""
        return self.header.encode("ascii")

    @property
    def basic(self) -> bool:
        return self.username is not None

    def accepts(self, values: Sequence[bytes] | None) -> bool:
        """
        Whether the raw values of ``self.header`` on a request satisfy these
        credentials.  A header sent twice is refused: which one counts would
        be ambiguous.  Comparisons take constant time.
        """
        if not values or len(values) != 1:
            return False
        value = values[0]
        if not self.basic:
            return _same(value, self.secret)
        assert self.username is not None  # what `basic` means
        scheme, _, encoded = value.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(b":")
        # Both halves are always compared, so timing says nothing about which
        # one was wrong.
        user_ok = _same(user, self.username)
        password_ok = _same(password, self.secret)
        return bool(colon) and user_ok and password_ok


def _same(given: bytes, expected: bytes) -> bool:
    """
    Constant-time equality that also hides the expected length:
    compare_digest returns early when lengths differ, digests never do.
    """
    return hmac.compare_digest(
        hashlib.sha256(given).digest(), hashlib.sha256(expected).digest()
    )
