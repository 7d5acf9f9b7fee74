"""
Instances that check a signature, served by a real ``twistd gwebhook``: the
signature is checked over the body as the sender signed it (after gzip
decoding), before the body is parsed; a refusal stores nothing and says
which way the signature failed; every way in of an instance must pass.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import time

import pytest
from support.credentials import basic
from support.daemon import wait_for_log
from support.http import send
from support.instances import write_config
from support.metrics import sample, scrape
from support.ports import free_port
from support.store import row_counts

pytestmark = pytest.mark.process

# GitHub's documented example: this secret signs "Hello, World!" as below.
GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_EXAMPLE = (
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
)
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"

CONFIG = f"""
[[instance]]
name = "github"
  [instance.signature]
  scheme = "github"
  secrets = ["old secret", {json.dumps(GITHUB_SECRET)}]

[[instance]]
name = "slack"
  [instance.auth]
  username = "slack"
  password = "pw"
  [instance.signature]
  scheme = "slack"
  secrets = [{json.dumps(SLACK_SECRET)}]
"""


def github_signature(body: bytes, secret: str = GITHUB_SECRET) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def slack_headers(body: bytes, at: int) -> dict[str, str]:
    signed = b"v0:%d:" % at + body
    digest = hmac.new(SLACK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(at), "X-Slack-Signature": f"v0={digest}"}


@pytest.fixture
def signed(daemon, tmp_path):
    """A daemon whose only instances are the two of CONFIG."""
    config = write_config(tmp_path, CONFIG)
    metrics_port = free_port()
    d = daemon("--config", str(config), "--metrics-port", str(metrics_port))
    d.metrics_port = metrics_port
    return d


def test_the_signature_helper_agrees_with_githubs_documented_example():
    """The test's own signer is GitHub's: its documented example comes out."""
    assert github_signature(b"Hello, World!") == GITHUB_EXAMPLE


def test_a_body_signed_with_any_listed_secret_is_stored(signed):
    """A signature-only instance needs no password: the signature lets it in."""
    body = b'{"name": "push"}'
    for secret in ("old secret", GITHUB_SECRET):
        headers = {"X-Hub-Signature-256": github_signature(body, secret)}
        reply = send(signed, body, headers, path="/instance/execute/github")
        assert reply.status == 200, reply.body
    assert row_counts(signed.db)["incidents"] == 2


@pytest.mark.parametrize(
    ("headers", "reason", "message"),
    [
        ({}, "missing", "signature missing: send X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "sha256=zz"}, "malformed", None),
        (
            {"X-Hub-Signature-256": github_signature(b'{"name": "other"}')},
            "wrong",
            None,
        ),
        (
            {"X-Hub-Signature-256": github_signature(b'{"name": "push"}', "nope")},
            "wrong",
            None,
        ),
    ],
)
def test_an_unsigned_or_badly_signed_body_is_401_and_stores_nothing(
    signed, headers, reason, message
):
    """Missing, malformed or wrong: 401 saying which, counted, nothing stored."""
    reply = send(signed, b'{"name": "push"}', headers, path="/instance/execute/github")
    assert reply.status == 401
    error = reply.json()["error"]
    assert error.startswith(f"signature {reason}")
    if message is not None:
        assert error == message
    assert row_counts(signed.db)["incidents"] == 0
    failures = sample(
        scrape(signed.metrics_port),
        "gwebhook_auth_failures_total",
        instance="github",
        reason=f"signature_{reason}",
    )
    assert failures == 1


def test_a_gzip_body_is_checked_as_the_sender_signed_it(signed):
    """The signature covers the payload, not its gzip encoding."""
    body = b'[{"name": "a"}, {"name": "b"}]'
    headers = {
        "X-Hub-Signature-256": github_signature(body),
        "Content-Encoding": "gzip",
    }
    reply = send(signed, gzip.compress(body), headers, path="/instance/execute/github")
    assert reply.status == 200, reply.body
    assert row_counts(signed.db)["incidents"] == 2


def test_every_way_in_must_pass_and_a_stale_timestamp_is_refused(signed):
    """Signature and password both, and a timestamp within the tolerance."""
    body = b'{"name": "alert"}'
    now = int(time.time())
    path = "/instance/execute/slack"
    password = basic("slack", "pw")
    signed_now = slack_headers(body, now)
    assert send(signed, body, signed_now, path=path).status == 401  # no password
    stale = send(
        signed, body, {**password, **slack_headers(body, now - 600)}, path=path
    )
    assert stale.status == 401
    assert stale.json()["error"].startswith("signature stale")
    future = send(
        signed, body, {**password, **slack_headers(body, now + 600)}, path=path
    )
    assert future.status == 401
    assert row_counts(signed.db)["incidents"] == 0
    reply = send(signed, body, {**password, **signed_now}, path=path)
    assert reply.status == 200, reply.body
    assert row_counts(signed.db)["incidents"] == 1


def test_a_request_without_a_signature_is_refused_before_its_body_is_read(signed):
    """No signature header, or a stale one: 401 at the end of the headers."""
    body = b'{"name": "' + b"x" * 5000 + b'"}'
    reply = send(signed, body, {}, path="/instance/execute/github")
    assert reply.status == 401
    request_id = reply.headers["x-request-id"]
    line = wait_for_log(signed, f"id={request_id}")
    [access] = [entry for entry in line.splitlines() if f"id={request_id}" in entry]
    assert " 401 incidents=0 bytes=0 " in access
    assert "refused: signature missing" in access
