"""
Signatures: each scheme checked against requests its senders' own libraries
sign (or, for GitHub, its documented example), and every way one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier
from standardwebhooks import Webhook
from twisted.web.http_headers import Headers

from gwebhook.signatures import (
    SignatureConfig,
    SignatureRefused,
    standard_key,
    verify,
    webhook_id_header,
)

NOW = 1_700_000_000
BODY = b'{"action":"opened","number":1}'


def headers(**values: str | list[str]) -> dict[str, list[str]]:
    """A mapping of lowercase header names (``_`` for ``-``) to their values."""
    return {
        name.replace("_", "-").lower(): value if isinstance(value, list) else [value]
        for name, value in values.items()
    }


def refusal(config, given, body=BODY, now=NOW) -> SignatureRefused:
    with pytest.raises(SignatureRefused) as caught:
        verify(config, given, body, now)
    assert caught.value.reason in ("missing", "malformed", "stale", "wrong")
    assert str(caught.value) == caught.value.message
    assert "\n" not in caught.value.message
    return caught.value


def reason(config, given, body=BODY, now=NOW) -> str:
    return refusal(config, given, body, now).reason


# -- github ---------------------------------------------------------------------------

GITHUB_SECRET = b"It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = (
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
)
GITHUB = SignatureConfig("github", (GITHUB_SECRET,))


def test_github_documented_example_verifies():
    """GitHub's documented secret, payload and signature verify."""
    verify(GITHUB, headers(x_hub_signature_256=GITHUB_SIGNATURE), GITHUB_BODY, NOW)


def test_github_headers_can_be_read_from_twisted():
    """Twisted's getRawHeaders serves as the header source, whatever the case."""
    raw = Headers({b"X-HUB-Signature-256": [GITHUB_SIGNATURE.encode()]})
    verify(GITHUB, raw.getRawHeaders, GITHUB_BODY, NOW)


def test_github_signature_takes_no_account_of_time():
    """GitHub signs no timestamp: the same delivery verifies at any time."""
    given = headers(x_hub_signature_256=GITHUB_SIGNATURE)
    verify(GITHUB, given, GITHUB_BODY, 0)
    verify(GITHUB, given, GITHUB_BODY, NOW * 10)


def test_github_upper_case_hex_verifies():
    """Hex digits are read in either case."""
    value = "sha256=" + GITHUB_SIGNATURE.removeprefix("sha256=").upper()
    verify(GITHUB, headers(x_hub_signature_256=value), GITHUB_BODY, NOW)


def test_github_tampered_body_is_wrong():
    """One byte changed in the body makes the signature wrong."""
    given = headers(x_hub_signature_256=GITHUB_SIGNATURE)
    refused = refusal(GITHUB, given, b"Hello, World?")
    assert (refused.reason, refused.message) == ("wrong", "signature wrong")


def test_github_wrong_secret_is_wrong():
    """A secret the sender did not use makes the signature wrong."""
    config = SignatureConfig("github", (b"It's a Secret to Nobody",))
    given = headers(x_hub_signature_256=GITHUB_SIGNATURE)
    assert reason(config, given, GITHUB_BODY) == "wrong"


def test_github_second_secret_of_the_list_verifies():
    """During a rotation the second secret of the list verifies too."""
    config = SignatureConfig("github", (b"the new one", GITHUB_SECRET))
    verify(config, headers(x_hub_signature_256=GITHUB_SIGNATURE), GITHUB_BODY, NOW)


def test_github_missing_header_names_it():
    """Without X-Hub-Signature-256 the refusal says which header to send."""
    refused = refusal(GITHUB, headers(x_hub_signature="sha1=" + "0" * 40))
    assert (refused.reason, refused.message) == (
        "missing",
        "signature missing: send X-Hub-Signature-256",
    )


def test_github_empty_header_is_missing():
    """A header with an empty value counts as missing."""
    assert reason(GITHUB, headers(x_hub_signature_256="")) == "missing"


