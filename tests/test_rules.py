"""The pure rules of docs/reference.md 2 and 3: payload, credentials, headers."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import tracemalloc
import zlib
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwebhook.credentials import Credentials
from gwebhook.headers import headers_for_details, is_printable_ascii
from gwebhook.instances import command_line_instance
from gwebhook.payload import (
    DEFAULT_NAME,
    DEFAULT_TYPE,
    MAX_GZIP_MEMBERS,
    BodyTooLarge,
    PayloadError,
    UnsupportedEncoding,
    decode_body,
    incidents_from,
    parse_json,
)
from gwebhook.timestamps import _canonical_utc, _iso_to_utc

RECEIVED = "2024-05-01T12:00:00Z"


def drafts(document, default_type=DEFAULT_TYPE):
    instance = command_line_instance(None, True, default_type, False)
    return incidents_from(document, instance, RECEIVED)


def one(document, **kwargs):
    [draft] = drafts(document, **kwargs)
    return draft


def refused(document) -> str:
    with pytest.raises(PayloadError) as caught:
        drafts(document)
    assert type(caught.value) is PayloadError
    return str(caught.value)


# -- incidents_from: shape ---------------------------------------------------


def test_object_is_one_incident():
    """A JSON object becomes exactly one incident."""
    draft = one({"name": "n", "type": "t", "rawJson": {"a": 1}})
    assert (draft.name, draft.type) == ("n", "t")
    assert draft.details == {"a": 1}


def test_array_is_one_incident_per_element_in_order():
    """A JSON array of objects becomes one incident per element, in order."""
    result = drafts([{"name": "first"}, {"name": "second"}, {"name": "third"}])
    assert [d.name for d in result] == ["first", "second", "third"]


def test_empty_array_is_no_incident():
    """An empty JSON array creates no incident and is not an error."""
    assert drafts([]) == []


@pytest.mark.parametrize("document", ["text", 5, 1.5, None, True])
def test_scalar_document_is_refused(document):
    """A body that is neither object nor array is refused, saying what it needs."""
    assert "JSON object or an array of objects" in refused(document)


@pytest.mark.parametrize("element", ["text", 5, None, [], [{}]])
def test_array_element_not_object_names_its_index(element):
    """An array element that is not an object is refused with its index."""
    assert refused([{}, {}, element]) == "element 2 is not a JSON object"


# -- incidents_from: details -------------------------------------------------


def test_raw_json_is_the_details():
    """The older ``raw_json`` field holds the details when ``rawJson`` is absent."""
    draft = one({"name": "n", "raw_json": {"some_field": "some_value"}})
    assert draft.details == {"some_field": "some_value"}


def test_rawjson_wins_over_raw_json():
    """When both are present, ``rawJson`` is the details and ``raw_json`` is ignored."""
    draft = one({"rawJson": {"new": 1}, "raw_json": {"old": 1}})
    assert draft.details == {"new": 1}


def test_rawjson_wins_even_when_raw_json_is_invalid():
    """A ``raw_json`` that is not an object is ignored when ``rawJson`` is there."""
    assert one({"rawJson": {"new": 1}, "raw_json": "junk"}).details["new"] == 1


def test_whole_object_is_details_without_rawjson():
    """Without ``rawJson`` or ``raw_json``, the whole object as sent is the details."""
    sent = {"string_field": "string_field_value", "array_field": ["item1", "item2"]}
    assert one(sent).details == sent


def test_whole_object_keeps_its_name_and_type_fields():
    """The whole object as details keeps the fields also read as name and type."""
    draft = one({"name": "n", "type": "t", "x": 1})
    assert draft.details == {"name": "n", "type": "t", "x": 1}


@pytest.mark.parametrize("key", ["rawJson", "raw_json"])
@pytest.mark.parametrize("value", ["text", 1, None, [], [{"a": 1}], True])
def test_details_field_not_object_is_refused(key, value):
    """A ``rawJson`` or ``raw_json`` that is not an object is refused, naming it."""
    assert refused({key: value}) == f"body: field {key!r} must be a JSON object"


def test_details_field_error_names_element_index():
    """A bad ``rawJson`` in an array is refused with the element's index."""
    assert (
        refused([{}, {"rawJson": 3}])
        == "element 1: field 'rawJson' must be a JSON object"
    )


