"""
Forwarding (``[[forward]]``) against real ``twistd gwebhook`` processes: a
gwebhook A forwarding to a second gwebhook B (Basic credentials, duplicates
by ``webhook-id``, a Standard Webhooks signature), or to a receiver of the
test's own (tests/support/receiver.py) that records each request and answers
as scripted.  B down and up again, A SIGKILLed with a queue, Retry-After,
5xx, 4xx, redirects, timeouts, max_age, ``gwebhook deliveries`` and
``redeliver``, the formats, TLS trust, ``--workers``, the metrics and the log
lines, and refusals at start-up.
"""

from __future__ import annotations

import base64
import gzip
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from standardwebhooks import Webhook
from support.daemon import (
    TWISTD,
    Daemon,
    json_lines,
    last_line,
    log_lines,
    log_text,
    run_twistd,
)
from support.http import send
from support.instances import get, gwebhook, instance, post, read_back, write_config
from support.metrics import sample, scrape
from support.pki import PKI
from support.ports import free_port, refuses_connections
from support.receiver import DROP, Receiver, Reply, relay
from support.wait import wait_for

from gwebhook.config import ConfigError, load_config

pytestmark = pytest.mark.process

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WRONG_SECRET = "whsec_" + base64.b64encode(b"not the receiver's key!!").decode()
# B's credentials, which A's forwards give.
B_USER, B_PASSWORD = "forwarder", "b-pa55-word"


# ------------------------------------------------------------------ helpers


def toml_value(value: Any) -> str:
    """A TOML value: JSON's strings, booleans, numbers and arrays are TOML's."""
    return json.dumps(value)