@pytest.mark.parametrize(
    "value",
    [
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e177",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1g",
        "sha256=",
    ],
)
def test_github_malformed_header_is_malformed(value):
    """A value that is not sha256= and 64 hex digits is malformed, not wrong."""
    refused = refusal(GITHUB, headers(x_hub_signature_256=value), GITHUB_BODY)
    assert (refused.reason, refused.message) == (
        "malformed",
        "signature malformed: X-Hub-Signature-256 must be sha256= and 64 hex digits",
    )


def test_github_header_sent_twice_is_malformed():
    """Two signature headers are refused rather than either being picked."""
    given = headers(x_hub_signature_256=[GITHUB_SIGNATURE, "sha256=" + "0" * 64])
    refused = refusal(GITHUB, given, GITHUB_BODY)
    assert (refused.reason, refused.message) == (
        "malformed",
        "signature malformed: X-Hub-Signature-256 sent more than once; send it once",
    )


def test_github_default_delivery_header():
    """GitHub names each delivery in X-GitHub-Delivery."""
    assert webhook_id_header(GITHUB) == "X-GitHub-Delivery"


# -- stripe ---------------------------------------------------------------------------

STRIPE_SECRET = "whsec_test_b6f1c3d2e4a5"
STRIPE = SignatureConfig("stripe", (STRIPE_SECRET.encode(),))


def stripe_header(body: bytes = BODY, secret=STRIPE_SECRET, t: int = NOW) -> str:
    """The Stripe-Signature header as Stripe's SDK makes it."""
    return stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=t
    )


def test_stripe_sdk_header_verifies():
    """A header the Stripe SDK generates verifies, the secret used as written."""
    verify(STRIPE, headers(stripe_signature=stripe_header()), BODY, NOW)


def test_stripe_sdk_accepts_what_is_verified_now():
    """What passes here at the current time passes the Stripe SDK's own check."""
    now = int(time.time())
    value = stripe_header(t=now)
    verify(STRIPE, headers(stripe_signature=value), BODY, now)
    assert stripe.WebhookSignature.verify_header(
        BODY.decode(), value, STRIPE_SECRET, 300
    )


def test_stripe_any_of_several_v1_signatures_verifies():
    """Of several v1 signatures (Stripe's own rotation) one that matches is enough."""
    genuine = stripe_header().split(",v1=")[1]
    value = f"t={NOW},v1={'0' * 64},v1={genuine},v0={'1' * 64}"
    verify(STRIPE, headers(stripe_signature=value), BODY, NOW)


def test_stripe_v0_alone_is_malformed():
    """A header with no v1 signature (only the test-mode v0) is malformed."""
    value = f"t={NOW},v0={'1' * 64}"
    assert reason(STRIPE, headers(stripe_signature=value)) == "malformed"


def test_stripe_tampered_body_is_wrong():
    """A body other than the one signed makes the signature wrong."""
    given = headers(stripe_signature=stripe_header())
    assert reason(STRIPE, given, BODY + b" ") == "wrong"


def test_stripe_tampered_timestamp_is_wrong():
    """The timestamp is signed: changing it makes the signature wrong."""
    value = stripe_header().replace(f"t={NOW}", f"t={NOW + 1}")
    assert reason(STRIPE, headers(stripe_signature=value)) == "wrong"


def test_stripe_wrong_secret_is_wrong():
    """A header signed with another endpoint's secret is wrong."""
    value = stripe_header(secret="whsec_someone_else")
    assert reason(STRIPE, headers(stripe_signature=value)) == "wrong"


def test_stripe_second_secret_of_the_list_verifies():
    """During a rotation the second secret of the list verifies too."""
    config = SignatureConfig("stripe", (b"whsec_new", STRIPE_SECRET.encode()))
    verify(config, headers(stripe_signature=stripe_header()), BODY, NOW)


