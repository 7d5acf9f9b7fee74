"""
The store's JSON writer (orjson, the standard library where orjson cannot)
pinned to the standard library's: whatever it writes reads back as exactly
the value the standard library's text reads back as.
"""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gwebhook import jsontext

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
    """Equal as JSON values: types kept (1 is not 1.0), -0.0 is not 0.0."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            type(a) is type(b) and a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
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