def test_request_headers_are_not_copied_into_the_details():
    """
    The request's headers stay with the request, not in each incident's
    details: they are put back under ``headers`` when the incident is read.
    """
    assert one({"rawJson": {}}).details == {}


@pytest.mark.parametrize("key", ["rawJson", None])
def test_a_senders_own_headers_field_leaves_the_details(key):
    """A sender's ``headers`` field leaves the details; the key is the request's."""
    inner = {"headers": {"forged": "yes"}, "other": 1}
    draft = one({key: inner} if key else inner)
    assert draft.details == {"other": 1}


def test_document_is_not_modified():
    """Reading a document never changes it."""
    document = {"rawJson": {"headers": "mine"}}
    snapshot = json.dumps(document)
    one(document)
    assert json.dumps(document) == snapshot


# -- incidents_from: name and type -------------------------------------------


def test_default_name():
    """An object without ``name`` gets the documented default name."""
    assert one({}).name == DEFAULT_NAME == "Generic webhook triggered incident"


def test_default_type_is_unclassified():
    """An object without ``type`` gets ``Unclassified`` by default."""
    assert one({}).type == DEFAULT_TYPE == "Unclassified"


def test_default_type_is_the_configured_one():
    """An object without ``type`` gets the configured incident type."""
    assert one({}, default_type="Phishing").type == "Phishing"


def test_type_given_wins_over_default():
    """An object's own ``type`` wins over the configured default."""
    assert one({"type": "Malware"}, default_type="Phishing").type == "Malware"


@pytest.mark.parametrize("field", ["name", "type"])
@pytest.mark.parametrize("value", [1, None, ["x"], {"x": 1}, True])
def test_name_or_type_not_string_is_refused(field, value):
    """A ``name`` or ``type`` that is not a string is refused, naming the field."""
    assert refused({field: value}) == f"body: field {field!r} must be a string"


@pytest.mark.parametrize("field", ["name", "type"])
def test_name_or_type_with_a_nul_character_is_refused(field):
    """U+0000 in a name or type is refused (PostgreSQL's text cannot hold it)."""
    assert refused([{}, {field: "a\u0000b"}]) == (
        f"element 1: field {field!r} must not contain U+0000 (NUL)"
    )
    # In the details it is only JSON's \u0000: kept as sent.
    assert one({"name": "ok", "rawJson": {"x": "a\u0000b"}}).details == {
        "x": "a\u0000b"
    }


def test_name_not_string_in_array_names_index():
    """A ``name`` that is not a string in an array names the element's index."""
    assert refused([{"name": "ok"}, {"name": "ok"}, {"name": 7}]) == (
        "element 2: field 'name' must be a string"
    )


# -- incidents_from: occurred ------------------------------------------------


def test_occurred_defaults_to_received():
    """An object without ``occurred`` occurred when the request was received."""
    assert one({}).occurred == RECEIVED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05+00:00", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05+02:00", "2024-01-02T01:04:05Z"),
        ("2024-01-02T00:30:00-05:30", "2024-01-02T06:00:00Z"),
        ("2024-01-02T03:04:05", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.250Z", "2024-01-02T03:04:05.250000Z"),
        ("2024-01-02", "2024-01-02T00:00:00Z"),
        (" 2024-01-02T03:04:05Z ", "2024-01-02T03:04:05Z"),
    ],
)
def test_occurred_iso_is_normalised_to_utc(value, expected):
    """An ISO-8601 ``occurred`` is stored in UTC; without a zone it is read as UTC."""
    assert one({"occurred": value}).occurred == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000, "2023-11-14T22:13:20Z"),
        (1700000000.5, "2023-11-14T22:13:20.500000Z"),
        (1700000000000, "2023-11-14T22:13:20Z"),
        (1700000000123, "2023-11-14T22:13:20.123000Z"),
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59Z"),
        (99_999_999_999, "5138-11-16T09:46:39Z"),
        (100_000_000_000, "1973-03-03T09:46:40Z"),
    ],
)
def test_occurred_epoch_seconds_and_milliseconds(value, expected):
    """A numeric ``occurred`` is Unix epoch seconds, or milliseconds when that large."""
    assert one({"occurred": value}).occurred == expected


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2024",
        "2024-13-01",
        "2024-01-01T25:00:00",
        "01/02/2024",
        "",
        None,
        [2024],
        {"t": 1},
        1e300,
        -1e300,
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_occurred_unparseable_is_refused(value):
    """An ``occurred`` that is no date-time or epoch is refused, naming the field."""
    assert refused({"occurred": value}).startswith("body: field 'occurred' is not")


