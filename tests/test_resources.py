"""
What a running ``twistd gwebhook`` holds on to: its memory over tens of
thousands of requests, and the temporary files Twisted spools large bodies
to (bodies of 100 kB or more, and every chunked body), which must be closed
whatever becomes of the request — stored, refused, or cut off by the client.
Figures come from ``/proc/PID/status`` and ``/proc/PID/fd``.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from support.credentials import AUTH, HEADERS, USERNAME, basic
from support.http import connect, read_reply, request_bytes, send
from support.proc import open_files, status_kib
from support.store import row_counts
from support.wait import wait_for

# Every test here starts twistd.
pytestmark = pytest.mark.process

# -- memory ----------------------------------------------------------------------

CONNECTIONS = 16
WARM_UP = 2_000
TOTAL = 20_000
GROWTH_BOUND_KIB = 20 * 1024


LENGTH = re.compile(rb"\r\nContent-Length: (\d+)", re.IGNORECASE)


def post_many(d, count: int, tag: str) -> dict[int, int]:
    """
    ``count`` POSTs of one small incident, on ``CONNECTIONS`` keep-alive TLS
    connections at once, each a plain socket loop; the statuses counted.
    """
    context = d.pki.client_context()
    authorization = HEADERS["Authorization"].encode("ascii")
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def loop(number: int, share: int) -> None:
        seen: dict[int, int] = {}
        try:
            with connect(d.port, context) as tls:
                pending = b""
                for i in range(share):
                    body = b'{"name": "%s-%d-%d"}' % (tag.encode(), number, i)
                    tls.sendall(
                        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
                        b"Content-Length: %d\r\n\r\n%s"
                        % (authorization, len(body), body)
                    )
                    while b"\r\n\r\n" not in pending:
                        pending += tls.recv(65536)
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    length = int(LENGTH.search(head).group(1))
                    while len(pending) < length:
                        pending += tls.recv(65536)
                    pending = pending[length:]
                    status = int(head[9:12])
                    seen[status] = seen.get(status, 0) + 1
        except BaseException as e:  # reported below
            failures.append(e)
        with lock:
            for status, n in seen.items():
                statuses[status] = statuses.get(status, 0) + n

    shares = [
        count // CONNECTIONS + (n < count % CONNECTIONS) for n in range(CONNECTIONS)
    ]
    threads = [
        threading.Thread(target=loop, args=(n, share), daemon=True)
        for n, share in enumerate(shares)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client loop hung"
    assert not failures, failures[:3]
    return statuses


@pytest.mark.slow
def test_memory_stays_flat_over_twenty_thousand_requests(spawn):
    """
    The daemon's resident memory grows by less than 20 MiB between the
    2,000th and the 20,000th stored webhook (16 keep-alive connections).
    """
    d = spawn(*AUTH)
    pid = d.process.pid
    started = time.monotonic()
    assert post_many(d, WARM_UP, "warm") == {200: WARM_UP}
    warm = status_kib(pid)
    assert post_many(d, TOTAL - WARM_UP, "load") == {200: TOTAL - WARM_UP}
    loaded = status_kib(pid)
    took = time.monotonic() - started
    print(
        f"VmRSS after {WARM_UP} requests: {warm} KiB; after {TOTAL}: {loaded} KiB;"
        f" growth {loaded - warm} KiB (bound {GROWTH_BOUND_KIB} KiB);"
        f" {TOTAL / took:.0f} requests/s"
    )
    assert loaded - warm < GROWTH_BOUND_KIB
    assert row_counts(d.db) == {"requests": TOTAL, "incidents": TOTAL}


# -- temporary files ---------------------------------------------------------------

BODY_LIMIT = 1024 * 1024


def big_body(size: int, name: str) -> bytes:
    """A JSON incident of about ``size`` bytes."""
    return json.dumps({"name": name, "rawJson": {"pad": "x" * size}}).encode()


def chunked_request(body: bytes, chunk: int = 16384) -> bytes:
    head = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: %s\r\n\r\n" % HEADERS["Authorization"].encode("ascii")
    )
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def deleted_files(pid: int) -> list[str]:
    """Open files of ``pid`` that were deleted: spooled bodies among them."""
    return [t for t in open_files(pid).values() if t.endswith("(deleted)")]


def quiet(pid: int) -> list[str] | None:
    """
    What ``pid`` has open, once no connection is (only the listener's socket
    is left) and no spooled body: a connection's socket closes a moment
    before its request's file, so both are waited for.
    """
    files = sorted(open_files(pid).values())
    sockets = sum(f.startswith("socket:") for f in files)
    spooled = any(f.endswith("(deleted)") for f in files)
    return files if sockets == 1 and not spooled else None


def exchange(d, data: bytes) -> int:
    """Send ``data`` on a new connection; the status of the answer."""
    with connect(d.port, d.pki.client_context()) as tls:
        tls.sendall(data)
        return read_reply(tls).status


def cut_off(d, body: bytes) -> None:
    """Send the headers and half the body of a POST, see it spooled, then go away."""
    pid = d.process.pid
    tls = connect(d.port, d.pki.client_context())
    try:
        tls.sendall(request_bytes(body, HEADERS)[: -len(body) // 2])
        wait_for(lambda: deleted_files(pid), 5, "the body to be spooled to a file")
    finally:
        tls.close()


def large_requests(d, round_: int) -> list[int]:
    """One round of every way a large body can end; the statuses answered."""
    wrong = basic(USERNAME, "no")
    statuses = [
        send(d, big_body(150_000, f"r{round_}-150k"), HEADERS).status,
        send(d, big_body(900_000, f"r{round_}-900k"), HEADERS).status,
        exchange(d, chunked_request(big_body(50, f"r{round_}-small-chunked"))),
        exchange(d, chunked_request(big_body(300_000, f"r{round_}-chunked"))),
        send(d, big_body(400_000, f"r{round_}-unauthenticated"), wrong).status,
        send(d, b"[" + b" " * 200_000 + b"5]", HEADERS).status,
        exchange(d, chunked_request(big_body(BODY_LIMIT + 100_000, "too big"))),
    ]
    cut_off(d, big_body(600_000, f"r{round_}-cut"))
    return statuses


@pytest.mark.slow
def test_spooled_bodies_leave_no_temporary_files_or_descriptors(spawn):
    """
    Bodies spooled to temporary files (stored, refused 400, 401 or 413, or
    cut off mid-way) leave no deleted file open and no descriptor behind.
    """
    d = spawn(*AUTH, "--max-body-bytes", str(BODY_LIMIT))
    pid = d.process.pid
    assert send(d, b'{"name": "first"}', HEADERS).status == 200
    # Once the first connection is closed, the only socket left is the listener.
    baseline = wait_for(lambda: quiet(pid), 10, "the first connection to close")
    expected = [200, 200, 200, 200, 401, 400, 413]
    for round_ in range(5):
        assert large_requests(d, round_) == expected, round_

    try:
        after = wait_for(lambda: quiet(pid), 10, "connections and files to close")
    finally:
        print(
            f"open before: {baseline}\nopen after: {sorted(open_files(pid).values())}"
        )
    assert after == baseline
    assert deleted_files(pid) == []
    assert row_counts(d.db) == {"requests": 1 + 5 * 4, "incidents": 1 + 5 * 4}
