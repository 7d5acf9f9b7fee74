"""
Duplicates (``[instance.dedup]``) as a sender meets them, against real
``twistd gwebhook`` processes and their store: an element whose keys an
earlier incident of the instance already has creates nothing and is answered
with that incident, marked ``"duplicate": true``; a request whose delivery
header repeats an earlier one gets the earlier answer again; both survive a
restart and a SIGKILL, hold for 16 identical requests at once and across
``--workers`` processes, and are forgotten after the window.  What was
stored is read back with the ``gwebhook`` command.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from support.daemon import (
    TWISTD,
    Daemon,
    json_lines,
    last_line,
    log_lines,
    run_twistd,
    start_daemon,
    wait_for_log,
)
from support.http import Response, ask, send
from support.instances import (
    connection,
    instance,
    post,
    read_back,
    reload,
    show,
    write_config,
)
from support.metrics import sample, scrape
from support.ports import free_port, refuses_connections, wait_until_listening
from support.senders import run_senders
from support.store import incidents_by_id
from support.wait import wait_for

from gwebhook.config import ConfigError, load_config

pytestmark = pytest.mark.process

ANSWER_KEYS = {"id", "name", "type", "occurred", "created"}
DELIVERY = "X-Delivery"

# A Standard Webhooks secret (whsec_ and a base64 key), and a GitHub one.
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GITHUB_SECRET = "It's a Secret to Everybody"


def dedup(
    keys: list[str] | None = None,
    header: str | None = None,
    window: int | None = None,
) -> str:
    """The TOML of an ``[instance.dedup]`` table; a key left None is left out."""
    given = {"keys": keys, "header": header, "window": window}
    lines = ["[instance.dedup]"]
    lines += [
        f"{key} = {json.dumps(value)}"
        for key, value in given.items()
        if value is not None
    ]
    return "\n".join(lines) + "\n"


def anonymous(name: str, **table: Any) -> str:
    """An instance anyone may send to, with ``[instance.dedup]`` of ``table``."""
    return instance(name, anonymous=True) + dedup(**table)


def signed(name: str, scheme: str, secret: str, **table: Any) -> str:
    """An instance whose only way in is a ``scheme`` signature, with dedup."""
    return (
        f'[[instance]]\nname = "{name}"\n'
        f"[instance.signature]\nscheme = {json.dumps(scheme)}\n"
        f"secrets = [{json.dumps(secret)}]\n" + dedup(**table)
    )


# Every instance of the shared daemon; each test uses its own.
SHARED = [
    anonymous("keys", keys=["alertId"]),
    anonymous("batch", keys=["alertId"]),
    anonymous("composite", keys=["incidentId", "alertId"]),
    anonymous("delivery", header=DELIVERY),
    anonymous("delivery2", header=DELIVERY),
    signed("standard", "standard", STANDARD_SECRET, window=3600),
    signed("github", "github", GITHUB_SECRET, window=3600),
    anonymous("parallel", keys=["alertId"], header=DELIVERY),
    anonymous("parallel-header", header=DELIVERY),
    instance("filler", anonymous=True),
    anonymous("window", keys=["alertId"], header=DELIVERY, window=2),
    anonymous("observed", keys=["alertId"], header=DELIVERY),
    anonymous("replayed", keys=["alertId"], header=DELIVERY),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pki):
    """One daemon serving every instance of SHARED, with its metrics port."""
    directory = tmp_path_factory.mktemp("dedup")
    config = write_config(directory, *SHARED)
    metrics_port = free_port()
    started: list[Daemon] = []
    try:
        d = start_daemon(
            ["--config", str(config), "--metrics-port", str(metrics_port)],
            directory,
            pki,
            started,
        )
        d.metrics_port = metrics_port
        yield d
    finally:
        for process in started:
            process.kill()


# ------------------------------------------------------------------ helpers


def path_of(name: str) -> str:
    return f"/instance/execute/{name}"


def answered(reply: Response) -> list[dict[str, Any]]:
    """The entries of a 200 answer."""
    assert reply.status == 200, (reply.status, reply.body)
    entries = reply.json()
    assert isinstance(entries, list), entries
    return entries


def send_to(
    d: Daemon, name: str, body: Any, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """POST ``body`` (JSON) to instance ``name``; the entries of its 200."""
    return answered(post(d, path_of(name), body, headers))


def assert_new(entries: list[dict[str, Any]]) -> None:
    """Entries of incidents just created: the five fields, no duplicate key."""
    for entry in entries:
        assert set(entry) == ANSWER_KEYS, entry


def marked(entry: dict[str, Any]) -> dict[str, Any]:
    """What a duplicate of the incident ``entry`` answered is answered."""
    return {**entry, "duplicate": True}


def listed(d: Daemon, name: str) -> list[dict[str, Any]]:
    """``gwebhook list --instance NAME``."""
    return read_back(d, "list", "--instance", name)


def listed_ids(d: Daemon, name: str) -> list[str]:
    return [incident["id"] for incident in listed(d, name)]


def access_line(d: Daemon, request_id: str) -> list[str]:
    """The words of the access line of request ``request_id``."""
    wait_for_log(d, f" id={request_id}")
    [line] = [
        line for line in log_lines(d, request_id) if f"id={request_id}" in line.split()
    ]
    return line.split()


def unique(prefix: str) -> str:
    """A value no other test sends."""
    return f"{prefix}-{os.urandom(4).hex()}"


def standard_headers(body: bytes, message_id: str) -> dict[str, str]:
    """A Standard Webhooks delivery's headers, signed by the sender's library."""
    now = datetime.fromtimestamp(int(time.time()), UTC)
    signature = Webhook(STANDARD_SECRET).sign(message_id, now, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def github_headers(body: bytes, delivery: str) -> dict[str, str]:
    """A GitHub delivery's headers: its signature and its delivery id."""
    digest = hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
    }


