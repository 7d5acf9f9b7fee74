"""The rules that turn a request body into incident drafts (pure, no I/O)."""

from __future__ import annotations

import json
import math
import re
import zlib
from typing import Any

from gwebhook import jsontext
from gwebhook.config import InstanceConfig
from gwebhook.mapping import Mapped, json_kind
from gwebhook.model import IncidentDraft
from gwebhook.timestamps import parse_occurred

DEFAULT_NAME = "Generic webhook triggered incident"
DEFAULT_TYPE = "Unclassified"
MAX_GZIP_MEMBERS = 16


class PayloadError(Exception):
    """The body cannot become incidents; the message is for the sender."""

    status = 400


class BodyTooLarge(PayloadError):
    status = 413


class UnsupportedEncoding(PayloadError):
    status = 415


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """
    Undo ``Content-Encoding`` (identity or gzip) without ever holding more
    than ``limit`` decompressed bytes: a gzip bomb stops at the limit.
    """
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return raw
    if coding not in ("gzip", "x-gzip"):
        raise UnsupportedEncoding(
            # Not quoted: a header value stays out of answers and logs.
            "Content-Encoding is neither identity nor gzip; send one of those"
        )
    out = bytearray()
    rest = raw
    members = 0
    try:
        while rest:
            members += 1
            if members > MAX_GZIP_MEMBERS:
                # Each member costs a copy of the rest: many tiny ones are
                # quadratic work for the reactor.
                raise PayloadError(
                    f"gzip body has more than {MAX_GZIP_MEMBERS} members"
                )
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise BodyTooLarge(
                    f"decompressed body is over the limit of {limit} bytes"
                )
            if not inflater.eof:
                raise PayloadError("gzip body is truncated")
            # Concatenated gzip members are one body (RFC 1952, 2.2).
            rest = inflater.unused_data
    except zlib.error as e:
        raise PayloadError("body is not valid gzip") from e
    return bytes(out)


# A \uD800-\uDFFF escape: JSON allows it alone, UTF-8 (and so the store) does not.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        # Not quoted: the body's content stays out of answers and logs.
        raise ValueError("a number is too large for a double")
    return number


# Made once: json.loads with options builds a new decoder (and its
# scanner) at every call.
_decode = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float
).decode


def _reject_lone_surrogates(document: Any) -> None:
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise PayloadError("body is not JSON: nested too deeply") from None
    except UnicodeEncodeError:
        raise PayloadError(
            "body is not JSON that UTF-8 can hold: "
            "an unpaired surrogate escape (\\udXXX)"
        ) from None


def parse_json(body: bytes) -> Any:
    """Read strict JSON from UTF-8 bytes (a BOM is tolerated)."""
    if not body.strip():
        raise PayloadError("body is empty; send a JSON object or array of objects")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    document = jsontext.read(body)
    if document is jsontext.NOT_READ:
        document = read_strictly(body)
    return document


