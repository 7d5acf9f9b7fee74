"""
Duplicates (docs/reference.md 8.12): the rules, as pure functions.  What an
instance's ``[instance.dedup]`` says, the composite key of an element, and
the ticket a request takes to the store, which remembers keys in the same
transaction as the incidents and decides there which elements are new.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

# How long a key or a request is remembered unless the instance says.
DEFAULT_WINDOW = 7 * 24 * 3600

# The request header each signature scheme's senders put a delivery id in,
# used when ``[instance.dedup]`` names no header.
SCHEME_HEADERS = {"standard": "webhook-id", "github": "X-GitHub-Delivery"}

# A header value longer than this is not remembered as an idempotency key
# (no sender sends one; the header limit bounds it anyway).
MAX_HEADER_VALUE = 256

# Canonical JSON: sorted keys, no spaces; 1, 1.0 and "1" stay three texts.
_canonical = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":")
).encode


@dataclass(frozen=True)
class DedupConfig:
    """
    An instance's ``[instance.dedup]``: the detail ``keys`` whose values make
    an element's composite key, the ``header`` carrying a request's
    idempotency key (None: none), and the ``window`` in seconds both are
    remembered.
    """

    keys: tuple[str, ...]
    header: str | None
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        # The config file's reader gives the operator the precise message.
        if not self.keys and self.header is None:
            raise ValueError("dedup needs keys, a header, or both")
        if self.window <= 0:
            raise ValueError("the dedup window must be positive")


def composite_key(details: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """
    The element's composite key: the keys of ``keys`` its details hold, with
    their values, as canonical JSON; None when it holds none of them.
    """
    if len(keys) == 1:
        # The usual case: the same text, without the dict and the sort.
        [key] = keys
        if key not in details:
            return None
        return f"{{{_quoted(key)}:{_canonical(details[key])}}}"
    present = {key: details[key] for key in keys if key in details}
    return _canonical(present) if present else None


@functools.lru_cache(maxsize=256)
def _quoted(key: str) -> str:
    return _canonical(key)


def request_key(values: Sequence[bytes] | None) -> str | None:
    """
    A request's idempotency key from its header's values: the first, as
    text; None when the header is absent, empty or unusable as a key.
    """
    if not values:
        return None
    value = values[0].strip(b" \t")
    if not value or len(value) > MAX_HEADER_VALUE:
        return None
    return value.decode("latin-1")


class Ticket(NamedTuple):
    """
    What the store needs to deduplicate one request: its idempotency key
    (or None), each element's composite key (None: never a duplicate), and
    the instance's window.
    """

    request_key: str | None
    element_keys: tuple[str | None, ...]
    window: int


def ticket(
    config: DedupConfig,
    header_values: Sequence[bytes] | None,
    details: Iterable[Mapping[str, Any]],
) -> Ticket:
    """The request's ticket under ``config``."""
    keys = config.keys
    element_keys = tuple(composite_key(d, keys) if keys else None for d in details)
    return Ticket(request_key(header_values), element_keys, config.window)