# ------------------------------------------------------ keys across requests


def test_an_element_repeating_an_earlier_incidents_key_is_answered_with_it(shared):
    """
    The second delivery of an alert creates nothing: its entry is the first
    incident's, name included, marked duplicate; the store holds one.
    """
    before = listed_ids(shared, "keys")
    [first] = send_to(shared, "keys", {"alertId": 1, "name": "a"})
    assert_new([first])
    assert first["name"] == "a"
    [again] = send_to(shared, "keys", {"alertId": 1, "name": "b"})
    assert again == marked(first)
    assert listed_ids(shared, "keys") == [*before, first["id"]]
    assert show(shared, first["id"])["rawJson"]["name"] == "a"


def test_a_number_the_same_as_a_float_and_as_a_string_are_three_keys(shared):
    """The key's value is compared as JSON: 5, 5.0 and "5" differ."""
    before = listed_ids(shared, "keys")
    firsts = []
    for value in (5, 5.0, "5"):
        [entry] = send_to(shared, "keys", {"alertId": value, "name": repr(value)})
        assert_new([entry])
        firsts.append(entry)
    assert len({entry["id"] for entry in firsts}) == 3
    for value, first in zip((5, 5.0, "5"), firsts, strict=True):
        [again] = send_to(shared, "keys", {"alertId": value})
        assert again == marked(first), value
    assert listed_ids(shared, "keys") == before + [e["id"] for e in firsts]


def test_an_element_without_any_key_is_never_a_duplicate(shared):
    """Two identical elements holding none of the keys: two incidents."""
    before = listed_ids(shared, "keys")
    body = {"name": "no key", "otherId": 1}
    [one] = send_to(shared, "keys", body)
    [two] = send_to(shared, "keys", body)
    assert_new([one, two])
    assert one["id"] != two["id"]
    assert listed_ids(shared, "keys") == [*before, one["id"], two["id"]]


def test_nested_values_are_equal_whatever_the_order_of_their_members(shared):
    """A key whose value is an object: the same members in another order match."""
    tag = unique("n")
    [first] = send_to(shared, "keys", {"alertId": {"a": tag, "b": [1, {"c": 2}]}})
    assert_new([first])
    [again] = send_to(shared, "keys", {"alertId": {"b": [1, {"c": 2}], "a": tag}})
    assert again == marked(first)
    [other] = send_to(shared, "keys", {"alertId": {"a": tag, "b": [{"c": 2}, 1]}})
    assert_new([other])


def test_keys_are_per_instance(shared):
    """The same alert sent to two instances creates an incident in each."""
    tag = unique("i")
    [one] = send_to(shared, "keys", {"alertId": tag})
    [two] = send_to(shared, "batch", {"alertId": tag})
    assert_new([one, two])
    assert one["id"] != two["id"]
    assert send_to(shared, "batch", {"alertId": tag}) == [marked(two)]


def test_the_keys_of_a_refused_request_are_not_remembered(shared):
    """A request refused for one bad element stores nothing, its keys neither."""
    tag = unique("f")
    bad = [{"alertId": tag}, {"alertId": f"{tag}-2", "occurred": "not a date"}]
    refused = post(shared, path_of("keys"), bad)
    assert refused.status == 400, refused.body
    [created] = send_to(shared, "keys", {"alertId": tag})
    assert_new([created])


def test_a_large_request_is_recognised_whole_when_sent_again(shared):
    """1200 keyed elements, sent again: every one is a duplicate of its own."""
    tag = unique("l")
    body = [{"alertId": f"{tag}-{n}", "name": f"large {n}"} for n in range(1200)]
    first = send_to(shared, "batch", body)
    assert len(first) == 1200
    assert_new(first)
    again = send_to(shared, "batch", body[::-1])
    assert again == [marked(entry) for entry in first[::-1]]