@pytest.mark.parametrize("value", [True, False])
def test_occurred_boolean_is_refused(value):
    """A boolean ``occurred`` is refused, although Python counts it as a number."""
    assert "field 'occurred'" in refused({"occurred": value})


def test_occurred_error_names_element_index():
    """An unparseable ``occurred`` in an array names the element's index."""
    message = refused([{"occurred": 1}, {"occurred": "soon"}])
    assert message.startswith("element 1: field 'occurred'")


def test_occurred_epoch_too_large_for_a_float_is_refused():
    """An integer ``occurred`` too large for any date is refused as unparseable."""
    assert "field 'occurred'" in refused({"occurred": 10**400})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T03:04:05.000Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.5Z", "2024-01-02T03:04:05.500000Z"),
        ("2024-01-02T03:04:05.123456Z", "2024-01-02T03:04:05.123456Z"),
        ("2024-01-02T03:04:05.1234567Z", "2024-01-02T03:04:05.123456Z"),
        ("2024-01-02 03:04:05Z", "2024-01-02T03:04:05Z"),
    ],
)
def test_occurred_utc_fractions_and_separators_are_normalised(value, expected):
    """A UTC ``occurred`` is stored with no fraction or six digits, and a ``T``."""
    assert one({"occurred": value}).occurred == expected


@pytest.mark.parametrize(
    "value", ["2024-02-30T00:00:00Z", "2024-01-02T24:00:00Z", "0000-01-01T00:00:00Z"]
)
def test_occurred_utc_not_in_the_calendar_is_refused(value):
    """A UTC ``occurred`` written in the usual form but not a real time is refused."""
    assert refused({"occurred": value}).startswith("body: field 'occurred' is not")


def utc_text(moment: datetime, digits: int) -> str:
    """``moment`` written ``YYYY-MM-DDTHH:MM:SS[.f]Z`` with ``digits`` of fraction."""
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    return text + "Z"


@given(st.datetimes(), st.integers(min_value=0, max_value=6))
@settings(max_examples=300, deadline=None)
def test_the_fast_path_reads_usual_utc_as_the_full_reading_does(moment, digits):
    """Every real UTC time in the usual form takes the fast path, to the same text."""
    text = utc_text(moment, digits)
    assert _canonical_utc(text) is not None
    assert _canonical_utc(text) == _iso_to_utc(text)


# Near misses of the usual form: any digits, fractions too long, other
# separators, zones, spaces.
near_utc = st.from_regex(
    r"\s?[0-9]{4}-[0-9]{2}-[0-9]{2}[T t][0-9]{2}:[0-9]{2}(:[0-9]{2})?"
    r"([.,][0-9]{0,8})?(Z|z|[+-][0-9]{2}:[0-9]{2})?\s?",
    fullmatch=True,
)


@given(near_utc | st.text(alphabet="0123456789-T:.Z+ ", max_size=30) | st.text())
@settings(max_examples=1000, deadline=None)
def test_the_fast_path_answers_as_the_full_reading_or_not_at_all(text):
    """On any text, the fast path gives the full reading's answer, or leaves it."""
    fast = _canonical_utc(text)
    if fast is not None:
        assert fast == _iso_to_utc(text)


# -- parse_json --------------------------------------------------------------


def test_parse_json_object_and_array():
    """UTF-8 JSON text is read as the value it spells."""
    assert parse_json(b'{"a": [1, "\xc3\xa9"]}') == {"a": [1, "\u00e9"]}
    assert parse_json(b"[]") == []


def test_parse_json_tolerates_bom():
    """A UTF-8 byte-order mark before the JSON is tolerated."""
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}


@pytest.mark.parametrize("body", [b"", b"   ", b"\r\n\t"])
def test_parse_json_empty_body_is_refused(body):
    """An empty (or all-whitespace) body is refused as empty."""
    with pytest.raises(PayloadError, match="body is empty"):
        parse_json(body)


