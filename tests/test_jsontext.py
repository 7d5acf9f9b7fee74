"""
The JSON text of jsontext.py pinned to the standard library's: whatever
orjson writes reads back as exactly the value the standard library's text
reads back as, and whatever a body is read as (orjson's reading where it
reads the same) is what the standard library's strict reading makes of it,
value or refusal.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwebhook import jsontext
from gwebhook.payload import PayloadError, parse_json, read_strictly

standard = json.JSONEncoder(ensure_ascii=False).encode

# Values a parsed body can hold: any integer (beyond 64 bits too), finite
# floats, strings without lone surrogates (the parser refuses those).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.integers(min_value=-(2**70), max_value=-(2**62))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]))
)
documents = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children)
    ),
    max_leaves=40,
)


def same(a, b) -> bool:
    """
    Equal as JSON values: types kept (1 is not 1.0), -0.0 is not 0.0, an
    object's members in the same order.
    """
    if isinstance(a, float) or isinstance(b, float):
        return (
            type(a) is type(b) and a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=400, deadline=None)
@given(documents)
def test_reads_back_as_the_standard_librarys_text_does(value):
    written = jsontext.encode(value)
    assert same(json.loads(written), json.loads(standard(value)))
    assert same(json.loads(written), value)


def test_integers_beyond_64_bits_are_written_exactly():
    value = {"big": 2**64, "small": -(2**63) - 1, "huge": 10**40}
    assert json.loads(jsontext.encode(value)) == value


def test_nesting_deeper_than_orjson_takes_is_written():
    value: list = []
    for _ in range(600):
        value = [value]
    assert json.loads(jsontext.encode(value)) == value


def test_text_is_compact_and_unescaped():
    assert jsontext.encode({"a": ["é", 1, None]}) == '{"a":["é",1,null]}'


# -- reading: orjson's reading pinned to the standard library's ---------------


def outcome(read, body: bytes):
    """What ``read`` makes of ``body``: ("value", v) or ("refused", message)."""
    try:
        return "value", read(body)
    except PayloadError as e:
        return "refused", str(e)


def assert_read_as_strictly(body: bytes) -> None:
    """
    What orjson reads, read_strictly reads as the same value; and parse_json
    (fast path and all) answers as read_strictly does: the same value, or
    the same refusal.
    """
    fast, slow = jsontext.read(body), outcome(read_strictly, body)
    if fast is not jsontext.NOT_READ:
        assert slow[0] == "value", (body[:200], slow)
        assert same(fast, slow[1]), body[:200]
    if not body.strip() or body.startswith(b"\xef\xbb\xbf"):
        return  # parse_json's own refusal, or the mark it drops first
    answer = outcome(parse_json, body)
    assert answer[0] == slow[0], (body[:200], answer, slow)
    if answer[0] == "value":
        assert same(answer[1], slow[1]), body[:200]
    else:
        assert answer[1] == slow[1]


@settings(max_examples=400, deadline=None)
@given(
    documents,
    st.booleans(),
    st.sampled_from([None, 0, 2]),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
)
def test_a_document_is_read_as_the_standard_library_reads_it(
    value, ascii_only, indent, separators
):
    """Any document, written in any of JSON's spellings (\\u escapes too)."""
    body = json.dumps(
        value, ensure_ascii=ascii_only, indent=indent, separators=separators
    ).encode("utf-8")
    assert_read_as_strictly(body)


# Bytes that are nearly JSON: whatever orjson reads, the standard library
# reads as the same value; whatever either refuses, the answer is the
# standard library's refusal.
near_json = st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b",", b":", b'"', b" ", b"\n", b"-", b".", b"e"]
        + [b"0", b"1", b"9", b"1234567890123456789", b"true", b"null", b"NaN"]
        + [b"Infinity", b"\\", b"\\u", b"d800", b"dc00", b"\\ud83d\\ude00", b"1e400"]
        + [b'"a"', b"\x00", b"\xff", b"\xc3\xa9", b"\t"]
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(near_json)
def test_nearly_json_is_read_or_refused_as_the_standard_library_does(body):
    assert_read_as_strictly(body)


@pytest.mark.parametrize(
    "body",
    [
        b"18446744073709551616",
        b"[ -9223372036854775809]",
        b'{"id":\n\t123456789012345678901234567890}',
        b"[1,2,\r\n 99999999999999999999999]",
        b'{"a": 1.5, "b": 10000000000000000000000.5}',
        b'{"hash": "86792953043137488026958"}',
        b'{"a": 1.12345678901234567890123456, "b": 1e0000000000000000000001}',
        b"[1e400]",
        b"[-1e400]",
        b"[NaN]",
        b'["\\ud800"]',
        b'["\\udc00x"]',
        b'["\\ud83d\\ude00"]',
        b'{"a": 1, "b": 2, "a": 3}',
        b"[" * 300 + b"]" * 300,
        b"[" * 1000 + b"]" * 1000,
        b"[" * 2000 + b"]" * 2000,
        b'{"a": "\\u0000", "b": -0, "c": -0.0}',
        b"not json",
        b"\xff\xfe",
    ],
)
def test_the_bodies_each_path_must_agree_on(body):
    assert_read_as_strictly(body)


def test_integers_in_number_places_are_left_to_the_standard_library():
    """orjson would read them as floats; a string's digits are orjson's."""
    for body in (b"12345678901234567890", b"[\n -12345678901234567890]"):
        assert jsontext.read(body) is jsontext.NOT_READ
    assert jsontext.read(b'{"h": "x12345678901234567890"}') == {
        "h": "x12345678901234567890"
    }
    assert jsontext.read(b"[" * 300 + b"]" * 300) is jsontext.NOT_READ