def test_an_instance_without_dedup_gives_show_its_request_id(shared):
    """Every incident's ``show`` names the request that created it."""
    reply = post(shared, path_of("filler"), [{"name": "one"}, {"name": "two"}])
    for entry in answered(reply):
        assert (
            show(shared, entry["id"])["request"]["id"] == reply.headers["x-request-id"]
        )


# ------------------------------------------------------ keys within a request


def test_a_key_repeated_within_one_request_creates_one_incident(shared):
    """The third element repeats the first: two created, the third is the first."""
    before = listed_ids(shared, "batch")
    entries = send_to(
        shared,
        "batch",
        [
            {"alertId": 1, "name": "one"},
            {"alertId": 2, "name": "two"},
            {"alertId": 1, "name": "one again"},
        ],
    )
    assert len(entries) == 3
    assert_new(entries[:2])
    assert entries[0]["id"] != entries[1]["id"]
    assert entries[2] == marked(entries[0])
    assert listed_ids(shared, "batch") == [*before, entries[0]["id"], entries[1]["id"]]


def test_the_keys_are_read_from_rawjson_when_the_element_has_it(shared):
    """
    An element with rawJson is keyed by its rawJson only: the same alertId at
    its top level is not its key, and a rawJson holding it matches an element
    without rawJson that holds it.
    """
    before = listed_ids(shared, "batch")
    key = unique("raw")
    entries = send_to(
        shared,
        "batch",
        [
            {"name": "in rawJson", "rawJson": {"alertId": key}},
            {"name": "at the top", "alertId": key},
            {"name": "top, rawJson without", "alertId": key, "rawJson": {"x": 1}},
            {"name": "top, rawJson without", "alertId": key, "rawJson": {"x": 1}},
        ],
    )
    assert len(entries) == 4
    assert_new([entries[0], entries[2], entries[3]])
    assert entries[1] == marked(entries[0])
    assert len({entries[0]["id"], entries[2]["id"], entries[3]["id"]}) == 3
    created = [entries[0]["id"], entries[2]["id"], entries[3]["id"]]
    assert listed_ids(shared, "batch") == before + created
    # raw_json, the older spelling, is the details as rawJson is.
    older = send_to(
        shared,
        "batch",
        [{"name": "raw_json", "raw_json": {"alertId": key}}, {"alertId": f"{key}-2"}],
    )
    assert older[0] == marked(entries[0])
    assert send_to(shared, "batch", {"raw_json": {"alertId": f"{key}-2"}}) == [
        marked(older[1])
    ]


def test_the_composite_key_is_the_keys_an_element_holds(shared):
    """
    With keys incidentId and alertId, {both}, {alertId only} and {incidentId
    only} are three keys; the same values written in another order are the
    same key.
    """
    entries = send_to(
        shared,
        "composite",
        [
            {"incidentId": 1, "alertId": 1, "name": "both"},
            {"alertId": 1, "name": "alert only"},
            {"incidentId": 1, "name": "incident only"},
            {"alertId": 1, "incidentId": 1, "name": "both, other order"},
            {"alertId": 1, "name": "alert only again"},
            {"incidentId": 1, "alertId": 2, "name": "another alert"},
        ],
    )
    assert len(entries) == 6
    assert_new([entries[0], entries[1], entries[2], entries[5]])
    assert len({entries[i]["id"] for i in (0, 1, 2, 5)}) == 4
    assert entries[3] == marked(entries[0])
    assert entries[4] == marked(entries[1])
    # A later request: each of the four keys is remembered.
    again = send_to(
        shared,
        "composite",
        [{"alertId": 1}, {"incidentId": 1, "alertId": 2}, {"incidentId": 1}],
    )
    assert again == [marked(entries[1]), marked(entries[5]), marked(entries[2])]
    assert listed_ids(shared, "composite") == [entries[i]["id"] for i in (0, 1, 2, 5)]


# -------------------------------------------------------------- header replay