@pytest.mark.parametrize(
    "body",
    [b'{"a": "\xff"}', b'{"name": "caf\xe9"}', '{"a": 1}'.encode("utf-16")],
)
def test_parse_json_not_utf8_is_refused(body):
    """A body that is not UTF-8 is refused as such."""
    with pytest.raises(PayloadError, match="not UTF-8"):
        parse_json(body)


@pytest.mark.parametrize(
    "body", [b"{", b"name=x", b"{'a': 1}", b'{"a": 1} trailing', b"[1,]"]
)
def test_parse_json_not_json_is_refused(body):
    """A body that is not JSON is refused as such."""
    with pytest.raises(PayloadError, match="body is not JSON"):
        parse_json(body)


@pytest.mark.parametrize(
    "body", [b"NaN", b'{"a": NaN}', b"[Infinity]", b'{"a": -Infinity}']
)
def test_parse_json_rejects_nan_and_infinity(body):
    """NaN and Infinity, which Python's json accepts, are not JSON and are refused."""
    with pytest.raises(PayloadError, match="not JSON"):
        parse_json(body)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_parse_json_deep_nesting_is_a_payload_error(body):
    """Very deep nesting is refused as a PayloadError, never a RecursionError."""
    with pytest.raises(PayloadError, match="nested too deeply"):
        parse_json(body)


def test_parse_json_huge_integer_is_a_payload_error():
    """An integer literal beyond Python's digit limit is refused, not raised raw."""
    with pytest.raises(PayloadError):
        parse_json(b"1" * 10_000)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e309"])
def test_overflowing_number_is_refused(number):
    """
    A number beyond a double is refused (without echoing it): read, it would
    be an infinity, which JSON cannot write back.
    """
    with pytest.raises(PayloadError) as refused:
        parse_json(b'{"n": %s}' % number.encode())
    assert str(refused.value) == (
        "body is not JSON: a number is too large for a double"
    )


@pytest.mark.parametrize(
    "body", [b'{"k": "\\ud800"}', b'{"\\udfff": 1}', b'["a\\udbff", "\\udc00b"]']
)
def test_lone_surrogate_is_refused(body):
    """A surrogate escape without its other half (UTF-8 cannot hold it) is refused."""
    with pytest.raises(PayloadError) as refused:
        parse_json(body)
    assert str(refused.value) == (
        "body is not JSON that UTF-8 can hold: an unpaired surrogate escape (\\udXXX)"
    )


def test_surrogate_pair_escape_is_its_character():
    """A surrogate pair, escaped, is read as the one character it stands for."""
    assert parse_json(b'{"k": "\\ud83d\\ude00"}') == {"k": "\U0001f600"}


# -- decode_body -------------------------------------------------------------


@pytest.mark.parametrize("coding", [None, "", "identity", " Identity "])
def test_identity_body_is_unchanged(coding):
    """Without a content coding, the body is returned as it came."""
    assert decode_body(b"{}", coding, 10) == b"{}"


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "GZIP", " gzip "])
def test_gzip_body_is_decompressed(coding):
    """A gzip body (any spelling of the coding) is decompressed."""
    assert decode_body(gzip.compress(b'{"a": 1}'), coding, 100) == b'{"a": 1}'


def test_gzip_concatenated_members_are_one_body():
    """Concatenated gzip members decompress to one body (RFC 1952)."""
    body = gzip.compress(b'{"a": ') + gzip.compress(b"1}")
    assert decode_body(body, "gzip", 100) == b'{"a": 1}'