@pytest.mark.parametrize("offset", [-301, 301, -10_000_000, 10_000_000])
def test_stripe_timestamp_past_or_future_tolerance_is_stale(offset):
    """A timestamp more than the tolerance away from now, either way, is stale."""
    given = headers(stripe_signature=stripe_header())
    refused = refusal(STRIPE, given, now=NOW + offset)
    assert (refused.reason, refused.message) == (
        "stale",
        "signature stale: its timestamp is more than 300 s from now",
    )


@pytest.mark.parametrize("offset", [-300, 300])
def test_stripe_timestamp_at_the_tolerance_verifies(offset):
    """A timestamp exactly the tolerance away still verifies."""
    verify(STRIPE, headers(stripe_signature=stripe_header()), BODY, NOW + offset)


def test_stripe_tolerance_is_the_configured_one():
    """The configured tolerance is what the timestamp is held to, and what is said."""
    config = SignatureConfig("stripe", (STRIPE_SECRET.encode(),), tolerance=30)
    given = headers(stripe_signature=stripe_header())
    verify(config, given, BODY, NOW + 30)
    refused = refusal(config, given, now=NOW + 31)
    assert (
        refused.message == "signature stale: its timestamp is more than 30 s from now"
    )


def test_stripe_stale_and_wrong_is_said_stale_without_any_hmac():
    """Staleness is decided before the signature is compared."""
    value = stripe_header(secret="whsec_someone_else")
    assert reason(STRIPE, headers(stripe_signature=value), now=NOW + 301) == "stale"


def test_stripe_missing_header_names_it():
    """Without Stripe-Signature the refusal says which header to send."""
    assert refusal(STRIPE, headers()).message == (
        "signature missing: send Stripe-Signature"
    )


@pytest.mark.parametrize(
    "value",
    [
        "v1=" + "a" * 64,
        f"t={NOW}",
        f"t={NOW},v1=" + "a" * 63,
        f"t={NOW},v1=" + "z" * 64,
        f"t=-{NOW},v1=" + "a" * 64,
        f"t={NOW}.5,v1=" + "a" * 64,
        f"t={NOW},t={NOW},v1=" + "a" * 64,
        f"t={NOW},v1" + "a" * 64,
        "t=" + "9" * 400 + ",v1=" + "a" * 64,
        "garbage",
    ],
)
def test_stripe_malformed_header_is_malformed(value):
    """A header without one t= of digits and a v1= of 64 hex digits is malformed."""
    refused = refusal(STRIPE, headers(stripe_signature=value))
    assert (refused.reason, refused.message) == (
        "malformed",
        "signature malformed: Stripe-Signature must be t=<Unix time> and one or "
        "more v1=<64 hex digits>, separated by commas",
    )


def test_stripe_has_no_delivery_header():
    """Stripe names its events in the body, not in a header."""
    assert webhook_id_header(STRIPE) is None


# -- slack ----------------------------------------------------------------------------

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK = SignatureConfig("slack", (SLACK_SECRET.encode(),))


def slack_headers(
    body: bytes = BODY, secret: str = SLACK_SECRET, ts: int = NOW
) -> dict[str, list[str]]:
    """The headers Slack sends, signed by Slack's SDK."""
    signature = SignatureVerifier(secret).generate_signature(
        timestamp=str(ts), body=body
    )
    assert signature is not None
    return headers(x_slack_request_timestamp=str(ts), x_slack_signature=signature)


def test_slack_sdk_signature_verifies():
    """A signature Slack's SDK generates verifies."""
    verify(SLACK, slack_headers(), BODY, NOW)


def test_slack_sdk_accepts_what_is_verified_now():
    """What passes here at the current time passes Slack's own verifier."""
    now = int(time.time())
    given = slack_headers(ts=now)
    verify(SLACK, given, BODY, now)
    flat = {name: values[0] for name, values in given.items()}
    assert SignatureVerifier(SLACK_SECRET).is_valid_request(BODY, flat)


def test_slack_tampered_body_is_wrong():
    """A body other than the one signed makes the signature wrong."""
    assert reason(SLACK, slack_headers(), b'{"action":"closed","number":1}') == "wrong"