def test_a_repeated_delivery_header_gets_the_first_answer_again(shared):
    """
    Same X-Delivery, another body: the first answer again, every entry
    duplicate, nothing stored (header names are case-insensitive; the XSOAR 8
    path is the same instance); another value, or none, is a new delivery.
    """
    delivery = unique("d")
    before = listed_ids(shared, "delivery")
    body = [{"name": "first"}, {"name": "second"}]
    first = send_to(shared, "delivery", body, {DELIVERY: delivery})
    assert len(first) == 2
    assert_new(first)
    replayed = send_to(shared, "delivery", {"name": "other"}, {DELIVERY: delivery})
    assert replayed == [marked(entry) for entry in first]
    lower = send_to(shared, "delivery", [{"name": "x"}] * 3, {"x-delivery": delivery})
    assert lower == [marked(entry) for entry in first]
    xsoar = post(shared, f"/xsoar{path_of('delivery')}", {}, {DELIVERY: delivery})
    assert answered(xsoar) == [marked(entry) for entry in first]
    assert listed_ids(shared, "delivery") == before + [e["id"] for e in first]

    other = send_to(shared, "delivery", body, {DELIVERY: unique("d")})
    assert_new(other)
    assert len(other) == 2
    assert {e["id"] for e in other}.isdisjoint(e["id"] for e in first)
    [no_header_1] = send_to(shared, "delivery", {"name": "first"})
    [no_header_2] = send_to(shared, "delivery", {"name": "first"})
    assert_new([no_header_1, no_header_2])
    assert no_header_1["id"] != no_header_2["id"]
    assert len(listed(shared, "delivery")) == len(before) + 6

    # What another instance stored is not this one's.
    elsewhere = send_to(shared, "delivery2", body, {DELIVERY: delivery})
    assert_new(elsewhere)
    assert [e["id"] for e in elsewhere] == listed_ids(shared, "delivery2")[-2:]


def test_a_request_of_duplicates_only_is_remembered_by_its_header(shared):
    """
    Its elements all duplicates by key, a request still has its delivery id
    remembered: sent again (another body), it gets that same answer, traced
    to it (not to the request that created the incident).
    """
    tag = unique("a")
    first = post(shared, path_of("replayed"), {"alertId": tag}, {DELIVERY: f"{tag}-1"})
    [created] = answered(first)
    assert_new([created])
    second = post(shared, path_of("replayed"), {"alertId": tag}, {DELIVERY: f"{tag}-2"})
    assert answered(second) == [marked(created)]
    third = post(shared, path_of("replayed"), {"alertId": "x"}, {DELIVERY: f"{tag}-2"})
    assert answered(third) == [marked(created)]
    words = access_line(shared, third.headers["x-request-id"])
    assert f"duplicate-of={second.headers['x-request-id']}" in words, words
    assert show(shared, created["id"])["request"]["id"] == first.headers["x-request-id"]


def test_an_empty_or_overlong_delivery_header_is_not_remembered(shared):
    """Over 256 characters, or empty: the request is as one without the header."""
    for value in ("d" * 257, ""):
        [one] = send_to(shared, "delivery", {"name": "long"}, {DELIVERY: value})
        [two] = send_to(shared, "delivery", {"name": "long"}, {DELIVERY: value})
        assert_new([one, two])
        assert one["id"] != two["id"]
    limit = unique("x").ljust(256, "x")
    [one] = send_to(shared, "delivery", {"name": "at the limit"}, {DELIVERY: limit})
    assert send_to(shared, "delivery", {}, {DELIVERY: limit}) == [marked(one)]


def test_the_first_of_two_delivery_headers_is_the_delivery_id(shared):
    """A request carrying the header twice is remembered by its first value."""
    tag = unique("t")
    c = connection(shared)
    try:
        body = b'{"name": "two headers"}'
        c.putrequest("POST", path_of("delivery"))
        c.putheader(DELIVERY, f"{tag}-first")
        c.putheader(DELIVERY, f"{tag}-second")
        c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        reply = c.getresponse()
        assert reply.status == 200
        [created] = json.loads(reply.read())
    finally:
        c.close()
    assert_new([created])
    by_first = send_to(shared, "delivery", {}, {DELIVERY: f"{tag}-first"})
    assert by_first == [marked(created)]
    [by_second] = send_to(shared, "delivery", {}, {DELIVERY: f"{tag}-second"})
    assert_new([by_second])


def test_a_refused_request_does_not_make_its_delivery_header_known(shared):
    """A 400 stores nothing: the same delivery with a good body creates."""
    delivery = unique("r")
    refused = post(shared, path_of("delivery"), [1], {DELIVERY: delivery})
    assert refused.status == 400, refused.body
    before = listed_ids(shared, "delivery")
    [created] = send_to(shared, "delivery", {"name": "good"}, {DELIVERY: delivery})
    assert_new([created])
    assert listed_ids(shared, "delivery") == [*before, created["id"]]


