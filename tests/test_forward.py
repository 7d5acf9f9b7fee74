"""
Forwarding's rules, without a process: the body of each format (an object
for ``batch = 1``, else an array), the headers of a batch's request (Basic
credentials, the forward's own headers, ``webhook-id``, a Standard Webhooks
signature that the ``standardwebhooks`` library verifies), what an answer
means (``outcome_of_answer``), ``Retry-After`` and the backoff's bounds
with a seeded random; and refusals of ``[[forward]]`` tables that
tests/test_config.py does not cover.
"""

from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gwebhook import forward
from gwebhook.config import ConfigError, ForwardConfig, parse_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL = "https://xsoar.example.com/instance/execute/gw"


def forward_config(tmp_path: Path, **table: Any) -> ForwardConfig:
    """The ForwardConfig of one ``[[forward]]`` with ``table``'s keys."""
    document = {"forward": [{"name": "fw", "url": URL, **table}]}
    [config] = parse_config(document, str(tmp_path / "gw.toml"), {}).forwards
    return config


def refusal(tmp_path: Path, document: dict[str, Any], environ=None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, str(tmp_path / "gw.toml"), environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


# An incident as ``gwebhook show`` gives it, and the element it came from.
ELEMENT = {
    "name": "SQLi on /login",
    "type": "Wallarm",
    "occurred": "2026-12-02T16:32:38Z",
    "alertId": 7,
    "nested": {"a": [1, 2.5, None], "ü": "ß"},
}
INCIDENT = {
    "id": "12",
    "name": "SQLi on /login",
    "type": "Wallarm",
    "occurred": "2026-12-02T16:32:38Z",
    "created": "2026-12-02T16:32:38.192377Z",
    "instance": "wallarm",
    "fields": {"severity": 3},
    "rawJson": {
        **ELEMENT,
        "headers": {"content-type": "application/json", "host": "a:1"},
    },
    "request": {"id": "abc", "received": "2026-12-02T16:32:38Z"},
}


# -- bodies ----------------------------------------------------------------------


def test_xsoar_element_is_what_a_generic_webhook_reads():
    """name, type, occurred and rawJson (the details, without kept headers)."""
    assert forward.element_body("xsoar", INCIDENT, {"other": 1}) == {
        "name": "SQLi on /login",
        "type": "Wallarm",
        "occurred": "2026-12-02T16:32:38Z",
        "rawJson": ELEMENT,
    }
    # Not altered: the incident still holds its headers.
    assert "headers" in INCIDENT["rawJson"]


def test_incident_element_is_the_show_object_and_raw_the_element_as_sent():
    raw = {"whatever": ["the", "sender", 1.5], "name": "x"}
    assert forward.element_body("incident", INCIDENT, raw) == INCIDENT
    assert forward.element_body("raw", INCIDENT, raw) is raw


@pytest.mark.parametrize("kind", ["xsoar", "incident", "raw"])
def test_batch_one_is_an_object_more_an_array(kind):
    items = [(INCIDENT, ELEMENT), ({**INCIDENT, "id": "13"}, {"n": 2})]
    single = json.loads(forward.body(kind, 1, items[:1]))
    assert single == forward.element_body(kind, INCIDENT, ELEMENT)
    # An array whenever batch > 1, even of one element.
    assert json.loads(forward.body(kind, 5, items[:1])) == [single]
    both = json.loads(forward.body(kind, 5, items))
    assert both == [forward.element_body(kind, i, r) for i, r in items]


def test_body_is_utf8_json_not_escaped():
    data = forward.body("raw", 1, [(INCIDENT, {"ü": "€"})])
    assert data == '{"ü": "€"}'.encode()


def test_webhook_id_names_the_forward_and_the_first_incident():
    assert forward.webhook_id("xsoar", 41) == "xsoar-41"


# -- headers ---------------------------------------------------------------------


def test_headers_without_credentials(tmp_path):
    config = forward_config(tmp_path)
    sent = forward.headers(config, "fw-3", b"{}", time.time())
    assert sent == [
        ("Content-Type", "application/json"),
        ("User-Agent", "gwebhook-forward"),
        ("webhook-id", "fw-3"),
    ]


def test_headers_carry_basic_credentials_and_the_forwards_own(tmp_path):
    config = forward_config(
        tmp_path,
        username="gw",
        password="s3cr:et",
        headers={"X-Source": "edge-1", "X-Api-Key": "k-1"},
    )
    sent = forward.headers(config, "fw-3", b"{}", time.time())
    names = [name for name, _ in sent]
    assert len(names) == len({n.lower() for n in names}), sent
    assert ("X-Source", "edge-1") in sent and ("X-Api-Key", "k-1") in sent
    [authorization] = [v for n, v in sent if n == "Authorization"]
    scheme, token = authorization.split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == "gw:s3cr:et"
    assert not any(n.startswith("webhook-sig") for n in names)


@pytest.mark.parametrize(
    "name", ["Content-Type", "user-agent", "Authorization", "webhook-id"]
)
def test_a_header_is_sent_once_or_refused(tmp_path, name):
    table = {"username": "gw", "password": "pw", "sign_secret": SECRET}
    try:
        config = forward_config(tmp_path, headers={name: "mine"}, **table)
    except ConfigError:
        return
    sent = forward.headers(config, "fw-1", b"{}", time.time())
    names = [n.lower() for n, _ in sent]
    assert len(names) == len(set(names)), sent


def test_password_from_the_environment(tmp_path):
    document = {
        "forward": [
            {"name": "fw", "url": URL, "username": "gw", "password_env": "FW_PW"}
        ]
    }
    [config] = parse_config(
        document, str(tmp_path / "gw.toml"), {"FW_PW": "from-env"}
    ).forwards
    assert config.password == "from-env"
    assert "from-env" not in repr(config)


def test_signature_verified_by_the_standard_webhooks_library(tmp_path):
    config = forward_config(tmp_path, sign_secret=SECRET)
    data = forward.body("xsoar", 2, [(INCIDENT, ELEMENT)] * 2)
    now = time.time()
    sent = dict(forward.headers(config, "fw-12", data, now))
    assert sent["webhook-id"] == "fw-12"
    assert sent["webhook-timestamp"] == str(int(now))
    assert sent["webhook-signature"].startswith("v1,")
    # What a receiver does: verify with the same whsec_ secret.
    assert Webhook(SECRET).verify(data, sent) == json.loads(data)


def test_signature_fails_for_another_secret_body_or_id(tmp_path):
    config = forward_config(tmp_path, sign_secret=SECRET)
    data = forward.body("xsoar", 1, [(INCIDENT, ELEMENT)])
    sent = dict(forward.headers(config, "fw-12", data, time.time()))
    other = "whsec_" + base64.b64encode(b"another key of 24 bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(data, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(data + b" ", sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(data, {**sent, "webhook-id": "fw-13"})


def test_each_attempt_is_signed_at_its_own_time(tmp_path):
    """A retry minutes later still passes a receiver's 5-minute tolerance."""
    config = forward_config(tmp_path, sign_secret=SECRET)
    data = b"{}"
    first = dict(forward.headers(config, "fw-1", data, time.time() - 600))
    again = dict(forward.headers(config, "fw-1", data, time.time()))
    assert first["webhook-id"] == again["webhook-id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(data, first)
    Webhook(SECRET).verify(data, again)


# -- answers ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(code):
    outcome = forward.outcome_of_answer(code, "30")
    assert (outcome.state, outcome.reason) == ("delivered", "2xx")


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_and_5xx_are_retried(code):
    outcome = forward.outcome_of_answer(code, None)
    assert (outcome.state, outcome.reason) == ("retry", str(code))
    assert outcome.message == f"answered {code}"
    assert outcome.retry_after is None
    assert forward.outcome_of_answer(code, "7").retry_after == 7.0


@pytest.mark.parametrize("code", [300, 301, 302, 303, 307, 308])
def test_3xx_is_dead_with_a_hint(code):
    outcome = forward.outcome_of_answer(code, None)
    assert (outcome.state, outcome.reason) == ("dead", str(code))
    assert "redirect" in outcome.message and "url" in outcome.message


@pytest.mark.parametrize("code", [400, 401, 403, 404, 405, 409, 410, 413, 415, 422])
def test_other_4xx_are_dead(code):
    outcome = forward.outcome_of_answer(code, "5")
    assert (outcome.state, outcome.reason, outcome.message) == (
        "dead",
        str(code),
        f"answered {code}",
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("2", 2.0),
        (" 17 ", 17.0),
        ("300", 300.0),
        ("301", 300.0),
        ("86400", 300.0),
        ("9" * 400, 300.0),
        ("1.5", None),
        ("-1", None),
        ("+3", None),
        ("2 s", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value, seconds):
    assert forward.parse_retry_after(value) == seconds


@pytest.mark.parametrize("value", ["²", "¹", "³0", "١"])
def test_retry_after_with_non_ascii_digits_is_ignored(value):
    """str.isdigit() takes them (a receiver can send byte 0xB2); float() does not."""
    assert forward.parse_retry_after(value) is None


def test_backoff_doubles_from_1_s_to_300_s_with_jitter():
    rand = random.Random(20261202)
    for attempts in range(1, 16):
        step = min(300.0, 2.0 ** (attempts - 1))
        delays = [forward.backoff(attempts, None, rand) for _ in range(300)]
        assert all(step / 2 <= d <= step for d in delays), (attempts, delays)
        # Spread over the half of the step, not always the same.
        assert max(delays) - min(delays) > step * 0.4, (attempts, step)
    assert forward.backoff(0, None, random.Random(1)) <= 1.0


def test_backoff_is_never_sooner_than_retry_after():
    rand = random.Random(7)
    for attempts in range(1, 12):
        step = min(300.0, 2.0 ** (attempts - 1))
        for retry_after in (0.0, 2.0, 45.0, 300.0):
            delay = forward.backoff(attempts, retry_after, rand)
            assert delay >= retry_after
            assert delay <= max(step, retry_after)
    # Capped by parse_retry_after: a day becomes 5 minutes.
    capped = forward.parse_retry_after("86400")
    assert forward.backoff(1, capped, rand) == 300.0


def test_backoff_is_reproducible_with_a_seed():
    first = [forward.backoff(n, None, random.Random(3)) for n in range(1, 10)]
    again = [forward.backoff(n, None, random.Random(3)) for n in range(1, 10)]
    assert first == again


# -- refusals ---------------------------------------------------------------------


def test_a_forward_with_a_password_env_that_is_not_set_is_refused(tmp_path):
    message = refusal(
        tmp_path,
        {"forward": [{"name": "fw", "url": URL, "username": "u", "password_env": "X"}]},
    )
    assert message.startswith(f"{tmp_path / 'gw.toml'}: forward 'fw': password_env")


def test_a_forward_with_a_ca_file_that_is_no_certificate_is_refused(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    message = refusal(
        tmp_path, {"forward": [{"name": "fw", "url": URL, "ca_file": "ca.pem"}]}
    )
    assert message.startswith(f"{tmp_path / 'gw.toml'}: forward 'fw': ca_file")


def test_a_forward_of_batch_over_1000_is_refused(tmp_path):
    document = {"forward": [{"name": "fw", "url": URL, "batch": 1001}]}
    message = refusal(tmp_path, document)
    assert message.endswith("batch: 1001: give 1 to 1000 incidents")


def test_a_forward_of_an_instance_the_file_does_not_declare_is_refused(tmp_path):
    """A typo would forward nothing, silently."""
    document = {
        "instance": [{"name": "wallarm", "anonymous": True}],
        "forward": [{"name": "fw", "url": URL, "instances": ["walarm"]}],
    }
    message = refusal(tmp_path, document)
    assert "forward 'fw': instances: 'walarm'" in message


def test_a_forward_of_the_default_instance_is_taken(tmp_path):
    document = {"forward": [{"name": "fw", "url": URL, "instances": ["default"]}]}
    [config] = parse_config(document, str(tmp_path / "gw.toml"), {}).forwards
    assert config.takes("default") and not config.takes("other")
