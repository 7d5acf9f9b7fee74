"""
Proof of origin: a request's body signed by the sender with a secret it
shares with the instance, checked the way the sending service signs
(pure, no I/O).

A scheme names what the sender sends:

- ``github``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.
- ``stripe``: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``, each
  ``v1`` an HMAC-SHA256 of ``"<t>.<body>"``; other schemes in it (``v0``)
  are ignored.
- ``slack``: ``X-Slack-Request-Timestamp: <unix>`` and
  ``X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<ts>:<body>")>``.
- ``standard`` (Standard Webhooks): ``webhook-id``, ``webhook-timestamp``
  and ``webhook-signature: v1,<base64>`` (a space-separated list; other
  versions ignored), an HMAC-SHA256 of ``"<id>.<ts>.<body>"`` keyed with the
  base64 decoding of what follows ``whsec_`` in the secret.
- ``hmac``: a named header holding ``prefix + hex|base64(HMAC(secret, body))``
  with SHA-1, SHA-256 or SHA-512.

The body is the payload as the sender signed it: after gzip decoding, before
anything parses it.  Any secret of the instance's list may verify (rotation
is adding the new one, then removing the old).  A signed timestamp farther
than the tolerance from now, past or future, is stale.  Checks run in the
order missing, malformed, stale, wrong, so no HMAC is computed for a request
that could not pass anyway.  No refusal says what was expected or repeats
what was sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

SCHEMES = ("github", "stripe", "slack", "standard", "hmac")
# The schemes whose signature covers a timestamp, to which a tolerance applies.
TIMESTAMPED = ("stripe", "slack", "standard")
ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
ENCODINGS = ("hex", "base64")
DEFAULT_TOLERANCE = 300
STANDARD_KEY_PREFIX = "whsec_"

# Why a signature was refused: short words, for a metric label.
MISSING = "missing"
MALFORMED = "malformed"
STALE = "stale"
WRONG = "wrong"

_GITHUB = "X-Hub-Signature-256"
_STRIPE = "Stripe-Signature"
_SLACK_TIMESTAMP = "X-Slack-Request-Timestamp"
_SLACK = "X-Slack-Signature"
_STANDARD_ID = "webhook-id"
_STANDARD_TIMESTAMP = "webhook-timestamp"
_STANDARD = "webhook-signature"
# Refusals' words, made once rather than for every request.
_STANDARD_TIMESTAMP_FIX = f"{_STANDARD_TIMESTAMP} must be a Unix time in seconds"
_STANDARD_FIX = (
    f"{_STANDARD} must be v1,<base64 of 32 bytes>, several separated by spaces"
)
_SHA256_SIZE = hashlib.sha256().digest_size

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

# The headers' names as Twisted's getRawHeaders is asked for them.
_GITHUB_KEY = b"x-hub-signature-256"
_STRIPE_KEY = b"stripe-signature"
_SLACK_TIMESTAMP_KEY = b"x-slack-request-timestamp"
_SLACK_KEY = b"x-slack-signature"
_STANDARD_ID_KEY = b"webhook-id"
_STANDARD_TIMESTAMP_KEY = b"webhook-timestamp"
_STANDARD_KEY = b"webhook-signature"

# A header's values by its lowercase name in bytes.
_Get: TypeAlias = Callable[[bytes], Sequence[str | bytes] | None]
# What a request's headers are given as: Twisted's ``Headers.getRawHeaders``
# (any case), or a mapping from lowercase names.
HeaderSource: TypeAlias = _Get | Mapping[str, Sequence[str | bytes]]


class _Keyed:
    """
    HMAC (RFC 2104) under one secret, its two padded keys hashed once:
    ``digest`` continues copies of those two hashes with a message, which
    is the message's HMAC.  The one-shot ``hmac.digest`` sets up an OpenSSL MAC
    context and keys it again on every call, which in the server cost
    several times the HMAC of a webhook's body itself.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes, digest: str) -> None:
        inner, outer = hashlib.new(digest), hashlib.new(digest)
        if len(secret) > inner.block_size:
            secret = hashlib.new(digest, secret).digest()
        secret = secret.ljust(inner.block_size, b"\0")
        inner.update(secret.translate(_IPAD))
        outer.update(secret.translate(_OPAD))
        self._inner, self._outer = inner, outer

    def digest(self, before: bytes, body: bytes) -> bytes:
        """The HMAC of ``before + body``."""
        inner = self._inner.copy()
        inner.update(before)
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@dataclass(frozen=True)
class SignatureConfig:
    """
    How an instance's senders sign.  ``secrets`` are the HMAC keys, any of
    which verifies (for ``standard``, already decoded from ``whsec_...``);
    they take part in equality, so a changed secret makes a changed instance
    on a re-read, and stay out of repr.  ``tolerance`` (seconds) applies to
    the schemes that sign a timestamp; ``header``, ``algorithm``,
    ``encoding`` and ``prefix`` to ``hmac`` only.
    """

    scheme: str
    secrets: tuple[bytes, ...] = field(repr=False)
    tolerance: int = DEFAULT_TOLERANCE
    header: str | None = None
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    # Each secret's HMAC, keyed once (_Keyed).  Derived, so out of equality
    # and repr.
    keyed: tuple[_Keyed, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        # The config file's reader gives the operator the precise message;
        # these keep a hand-built config from failing open later.
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown signature scheme {self.scheme!r}")
        if not self.secrets or not all(self.secrets):
            raise ValueError("a signature needs at least one non-empty secret")
        if self.tolerance <= 0:
            raise ValueError("the tolerance must be a positive number of seconds")
        if self.scheme == "hmac" and not self.header:
            raise ValueError("the hmac scheme needs a header")
        if self.algorithm not in ALGORITHMS or self.encoding not in ENCODINGS:
            raise ValueError("unknown hmac algorithm or encoding")
        digest = self.algorithm if self.scheme == "hmac" else "sha256"
        keyed = tuple(_Keyed(secret, digest) for secret in self.secrets)
        object.__setattr__(self, "keyed", keyed)


class SignatureRefused(Exception):
    """
    A request whose signature does not prove its origin.  ``reason`` is one
    of ``missing``, ``malformed``, ``stale``, ``wrong``; ``message`` is one
    line for the 401 body.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def standard_key(secret: str) -> bytes:
    """
    The HMAC key a Standard Webhooks secret ``whsec_<base64>`` stands for.
    Raises ValueError when it has no ``whsec_`` prefix or no key after it.
    """
    if not secret.startswith(STANDARD_KEY_PREFIX):
        raise ValueError(f"does not start with {STANDARD_KEY_PREFIX}")
    encoded = secret[len(STANDARD_KEY_PREFIX) :]
    # The senders' libraries accept the key without its padding.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"what follows {STANDARD_KEY_PREFIX} is not base64") from None
    if not key:
        raise ValueError(f"no key follows {STANDARD_KEY_PREFIX}")
    return key


def webhook_id_header(config: SignatureConfig) -> str | None:
    """
    The header in which the scheme's senders name each delivery (the same
    on a retry), or None when the scheme has none.
    """
    return {"standard": _STANDARD_ID, "github": "X-GitHub-Delivery"}.get(config.scheme)


class Expected(NamedTuple):
    """
    A request's signature, read from its headers and found well formed and
    fresh: what remains is the HMAC over ``before + body`` under one of the
    secrets, to compare with ``given``.  (A tuple: one per signed request.)
    """

    config: SignatureConfig
    before: bytes
    given: tuple[bytes, ...]

    def check(self, body: bytes) -> None:
        """Refuse (SignatureRefused) unless ``body`` is what was signed."""
        _match(self.config, self.before, body, self.given)


def verify(
    config: SignatureConfig, headers: HeaderSource, body: bytes, now: float
) -> None:
    """
    Check that ``body`` was signed by a holder of one of ``config``'s
    secrets, as its scheme says.  ``headers`` gives a header's values by
    name: a function such as Twisted's ``Headers.getRawHeaders``, or a
    mapping from lowercase names to lists of values.  ``now`` is Unix time.
    Raises SignatureRefused.
    """
    check_headers(config, headers, now).check(body)


def check_headers(
    config: SignatureConfig, headers: HeaderSource, now: float
) -> Expected:
    """
    What ``verify`` checks before the body is needed: the headers are there,
    well formed and (for timestamped schemes) fresh; read once, into what
    the body is then checked against.  Lets a request with no signature be
    refused before its body is read.  Raises SignatureRefused.
    """
    # callable() first: an isinstance against the Mapping ABC is slow.
    # Twisted's getRawHeaders, asked with bytes, answers bytes without
    # converting every name and value to text and back.
    get = headers if callable(headers) else _mapping_get(headers)
    scheme = config.scheme
    if scheme == "standard":
        return _standard(config, get, now)
    if scheme == "github":
        return _github(config, get)
    if scheme == "stripe":
        return _stripe(config, get, now)
    if scheme == "slack":
        return _slack(config, get, now)
    return _hmac(config, get)


# -- the schemes ----------------------------------------------------------------


def _github(config: SignatureConfig, get: _Get) -> Expected:
    value = _one(get, _GITHUB_KEY, _GITHUB)
    if value is None:
        raise _missing([_GITHUB])
    given = _hex_after("sha256=", value)
    if given is None:
        raise _malformed(f"{_GITHUB} must be sha256= and 64 hex digits")
    return Expected(config, b"", (given,))


def _stripe(config: SignatureConfig, get: _Get, now: float) -> Expected:
    value = _one(get, _STRIPE_KEY, _STRIPE)
    if value is None:
        raise _missing([_STRIPE])
    fix = (
        f"{_STRIPE} must be t=<Unix time> and one or more v1=<64 hex digits>, "
        "separated by commas"
    )
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in value.split(","):
        key, equals, part = item.strip().partition("=")
        if not equals:
            raise _malformed(fix)
        if key == "t":
            timestamps.append(part)
        elif key == "v1":
            given = _hex_after("", part)
            if given is None:
                raise _malformed(fix)
            signatures.append(given)
        # Other schemes (v0: Stripe's test mode) are not ours to check.
    if len(timestamps) != 1 or not signatures:
        raise _malformed(fix)
    [timestamp] = timestamps
    _fresh(config, _unix_time(timestamp, fix), now)
    return Expected(config, timestamp.encode() + b".", tuple(signatures))


def _slack(config: SignatureConfig, get: _Get, now: float) -> Expected:
    timestamp = _one(get, _SLACK_TIMESTAMP_KEY, _SLACK_TIMESTAMP)
    value = _one(get, _SLACK_KEY, _SLACK)
    if timestamp is None or value is None:
        raise _missing(
            [
                n
                for n, v in ((_SLACK_TIMESTAMP, timestamp), (_SLACK, value))
                if v is None
            ]
        )
    seconds = _unix_time(
        timestamp, f"{_SLACK_TIMESTAMP} must be a Unix time in seconds"
    )
    given = _hex_after("v0=", value)
    if given is None:
        raise _malformed(f"{_SLACK} must be v0= and 64 hex digits")
    _fresh(config, seconds, now)
    return Expected(config, f"v0:{timestamp}:".encode(), (given,))


def _standard(config: SignatureConfig, get: _Get, now: float) -> Expected:
    message_id = _one(get, _STANDARD_ID_KEY, _STANDARD_ID)
    timestamp = _one(get, _STANDARD_TIMESTAMP_KEY, _STANDARD_TIMESTAMP)
    value = _one(get, _STANDARD_KEY, _STANDARD)
    if message_id is None or timestamp is None or value is None:
        raise _missing(
            [
                name
                for name, sent in (
                    (_STANDARD_ID, message_id),
                    (_STANDARD_TIMESTAMP, timestamp),
                    (_STANDARD, value),
                )
                if sent is None
            ]
        )
    if not message_id.isascii():
        raise _malformed(f"{_STANDARD_ID} must be ASCII")
    seconds = _unix_time(timestamp, _STANDARD_TIMESTAMP_FIX)
    signatures: list[bytes] = []
    for entry in value.split():
        version, comma, encoded = entry.partition(",")
        if not comma:
            raise _malformed(_STANDARD_FIX)
        if version != "v1":
            # v1a (asymmetric) and later versions: another key's business.
            continue
        given = _base64(encoded, _SHA256_SIZE)
        if given is None:
            raise _malformed(_STANDARD_FIX)
        signatures.append(given)
    if not signatures:
        raise _malformed(_STANDARD_FIX)
    if abs(now - seconds) > config.tolerance:
        raise _stale(config)
    before = f"{message_id}.{timestamp}.".encode()
    return Expected(config, before, tuple(signatures))


def _hmac(config: SignatureConfig, get: _Get) -> Expected:
    assert config.header is not None  # SignatureConfig refuses hmac without one
    value = _one(get, config.header.lower().encode("ascii"), config.header)
    if value is None:
        raise _missing([config.header])
    digest = ALGORITHMS[config.algorithm]
    size = digest().digest_size
    name = f"HMAC-{config.algorithm.upper()}"
    given: bytes | None = None
    if value.startswith(config.prefix):
        rest = value[len(config.prefix) :]
        if config.encoding == "hex":
            given = _hex_after("", rest, size)
        else:
            given = _base64(rest, size)
    if given is None:
        what = (
            f"{size * 2} hex digits"
            if config.encoding == "hex"
            else f"the base64 of {size} bytes"
        )
        lead = f"{config.prefix} and " if config.prefix else ""
        raise _malformed(f"{config.header} must be {lead}{what} (an {name})")
    return Expected(config, b"", (given,))


# -- shared rules ---------------------------------------------------------------


def _mapping_get(mapping: Mapping[str, Sequence[str | bytes]]) -> _Get:
    """A mapping from lowercase names, asked as getRawHeaders is."""
    return lambda key: mapping.get(key.decode("ascii"))


def _one(get: _Get, key: bytes, name: str) -> str | None:
    """
    The one value of header ``name`` (``key``: its lowercase bytes), without
    surrounding blanks; None if it was not sent or is empty.
    """
    values = get(key)
    if not values:
        return None
    if len(values) == 1:
        # The usual case, without the lists below.
        value = values[0]
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        return text.strip(" \t") or None
    texts = [
        (v.decode("latin-1") if isinstance(v, bytes) else v).strip(" \t")
        for v in values
    ]
    texts = [t for t in texts if t]
    if not texts:
        return None
    if len(texts) > 1:
        # Which of them was signed?  Guessing would let a second header
        # ride along with a genuine first one.
        raise _malformed(f"{name} sent more than once; send it once")
    return texts[0]


def _unix_time(timestamp: str, fix: str) -> int:
    # Unix seconds as senders write them.  Fifteen digits is far past any
    # clock, and keeps int() away from a header-sized number.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 15):
        raise _malformed(fix)
    return int(timestamp)


def _fresh(config: SignatureConfig, seconds: int, now: float) -> None:
    if abs(now - seconds) > config.tolerance:
        raise _stale(config)


def _stale(config: SignatureConfig) -> SignatureRefused:
    return SignatureRefused(
        STALE,
        f"signature stale: its timestamp is more than {config.tolerance} s from now",
    )


def _match(
    config: SignatureConfig, before: bytes, body: bytes, given: tuple[bytes, ...]
) -> None:
    """
    Refuse unless one of ``given`` is the HMAC of ``before + body`` under
    one of the secrets.  One HMAC per secret, whatever the number of
    signatures sent; each comparison of two digests of one length in
    constant time.
    """
    for keyed in config.keyed:
        expected = keyed.digest(before, body)
        for g in given:
            if len(g) == len(expected) and hmac.compare_digest(expected, g):
                return
    raise SignatureRefused(WRONG, "signature wrong")


def _hex_after(prefix: str, value: str, size: int = 32) -> bytes | None:
    """The bytes of ``value`` past ``prefix``: exactly ``size`` of them in hex."""
    if not value.startswith(prefix):
        return None
    digits = value[len(prefix) :]
    if len(digits) != size * 2 or not all(c in _HEX_DIGITS for c in digits):
        return None
    return bytes.fromhex(digits)


def _base64(value: str, size: int) -> bytes | None:
    """The bytes of ``value``, standard base64 with padding, if ``size`` of them."""
    if not value.isascii():
        return None
    try:
        decoded = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == size else None


def _malformed(problem: str) -> SignatureRefused:
    return SignatureRefused(MALFORMED, f"signature malformed: {problem}")


def _missing(names: list[str]) -> SignatureRefused:
    *others, last = names
    listed = f"{', '.join(others)} and {last}" if others else last
    return SignatureRefused(MISSING, f"signature missing: send {listed}")