def test_a_standard_webhooks_instance_recognises_a_repeated_webhook_id(shared):
    """
    [instance.dedup] with a window only: scheme standard's webhook-id is the
    delivery header.  A re-signed other body with the same id is a replay.
    """
    message = unique("msg")
    body = b'{"name": "standard one"}'
    first = answered(
        send(shared, body, standard_headers(body, message), path=path_of("standard"))
    )
    assert_new(first)
    other = b'[{"name": "standard two"}, {"name": "standard three"}]'
    replayed = answered(
        send(shared, other, standard_headers(other, message), path=path_of("standard"))
    )
    assert replayed == [marked(entry) for entry in first]
    assert listed_ids(shared, "standard") == [first[0]["id"]]

    new = answered(
        send(
            shared,
            body,
            standard_headers(body, unique("msg")),
            path=path_of("standard"),
        )
    )
    assert_new(new)
    assert listed_ids(shared, "standard") == [first[0]["id"], new[0]["id"]]


def test_a_github_instance_recognises_a_repeated_delivery_id(shared):
    """scheme github's X-GitHub-Delivery is the delivery header by default."""
    delivery = unique("gh")
    body = b'{"name": "push"}'
    first = answered(
        send(shared, body, github_headers(body, delivery), path=path_of("github"))
    )
    assert_new(first)
    other = b'{"name": "another push"}'
    replayed = answered(
        send(shared, other, github_headers(other, delivery), path=path_of("github"))
    )
    assert replayed == [marked(entry) for entry in first]
    assert listed_ids(shared, "github") == [first[0]["id"]]

    new = answered(
        send(shared, body, github_headers(body, unique("gh")), path=path_of("github"))
    )
    assert_new(new)
    assert listed_ids(shared, "github") == [first[0]["id"], new[0]["id"]]


# --------------------------------------------------------- restart and crash


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_what_was_answered_is_remembered_across_a_restart(daemon, tmp_path, how):
    """
    After a 200, the daemon is stopped (SIGTERM) or killed (SIGKILL) and
    started again on the same store: a replayed delivery gets the first
    answer, an element with a known key is a duplicate, nothing is stored.
    """
    config = write_config(
        tmp_path, anonymous("durable", keys=["alertId"], header=DELIVERY)
    )
    d = daemon("--config", str(config))
    first = send_to(d, "durable", {"alertId": 7, "name": "before"}, {DELIVERY: "d-1"})
    assert_new(first)
    if how == "sigterm":
        d.stop()
    else:
        d.kill()

    again = daemon("--config", str(config))  # the same directory: the same --db
    replayed = send_to(again, "durable", {"name": "other body"}, {DELIVERY: "d-1"})
    assert replayed == [marked(first[0])]
    by_key = send_to(
        again, "durable", {"alertId": 7, "name": "after"}, {DELIVERY: "d-2"}
    )
    assert by_key == [marked(first[0])]
    assert listed_ids(again, "durable") == [first[0]["id"]]


def test_a_crash_mid_stream_leaves_keys_and_incidents_together(daemon, tmp_path):
    """
    SIGKILL while four senders post keyed elements: after the restart, each
    element sent again is a duplicate of its incident exactly when that
    incident was stored (answered or not), and new otherwise; nothing was
    stored twice.
    """
    own = free_port()
    config = write_config(
        tmp_path, instance("crash", anonymous=True, port=own) + dedup(keys=["marker"])
    )
    d = daemon("--config", str(config))
    wait_until_listening(own)
    senders = run_senders(replace(d, port=own), {}, 4, then=d.kill, after=1.0)
    acknowledged = {name: str(i) for s in senders for i, name in s.acknowledged}
    assert len(acknowledged) > 20, "too little traffic to mean anything"
    cut = [name for s in senders for names in s.unanswered for name in names]

    again = daemon("--config", str(config))
    stored = {name: str(i) for i, name in incidents_by_id(again.db).items()}
    assert len(stored) == len(set(stored.values()))
    assert {n: stored.get(n) for n in acknowledged} == acknowledged
    names = [*acknowledged, *cut]
    body = [{"name": name, "rawJson": {"marker": name}} for name in names]
    entries = send_to(again, "crash", body)
    for name, entry in zip(names, entries, strict=True):
        if name in stored:
            assert entry.get("duplicate") is True, (name, entry)
            assert entry["id"] == stored[name], (name, entry)
        else:
            assert "duplicate" not in entry, (name, entry)


def logged(d: Daemon) -> list[dict[str, Any]]:
    """The JSON events a daemon with the JSON logger has written (whole lines)."""
    text = d.stdout.read_text(encoding="utf-8")
    return json_lines(text[: text.rfind("\n") + 1])