def test_gzip_exactly_at_limit_is_accepted():
    """A gzip body that decompresses to exactly the limit is accepted."""
    assert decode_body(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100


def test_gzip_one_byte_over_limit_is_too_large():
    """A gzip body that decompresses to one byte over the limit is refused with 413."""
    with pytest.raises(BodyTooLarge) as caught:
        decode_body(gzip.compress(b"x" * 101), "gzip", 100)
    assert caught.value.status == 413
    assert "over the limit of 100 bytes" in str(caught.value)


def test_gzip_members_over_limit_together_are_too_large():
    """Members each under the limit but over it together are refused with 413."""
    body = gzip.compress(b"x" * 60) + gzip.compress(b"y" * 60)
    with pytest.raises(BodyTooLarge):
        decode_body(body, "gzip", 100)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 64 KB of gzip that inflates to 64 MiB of zeros."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    return b"".join(deflater.compress(block) for _ in range(64)) + deflater.flush()


def test_gzip_bomb_stops_at_limit_without_inflating_it(gzip_bomb):
    """A gzip bomb is refused at the limit without ever holding much more than it."""
    assert len(gzip_bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            decode_body(gzip_bomb, "gzip", 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 64 MiB inflated would show; the limit plus working space is all there is.
    assert peak < 8 * 1024 * 1024


def test_truncated_gzip_is_refused():
    """A gzip body cut short is refused with 400."""
    body = gzip.compress(b'{"name": "x"}' * 10)
    with pytest.raises(PayloadError, match="truncated") as caught:
        decode_body(body[: len(body) // 2], "gzip", 1000)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "body", [b"{}", b"\x1f\x8b garbage", gzip.compress(b"{}") + b"trailing"]
)
def test_invalid_gzip_is_refused(body):
    """A body that is not gzip (or has junk after its members) is refused with 400."""
    with pytest.raises(PayloadError, match="not valid gzip") as caught:
        decode_body(body, "gzip", 1000)
    assert caught.value.status == 400


@pytest.mark.parametrize("coding", ["br", "deflate", "compress", "zstd", "gzip, br"])
def test_unsupported_encoding_is_415(coding):
    """A content coding other than identity or gzip is 415; the value is not echoed."""
    with pytest.raises(UnsupportedEncoding) as caught:
        decode_body(b"{}", coding, 1000)
    assert caught.value.status == 415
    assert str(caught.value) == (
        "Content-Encoding is neither identity nor gzip; send one of those"
    )


def test_payload_error_status_is_400():
    """A plain payload error answers 400."""
    assert PayloadError("x").status == 400


# -- Credentials: basic ------------------------------------------------------


def basic(user: bytes, password: bytes, scheme: bytes = b"Basic") -> bytes:
    return scheme + b" " + base64.b64encode(user + b":" + password)


BASIC = Credentials.from_options("admin", "pa:ss w\u00f6rd")
PASSWORD = "pa:ss w\u00f6rd".encode()


def test_basic_mode_from_options():
    """A plain username means Basic authentication on the Authorization header."""
    assert BASIC.basic
    assert BASIC.header == "authorization"
    assert BASIC.field == b"authorization"


def test_basic_right_credentials_accepted():
    """Basic credentials with the right user and password are accepted."""
    assert BASIC.accepts([basic(b"admin", PASSWORD)])


@pytest.mark.parametrize("scheme", [b"basic", b"BASIC", b"bAsIc"])
def test_basic_scheme_is_case_insensitive(scheme):
    """The Basic scheme name is matched case-insensitively."""
    assert BASIC.accepts([basic(b"admin", PASSWORD, scheme)])


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (b"Admin", PASSWORD),
        (b"admin", PASSWORD + b"x"),
        (b"admin", PASSWORD[:-1]),
        (b"admin", b""),
        (b"", PASSWORD),
        (b"admin:" + PASSWORD, b""),
    ],
)
def test_basic_wrong_user_or_password_refused(user, password):
    """Basic credentials with a wrong user or password are refused."""
    assert not BASIC.accepts([basic(user, password)])


@pytest.mark.parametrize(
    "value",
    [
        b"Basic !!!notbase64",
        b"Basic YWRtaW4",
        b"Basic " + base64.b64encode(b"admin" + PASSWORD),
        b"Basic",
        b"Basic ",
        b"",
    ],
)
def test_basic_malformed_refused(value):
    """A malformed Basic value (bad base64, no colon, nothing) is refused."""
    assert not BASIC.accepts([value])


@pytest.mark.parametrize("scheme", [b"Bearer", b"Digest", b"Token"])
def test_other_scheme_refused(scheme):
    """Another scheme carrying the right credentials is refused in Basic mode."""
    assert not BASIC.accepts([basic(b"admin", PASSWORD, scheme)])


@pytest.mark.parametrize("values", [None, []])
def test_missing_credentials_refused(values):
    """A request without the credential header is refused."""
    assert not BASIC.accepts(values)


def test_duplicated_credential_header_refused():
    """A credential header sent twice is refused, even when both copies are right."""
    right = basic(b"admin", PASSWORD)
    assert not BASIC.accepts([right, right])
    assert not BASIC.accepts([basic(b"x", b"y"), right])


# -- Credentials: header token -----------------------------------------------


def test_header_mode_from_options():
    """``_header:NAME`` means a header token, with the header name lowercased."""
    creds = Credentials.from_options("_header:X-Webhook-Token", "Bearer XXX")
    assert not creds.basic
    assert creds.header == "x-webhook-token"
    assert creds.field == b"x-webhook-token"


@pytest.mark.parametrize(
    "username",
    ["_header:Authorization", "_header:authorization", "_header:AUTHORIZATION"],
)
def test_header_mode_name_is_case_insensitive(username):
    """The header name of ``_header:NAME`` is matched whatever its case."""
    creds = Credentials.from_options(username, "Bearer XXX")
    assert creds.header == "authorization"
    assert creds.accepts([b"Bearer XXX"])


def test_header_mode_exact_value_accepted():
    """The header token is accepted when the whole value equals the password."""
    creds = Credentials.from_options("_header:Authorization", "Bearer XXX")
    assert creds.accepts([b"Bearer XXX"])


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer xxx",
        b"bearer XXX",
        b"Bearer XX",
        b"Bearer XXXX",
        b"XXX",
        b"Bearer  XXX",
        b"",
    ],
)
def test_header_mode_other_value_refused(value):
    """Any value other than exactly the password is refused (case matters)."""
    creds = Credentials.from_options("_header:Authorization", "Bearer XXX")
    assert not creds.accepts([value])


