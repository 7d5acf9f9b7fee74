"""
What an operator sees of a running ``twistd gwebhook``: the ``/healthz``
probe, the Prometheus metrics of ``--metrics-port``, and the logs (SPEC
section 6: one line per request, never a secret), in the text log file and
as JSON lines through ``--logger gwebhook.logs.json_observer``.
"""

from __future__ import annotations

import json
import re
import resource
import secrets
import signal
import socket
import sqlite3

import pytest
from support.credentials import AUTH, HEADERS, USERNAME, basic
from support.daemon import log_text, wait_for_log
from support.metrics import sample, scrape
from support.ports import free_port
from support.proc import listening_sockets
from support.wait import wait_for

# Every test here starts twistd.
pytestmark = pytest.mark.process

REQUEST_ID = re.compile(r"[0-9a-f]{16}")
# The access line of the text log, after twistd's "<time> [<namespace>#info] ".
ACCESS = re.compile(
    r"\[gwebhook\.accesslog#info\] (?P<client>\S+) (?P<method>\S+) (?P<path>\S+) "
    r"(?P<status>\d{3}) incidents=(?P<incidents>\d+) bytes=(?P<bytes>\d+) "
    r"(?P<duration>[\d.]+)ms id=(?P<id>[0-9a-f]{16})(?: refused: .+)?$"
)


def access_lines(log: str, request_id: str) -> list[dict[str, str]]:
    """The parsed access lines of the text log that name ``request_id``."""
    return [
        match.groupdict()
        for line in log.splitlines()
        if request_id in line and (match := ACCESS.search(line))
    ]


# --------------------------------------------------------------------- healthz


def test_healthz_answers_ok_without_credentials(spawn):
    """GET /healthz needs no credentials and answers exactly {"status": "ok"}."""
    d = spawn(*AUTH)
    reply = d.request("GET", "/healthz", body=None)
    assert reply.status == 200, reply.body
    assert reply.json() == {"status": "ok"}
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["server"] == "gwebhook"  # no name or version of Twisted
    assert "www-authenticate" not in reply.headers
    assert d.request("HEAD", "/healthz", body=None).status == 200


def test_healthz_refuses_other_methods(spawn):
    """POST /healthz is 405 naming the allowed methods, and stores nothing."""
    d = spawn(*AUTH)
    reply = d.request("POST", "/healthz", body=b'{"name": "x"}', headers=HEADERS)
    assert reply.status == 405, reply.body
    assert set(reply.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert set(reply.json()) == {"error"}
    with sqlite3.connect(d.db) as connection:
        assert connection.execute("SELECT count(*) FROM incidents").fetchone() == (0,)


def test_healthz_is_503_while_the_store_cannot_commit(spawn):
    """/healthz is 503 while the store cannot commit, and 200 once it can again."""
    # The store is made unable to grow its files the way a full disk does:
    # RLIMIT_FSIZE of the running daemon is lowered to one byte, so SQLite's
    # next write fails with EFBIG (reported as "database or disk is full").
    # The log file is limited too, so nothing is asserted about the log here.
    d = spawn(*AUTH)
    assert d.request(body=b'{"name": "before"}', headers=HEADERS).status == 200
    pid = d.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
    try:
        full = d.request(body=b'{"name": "while full"}', headers=HEADERS)
        assert full.status == 503, full.body
        assert full.headers["retry-after"].isdigit()
        health = d.request("GET", "/healthz", body=None)
        assert health.status == 503, health.body
        assert health.json() == {"status": "unavailable"}
        assert health.headers["retry-after"].isdigit()
        # Still full: the health check's own durable commit fails too.
        assert d.request("GET", "/healthz", body=None).status == 503
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))

    # Recovered: health says so by itself, before any webhook succeeds (a
    # load balancer that took the node out would never send it one).
    health = d.request("GET", "/healthz", body=None)
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert d.request(body=b'{"name": "after"}', headers=HEADERS).status == 200
    with sqlite3.connect(d.db) as connection:
        names = [r[0] for r in connection.execute("SELECT name FROM incidents")]
    assert names == ["before", "after"]


# --------------------------------------------------------------------- metrics