def test_a_reload_applies_to_later_requests_and_keys_keep_their_window(
    daemon, tmp_path
):
    """
    SIGHUP gives an instance dedup from then on (what it stored before has
    no key); a key keeps the window it was stored with when the window is
    shortened, a key stored after the reload gets the new one.  The JSON
    log carries duplicates and duplicate_of.
    """
    config = write_config(
        tmp_path,
        anonymous("kept", keys=["alertId"], header=DELIVERY, window=3600),
        instance("added", anonymous=True),
    )
    d = daemon("--config", str(config), logger="gwebhook.logs.json_observer")
    first = post(d, path_of("kept"), {"alertId": "k1"}, {DELIVERY: "h1"})
    [old] = answered(first)
    [before] = send_to(d, "added", {"alertId": "a1"})
    [twice] = send_to(d, "added", {"alertId": "a1"})
    assert_new([old, before, twice])

    reload(
        d,
        config,
        anonymous("kept", keys=["alertId"], header=DELIVERY, window=1),
        anonymous("added", keys=["alertId"]),
    )
    wait_for(
        lambda: any("configuration reloaded" in e["message"] for e in logged(d)),
        10,
        "the reload",
    )
    [a1] = send_to(d, "added", {"alertId": "a1"})
    assert_new([a1])  # nothing was remembered before the reload
    assert send_to(d, "added", {"alertId": "a1"}) == [marked(a1)]
    started = time.monotonic()
    [new] = send_to(d, "kept", {"alertId": "k2"})
    assert_new([new])

    time.sleep(1.2)
    replay = post(d, path_of("kept"), {"alertId": "k9"}, {DELIVERY: "h1"})
    assert answered(replay) == [marked(old)]  # stored for 3600 s
    assert send_to(d, "kept", {"alertId": "k1"}) == [marked(old)]
    deadline = started + 8
    while True:
        [after] = send_to(d, "kept", {"alertId": "k2"})
        if "duplicate" not in after or time.monotonic() > deadline:
            break
        assert after == marked(new)
        time.sleep(0.25)
    assert "duplicate" not in after, "still a duplicate 8 s after a 1 s window"
    assert_new([after])
    assert after["id"] != new["id"]

    rid = replay.headers["x-request-id"]
    [access] = wait_for(
        lambda: [e for e in logged(d) if e.get("request_id") == rid], 10, "its line"
    )
    assert access["duplicates"] == 1, access
    assert access["duplicate_of"] == first.headers["x-request-id"], access


# ------------------------------------------------------------- all at once


def sixteen_at_once(d: Daemon, name: str, filler: str) -> list[dict[str, Any]]:
    """
    16 connections send the same delivery to instance ``name`` (the same
    header value, and the same keys) at the same moment, just after a large
    request to instance ``filler``, so that they queue behind its commit and
    the store is given several of them at once, none of them known yet.
    Checks that exactly one answer created the incidents and the others
    name them as duplicates; returns the incidents' entries.
    """
    delivery = unique("p")
    body = json.dumps(
        [{"alertId": f"{delivery}-1", "name": "p1"}, {"alertId": f"{delivery}-2"}]
    ).encode()
    headers = {DELIVERY: delivery, "Content-Type": "application/json"}
    large = json.dumps([{"name": f"filler {n}"} for n in range(3000)]).encode()
    together = threading.Barrier(17, timeout=20)

    def one(_: int) -> Response:
        c = connection(d)
        try:
            c.connect()
            together.wait()
            return ask(c, "POST", path_of(name), body, headers)
        finally:
            c.close()

    ahead = connection(d)
    try:
        ahead.connect()
        with ThreadPoolExecutor(16) as pool:
            sent = [pool.submit(one, n) for n in range(16)]
            wait_for(lambda: together.n_waiting == 16, 20, "16 connections")
            ahead.request("POST", path_of(filler), large, {})
            time.sleep(0.005)
            together.wait()
            replies = [future.result() for future in sent]
        assert ahead.getresponse().status == 200
    finally:
        ahead.close()
    answers = [answered(reply) for reply in replies]
    creators = [a for a in answers if all("duplicate" not in e for e in a)]
    assert len(creators) == 1, answers
    [created] = creators
    assert len(created) == 2
    assert_new(created)
    for answer in answers:
        if answer is not created:
            assert answer == [marked(entry) for entry in created], answer
    return created


@pytest.mark.parametrize("name", ["parallel", "parallel-header"])
def test_sixteen_identical_requests_at_once_create_one_set(shared, name):
    """
    16 identical requests at once (by header and keys, or by header only):
    one set of incidents is stored, every answer names it, and exactly one
    answer is the one that created it.
    """
    created = sixteen_at_once(shared, name, "filler")
    assert listed_ids(shared, name) == [entry["id"] for entry in created]


# ---------------------------------------------------------------- the window


