"""
JSON text of documents that came in as JSON: orjson writes it, the
standard library where orjson cannot.

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

# Made once: json.dumps with options builds a new encoder at every call.
_standard = json.JSONEncoder(ensure_ascii=False).encode


def encode(value: Any) -> str:
    """``value`` (JSON's types only) as compact JSON text."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        return _standard(value)