def forward(name: str, url: str, **keys: Any) -> str:
    """The TOML of one ``[[forward]]``; a key given None is left out."""
    headers = keys.pop("headers", None)
    lines = ["[[forward]]", f"name = {toml_value(name)}", f"url = {toml_value(url)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None]
    if headers:
        lines.append("[forward.headers]")
        lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def sink(name: str) -> str:
    """B's instance: Basic credentials, duplicates by ``webhook-id``."""
    return (
        instance(name, username=B_USER, password=B_PASSWORD)
        + '[instance.dedup]\nheader = "webhook-id"\n'
    )


def signed_sink(name: str, secret: str = SECRET) -> str:
    """B's instance whose only way in is a Standard Webhooks signature."""
    return (
        f"[[instance]]\nname = {toml_value(name)}\n"
        f'[instance.signature]\nscheme = "standard"\nsecrets = [{toml_value(secret)}]\n'
        '[instance.dedup]\nheader = "webhook-id"\n'
    )


def to_b(b: Daemon, name: str, target: str, pki: PKI, **keys: Any) -> str:
    """A forward of A's instance ``name`` to B's instance ``target``."""
    return forward(
        name,
        f"https://127.0.0.1:{b.port}/instance/execute/{target}",
        instances=[name],
        ca_file=str(pki.ca),
        **keys,
    )


def start(
    directory: Path, pki: PKI, started: list[Daemon], *toml: str, args=(), port=None
) -> Daemon:
    """A daemon in ``directory`` with a config file of ``toml``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, *toml)
    d = Daemon(["--config", str(config), *args], directory, pki)
    if port is not None:
        d.port = port
    started.append(d)
    return d.start()


def post_ok(d: Daemon, name: str, body: Any, headers=None) -> list[dict[str, Any]]:
    """POST ``body`` to instance ``name``: the entries of its 200."""
    reply = post(d, f"/instance/execute/{name}", body, headers)
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()


def deliveries(d: Daemon, *args: str) -> list[dict[str, Any]]:
    """``gwebhook deliveries ARGS``, one dict per line."""
    result = gwebhook(d, "deliveries", *args)
    assert result.returncode == 0, result
    return json_lines(result.stdout)


def wait_states(
    d: Daemon, name: str, want: dict[str, str], timeout: float = 10
) -> list[dict[str, Any]]:
    """
    Wait until forward ``name``'s deliveries of the incidents in ``want`` are
    in its states, by id; their rows, oldest first.
    """

    def reached():
        rows = [r for r in deliveries(d, "--forward", name) if r["incident"] in want]
        return rows if {r["incident"]: r["state"] for r in rows} == want else None

    return wait_for(reached, timeout, f"deliveries of {name} to be {want}")


def attempted(d: Daemon, name: str) -> list[dict[str, Any]]:
    """Forward ``name``'s deliveries attempted at least once."""
    return [r for r in deliveries(d, "--forward", name) if r["attempts"]]


def exported(d: Daemon, name: str) -> list[dict[str, Any]]:
    """Instance ``name``'s whole incidents, oldest first."""
    return [i for i in read_back(d, "export") if i["instance"] == name]


def without_headers(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k != "headers"}


def elements(prefix: str, sizes: list[int]) -> list[list[dict[str, Any]]]:
    """Request bodies of ``sizes`` elements, each distinct, some partial."""
    bodies, n = [], 0
    for size in sizes:
        body = []
        for _ in range(size):
            n += 1
            element: dict[str, Any] = {"name": f"{prefix} {n} ü", "seq": n}
            if n % 2:
                element.update(
                    type="Wallarm",
                    occurred="2026-12-01T10:00:00Z",
                    nested={"list": [1, 2.5, None, True], "text": "€"},
                )
            body.append(element)
        bodies.append(body)
    return bodies


# ------------------------------------------------ 1. chained gwebhooks, signed


def test_chained_gwebhooks_deliver_each_incident_once_in_order(tmp_path, pki, started):
    """
    A forwards in xsoar format to B, batch 1 and batch 5, with Basic
    credentials and a signature: every incident posted to A arrives at B
    once, in order, with name, type, occurred and rawJson as A stored them.
    A wrong signing secret is answered 401 by B: given up, not retried.
    """
    b = start(
        tmp_path / "b",
        pki,
        started,
        sink("one"),
        sink("five"),
        signed_sink("signed"),
        signed_sink("unsigned"),
    )
    credentials = {"username": B_USER, "password": B_PASSWORD}
    a = start(
        tmp_path / "a",
        pki,
        started,
        *(instance(n, anonymous=True) for n in ("one", "five", "signed", "bad")),
        to_b(b, "one", "one", pki, **credentials),
        to_b(b, "five", "five", pki, batch=5, **credentials),
        to_b(b, "signed", "signed", pki, sign_secret=SECRET),
        to_b(b, "bad", "unsigned", pki, sign_secret=WRONG_SECRET),
    )
    sizes = [1, 3, 1, 6, 2]
    posted: dict[str, list[dict]] = {}
    for name in ("one", "five", "signed"):
        posted[name] = []
        for body in elements(name, sizes):
            posted[name] += post_ok(a, name, body)
    [bad] = post_ok(a, "bad", {"name": "never arrives"})
    for name in ("one", "five", "signed"):
        want = {e["id"]: "delivered" for e in posted[name]}
        wait_states(a, name, want, timeout=15)
    wait_states(a, "bad", {bad["id"]: "dead"})

    for name in ("one", "five", "signed"):
        sent, arrived = exported(a, name), exported(b, name)
        assert len(arrived) == len(sent) == sum(sizes), name
        for original, copy in zip(sent, arrived, strict=True):
            assert (copy["name"], copy["type"], copy["occurred"]) == (
                original["name"],
                original["type"],
                original["occurred"],
            )
            assert without_headers(copy["rawJson"]) == without_headers(
                original["rawJson"]
            )
        kept = [i["rawJson"]["headers"] for i in arrived]
        assert all("authorization" not in h for h in kept)
        assert all(h["user-agent"] == "gwebhook-forward" for h in kept)
    # Batch 1: one request per incident, named by it.  Batch 5: at most 5.
    one = exported(b, "one")
    assert [i["rawJson"]["headers"]["webhook-id"] for i in one] == [
        f"one-{e['id']}" for e in posted["one"]
    ]
    by_request: dict[str, int] = {}
    for i in exported(b, "five"):
        by_request[i["request"]["id"]] = by_request.get(i["request"]["id"], 0) + 1
    assert max(by_request.values()) <= 5 and len(by_request) >= 3
    for row in deliveries(a, "--forward", "one") + deliveries(a, "--forward", "five"):
        assert (row["attempts"], row["last_error"]) == (1, None), row
    [dead] = deliveries(a, "--forward", "bad")
    assert dead["last_error"] == "answered 401" and dead["attempts"] == 1
    assert exported(b, "unsigned") == []


# ------------------------------------------------------ 2. B down, then up


def test_receiver_down_then_up(tmp_path, pki, started):
    """
    With B down, A's deliveries stay pending with why, A's /healthz stays
    200 and its pending gauge counts them; once B is up every incident is
    delivered, in order, none twice.
    """
    b_port = free_port()
    metrics_port = free_port()
    b_url = f"https://127.0.0.1:{b_port}/instance/execute/sink"
    a = start(
        tmp_path / "a",
        pki,
        started,
        instance("src", anonymous=True),
        forward(
            "tob",
            b_url,
            ca_file=str(pki.ca),
            username=B_USER,
            password=B_PASSWORD,
            batch=2,
        ),
        args=["--metrics-port", str(metrics_port)],
    )
    ids = []
    for body in elements("down", [1, 3, 1]):
        ids += [e["id"] for e in post_ok(a, "src", body)]

    def failing():
        rows = deliveries(a, "--forward", "tob")
        tried = [r for r in rows if r["attempts"] >= 2]
        return rows if tried and len(rows) == len(ids) else None

    rows = wait_for(failing, 10, "two failed attempts")
    assert all(r["state"] == "pending" for r in rows), rows
    first = rows[0]
    assert "connection refused" in first["last_error"], first
    assert f"127.0.0.1:{b_port}" in first["last_error"]
    assert first["next_attempt"] > time.time() - 1
    assert get(a, "/healthz").status == 200
    samples = scrape(metrics_port)
    assert sample(samples, "gwebhook_forward_pending", forward="tob") == len(ids)
    failures = sample(
        samples, "gwebhook_forward_failures_total", forward="tob", reason="connect"
    )
    assert failures >= 2
    assert sample(samples, "gwebhook_forward_delivered_total", forward="tob") == 0

    b = start(tmp_path / "b", pki, started, sink("sink"), port=b_port)
    wait_states(a, "tob", dict.fromkeys(ids, "delivered"), timeout=15)
    arrived = exported(b, "sink")
    assert [i["name"] for i in arrived] == [i["name"] for i in exported(a, "src")]
    assert get(a, "/healthz").status == 200
    samples = scrape(metrics_port)
    assert sample(samples, "gwebhook_forward_pending", forward="tob") == 0
    assert sample(samples, "gwebhook_forward_delivered_total", forward="tob") == len(
        ids
    )


# ------------------------------------------- 3. SIGKILL with a queue, resends


def test_sigkill_with_a_queue_then_an_unknown_outcome(tmp_path, pki, started):
    """
    A is SIGKILLed while its queue waits for a receiver that is down, and
    started again.  The receiver, a relay in front of B, passes the first
    attempt to B (which stores it) and drops B's answer: A cannot know, and
    sends the same batch again, with the same webhook-id and body; B's
    duplicates by webhook-id make that harmless.  B has every incident
    exactly once, in order.
    """
    b = start(tmp_path / "b", pki, started, sink("sink"))
    proxy = Receiver(pki)
    config = (
        instance("src", anonymous=True),
        forward(
            "relayed",
            proxy.url("/instance/execute/sink"),
            ca_file=str(pki.ca),
            username=B_USER,
            password=B_PASSWORD,
            batch=3,
        ),
    )
    a = start(tmp_path / "a", pki, started, *config)
    ids = [e["id"] for e in post_ok(a, "src", elements("kill", [5])[0])]
    ids += [e["id"] for e in post_ok(a, "src", elements("late", [2])[0])]
    wait_for(
        lambda: deliveries(a, "--forward", "relayed")[0]["attempts"] >= 2,
        10,
        "two failed attempts",
    )
    a.process.kill()
    a.process.wait(10)
    before = deliveries(a, "--forward", "relayed")
    assert [r["state"] for r in before] == ["pending"] * len(ids)

    dropped = []

    def drop_first(answer: Reply) -> Reply:
        if not dropped:
            dropped.append(answer)
            return DROP
        return answer

    proxy.respond(relay(b.port, pki, drop_first))
    with proxy:
        # Restarted as a service is: the same host and --port, the same
        # node, which takes its forward's lease back at once.
        again = start(tmp_path / "a", pki, started, *config, port=a.port)
        restarted = time.monotonic()
        wait_states(again, "relayed", dict.fromkeys(ids, "delivered"), timeout=20)
        waited = time.monotonic() - restarted
        seen = proxy.requests
    assert dropped and dropped[0].status == 200
    print(f"delivered {waited:.1f} s after the restart")
    # Every attempt of a batch is the same request.
    attempts: dict[str, list[bytes]] = {}
    for request in seen:
        attempts.setdefault(request.headers["webhook-id"], []).append(request.body)
    assert [len(set(bodies)) for bodies in attempts.values()] == [1] * len(attempts)
    first_id = f"relayed-{ids[0]}"
    assert list(attempts)[0] == first_id and len(attempts[first_id]) == 2
    # The batch formed before the kill, kept: incidents 1-3.
    assert [e["name"] for e in json.loads(attempts[first_id][0])] == [
        f"kill {n} ü" for n in (1, 2, 3)
    ]
    sent = [e["name"] for body in attempts.values() for e in json.loads(body[0])]
    assert sent == [i["name"] for i in exported(a, "src")]
    assert [i["name"] for i in exported(b, "sink")] == sent


def test_sigterm_during_an_attempt_keeps_the_batch_and_frees_the_forward(
    tmp_path, pki, started
):
    """
    SIGTERM while a request waits for its answer: the daemon exits without
    waiting for the forward's timeout, the batch stays pending, the lease is
    given back, and the restarted daemon sends the same request at once.
    """
    with Receiver(pki) as receiver:
        receiver.answer(Reply(delay=4))
        config = (
            instance("src", anonymous=True),
            forward("out", receiver.url(), ca_file=str(pki.ca)),
        )
        a = start(tmp_path, pki, started, *config)
        [incident] = [e["id"] for e in post_ok(a, "src", {"name": "in flight"})]
        receiver.wait_for_requests(1)
        status, took = a.terminate()
        # twistd re-raises SIGTERM after a clean stop: -15 is success.
        assert status == -signal.SIGTERM and took < 3, (status, took)
        [row] = deliveries(a, "--forward", "out")
        assert row["state"] == "pending"
        again = start(tmp_path, pki, started, *config)
        restarted = time.monotonic()
        wait_states(again, "out", {incident: "delivered"}, timeout=5)
        assert time.monotonic() - restarted < 3
        first, second = receiver.requests
    assert (
        first.headers["webhook-id"]
        == second.headers["webhook-id"]
        == (f"out-{incident}")
    )
    assert first.body == second.body


def test_a_stop_during_an_attempt_is_no_failed_attempt(tmp_path, pki, started):
    with Receiver(pki) as receiver:
        receiver.answer(Reply(delay=4))
        a = start(
            tmp_path,
            pki,
            started,
            instance("src", anonymous=True),
            forward("out", receiver.url(), ca_file=str(pki.ca)),
        )
        post_ok(a, "src", {"name": "in flight"})
        receiver.wait_for_requests(1)
        a.terminate()
    assert log_lines(a, "forward out:") == []
    [row] = deliveries(a, "--forward", "out")
    assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 0, None)