def test_a_delivery_after_the_window_is_new(shared):
    """
    window = 2: the same request again at once, or 1.3 s later, is a replay;
    once two seconds have passed it creates a new incident with a new id.
    """
    delivery = unique("w")
    body = {"alertId": delivery, "name": "windowed"}
    started = time.monotonic()
    [first] = send_to(shared, "window", body, {DELIVERY: delivery})
    assert_new([first])
    [again] = send_to(shared, "window", body, {DELIVERY: delivery})
    assert again == marked(first)
    # Still within the window well after a second.
    time.sleep(max(0.0, started + 1.3 - time.monotonic()))
    [within] = send_to(shared, "window", body, {DELIVERY: delivery})
    if time.monotonic() - started < 2:  # decided within the window for sure
        assert within == marked(first)

    time.sleep(max(0.0, started + 2.1 - time.monotonic()))
    deadline = time.monotonic() + 6
    while True:
        [later] = send_to(shared, "window", body, {DELIVERY: delivery})
        if "duplicate" not in later or time.monotonic() > deadline:
            break
        assert later == marked(first)
        time.sleep(0.25)
    assert "duplicate" not in later, "still a duplicate 8 s after a 2 s window"
    assert_new([later])
    assert int(later["id"]) > int(first["id"])
    assert listed_ids(shared, "window") == [first["id"], later["id"]]


# --------------------------------------------------------- several processes


def test_two_worker_processes_create_one_incident_per_key(daemon, tmp_path):
    """
    --workers 2: the same keys posted many times over many connections,
    served by both processes, make one incident per key; 16 identical
    deliveries at once make one set.
    """
    config = write_config(
        tmp_path,
        anonymous("spread", keys=["alertId"]),
        anonymous("spread-header", header=DELIVERY),
        instance("spread-filler", anonymous=True),
    )
    d = daemon("--config", str(config), "--workers", "2")
    wait_for_log(d, "worker 1: gwebhook ready", timeout=15)
    keys = [f"k{n}" for n in range(6)]
    jobs = [(key, n) for n in range(10) for key in keys]

    def one(job: tuple[str, int]) -> tuple[str, list[dict[str, Any]]]:
        key, n = job
        return key, send_to(d, "spread", {"alertId": key, "name": f"{key}-{n}"})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))

    by_key: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    for key, [entry] in results:
        by_key[key].append(entry)
    for key, entries in by_key.items():
        creators = [e for e in entries if "duplicate" not in e]
        assert len(creators) == 1, (key, entries)
        assert_new(creators)
        assert all(e == marked(creators[0]) for e in entries if e is not creators[0])
    stored = listed(d, "spread")
    assert len(stored) == len(keys), stored
    assert sorted(i["id"] for i in stored) == sorted(
        entries[0]["id"] for entries in by_key.values()
    )
    access = "POST /instance/execute/spread 200"
    wait_for_log(d, access, count=len(jobs))
    served = log_lines(d, access)
    assert any("worker 1:" in line for line in served), "the worker served nothing"
    assert any("worker 1:" not in line for line in served), "main served nothing"

    # 16 identical deliveries at once, over both processes.
    created = sixteen_at_once(d, "spread-header", "spread-filler")
    assert listed_ids(d, "spread-header") == [entry["id"] for entry in created]


# -------------------------------------------------------------- observability


def test_duplicates_are_counted_logged_and_traced_to_their_request(shared):
    """
    gwebhook_duplicates_total counts every skipped element; the access line
    says duplicates=N, and duplicate-of=<first request id> for a replay;
    ``gwebhook show`` names the request that created an incident.
    """
    tag = unique("o")
    before = sample(
        scrape(shared.metrics_port), "gwebhook_duplicates_total", instance="observed"
    )
    assert before == 0

    plain = post(shared, path_of("observed"), {"alertId": f"{tag}-0"}, {})
    assert_new(answered(plain))
    words = access_line(shared, plain.headers["x-request-id"])
    assert not [w for w in words if w.startswith(("duplicates=", "duplicate-of="))]

    first = post(
        shared,
        path_of("observed"),
        [{"alertId": f"{tag}-1"}, {"alertId": f"{tag}-2"}, {"alertId": f"{tag}-1"}],
        {DELIVERY: f"{tag}-a"},
    )
    first_entries = answered(first)
    first_id = first.headers["x-request-id"]
    assert first_entries[2] == marked(first_entries[0])
    words = access_line(shared, first_id)
    assert "duplicates=1" in words, words
    assert not [w for w in words if w.startswith("duplicate-of=")], words

    second = post(
        shared,
        path_of("observed"),
        [{"alertId": f"{tag}-1"}, {"alertId": f"{tag}-3"}],
        {DELIVERY: f"{tag}-b"},
    )
    second_entries = answered(second)
    assert second_entries[0] == marked(first_entries[0])
    assert_new([second_entries[1]])
    words = access_line(shared, second.headers["x-request-id"])
    assert "duplicates=1" in words, words
    assert not [w for w in words if w.startswith("duplicate-of=")], words

    replay = post(
        shared, path_of("observed"), {"alertId": "whatever"}, {DELIVERY: f"{tag}-a"}
    )
    assert answered(replay) == [marked(entry) for entry in first_entries]
    replay_id = replay.headers["x-request-id"]
    assert replay_id != first_id
    words = access_line(shared, replay_id)
    assert "duplicates=3" in words, words
    assert f"duplicate-of={first_id}" in words, words

    counted = sample(
        scrape(shared.metrics_port), "gwebhook_duplicates_total", instance="observed"
    )
    assert counted == 1 + 1 + 3
    assert show(shared, first_entries[0]["id"])["request"]["id"] == first_id
    assert show(shared, first_entries[1]["id"])["request"]["id"] == first_id
    second_id = second.headers["x-request-id"]
    assert show(shared, second_entries[1]["id"])["request"]["id"] == second_id
    assert len(listed(shared, "observed")) == 4