def test_slack_tampered_timestamp_is_wrong():
    """The timestamp is signed: changing it makes the signature wrong."""
    given = slack_headers()
    given["x-slack-request-timestamp"] = [str(NOW - 1)]
    assert reason(SLACK, given) == "wrong"


def test_slack_wrong_secret_is_wrong():
    """A signature made with another app's secret is wrong."""
    assert reason(SLACK, slack_headers(secret="another app")) == "wrong"


def test_slack_second_secret_of_the_list_verifies():
    """During a rotation the second secret of the list verifies too."""
    config = SignatureConfig("slack", (b"new signing secret", SLACK_SECRET.encode()))
    verify(config, slack_headers(), BODY, NOW)


@pytest.mark.parametrize("offset", [-301, 301])
def test_slack_timestamp_past_or_future_tolerance_is_stale(offset):
    """A timestamp more than the tolerance away from now, either way, is stale."""
    assert reason(SLACK, slack_headers(), now=NOW + offset) == "stale"


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("x-slack-signature", "signature missing: send X-Slack-Signature"),
        (
            "x-slack-request-timestamp",
            "signature missing: send X-Slack-Request-Timestamp",
        ),
    ],
)
def test_slack_missing_header_names_the_one_missing(missing, message):
    """The refusal names exactly the header that was not sent."""
    given = slack_headers()
    del given[missing]
    refused = refusal(SLACK, given)
    assert (refused.reason, refused.message) == ("missing", message)


def test_slack_no_header_names_both():
    """With neither header the refusal names both."""
    assert refusal(SLACK, headers()).message == (
        "signature missing: send X-Slack-Request-Timestamp and X-Slack-Signature"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "x-slack-request-timestamp",
            "yesterday",
            "X-Slack-Request-Timestamp must be a Unix time in seconds",
        ),
        (
            "x-slack-signature",
            "v1=" + "a" * 64,
            "X-Slack-Signature must be v0= and 64 hex digits",
        ),
        (
            "x-slack-signature",
            "v0=" + "a" * 40,
            "X-Slack-Signature must be v0= and 64 hex digits",
        ),
    ],
)
def test_slack_malformed_header_is_malformed(name, value, message):
    """A timestamp that is not digits or a signature not v0=<hex> is malformed."""
    given = slack_headers()
    given[name] = [value]
    refused = refusal(SLACK, given)
    assert (refused.reason, refused.message) == (
        "malformed",
        f"signature malformed: {message}",
    )


def test_slack_malformed_signature_is_said_before_a_stale_timestamp():
    """Checks run missing, malformed, stale, wrong: a broken header is malformed."""
    given = slack_headers()
    given["x-slack-signature"] = ["v0=zz"]
    assert reason(SLACK, given, now=NOW + 10_000) == "malformed"


# -- standard webhooks ----------------------------------------------------------------

STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STANDARD = SignatureConfig("standard", (standard_key(STANDARD_SECRET),))
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"


def standard_headers(
    body: bytes = BODY,
    secret: str = STANDARD_SECRET,
    ts: int = NOW,
    message_id: str = MESSAGE_ID,
) -> dict[str, list[str]]:
    """The headers a Standard Webhooks sender sends, signed by its library."""
    signature = Webhook(secret).sign(
        message_id, datetime.fromtimestamp(ts, UTC), body.decode()
    )
    return headers(
        webhook_id=message_id, webhook_timestamp=str(ts), webhook_signature=signature
    )


def test_standard_library_signature_verifies():
    """A signature the standardwebhooks library makes verifies."""
    verify(STANDARD, standard_headers(), BODY, NOW)


def test_standard_library_accepts_what_is_verified_now():
    """What passes here at the current time passes the library's own check."""
    now = int(time.time())
    given = standard_headers(ts=now)
    verify(STANDARD, given, BODY, now)
    flat = {name: values[0] for name, values in given.items()}
    assert Webhook(STANDARD_SECRET).verify(BODY, flat) == json.loads(BODY)


