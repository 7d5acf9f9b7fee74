"""
What a 200 promises: the incidents it names survive the daemon being killed,
no request is ever half stored, ids are never reused, and SIGTERM stops the
daemon cleanly.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from support.credentials import AUTH, BASIC_HEADER
from support.http import SlowRequest
from support.ports import wait_until_not_listening
from support.senders import run_senders
from support.store import read_only

# Every test here starts twistd.
pytestmark = pytest.mark.process

HEADERS = {"Authorization": BASIC_HEADER, "Content-Type": "application/json"}
SENDERS = 8


def read_store(db: Path) -> tuple[list[tuple], dict[int, tuple[bytes, list[tuple]]]]:
    """Every incident (id, name, request_id, position) and every request's body."""
    connection = read_only(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        incidents = connection.execute(
            "SELECT id, name, request_id, position FROM incidents ORDER BY id"
        ).fetchall()
        requests = {
            rid: (body, [])
            for rid, body in connection.execute("SELECT id, body FROM requests")
        }
    finally:
        connection.close()
    for incident in incidents:
        requests[incident[2]][1].append(incident)
    return incidents, requests


def assert_whole_requests(requests: dict[int, tuple[bytes, list[tuple]]]) -> None:
    """Each stored request has exactly the incidents its body carried, in order."""
    for rid, (body, incidents) in requests.items():
        document = json.loads(body)
        objects = document if isinstance(document, list) else [document]
        stored = sorted(incidents, key=lambda i: i[3])
        assert [i[1] for i in stored] == [o["name"] for o in objects], rid
        assert [i[3] for i in stored] == list(range(len(objects))), rid


def assert_acknowledged_kept(senders, incidents: list[tuple]) -> None:
    by_id = {i[0]: i[1] for i in incidents}
    acknowledged = [a for s in senders for a in s.acknowledged]
    missing = [(i, name) for i, name in acknowledged if by_id.get(i) != name]
    assert not missing, f"{len(missing)} acknowledged incidents lost: {missing[:5]}"
    assert len({i for i, _ in acknowledged}) == len(acknowledged), (
        "an id answered twice"
    )


def test_sigkill_loses_nothing_acknowledged(daemon):
    """After SIGKILL mid-stream every incident answered 200 is stored with its id."""
    d = daemon(*AUTH)
    senders = run_senders(d, HEADERS, SENDERS, then=d.kill, after=1.5)
    assert not [m for s in senders for m in s.mismatches]
    assert any(s.failure for s in senders), "the kill did not interrupt the senders"
    acknowledged = [a for s in senders for a in s.acknowledged]
    assert len(acknowledged) > 50, "too little traffic to mean anything"

    again = daemon(*AUTH)  # same directory, so the same --db
    incidents, requests = read_store(again.db)
    assert_acknowledged_kept(senders, incidents)
    assert_whole_requests(requests)

    reply = again.request(body=b'{"name": "after the crash"}', headers=HEADERS)
    assert reply.status == 200, reply.body
    [new] = reply.json()
    assert int(new["id"]) > max(i[0] for i in incidents)


def test_sigterm_stops_cleanly(daemon):
    """SIGTERM exits with -15 or 0 and leaves a whole, checkpointed store."""
    d = daemon(*AUTH)
    ids = []
    for n in range(5):
        reply = d.request(body=json.dumps({"name": f"n{n}"}).encode(), headers=HEADERS)
        assert reply.status == 200, reply.body
        ids.append(int(reply.json()[0]["id"]))
    started = time.monotonic()
    assert d.stop() in (-signal.SIGTERM, 0)
    assert time.monotonic() - started < 5
    incidents, requests = read_store(d.db)
    assert [i[0] for i in incidents] == ids
    assert_whole_requests(requests)
    wal = d.db.with_name(d.db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "the WAL was not checkpointed"


def test_sigterm_answers_the_request_in_flight(daemon):
    """A request whose body is still arriving at SIGTERM is stored and answered 200."""
    d = daemon(*AUTH)
    slow = SlowRequest(d, HEADERS, json.dumps({"name": "in flight"}).encode())
    time.sleep(0.5)  # for the daemon to read the headers: now it is in flight
    d.signal(signal.SIGTERM)
    wait_until_not_listening(d.port)
    reply = slow.finish()
    assert reply.status == 200, reply.body
    [incident] = reply.json()
    assert d.wait() in (-signal.SIGTERM, 0)
    incidents, _ = read_store(d.db)
    assert [(i[0], i[1]) for i in incidents] == [(int(incident["id"]), "in flight")]


def test_sigterm_under_load_answers_what_it_stored(daemon):
    """SIGTERM under load: every request stored was answered 200, none half stored."""
    d = daemon(*AUTH)
    # Held open across the signal, so some request is surely in flight.
    slow = SlowRequest(d, HEADERS, json.dumps({"name": "slow"}).encode())
    replies = []

    def terminate() -> None:
        d.signal(signal.SIGTERM)
        wait_until_not_listening(d.port)
        replies.append(slow.finish())

    senders = run_senders(d, HEADERS, SENDERS, then=terminate, after=1.0)
    assert d.wait() in (-signal.SIGTERM, 0)
    incidents, requests = read_store(d.db)
    assert_acknowledged_kept(senders, incidents)
    assert_whole_requests(requests)
    stored = {i[1] for i in incidents}
    unanswered = [n for s in senders for names in s.unanswered for n in names]
    assert not stored.intersection(unanswered), "stored but never answered"
    assert replies[0].status == 200, replies[0].body
    assert "slow" in stored