# -------------------------------------------- answers: a daemon, receivers

# Each forward of the shared daemon, with its receiver's name and keys.
OBSERVED_KEY = "api-key-3f9c"
OBSERVED_PASSWORD = "fw-pass-77ab"
OUTCOMES: dict[str, dict[str, Any]] = {
    "retry": {},
    "refused": {},
    "redeliver": {},
    "redirect": {},
    "aged": {"max_age": 2},
    "slow": {"timeout": 1},
    "incident": {
        "format": "incident",
        "username": "edge",
        "password": "edge-password",
        "headers": {"X-Source": "edge-1", "X-Api-Key": "k-1"},
    },
    "raw": {"format": "raw", "batch": 10, "method": "PUT"},
    "wrongca": {},
    "insecure": {"verify": False},
    "hostile": {},
    "observed": {
        "username": "obs",
        "password": OBSERVED_PASSWORD,
        "headers": {"X-Api-Key": OBSERVED_KEY},
        "sign_secret": SECRET,
    },
}


class Outcomes:
    """The shared daemon A, a receiver for each of its forwards."""

    def __init__(self, a: Daemon, receivers: dict[str, Receiver], metrics: int):
        self.a, self.receivers, self.metrics_port = a, receivers, metrics

    def post(self, name: str, body: Any) -> list[str]:
        return [e["id"] for e in post_ok(self.a, name, body)]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, pki) -> Iterator[Outcomes]:
    directory = tmp_path_factory.mktemp("outcomes")
    other = trustme.CA()
    other_ca = directory / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    receivers = {name: Receiver(pki).start() for name in OUTCOMES}
    toml = []
    for name, keys in OUTCOMES.items():
        trust = {} if name == "insecure" else {"ca_file": str(pki.ca)}
        if name == "wrongca":
            trust = {"ca_file": str(other_ca)}
        toml.append(instance(name, anonymous=True))
        toml.append(
            forward(name, receivers[name].url(), instances=[name], **trust, **keys)
        )
    metrics_port = free_port()
    started: list[Daemon] = []
    try:
        a = start(
            directory,
            pki,
            started,
            *toml,
            args=["--metrics-port", str(metrics_port)],
        )
        yield Outcomes(a, receivers, metrics_port)
    finally:
        for d in started:
            d.kill()
        for receiver in receivers.values():
            receiver.close()