def test_metrics_count_what_happened(spawn):
    """Each counter of --metrics-port moves by exactly what the requests did."""
    metrics_port = free_port()
    d = spawn(*AUTH, "--metrics-port", str(metrics_port))
    before = scrape(metrics_port)

    three = json.dumps([{"name": f"n{i}"} for i in range(3)]).encode()
    assert d.request(body=three, headers=HEADERS).status == 200
    assert d.request(body=b'{"name": "x"}').status == 401
    assert d.request(body=b"not json", headers=HEADERS).status == 400
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not a TLS ClientHello

    def settled():
        now = scrape(metrics_port)
        handshakes = sample(now, "gwebhook_tls_handshake_failures_total")
        done = handshakes > sample(before, "gwebhook_tls_handshake_failures_total")
        return done and sample(now, "gwebhook_connections_open") == 0 and now

    after = wait_for(settled, 5, "the handshake failure and closed connections")

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    # A stranger's request with a body is refused by the channel, unread.
    for route, status in (("webhook", "200"), ("channel", "401"), ("webhook", "400")):
        labels = {"method": "POST", "route": route, "status": status}
        assert moved("gwebhook_requests_total", **labels) == 1, status
    requests = [k for k in after if k[0] == "gwebhook_requests_total"]
    assert sum(moved(name, **dict(labels)) for name, labels in requests) == 3
    assert moved("gwebhook_incidents_created_total", instance="default") == 3
    missing = {"instance": "default", "reason": "missing"}
    assert moved("gwebhook_auth_failures_total", **missing) == 1
    assert moved("gwebhook_tls_handshake_failures_total") >= 1
    assert moved("gwebhook_request_duration_seconds_count") == 3
    assert moved("gwebhook_request_body_bytes_count") == 3
    # The 401 was refused before its 13-byte body was read.
    assert moved("gwebhook_request_body_bytes_sum") == len(three) + 8
    assert moved("gwebhook_commit_duration_seconds_count") == 1
    assert ("gwebhook_connections_open", frozenset()) in after


def test_client_chosen_methods_do_not_grow_the_metrics(spawn):
    """Made-up methods are counted under one label, not one series each."""
    metrics_port = free_port()
    d = spawn(*AUTH, "--metrics-port", str(metrics_port))
    for n in range(5):
        d.request(f"FOO{n}X", "/", body=b"{}", headers=HEADERS)
    after = scrape(metrics_port)
    methods = {
        dict(labels)["method"]
        for name, labels in after
        if name == "gwebhook_requests_total"
    }
    assert methods == {"other"}, methods
    assert (
        sample(
            after,
            "gwebhook_requests_total",
            method="other",
            route="channel",
            status="405",
        )
        == 5
    )


def test_metrics_listener_binds_loopback_only_when_asked(spawn):
    """--metrics-port listens on 127.0.0.1 by default; without it no port is added."""
    metrics_port = free_port()
    # spawn returns once both ports accept connections (the metrics listener
    # is bound a moment after the webhook's): nothing is read before.
    with_metrics = spawn(*AUTH, "--metrics-port", str(metrics_port))
    assert listening_sockets(with_metrics.process.pid) == {
        ("127.0.0.1", with_metrics.port),
        ("127.0.0.1", metrics_port),
    }
    with_metrics.terminate()

    without = spawn(*AUTH)
    assert listening_sockets(without.process.pid) == {("127.0.0.1", without.port)}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", metrics_port), timeout=2)
    assert without.request("GET", "/metrics", body=None).status == 404


# ------------------------------------------------------------------------ logs


def test_every_response_has_a_request_id_and_one_access_line(spawn):
    """Each answer's X-Request-Id names one access line saying what happened."""
    d = spawn(*AUTH)
    two = json.dumps([{"name": "a"}, {"name": "b"}]).encode()
    cases = [
        ("POST", "/", two, HEADERS, 200, 2),
        ("PUT", "/instance/execute/soc", b'{"name": "c"}', HEADERS, 200, 1),
        ("POST", "/", b'{"name": "d"}', {}, 401, 0),
        ("POST", "/", b"{not json", HEADERS, 400, 0),
        ("GET", "/nowhere", None, {}, 404, 0),
        ("DELETE", "/", None, HEADERS, 405, 0),
        ("GET", "/healthz", None, {}, 200, 0),
    ]
    ids = []
    for method, path, body, headers, status, _ in cases:
        reply = d.request(method, path, body=body, headers=headers)
        assert reply.status == status, (method, path, reply.body)
        assert REQUEST_ID.fullmatch(reply.headers.get("x-request-id", "")), reply
        ids.append(reply.headers["x-request-id"])
    assert len(set(ids)) == len(ids), "a request id was reused"

    log = wait_for_log(d, ids[-1])
    for (method, path, body, _, status, incidents), rid in zip(cases, ids, strict=True):
        [line] = access_lines(log, rid)
        assert line["client"] == "127.0.0.1"
        assert (line["method"], line["path"]) == (method, path)
        assert int(line["status"]) == status
        assert int(line["incidents"]) == incidents
        # A stranger's body is never read: none of its bytes were received.
        assert int(line["bytes"]) == (0 if status == 401 else len(body or b""))
        assert float(line["duration"]) >= 0