# ------------------------------------------------------- refusals at start-up

ANYONE = instance("a", anonymous=True)
SLACK = (
    '[[instance]]\nname = "a"\n[instance.signature]\n'
    'scheme = "slack"\nsecrets = ["s3cret"]\n'
)

# (the instance, its [instance.dedup] table, the key the refusal names)
BAD_TABLES = {
    "unknown key": (ANYONE, 'keys = ["alertId"]\ncolour = "red"\n', "dedup.colour"),
    "keys a string": (ANYONE, 'keys = "alertId"\n', "dedup.keys"),
    "keys not strings": (ANYONE, "keys = [1, 2]\n", "dedup.keys"),
    "keys empty": (ANYONE, "keys = []\n", "dedup.keys"),
    "a key empty": (ANYONE, 'keys = [""]\n', "dedup.keys"),
    "a key twice": (ANYONE, 'keys = ["alertId", "alertId"]\n', "dedup.keys"),
    "window 0": (ANYONE, 'keys = ["alertId"]\nwindow = 0\n', "dedup.window"),
    "window negative": (ANYONE, 'keys = ["a"]\nwindow = -60\n', "dedup.window"),
    "window a float": (ANYONE, 'keys = ["a"]\nwindow = 60.5\n', "dedup.window"),
    "window a string": (ANYONE, 'keys = ["a"]\nwindow = "60"\n', "dedup.window"),
    "window a boolean": (ANYONE, 'keys = ["a"]\nwindow = true\n', "dedup.window"),
    "header not a token": (ANYONE, 'header = "X Delivery"\n', "dedup.header"),
    "header empty": (ANYONE, 'header = ""\n', "dedup.header"),
    "header not a string": (ANYONE, "header = 5\n", "dedup.header"),
    "neither keys nor header": (ANYONE, "window = 60\n", "dedup"),
    # A slack signature gives no default delivery header.
    "slack, neither keys nor header": (SLACK, "window = 60\n", "dedup"),
}


def the_refusal(config: Path) -> str:
    """The one line the config reader refuses ``config`` with."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), os.environ)
    return str(caught.value)


def bad_file(directory: Path, case: str) -> tuple[Path, str]:
    """The config file of BAD_TABLES[case], checked as the config reader reads it."""
    head, table, key = BAD_TABLES[case]
    config = write_config(directory, head + "[instance.dedup]\n" + table)
    expected = the_refusal(config)
    named = f"{config}: instance 'a': {key}"
    assert expected.startswith(named if key == "dedup" else f"{named}: "), expected
    assert "not supported by this version" not in expected, expected
    if key == "dedup.colour":
        assert "unknown key" in expected, expected
    return config, expected


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_a_bad_dedup_table_is_refused_naming_its_key(tmp_path, case):
    """The config reader's one line names the file, the instance and the key."""
    bad_file(tmp_path, case)


# One of each kind of refusal, through a real start-up.
AT_START_UP = [
    "unknown key",
    "keys not strings",
    "a key twice",
    "window a boolean",
    "header not a token",
    "slack, neither keys nor header",
]


@pytest.mark.parametrize("case", AT_START_UP)
def test_a_bad_dedup_table_is_refused_at_start_up(tmp_path, pki, case):
    """
    The daemon exits non-zero without a traceback, its last line the config
    reader's, as twistd prints a usage error; nothing listens.
    """
    config, expected = bad_file(tmp_path, case)
    port = free_port()
    result = run_twistd(
        [
            "--interface", "127.0.0.1", "--port", str(port),
            "--db", str(tmp_path / "gwebhook.sqlite"),
            "--cert", str(pki.cert), "--key", str(pki.key),
            "--config", str(config),
        ],
        tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert last_line(result) == f"{TWISTD} -n: {expected}"
    assert refuses_connections(port)