# ----------------------------------------------------- 4. what an answer means


def test_retry_after_is_honoured_and_5xx_retried(outcomes):
    """429 with Retry-After: 2, then 503, then 200: three identical requests."""
    receiver = outcomes.receivers["retry"]
    receiver.answer(Reply(429, {"Retry-After": "2"}), Reply(503))
    [incident] = outcomes.post("retry", {"name": "retried"})
    first = receiver.wait_for_requests(1)[0]
    [row] = wait_for(lambda: attempted(outcomes.a, "retry"), 5, "a first attempt")
    assert (row["state"], row["last_error"]) == ("pending", "answered 429")
    seen = receiver.wait_for_requests(3, timeout=10)
    assert len(seen) == 3
    assert seen[1].at - first.at >= 2.0, "sooner than Retry-After"
    # After the 503: the second step of the backoff, 1 to 2 s.
    assert 1.0 <= seen[2].at - seen[1].at < 3.5
    assert {r.headers["webhook-id"] for r in seen} == {f"retry-{incident}"}
    assert len({r.body for r in seen}) == 1
    [row] = wait_states(outcomes.a, "retry", {incident: "delivered"})
    assert (row["attempts"], row["last_error"]) == (3, None)


def test_400_is_dead_at_once_and_listed_dead(outcomes):
    a, receiver = outcomes.a, outcomes.receivers["refused"]
    receiver.answer(then=Reply(400, body=b'{"error": "no"}'))
    [incident] = outcomes.post("refused", {"name": "refused"})
    [row] = wait_states(a, "refused", {incident: "dead"}, timeout=5)
    assert (row["attempts"], row["last_error"]) == (1, "answered 400")
    assert row["next_attempt"] is None
    [listed] = deliveries(a, "--state", "dead", "--forward", "refused")
    assert listed == row
    assert deliveries(a, "--state", "pending", "--forward", "refused") == []
    time.sleep(1.5)
    assert len(receiver.requests) == 1, "a dead delivery was retried"