def test_header_mode_duplicated_header_refused():
    """A header token sent twice is refused."""
    creds = Credentials.from_options("_header:Authorization", "Bearer XXX")
    assert not creds.accepts([b"Bearer XXX", b"Bearer XXX"])


def test_header_mode_is_not_basic_even_if_value_looks_basic():
    """In header mode a Basic-looking password is compared as an opaque value."""
    creds = Credentials.from_options("_header:Authorization", "Basic MYIvOkEyMw==")
    assert creds.accepts([b"Basic MYIvOkEyMw=="])
    assert not creds.accepts([b"Basic " + base64.b64encode(b"MYIvOkEyMw==")])


# -- headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"Host: example.com",
        b"X-A:\tvalue with tab",
        b"POST / HTTP/1.1",
        b"~!@#$%^&*()",
    ],
)
def test_printable_ascii_accepted(line):
    """Visible ASCII, spaces and tabs are printable."""
    assert is_printable_ascii(line)


@pytest.mark.parametrize(
    "line",
    [
        "X-Name: caf\u00e9".encode(),
        b"X-Name: \x80",
        b"X-Name: \xff",
        b"X-Name: a\x00b",
        b"X-Name: a\x01b",
        b"X-Name: a\x7fb",
        b"X-Name: a\x1bb",
        b"X-Name: a\rb",
        b"X-Name: a\nb",
        b"X-N\xc3\xa4me: v",
    ],
)
def test_non_printable_refused(line):
    """Bytes above 0x7E and control characters other than tab are not printable."""
    assert not is_printable_ascii(line)


@given(st.binary(max_size=64))
@settings(max_examples=200)
def test_printable_ascii_property(line):
    """A line is printable exactly when every byte is tab or 0x20-0x7E."""
    assert is_printable_ascii(line) == all(b == 9 or 0x20 <= b <= 0x7E for b in line)


def test_headers_for_details_lowercases_names():
    """Header names are stored in lowercase."""
    raw = [(b"Content-Type", [b"application/json"]), (b"X-GitHub-Event", [b"push"])]
    assert headers_for_details(raw, None) == {
        "content-type": "application/json",
        "x-github-event": "push",
    }


def test_headers_for_details_joins_repeated():
    """A header sent more than once is joined with ", ", in order."""
    raw = [
        (b"X-Forwarded-For", [b"10.0.0.1", b"10.0.0.2"]),
        (b"x-forwarded-for", [b"c"]),
    ]
    assert headers_for_details(raw, None) == {
        "x-forwarded-for": "10.0.0.1, 10.0.0.2, c"
    }


