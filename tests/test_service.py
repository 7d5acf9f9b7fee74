"""
The running service against real ``twistd`` processes: SIGHUP re-reads the
certificate and key (docs/reference.md 6.1), SIGTERM drains the requests in flight
before closing the store, and ``--shutdown-timeout`` bounds that drain.

Certificates are checked two ways at once: each client context trusts only the
root CA of the stage it expects (so a wrong certificate fails verification), and
the SHA-256 fingerprint of ``getpeercert(binary_form=True)`` is compared with the
leaf the test wrote.

twistd handles SIGTERM by stopping the reactor and then re-raising the signal
with its default action, so a clean stop exits with status -15 (SIGTERM), which
systemd counts as success (``SuccessExitStatus=143 SIGTERM`` in the unit).
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import time

import pytest
from support.credentials import AUTH, HEADERS
from support.daemon import log_text, wait_for_log
from support.http import (
    ask,
    connect,
    keep_alive,
    read_reply,
    read_until_closed,
    served_fingerprint,
    start_request,
)
from support.pki import leaf_fingerprint, make_pki, sha256
from support.ports import refuses_connections
from support.store import incidents_by_id, row_counts
from support.wait import wait_for

# Every test here starts twistd.
pytestmark = pytest.mark.process


def peer(connection) -> str:
    return sha256(connection.sock.getpeercert(binary_form=True))


def test_sighup_new_connections_get_new_pair_open_ones_keep_theirs(tmp_path, spawn):
    """After SIGHUP a new connection gets the new pair; an open one keeps the old."""
    live = make_pki(tmp_path / "live")  # the files the daemon reads
    new = make_pki(tmp_path / "new")  # a different root CA altogether
    old_print, new_print = leaf_fingerprint(live), leaf_fingerprint(new)
    d = spawn(*AUTH, pki=live)

    a = keep_alive(d)
    try:
        assert ask(a, "POST", "/", b'{"name": "before"}', HEADERS).status == 200
        assert peer(a) == old_print

        shutil.copyfile(new.cert, live.cert)
        shutil.copyfile(new.key, live.key)
        d.signal(signal.SIGHUP)
        wait_for_log(d, "certificate reloaded")

        assert served_fingerprint(d.port, new.client_context()) == new_print
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(d.port, live.client_context())

        assert ask(a, "POST", "/", b'{"name": "after"}', HEADERS).status == 200
        assert peer(a) == old_print
    finally:
        a.close()
    assert list(incidents_by_id(d.db).values()) == ["before", "after"]
    assert "certificate not reloaded" not in log_text(d)


def test_sighup_with_bad_pair_logs_and_keeps_old_pair(tmp_path, spawn):
    """A garbage or mismatched key on SIGHUP is logged and the old pair serves on."""
    live = make_pki(tmp_path / "live")
    other = make_pki(tmp_path / "other")
    served = leaf_fingerprint(live)
    d = spawn(*AUTH, pki=live)

    live.key.write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    )
    d.signal(signal.SIGHUP)
    wait_for_log(d, "certificate not reloaded")
    assert served_fingerprint(d.port, live.client_context()) == served

    shutil.copyfile(other.key, live.key)  # a real key, of another certificate
    d.signal(signal.SIGHUP)
    log = wait_for_log(d, "certificate not reloaded", count=2)
    assert served_fingerprint(d.port, live.client_context()) == served

    refusals = [line for line in log.splitlines() if "not reloaded" in line]
    assert all("--key" in line and str(live.key) in line for line in refusals), refusals
    assert "certificate reloaded" not in log
    assert d.process.poll() is None
    assert d.request(method="GET", path="/healthz", body=None).status == 200


def finish_after_sigterm(d, name: str):
    """
    Start a request, send SIGTERM, check the port closes while the daemon
    waits for the body, then send the rest; the raw connection is returned.
    """
    body = json.dumps({"name": name, "rawJson": {"pad": "x" * 200}}).encode()
    tls = start_request(d.port, d.pki.client_context(), body, HEADERS)
    d.signal(signal.SIGTERM)
    wait_for(lambda: refuses_connections(d.port), 5, "the port to close")
    time.sleep(0.3)  # the daemon waits for the body, not for a clock
    assert d.process.poll() is None, "exited with a request in flight"
    tls.sendall(body[len(body) // 2 :])
    return tls


def test_sigterm_refuses_new_connections_and_stores_request_in_flight(spawn):
    """After SIGTERM new connections are refused and a half-sent request is stored."""
    d = spawn(*AUTH)
    tls = finish_after_sigterm(d, "in flight")
    try:
        read_until_closed(tls)
    finally:
        tls.close()
    # twistd re-raises SIGTERM after a clean stop: -15 is success.
    assert d.wait(5) == -signal.SIGTERM
    assert list(incidents_by_id(d.db).values()) == ["in flight"]
    assert "stopped: store closed" in log_text(d)


def test_sigterm_answers_request_in_flight_then_exits(spawn):
    """A request half-sent at SIGTERM is answered 200, then the daemon exits."""
    d = spawn(*AUTH)
    tls = finish_after_sigterm(d, "in flight")
    try:
        reply = read_reply(tls)
        answered = time.monotonic()
        assert reply.status == 200, reply.body
        assert reply.headers["connection"] == "close"
        [incident] = json.loads(reply.body)
        assert incident["name"] == "in flight"
        assert read_until_closed(tls) == b""
    finally:
        tls.close()
    assert d.wait(5) == -signal.SIGTERM
    assert time.monotonic() - answered < 3
    assert incidents_by_id(d.db) == {int(incident["id"]): "in flight"}


def test_a_sighup_while_draining_neither_ends_the_drain_nor_reloads(spawn):
    """
    ``systemctl reload`` during a stop: the request in flight is still
    answered and stored, the daemon exits as SIGTERM has it exit, and
    nothing is reloaded.
    """
    d = spawn(*AUTH)
    body = json.dumps({"name": "drained"}).encode()
    tls = start_request(d.port, d.pki.client_context(), body, HEADERS)
    try:
        d.signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(d.port), 5, "the port to close")
        d.signal(signal.SIGHUP)
        time.sleep(0.3)
        assert d.process.poll() is None, "a SIGHUP ended the drain"
        tls.sendall(body[len(body) // 2 :])
        assert read_reply(tls).status == 200
    finally:
        tls.close()
    assert d.wait(5) == -signal.SIGTERM
    assert list(incidents_by_id(d.db).values()) == ["drained"]
    assert "reloaded" not in log_text(d)


def test_shutdown_timeout_cuts_off_unfinished_request(spawn):
    """With --shutdown-timeout 1 an unfinished request is cut off unanswered."""
    d = spawn(*AUTH, "--shutdown-timeout", "1")
    body = json.dumps({"name": "never finished"}).encode()
    tls = start_request(d.port, d.pki.client_context(), body, HEADERS)
    try:
        status, took = d.terminate(timeout=10)
        assert read_until_closed(tls) == b"", "a cut-off request was answered"
    finally:
        tls.close()
    assert status == -signal.SIGTERM
    assert 0.9 <= took < 3, took
    assert row_counts(d.db) == {"requests": 0, "incidents": 0}


def test_idle_connections_do_not_delay_shutdown(spawn):
    """Idle keep-alive connections are closed at SIGTERM; the daemon exits at once."""
    d = spawn(*AUTH)  # --shutdown-timeout 30 and an idle timeout of 60 s
    used = keep_alive(d)
    fresh = connect(d.port, d.pki.client_context())  # handshake, no request yet
    try:
        assert ask(used, "POST", "/", b'{"name": "one"}', HEADERS).status == 200
        status, took = d.terminate(timeout=10)
        assert status == -signal.SIGTERM
        assert took < 2, took
        assert read_until_closed(used.sock) == b""
        assert read_until_closed(fresh) == b""
    finally:
        used.close()
        fresh.close()


def test_sighup_without_tls_keeps_the_daemon_serving(spawn):
    """SIGHUP to a --no-tls daemon is logged and changes nothing; it keeps serving."""
    d = spawn("--no-tls", "--allow-anonymous", pki=None)
    d.signal(signal.SIGHUP)
    wait_for_log(d, "nothing to reload")
    assert d.process.poll() is None
    assert d.request(body=b'{"name": "after"}').status == 200