def read_strictly(body: bytes) -> Any:
    """
    The standard library's strict reading of ``body``, which decides every
    body (jsontext.read only reads faster what it reads the same), and says
    why one is refused.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(f"body is not UTF-8 (byte {e.start})") from e
    try:
        document = _decode(text)
    except RecursionError as e:
        raise PayloadError("body is not JSON: nested too deeply") from e
    except json.JSONDecodeError as e:
        raise PayloadError(f"body is not JSON: {e}") from e
    except ValueError as e:
        # Ours (NaN, 1e400) or Python's cap on digits in an integer.
        reason = "a number has too many digits" if "digits" in str(e) else str(e)
        raise PayloadError(f"body is not JSON: {reason}") from e
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(document)
    return document


def _draft(
    obj: Any,
    index: int | None,
    instance: InstanceConfig,
    received: str,
) -> IncidentDraft:
    """One incident from one object: element ``index`` of an array, or the body."""
    if not isinstance(obj, dict):
        raise PayloadError(f"{_where(index)} is not a JSON object")
    mapping = instance.mapping
    mapped = mapping.apply(obj) if mapping is not None else None
    name, kind, occurred = resolve(
        obj,
        mapped,
        index,
        instance.name if mapped is not None else None,
        instance.incident_type or DEFAULT_TYPE,
        received,
    )
    key = "rawJson" if "rawJson" in obj else "raw_json" if "raw_json" in obj else None
    details = obj if key is None else obj[key]
    if not isinstance(details, dict):
        raise PayloadError(f"{_where(index)}: field {key!r} must be a JSON object")
    if "headers" in details:
        # The request's headers take this key when the incident is read back
        # (docs/reference.md 2.4); the sender's own stay in the body kept
        # with the request.
        details = {k: v for k, v in details.items() if k != "headers"}
    return IncidentDraft(name, kind, occurred, details, mapped.fields if mapped else {})


def resolve(
    element: dict[str, Any],
    mapped: Mapped | None,
    index: int | None,
    instance: str | None,
    default_type: str,
    received: str,
) -> tuple[str, str, str]:
    """
    The incident's ``(name, type, occurred)``: a mapped value, else the
    element's own field, else the default (a fixed name, ``default_type``,
    the time ``received``).  Raises ``PayloadError`` (400) naming the
    element, and the instance when a mapped value is of the wrong kind.
    ``index`` is None when the body was a single object.
    """
    where = "body" if index is None else f"element {index}"
    mapped_where = where if instance is None else f"{where}: instance '{instance}'"

    name = _string(
        element, "name", mapped and mapped.name, DEFAULT_NAME, where, mapped_where
    )
    kind = _string(
        element, "type", mapped and mapped.type, default_type, where, mapped_where
    )

    if mapped is not None and mapped.occurred is not None:
        try:
            occurred = parse_occurred(mapped.occurred)
        except ValueError as e:
            raise PayloadError(
                f"{mapped_where}: map.occurred must give a date-time: {e}"
            ) from e
    elif "occurred" in element:
        try:
            occurred = parse_occurred(element["occurred"])
        except ValueError as e:
            raise PayloadError(
                f"{where}: field 'occurred' is not a date-time: {e}"
            ) from e
    else:
        occurred = received
    return name, kind, occurred


def _string(
    element: dict[str, Any],
    field: str,
    mapped: Any,
    default: str,
    where: str,
    mapped_where: str,
) -> str:
    """A string field: the mapped value, else the element's own, else ``default``."""
    if mapped is not None:
        return _mapped_string(mapped, f"map.{field}", mapped_where)
    value = element.get(field, default)
    if not isinstance(value, str):
        raise PayloadError(f"{where}: field '{field}' must be a string")
    if "\x00" in value:
        raise PayloadError(f"{where}: field '{field}' {_NUL}")
    return value


def _mapped_string(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{where}: {key} must give a string, got {json_kind(value)}")
    if "\x00" in value:
        raise PayloadError(f"{where}: {key} {_NUL}")
    return value


# A name or type is a column of its own, which PostgreSQL's text cannot hold
# U+0000 in; refused on every store alike.  (In the details it is JSON's
# \u0000, which every store keeps.)
_NUL = "must not contain U+0000 (NUL)"


def _where(index: int | None) -> str:
    return "body" if index is None else f"element {index}"


def incidents_from(
    document: Any,
    instance: InstanceConfig,
    received: str,
) -> list[IncidentDraft]:
    """
    Apply the body rules (docs/reference.md 2.2, 2.3) to a parsed JSON
    document: an object is one incident, an array of objects one incident
    per element, in order.

    The drafts' details do not hold the request's ``headers``: those are
    kept once, with the request, and put back under ``headers`` when an
    incident is read back.
    """
    if isinstance(document, list):
        return [
            _draft(element, index, instance, received)
            for index, element in enumerate(document)
        ]
    if isinstance(document, dict):
        return [_draft(document, None, instance, received)]
    raise PayloadError("body must be a JSON object or an array of objects")