def test_request_refused_by_the_channel_has_its_access_line(spawn):
    """A request refused by the channel (413) has a request id and an access line."""
    d = spawn(*AUTH, "--max-body-bytes", "64")
    reply = d.request(body=json.dumps({"name": "x" * 100}).encode(), headers=HEADERS)
    assert reply.status == 413, reply.body
    rid = reply.headers.get("x-request-id", "")
    assert REQUEST_ID.fullmatch(rid), reply.headers
    [line] = access_lines(wait_for_log(d, rid), rid)
    assert (line["method"], line["path"], line["status"]) == ("POST", "/", "413")


def test_log_never_holds_secrets_or_bodies(spawn):
    """No password, Authorization value, header value or body reaches the log."""
    password = "pw-" + secrets.token_hex(8)
    body_marker = "body-" + secrets.token_hex(8)
    header_marker = "hdr-" + secrets.token_hex(8)
    good = basic(USERNAME, password)
    wrong = basic(USERNAME, "wrong-" + password)
    d = spawn("--username", USERNAME, "--password", password)

    body = {"name": body_marker, "rawJson": {"secret": body_marker}}
    sent = [
        (json.dumps(body).encode(), {**good, "X-Api-Token": header_marker}, 200),
        (json.dumps(body).encode(), {**wrong, "X-Api-Token": header_marker}, 401),
        (f'{{"name": "{body_marker}"'.encode(), good, 400),  # broken JSON
        (json.dumps({"occurred": body_marker}).encode(), good, 400),
        (json.dumps([{"name": 1}, {"type": [body_marker]}]).encode(), good, 400),
    ]
    for payload, headers, status in sent:
        assert d.request(body=payload, headers=headers).status == status
    assert d.stop() == -signal.SIGTERM  # every line flushed, shutdown lines too

    log = log_text(d)
    assert log.count("[gwebhook.accesslog#info] 127.0.0.1 POST / ") == len(sent)
    secrets_ = {
        "password": password,
        "Authorization value": good["Authorization"].split()[1],
        "wrong Authorization value": wrong["Authorization"].split()[1],
        "header value": header_marker,
        "body content": body_marker,
    }
    leaked = [what for what, value in secrets_.items() if value in log]
    assert not leaked, f"the log holds: {leaked}"
    with sqlite3.connect(d.db) as connection:  # the body did arrive
        assert connection.execute("SELECT name FROM incidents").fetchall() == [
            (body_marker,)
        ]


def test_json_logger_writes_access_events_as_json_lines(spawn):
    """With --logger gwebhook.logs.json_observer every stdout line is a JSON event."""
    d = spawn(*AUTH, logger="gwebhook.logs.json_observer")
    body = json.dumps([{"name": "a"}, {"name": "b"}]).encode()
    reply = d.request(body=body, headers=HEADERS)
    assert reply.status == 200, reply.body
    rid = reply.headers["x-request-id"]
    status, _ = d.terminate()
    assert status == -signal.SIGTERM

    lines = d.stdout.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 3
    events = [json.loads(line) for line in lines]  # every line, not just most
    assert all(isinstance(e, dict) and "message" in e for e in events)
    [access] = [e for e in events if e.get("request_id") == rid]
    assert {k: access[k] for k in ("client", "method", "path", "status")} == {
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/",
        "status": 200,
    }
    assert access["incidents"] == 2
    assert access["bytes"] == len(body)
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert not d.log.exists(), "--logger should replace the log file"


def test_text_logger_writes_twistds_lines_and_every_one_reaches_the_stream(spawn):
    """
    --logger gwebhook.logs.text_observer writes the lines twistd's own text
    log writes, access lines included, and none is left in a buffer at exit.
    """
    d = spawn(*AUTH, logger="gwebhook.logs.text_observer")
    ids = []
    for n in range(5):
        reply = d.request(body=b'{"name": "t%d"}' % n, headers=HEADERS)
        assert reply.status == 200, reply.body
        ids.append(reply.headers["x-request-id"])
    status, _ = d.terminate()
    assert status == -signal.SIGTERM
    text = d.stdout.read_text(encoding="utf-8")
    for rid in ids:
        [line] = access_lines(text, rid)
        assert (line["client"], line["method"], line["status"]) == (
            "127.0.0.1",
            "POST",
            "200",
        )
    # The classic stamp, "2026-11-22T16:51:02+0000 [namespace#level] ...".
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[\S+\] ")
    lines = text.splitlines()
    assert all(stamp.match(line) for line in lines), lines
    # Written after the reactor stopped: flushed at exit.
    assert "Server Shut Down." in lines[-1]
    assert not d.log.exists(), "--logger should replace the log file"