def test_standard_any_signature_of_the_list_verifies():
    """The header is a space-separated list; other versions are skipped."""
    [genuine] = standard_headers()["webhook-signature"]
    other = "v1," + base64.b64encode(b"\0" * 32).decode()
    given = standard_headers()
    given["webhook-signature"] = [f"v1a,{'A' * 86}== {other} {genuine}"]
    verify(STANDARD, given, BODY, NOW)


def test_standard_tampered_body_is_wrong():
    """A body other than the one signed makes the signature wrong."""
    assert reason(STANDARD, standard_headers(), BODY[:-1]) == "wrong"


def test_standard_tampered_id_is_wrong():
    """The message id is signed: changing it makes the signature wrong."""
    given = standard_headers()
    given["webhook-id"] = ["msg_other"]
    assert reason(STANDARD, given) == "wrong"


def test_standard_wrong_secret_is_wrong():
    """A signature made with another key is wrong."""
    given = standard_headers(secret="whsec_" + base64.b64encode(b"k" * 24).decode())
    assert reason(STANDARD, given) == "wrong"


def test_standard_second_secret_of_the_list_verifies():
    """During a rotation the second secret of the list verifies too."""
    config = SignatureConfig(
        "standard", (b"a newer key, 24 bytes ..", standard_key(STANDARD_SECRET))
    )
    verify(config, standard_headers(), BODY, NOW)


@pytest.mark.parametrize("offset", [-301, 301])
def test_standard_timestamp_past_or_future_tolerance_is_stale(offset):
    """A timestamp more than the tolerance away from now, either way, is stale."""
    assert reason(STANDARD, standard_headers(), now=NOW + offset) == "stale"


def test_standard_missing_headers_are_named():
    """The refusal names each of the three headers that was not sent."""
    given = standard_headers()
    del given["webhook-id"], given["webhook-signature"]
    assert refusal(STANDARD, given).message == (
        "signature missing: send webhook-id and webhook-signature"
    )
    assert refusal(STANDARD, headers()).message == (
        "signature missing: send webhook-id, webhook-timestamp and webhook-signature"
    )


@pytest.mark.parametrize(
    "value",
    [
        "v1",
        "v1a,AAAA",
        "v1,not base64!",
        "v1," + base64.b64encode(b"\0" * 31).decode(),
        "v1," + base64.b64encode(b"\0" * 32).decode().rstrip("="),
    ],
)
def test_standard_malformed_signature_is_malformed(value):
    """An entry without a comma, no v1 entry, or a v1 not base64 of 32 bytes."""
    given = standard_headers()
    given["webhook-signature"] = [value]
    refused = refusal(STANDARD, given)
    assert (refused.reason, refused.message) == (
        "malformed",
        "signature malformed: webhook-signature must be v1,<base64 of 32 bytes>, "
        "several separated by spaces",
    )


def test_standard_malformed_timestamp_is_malformed():
    """A timestamp that is not whole seconds is malformed."""
    given = standard_headers()
    given["webhook-timestamp"] = [f"{NOW}.0"]
    assert refusal(STANDARD, given).message == (
        "signature malformed: webhook-timestamp must be a Unix time in seconds"
    )


def test_standard_key_is_the_base64_after_whsec():
    """The key is what follows whsec_, base64-decoded, padding optional."""
    key = b"0123456789abcdef01234567"
    encoded = base64.b64encode(key).decode()
    assert standard_key("whsec_" + encoded) == key
    assert standard_key("whsec_" + base64.b64encode(b"ab").decode().rstrip("=")) == (
        b"ab"
    )


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjU", "whsec_", "whsec_not*base64"])
def test_standard_key_refuses_what_is_no_key(secret):
    """Without whsec_, with nothing after it, or not base64: no key."""
    with pytest.raises(ValueError):
        standard_key(secret)