def test_redeliver_queues_dead_and_delivered_incidents_again(outcomes):
    a, receiver = outcomes.a, outcomes.receivers["redeliver"]
    receiver.answer(Reply(400))
    [incident] = outcomes.post("redeliver", {"name": "refused once"})
    wait_states(a, "redeliver", {incident: "dead"}, timeout=5)

    result = gwebhook(a, "redeliver", "--forward", "redeliver", "--dead")
    assert result.returncode == 0, result
    assert result.stdout.startswith("queued 1 delivery of forward redeliver again")
    asked = time.monotonic()
    [again] = receiver.wait_for_requests(2, timeout=5)[1:]
    assert again.at - asked < 3
    assert again.headers["webhook-id"] == f"redeliver-{incident}"
    [row] = wait_states(a, "redeliver", {incident: "delivered"})
    assert (row["attempts"], row["last_error"]) == (1, None)
    assert deliveries(a, "--state", "dead", "--forward", "redeliver") == []

    # By id: a delivered incident is sent once more.
    result = gwebhook(a, "redeliver", "--forward", "redeliver", incident)
    assert result.returncode == 0, result
    receiver.wait_for_requests(3, timeout=5)
    wait_states(a, "redeliver", {incident: "delivered"})


def test_a_redirect_is_dead_with_a_hint(outcomes):
    receiver = outcomes.receivers["redirect"]
    receiver.answer(then=Reply(302, {"Location": "https://elsewhere.example/"}))
    [incident] = outcomes.post("redirect", {"name": "moved"})
    [row] = wait_states(outcomes.a, "redirect", {incident: "dead"}, timeout=5)
    assert row["last_error"] == "answered 302, a redirect; give the final url"
    assert len(receiver.requests) == 1


