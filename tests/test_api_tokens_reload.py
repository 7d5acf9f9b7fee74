"""
SIGHUP reads the read API's tokens again, as it reads the ``--config`` file
and the certificate: a token taken out of its file is refused from then on,
at ``/api/`` and at the console, with the sessions made with it, by every
process of ``--workers 2``; a tokens file that cannot be used leaves the
running tokens in service.  Real ``twistd`` processes; every request here is
on a new connection, so the kernel spreads them over both processes.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.api import login, token_file
from support.credentials import AUTH, HEADERS
from support.daemon import Daemon, log_lines, log_text, wait_for_log
from support.instances import instance, write_config

pytestmark = pytest.mark.process

KEPT = "reload-kept-token"
REMOVED = "reload-removed-token"
ADDED = "reload-added-token"
ROUNDS = 12
# Wrong tokens are what these tests send: the throttle would answer 429.
NO_THROTTLE = ("--auth-fail-limit", "0")


def api_statuses(d: Daemon, token: str, rounds: int = ROUNDS) -> set[int]:
    """What ``/api/v1/incidents`` answers ``token``, over ``rounds`` connections."""
    bearer = {"Authorization": f"Bearer {token}"}
    return {
        d.request("GET", "/api/v1/incidents?limit=1", None, bearer).status
        for _ in range(rounds)
    }


def session_statuses(d: Daemon, cookie: str, rounds: int = ROUNDS) -> set[int]:
    return {
        d.request("GET", "/console/session", None, {"Cookie": cookie}).status
        for _ in range(rounds)
    }


def reloaded(d: Daemon, text: str, processes: int = 1) -> None:
    """SIGHUP, then wait for ``text`` from each of ``processes`` once more."""
    before = log_text(d).count(text)
    d.signal(signal.SIGHUP)
    wait_for_log(d, text, before + processes, timeout=10)


def test_a_reload_puts_the_files_tokens_in_service_on_every_process(daemon, tmp_path):
    """
    The token taken out is refused at /api/ and its console session ends,
    the token added is taken, the one kept still is; webhooks are served
    throughout; no token is written to the log.
    """
    path = token_file(tmp_path, KEPT, REMOVED)
    d = daemon(*AUTH, "--api-token-file", str(path), "--workers", "2", *NO_THROTTLE)
    # Serving, so that its reload is of tokens it read before the change.
    wait_for_log(d, "worker 1: gwebhook ready")
    removed_session, _ = login(d, REMOVED)
    kept_session, _ = login(d, KEPT)
    assert api_statuses(d, REMOVED) == {200}
    assert api_statuses(d, ADDED) == {401}

    token_file(tmp_path, KEPT, ADDED)
    reloaded(d, "API tokens reloaded: 2 in service", processes=2)

    assert api_statuses(d, REMOVED) == {401}
    assert api_statuses(d, ADDED) == {200}
    assert api_statuses(d, KEPT) == {200}
    assert session_statuses(d, removed_session) == {401}
    assert session_statuses(d, kept_session) == {200}
    assert d.request(body=b'{"name": "after"}', headers=HEADERS).status == 200
    log = log_text(d)
    assert not [t for t in (KEPT, REMOVED, ADDED) if t in log]


def test_a_tokens_file_that_cannot_be_used_leaves_the_running_tokens(daemon, tmp_path):
    """Emptied, then gone: each reload is refused in one line, the tokens stay."""
    path = token_file(tmp_path, KEPT)
    d = daemon(*AUTH, "--api-token-file", str(path), *NO_THROTTLE)
    refused = "configuration not reloaded, the running one stays in service: "

    path.write_text("\n \n", "utf-8")
    reloaded(d, refused)
    assert log_lines(d, refused)[-1].endswith(
        f"--api-token-file: {path} holds no token; write one per line"
    )
    assert api_statuses(d, KEPT, 3) == {200}

    path.unlink()
    reloaded(d, refused)
    assert log_lines(d, refused)[-1].endswith(
        f"--api-token-file: cannot read {path}: No such file or directory; give "
        "a file the daemon can read, one token per line"
    )
    assert api_statuses(d, KEPT, 3) == {200}
    assert not log_lines(d, "API tokens reloaded")


def test_a_long_poll_waiting_at_the_reload_is_answered_at_once(daemon, tmp_path):
    """
    A consumer whose token goes gets no incident stored after the reload:
    its waiting poll is answered empty at once, and its next is refused.
    A reload that changes no token leaves it waiting.
    """
    path = token_file(tmp_path, KEPT, REMOVED)
    d = daemon(*AUTH, "--api-token-file", str(path), *NO_THROTTLE)
    bearer = {"Authorization": f"Bearer {REMOVED}"}
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(
            d.request, "GET", "/api/v1/incidents?wait=30", None, bearer, 40
        )
        time.sleep(1)  # ample for it to be waiting; it would wait 30 s
        # A reload that leaves the tokens as they are leaves it waiting.
        reloaded(d, "certificate reloaded")
        time.sleep(0.3)
        assert not poll.done()
        assert not log_lines(d, "API tokens reloaded")
        token_file(tmp_path, KEPT)
        reloaded(d, "API tokens reloaded: 1 in service")
        reloaded_at = time.monotonic()
        reply = poll.result(10)
    assert time.monotonic() - reloaded_at < 5
    assert reply.status == 200
    assert reply.json()["incidents"] == []
    assert d.request(body=b'{"name": "after"}', headers=HEADERS).status == 200
    assert api_statuses(d, REMOVED, 1) == {401}
    assert api_statuses(d, KEPT, 1) == {200}


def test_the_config_files_tokens_file_is_read_again(daemon, tmp_path):
    """
    ``[api] tokens_file`` pointed at another file takes that file's tokens;
    taken out of the config, no token is accepted any more (until a
    restart, when /api/ goes), and the log says so.
    """
    first = token_file(tmp_path, KEPT, name="first")
    second = token_file(tmp_path, ADDED, name="second")
    sender = instance("sender", username="sender", password="sender-secret")

    def api(path: Path) -> str:
        return f"[api]\ntokens_file = {json.dumps(str(path))}\n"

    config = write_config(tmp_path, api(first), sender)
    d = daemon("--config", str(config), *NO_THROTTLE)
    assert api_statuses(d, KEPT, 3) == {200}

    write_config(tmp_path, api(second), sender)
    reloaded(d, "API tokens reloaded: 1 in service")
    assert api_statuses(d, KEPT, 3) == {401}
    assert api_statuses(d, ADDED, 3) == {200}

    write_config(tmp_path, sender)
    reloaded(d, "no API token is configured any more")
    assert api_statuses(d, ADDED, 3) == {401}


def test_tokens_for_a_daemon_started_without_the_api_ask_for_a_restart(
    daemon, tmp_path
):
    """The read API is mounted at start-up or not at all: a reload says so."""
    sender = instance("sender", username="sender", password="sender-secret")
    config = write_config(tmp_path, sender)
    d = daemon("--config", str(config), *NO_THROTTLE)
    path = token_file(tmp_path, ADDED)
    write_config(tmp_path, f"[api]\ntokens_file = {json.dumps(str(path))}\n", sender)
    reloaded(d, "restart gwebhook to serve /api/ and /console/")
    assert api_statuses(d, ADDED, 3) == {404}