def test_standard_delivery_header():
    """Standard Webhooks name each delivery in webhook-id."""
    assert webhook_id_header(STANDARD) == "webhook-id"


# -- hmac -----------------------------------------------------------------------------


def encoded(digest: bytes, encoding: str) -> str:
    if encoding == "hex":
        return digest.hex()
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
@pytest.mark.parametrize("prefix", ["", "sha256="])
def test_hmac_every_algorithm_and_encoding_verifies(algorithm, encoding, prefix):
    """Each algorithm in each encoding, behind the configured prefix, verifies."""
    secret = b"shpss_0123456789"
    config = SignatureConfig(
        "hmac",
        (secret,),
        header="X-Shopify-Hmac-Sha256",
        algorithm=algorithm,
        encoding=encoding,
        prefix=prefix,
    )
    digest = hmac.new(secret, BODY, getattr(hashlib, algorithm)).digest()
    value = prefix + encoded(digest, encoding)
    verify(config, headers(x_shopify_hmac_sha256=value), BODY, NOW)
    assert reason(config, headers(x_shopify_hmac_sha256=value), BODY + b"\n") == (
        "wrong"
    )


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(["sha1", "sha256", "sha512"]),
    # Within the block of SHA-1 and SHA-256 (64 bytes), SHA-512's (128), or past.
    secret=st.binary(min_size=1, max_size=64)
    | st.binary(min_size=65, max_size=128)
    | st.binary(min_size=129, max_size=300),
    other=st.binary(min_size=1, max_size=200),
    body=st.binary(max_size=512),
)
def test_hmac_is_the_standard_library_s_for_any_secret_and_body(
    algorithm, secret, other, body
):
    """
    What verifies is exactly Python's own HMAC, for secrets shorter and
    longer than the hash's block (hashed first) and any body: the reference
    value verifies, under any secret of the list, and a different secret's
    does not.
    """
    config = SignatureConfig(
        "hmac", (other, secret), header="X-Sig", algorithm=algorithm
    )
    value = hmac.new(secret, body, algorithm).hexdigest()
    verify(config, headers(x_sig=value), body, NOW)
    # (Two secrets may be one key to HMAC: one with zero bytes appended.)
    if hmac.new(other, body, algorithm).hexdigest() != value:
        alone = SignatureConfig("hmac", (other,), header="X-Sig", algorithm=algorithm)
        assert reason(alone, headers(x_sig=value), body) == "wrong"


SHOPIFY = SignatureConfig(
    "hmac", (b"old", b"shpss_new"), header="X-Shopify-Hmac-Sha256", encoding="base64"
)


def shopify(body: bytes = BODY, secret: bytes = b"shpss_new") -> dict[str, list[str]]:
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    return headers(x_shopify_hmac_sha256=base64.b64encode(digest).decode())


def test_hmac_second_secret_verifies_and_time_does_not_matter():
    """Any secret of the list verifies; no timestamp is signed."""
    verify(SHOPIFY, shopify(), BODY, 0)


def test_hmac_wrong_secret_is_wrong():
    """A secret outside the list makes the signature wrong."""
    assert reason(SHOPIFY, shopify(secret=b"elsewhere")) == "wrong"


def test_hmac_header_name_is_matched_in_any_case():
    """The configured header is found whatever case it arrives in."""
    raw = Headers()
    [value] = shopify()["x-shopify-hmac-sha256"]
    raw.addRawHeader(b"x-SHOPIFY-hmac-sha256", value.encode())
    verify(SHOPIFY, raw.getRawHeaders, BODY, NOW)


def test_hmac_missing_header_names_it():
    """Without the configured header the refusal says which to send."""
    assert refusal(SHOPIFY, headers()).message == (
        "signature missing: send X-Shopify-Hmac-Sha256"
    )


