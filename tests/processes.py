"""
Helpers for tests that drive real processes: start-up output, the ``gwebhook``
console command, and senders that keep several connections busy at once.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import GWEBHOOK, Daemon, Response


def basic(username: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic for these credentials."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line a process wrote: what an operator reads first."""
    lines = (result.stdout + result.stderr).splitlines()
    written = [line.strip() for line in lines if line.strip()]
    return written[-1] if written else ""


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Run the ``gwebhook`` console command to completion."""
    return subprocess.run(
        [GWEBHOOK, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list[dict]:
    """Each non-empty line of ``text`` read as one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class SelfSigned:
    """A certificate that is its own CA, shaped like conftest's PKI for Daemon."""

    cert: Path
    key: Path

    @property
    def ca(self) -> Path:
        return self.cert

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def start_daemon(args: list[str], directory: Path, pki, started: list[Daemon]):
    """Start a Daemon with any PKI-shaped object; the caller kills ``started``."""
    d = Daemon(list(args), directory, pki)
    started.append(d)
    return d.start()


class Sender(threading.Thread):
    """
    Posts on one keep-alive connection until told to stop or the connection
    fails, alternating single objects and small arrays; every incident's name
    is unique.  ``acknowledged`` holds (id, name) of every incident answered
    200; ``unanswered`` the names of every request sent without a 200.
    """

    def __init__(
        self, number: int, d: Daemon, headers: dict[str, str], stop: threading.Event
    ) -> None:
        super().__init__(name=f"sender-{number}", daemon=True)
        self.number = number
        self.daemon_ = d
        self.headers = headers
        self.stop = stop
        self.acknowledged: list[tuple[int, str]] = []
        self.unanswered: list[list[str]] = []
        self.statuses: list[int] = []
        self.mismatches: list[tuple[list[str], bytes]] = []
        self.failure: BaseException | None = None

    def _connection(self) -> http.client.HTTPConnection:
        d = self.daemon_
        if d.pki is None:
            return http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
        return http.client.HTTPSConnection(
            "127.0.0.1", d.port, timeout=10, context=d.pki.client_context()
        )

    def run(self) -> None:
        connection = self._connection()
        sent = 0
        try:
            while not self.stop.is_set():
                size = sent % 4  # 0: a single object; 1-3: an array of that many
                names = [
                    f"s{self.number}-r{sent}-e{i}-{os.urandom(3).hex()}"
                    for i in range(max(size, 1))
                ]
                objects = [{"name": n, "rawJson": {"marker": n}} for n in names]
                body = json.dumps(objects[0] if size == 0 else objects).encode()
                sent += 1
                self.unanswered.append(names)
                connection.request("POST", "/", body=body, headers=self.headers)
                reply = connection.getresponse()
                answer = reply.read()
                self.statuses.append(reply.status)
                if reply.status != 200:
                    continue
                self.unanswered.pop()
                incidents = json.loads(answer)
                if [i["name"] for i in incidents] != names:
                    self.mismatches.append((names, answer))
                self.acknowledged.extend((int(i["id"]), i["name"]) for i in incidents)
        except (OSError, http.client.HTTPException) as e:
            # The daemon went away: expected, and where this sender stops.
            self.failure = e
        finally:
            connection.close()


def run_senders(
    d: Daemon,
    headers: dict[str, str],
    count: int,
    then,
    after: float,
) -> list[Sender]:
    """
    Run ``count`` senders against ``d``; after ``after`` seconds call ``then()``
    (which should make the daemon go away), then stop and join every sender.
    """
    stop = threading.Event()
    senders = [Sender(n, d, headers, stop) for n in range(count)]
    for s in senders:
        s.start()
    try:
        time.sleep(after)
        then()
    finally:
        stop.set()
        for s in senders:
            s.join(15)
    assert not any(s.is_alive() for s in senders), "a sender did not stop"
    return senders


def occupied_port() -> socket.socket:
    """A socket listening on 127.0.0.1 at a free port: close it when done."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


class SlowRequest:
    """
    A POST whose headers and first body bytes are sent now and the rest on
    ``finish()``: a request certainly in flight in between.
    """

    def __init__(self, d: Daemon, headers: dict[str, str], body: bytes) -> None:
        self.body = body
        self.connection = http.client.HTTPSConnection(
            "127.0.0.1", d.port, timeout=10, context=d.pki.client_context()
        )
        self.connection.putrequest("POST", "/")
        for name, value in headers.items():
            self.connection.putheader(name, value)
        self.connection.putheader("Content-Length", str(len(body)))
        self.connection.endheaders(body[:1])

    def finish(self) -> Response:
        """Send the rest of the body and read the answer."""
        try:
            self.connection.send(self.body[1:])
            reply = self.connection.getresponse()
            return Response(
                reply.status,
                {k.lower(): v for k, v in reply.getheaders()},
                reply.read(),
            )
        finally:
            self.connection.close()


def wait_until_not_listening(port: int, timeout: float = 10) -> None:
    """Return once 127.0.0.1:port refuses connections (the listener is closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError(f"port {port} still accepts connections")