def test_past_max_age_is_dead(outcomes):
    receiver = outcomes.receivers["aged"]
    receiver.answer(then=Reply(503))
    [incident] = outcomes.post("aged", {"name": "too old"})
    [row] = wait_states(outcomes.a, "aged", {incident: "dead"}, timeout=10)
    assert row["last_error"] == "not delivered within max_age (2 s)"
    assert row["attempts"] == len(receiver.requests) >= 2
    tried = len(receiver.requests)
    time.sleep(1.2)
    assert len(receiver.requests) == tried


def test_a_timeout_is_retried_with_the_same_request(outcomes):
    receiver = outcomes.receivers["slow"]
    receiver.answer(Reply(delay=2.5))
    [incident] = outcomes.post("slow", {"name": "slow"})
    first, second = receiver.wait_for_requests(2, timeout=8)[:2]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    wait_states(outcomes.a, "slow", {incident: "delivered"})
    [line] = log_lines(outcomes.a, f"forward slow: incident {incident} (slow-")
    where = f"127.0.0.1:{receiver.port}"
    assert line.endswith(f"no complete answer from {where} within 1 s (--timeout)")


# ---------------------------------------------------- 5. formats, TLS, headers


def test_incident_format_with_basic_credentials_and_headers(outcomes):
    a, receiver = outcomes.a, outcomes.receivers["incident"]
    [incident] = outcomes.post("incident", [{"name": "as shown", "x": [1, "ü"]}])
    [request] = receiver.wait_for_requests(1)
    wait_states(a, "incident", {incident: "delivered"})
    assert request.method == "POST" and request.path == "/hook"
    assert request.json() == read_back(a, "show", incident)
    headers = request.headers
    token = base64.b64encode(b"edge:edge-password").decode()
    assert headers["authorization"] == f"Basic {token}"
    assert (headers["x-source"], headers["x-api-key"]) == ("edge-1", "k-1")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "gwebhook-forward"
    assert headers["webhook-id"] == f"incident-{incident}"
    assert "webhook-signature" not in headers