@pytest.mark.parametrize(
    ("config", "value", "message"),
    [
        (
            SHOPIFY,
            "a" * 64,
            "X-Shopify-Hmac-Sha256 must be the base64 of 32 bytes (an HMAC-SHA256)",
        ),
        (
            SignatureConfig(
                "hmac", (b"s",), header="X-Sig", algorithm="sha1", prefix="sha1="
            ),
            "sha256=" + "a" * 40,
            "X-Sig must be sha1= and 40 hex digits (an HMAC-SHA1)",
        ),
        (
            SignatureConfig("hmac", (b"s",), header="X-Sig", algorithm="sha512"),
            "a" * 64,
            "X-Sig must be 128 hex digits (an HMAC-SHA512)",
        ),
    ],
)
def test_hmac_malformed_value_is_malformed(config, value, message):
    """A value without the prefix, or of the wrong length or alphabet, is malformed."""
    refused = refusal(config, {config.header.lower(): [value]})
    assert (refused.reason, refused.message) == (
        "malformed",
        f"signature malformed: {message}",
    )


def test_hmac_has_no_delivery_header():
    """A generic HMAC names no delivery header."""
    assert webhook_id_header(SHOPIFY) is None


# -- the configuration and every scheme ----------------------------------------------


def test_secrets_stay_out_of_repr():
    """A config's repr (which ends up in logs) holds no secret."""
    text = repr(SignatureConfig("github", (b"hunter2-secret",)))
    assert "hunter2" not in text
    assert "github" in text


def test_a_changed_secret_makes_a_different_config():
    """Secrets take part in equality, so a reload sees a rotated secret."""
    assert SignatureConfig("github", (b"a",)) != SignatureConfig("github", (b"b",))


@pytest.mark.parametrize(
    "arguments",
    [
        {"scheme": "gitlab", "secrets": (b"s",)},
        {"scheme": "github", "secrets": ()},
        {"scheme": "github", "secrets": (b"",)},
        {"scheme": "slack", "secrets": (b"s",), "tolerance": 0},
        {"scheme": "hmac", "secrets": (b"s",)},
        {"scheme": "hmac", "secrets": (b"s",), "header": "X", "algorithm": "md5"},
        {"scheme": "hmac", "secrets": (b"s",), "header": "X", "encoding": "b32"},
    ],
)
def test_a_config_that_could_not_check_anything_cannot_be_built(arguments):
    """Unknown schemes, no secret, no tolerance or an incomplete hmac are refused."""
    with pytest.raises(ValueError):
        SignatureConfig(**arguments)


CONFIGS = [
    GITHUB,
    STRIPE,
    SLACK,
    STANDARD,
    SHOPIFY,
    SignatureConfig("hmac", (b"s",), header="X-Sig", prefix="sha256="),
]
HEADER_NAMES = [
    "x-hub-signature-256",
    "stripe-signature",
    "x-slack-request-timestamp",
    "x-slack-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-shopify-hmac-sha256",
    "x-sig",
]


@settings(max_examples=300, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    sent=st.dictionaries(
        st.sampled_from(HEADER_NAMES),
        st.lists(
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
            | st.sampled_from(
                [
                    f"t={NOW},v1=" + "a" * 64,
                    str(NOW),
                    "v0=" + "a" * 64,
                    "v1," + base64.b64encode(b"\0" * 32).decode(),
                    "sha256=" + "a" * 64,
                ]
            ),
            min_size=1,
            max_size=2,
        ),
    ),
    body=st.binary(max_size=64),
)
def test_whatever_is_sent_the_answer_is_a_refusal_that_never_tells_the_signature(
    config, sent, body
):
    """
    Any headers a stranger sends end in a refusal with one of the four
    reasons, one line, and no digest the secrets would have produced.
    """
    refused = refusal(config, sent, body)
    expected = [
        encoding(hmac.new(secret, body, hashlib.sha256).digest())
        for secret in config.secrets
        for encoding in (bytes.hex, lambda d: base64.b64encode(d).decode())
    ]
    assert not any(e in refused.message for e in expected)
    assert refused.message.startswith(f"signature {refused.reason}")