def test_headers_for_details_removes_credential_header():
    """The header carrying the credential is not kept."""
    raw = [(b"X-Webhook-Token", [b"secret"]), (b"Host", [b"h"])]
    assert headers_for_details(raw, "x-webhook-token") == {"host": "h"}


@pytest.mark.parametrize(
    "credential_header", [None, "x-webhook-token", "authorization"]
)
def test_headers_for_details_never_keeps_authorization(credential_header):
    """``Authorization`` is never kept, whatever header carries the credential."""
    raw = [(b"Authorization", [b"Bearer someone-elses"]), (b"Host", [b"h"])]
    assert headers_for_details(raw, credential_header) == {"host": "h"}


# -- properties --------------------------------------------------------------

SPECIAL_KEYS = ["name", "type", "occurred", "rawJson", "raw_json", "headers"]

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_scalars |= st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(SPECIAL_KEYS) | st.text(max_size=10), children, max_size=4
        )
    ),
    max_leaves=10,
)
plain_keys = st.text(max_size=10).filter(lambda key: key not in SPECIAL_KEYS)
plain_objects = st.dictionaries(plain_keys, json_values, max_size=5)


@given(plain_objects)
@settings(max_examples=75, deadline=None)
def test_any_object_round_trips_into_details(obj):
    """Any JSON object sent as a body comes back as the details."""
    body = json.dumps(obj).encode("utf-8")
    draft = one(parse_json(body))
    assert draft.details == obj
    assert (draft.name, draft.type, draft.occurred) == (
        DEFAULT_NAME,
        DEFAULT_TYPE,
        RECEIVED,
    )


# Any text but U+0000, which a name or type may not hold.
_NAMES = st.text(st.characters(blacklist_characters="\x00"), max_size=20)


@given(plain_objects, _NAMES, _NAMES)
@settings(max_examples=75, deadline=None)
def test_any_rawjson_round_trips_into_details(inner, name, kind):
    """Any object under ``rawJson`` is the details, with name and type as given."""
    draft = one({"name": name, "type": kind, "rawJson": inner, "other": 1})
    assert draft.details == inner
    assert (draft.name, draft.type) == (name, kind)


@given(json_values)
@settings(max_examples=150, deadline=None)
def test_incidents_from_only_raises_payload_error(document):
    """On any JSON value, incidents_from returns drafts or raises PayloadError only."""
    try:
        result = drafts(document)
    except PayloadError:
        return
    assert isinstance(document, (list, dict))
    assert len(result) == (len(document) if isinstance(document, list) else 1)


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_parse_json_only_raises_payload_error(body):
    """On any bytes, parse_json returns a value or raises PayloadError only."""
    with contextlib.suppress(PayloadError):
        parse_json(body)


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400))
@settings(max_examples=200, deadline=None)
def test_gzip_round_trip_or_too_large(data, limit):
    """A gzip body decodes to what was compressed when within the limit, else 413."""
    body = gzip.compress(data)
    if len(data) <= limit:
        assert decode_body(body, "gzip", limit) == data
    else:
        with pytest.raises(BodyTooLarge):
            decode_body(body, "gzip", limit)


def test_gzip_body_of_too_many_members_is_refused():
    """A gzip body made of more members than a sender ever needs is refused."""
    members = b"".join(
        gzip.compress(b"") for _ in range(MAX_GZIP_MEMBERS)
    ) + gzip.compress(b"{}")
    with pytest.raises(PayloadError, match="members"):
        decode_body(members, "gzip", 1 << 20)
    few = b"".join(gzip.compress(part) for part in (b'{"a"', b": 1}"))
    assert decode_body(few, "gzip", 1 << 20) == b'{"a": 1}'


def test_deep_nesting_around_an_escaped_character_is_refused_not_crashed():
    """Nesting deep enough to exhaust the stack while checking escapes is a 400."""
    for depth in (900, 947, 1000, 5000):
        body = b"[" * depth + b'"\\ud83d\\ude00"' + b"]" * depth
        try:
            parse_json(body)
        except PayloadError as e:
            assert "nested too deeply" in str(e)
