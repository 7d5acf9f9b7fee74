"""
JSON text of documents that came in as JSON: orjson reads and writes it,
the standard library where orjson would not give what it gives.

Reading (``read``): orjson reads a body in about half the standard
library's time, and refuses what the strict reading refuses (NaN,
Infinity, a number too large for a double, an unpaired surrogate escape,
bytes that are not UTF-8).  It reads integers beyond 64 bits as floats,
without an error, and nests up to 1,024 levels where the standard library
stops earlier.  So a body is left to the standard library (``NOT_READ``)
when it may hold an integer of 19 or more digits (one that may not fit
64 bits: a run of as many digits where a number may start), when it is
nested deeper than orjson writes (254 levels, 255 in orjson 3.10: the
write that checks this costs a sixth of the read), and whenever orjson
refuses it: the standard library then says why, in the words the answers
have always used.

What the store keeps of every incident (its details, its fields, the
request's headers) is written as JSON text once per incident; orjson
writes it about ten times faster than ``json``.  It refuses what JSON
allows but it does not take: integers beyond 64 bits and nesting deeper
than 254 levels.  Those go to the standard library, which writes them
exactly; the text differs from the standard library's only in spacing
and in how an exponent is written (``1e-7``, not ``1e-07``), never in the
value it reads back as.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Every digit as "0": a run of 19 digits is then a plain substring search.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN = b"0" * 19
_WHITESPACE = b" \t\r\n"
# What comes before a number (after whitespace): its minus sign, or what
# JSON puts before a value.  A run of digits after anything else is part of
# a string, or the fraction or exponent of a float: it is not an integer.
_BEFORE_NUMBER = b"-:,["

# What ``read`` returns for a body it leaves to the standard library.
NOT_READ = object()


def _may_hold_long_integer(body: bytes) -> bool:
    """
    Whether ``body`` may hold an integer of 19 digits or more: a run of as
    many digits after what comes before a value in JSON.  (A string may
    match too, such as ``"x-1234567890123456789"``: it then takes the slow
    path, which is always right.)
    """
    marks = body.translate(_DIGITS_AS_ZERO)
    start = marks.find(_LONG_RUN)
    while start != -1:
        before = start - 1
        while before >= 0 and body[before] in _WHITESPACE:
            before -= 1
        if before < 0 or body[before] in _BEFORE_NUMBER:
            return True
        end = start + len(_LONG_RUN)
        while end < len(marks) and marks[end] == 0x30:
            end += 1
        start = marks.find(_LONG_RUN, end)
    return False


def read(body: bytes) -> Any:
    """
    ``body`` (UTF-8, no byte-order mark) as orjson reads it, when that is
    exactly what the standard library reads; otherwise NOT_READ.
    """
    if _may_hold_long_integer(body):
        return NOT_READ
    try:
        document = orjson.loads(body)
        orjson.dumps(document)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return NOT_READ
    return document


# Made once: json.dumps with options builds a new encoder at every call.
_standard = json.JSONEncoder(ensure_ascii=False).encode


def encode(value: Any) -> str:
    """``value`` (JSON's types only) as compact JSON text."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        return _standard(value)