def test_raw_format_sends_each_element_as_sent_gzip_included(outcomes):
    a, receiver = outcomes.a, outcomes.receivers["raw"]
    # Spelled as no serializer would: the element is read again from the body.
    text = (
        '[ {"z": 1, "a": {"deep": [1.50, 1E2, "\\u00fc"]}, "name": "first"},\n'
        '  {"b": null, "name": "second", "big": 12345678901234567890},'
        ' {"only": "third"} ]'
    )
    reply = send(
        a,
        gzip.compress(text.encode()),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        path="/instance/execute/raw",
    )
    assert reply.status == 200, reply
    ids = [e["id"] for e in reply.json()]
    ids += outcomes.post("raw", {"name": "plain", "é": "ß"})
    wait_states(a, "raw", dict.fromkeys(ids, "delivered"))
    arrived = [e for r in receiver.requests for e in r.json()]
    assert all(r.method == "PUT" for r in receiver.requests)
    sent = [*json.loads(text), {"name": "plain", "é": "ß"}]
    assert arrived == sent
    assert [list(e) for e in arrived] == [list(e) for e in sent]


def test_a_receiver_under_another_ca_is_retried_with_the_reason(outcomes):
    receiver = outcomes.receivers["wrongca"]
    [incident] = outcomes.post("wrongca", {"name": "untrusted"})
    [row] = wait_for(lambda: attempted(outcomes.a, "wrongca"), 5, "an attempt")
    assert row["state"] == "pending" and row["incident"] == incident
    assert row["last_error"].startswith(
        f"certificate verification failed for 127.0.0.1:{receiver.port}"
    ), row
    assert receiver.requests == []
    assert receiver.handshake_failures >= 1


def test_verify_false_delivers_without_a_ca(outcomes):
    [incident] = outcomes.post("insecure", {"name": "unverified"})
    wait_states(outcomes.a, "insecure", {incident: "delivered"})
    seen = outcomes.receivers["insecure"].requests
    assert [r.headers["webhook-id"] for r in seen].count(f"insecure-{incident}") == 1


def test_a_retry_after_of_superscript_digits_does_not_stop_the_forward(outcomes):
    """'²' (byte 0xB2) is a digit to str.isdigit(): ignored, the backoff holds."""
    receiver = outcomes.receivers["hostile"]
    receiver.answer(Reply(503, {"Retry-After": "²"}))
    [incident] = outcomes.post("hostile", {"name": "hostile"})
    wait_states(outcomes.a, "hostile", {incident: "delivered"}, timeout=6)


# ------------------------------------------------------ 7. metrics and logs


def test_metrics_and_one_log_line_per_state_change(outcomes):
    """
    503 then 200 for one incident, 400 for the next: the counters, and one
    line for each change (retrying, delivered, gave up); neither the
    credentials, the signing secret nor the body is logged.
    """
    a, receiver = outcomes.a, outcomes.receivers["observed"]
    receiver.answer(Reply(503), Reply(200), Reply(400))
    marker = "body-marker-5e1d"
    [kept] = outcomes.post("observed", {"name": "observed", "secret": marker})
    wait_states(a, "observed", {kept: "delivered"}, timeout=5)
    [lost] = outcomes.post("observed", {"name": "observed 2", "secret": marker})
    wait_states(a, "observed", {kept: "delivered", lost: "dead"}, timeout=5)
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)

    samples = scrape(outcomes.metrics_port)
    label = {"forward": "observed"}
    assert sample(samples, "gwebhook_forward_delivered_total", **label) == 1
    assert sample(samples, "gwebhook_forward_dead_total", **label) == 1
    assert sample(samples, "gwebhook_forward_pending", **label) == 0
    for reason in ("503", "400"):
        failures = sample(
            samples, "gwebhook_forward_failures_total", reason=reason, **label
        )
        assert failures == 1, reason

    lines = log_lines(a, "forward observed: ")
    assert len(lines) == 3, lines
    retrying, delivered, gave_up = lines
    assert f"forward observed: incident {kept} (observed-{kept}) not delivered, " in (
        retrying
    )
    assert "attempt 1, retrying in " in retrying and retrying.endswith(
        " s: answered 503"
    )
    assert delivered.endswith(
        f"forward observed: delivered incident {kept} (observed-{kept}): answered 200"
    )
    assert gave_up.endswith(
        f"forward observed: gave up incident {lost}: answered 400; `gwebhook "
        "redeliver --forward observed --dead` queues it again"
    )
    log = log_text(a)
    basic = base64.b64encode(f"obs:{OBSERVED_PASSWORD}".encode()).decode()
    for secret in (OBSERVED_PASSWORD, basic, OBSERVED_KEY, SECRET, SECRET[6:], marker):
        assert secret not in log, secret
    assert "edge-password" not in log and "k-1" not in log


def test_an_attempt_logs_nothing_but_its_state_change(outcomes):
    [incident] = outcomes.post("insecure", {"name": "quiet"})
    wait_states(outcomes.a, "insecure", {incident: "delivered"}, timeout=10)
    noise = [line for line in log_text(outcomes.a).splitlines() if "factory" in line]
    assert noise == []


# ----------------------------------------------------- 6. --workers 2


def test_with_workers_one_process_delivers_each_incident_once(tmp_path, pki, started):
    receiver = Receiver(pki)
    with receiver:
        a = start(
            tmp_path,
            pki,
            started,
            instance("src", anonymous=True),
            forward("one", receiver.url(), ca_file=str(pki.ca), format="incident"),
            args=["--workers", "2"],
        )
        ids: list[str] = []
        deadline = time.monotonic() + 10
        # New connections, until the worker too has stored some.
        while len(ids) < 12 or not log_lines(a, "worker 1: 127.0.0.1 POST /instance"):
            assert time.monotonic() < deadline, "the worker stored nothing"
            ids += [e["id"] for e in post_ok(a, "src", {"name": f"w{len(ids)}"})]
        wait_states(a, "one", dict.fromkeys(ids, "delivered"), timeout=15)
        time.sleep(1.2)
        seen = receiver.requests
    assert [r.json()["id"] for r in seen] == ids
    assert [r.headers["webhook-id"] for r in seen] == [f"one-{i}" for i in ids]
    delivered = log_lines(a, "forward one: delivered")
    assert len(delivered) == len(ids)
    assert not any("worker" in line for line in delivered)


# -------------------------------------- the webhook-id across two stores


def test_two_engines_with_their_own_stores_do_not_collide_at_b(tmp_path, pki, started):
    """
    webhook-id is <forward>-<first incident id>, unique within one store:
    two engines forwarding to one receiver name their forwards apart (as the
    reference says), and B, deduplicating on webhook-id, keeps both.
    """
    b = start(tmp_path / "b", pki, started, sink("sink"))
    credentials = {"username": B_USER, "password": B_PASSWORD}
    names = []
    for site in ("edge-1", "edge-2"):
        forward_name = to_b(b, "src", "sink", pki, **credentials).replace(
            'name = "src"', f'name = "{site}"', 1
        )
        a = start(
            tmp_path / site,
            pki,
            started,
            instance("src", anonymous=True),
            forward_name,
        )
        [entry] = post_ok(a, "src", {"name": f"alert from {site}"})
        wait_states(a, site, {entry["id"]: "delivered"})
        names.append(f"alert from {site}")
    assert [i["name"] for i in exported(b, "sink")] == names


# ------------------------------------------------ 8. refusals at start-up


@pytest.mark.parametrize(
    "extra",
    ['format = "json"\n', 'sign_secret = "not-a-whsec"\n', 'ca_file = "missing.pem"\n'],
)
def test_a_bad_forward_is_refused_at_start_up_in_one_line(tmp_path, pki, extra):
    config = write_config(
        tmp_path,
        instance("src", anonymous=True),
        forward("out", "https://127.0.0.1:9/hook") + extra,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), {})
    expected = str(caught.value)
    assert expected.startswith(f"{config}: forward 'out': "), expected
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
