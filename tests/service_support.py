"""
Helpers for tests of the running service: raw TLS connections that stop
half-way through a request, certificate fingerprints, the daemon's log and
listening sockets, a ``$NOTIFY_SOCKET`` to listen on, a Prometheus scrape, and
``twistd`` processes started with their own environment, logger or wrapper.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Daemon
from processes import basic  # noqa: F401 (one definition, used from here too)
from prometheus_client.parser import text_string_to_metric_families

# ---------------------------------------------------------------- certificates


def sha256(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as hex."""
    return hashlib.sha256(der).hexdigest()


def leaf_fingerprint(pki) -> str:
    """The fingerprint of the leaf certificate a PKI's server should present."""
    pem = pki.leaf.cert_chain_pems[0].bytes().decode("ascii")
    return sha256(ssl.PEM_cert_to_DER_cert(pem))


def connect_tls(
    port: int, context: ssl.SSLContext, timeout: float = 10
) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:``port``, its handshake done."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def served_fingerprint(port: int, context: ssl.SSLContext) -> str:
    """The fingerprint of the certificate a new connection is given."""
    with connect_tls(port, context) as tls:
        return sha256(tls.getpeercert(binary_form=True))


def keep_alive(port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    """An HTTPS connection, already open, for several requests in turn."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=10, context=context
    )
    connection.connect()
    return connection


def ask(
    connection: http.client.HTTPConnection,
    method: str = "GET",
    path: str = "/healthz",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
):
    """One request on an open connection; (status, headers, body)."""
    connection.request(method, path, body=body, headers=headers or {})
    reply = connection.getresponse()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()


# ------------------------------------------------------------ partial requests


def request_head(
    length: int, headers: dict[str, str], path: str = "/", expect: bool = True
) -> bytes:
    """A POST's request line and headers, announcing a body of ``length`` bytes."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
    if expect:
        lines.append("Expect: 100-continue")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_interim(tls: ssl.SSLSocket) -> bytes:
    """
    Read the server's ``100 Continue``: it is sent once the headers are
    parsed, so the request is then in the server's hands (in flight).
    """
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = tls.recv(1)
        if not chunk:
            raise AssertionError(f"connection closed before 100 Continue: {data!r}")
        data += chunk
    assert data.startswith(b"HTTP/1.1 100 "), data
    return data


def start_request(
    port: int, context: ssl.SSLContext, body: bytes, headers: dict[str, str]
) -> ssl.SSLSocket:
    """Send a POST's headers and the first half of its body; the rest is due."""
    tls = connect_tls(port, context)
    tls.sendall(request_head(len(body), headers))
    read_interim(tls)
    tls.sendall(body[: len(body) // 2])
    return tls


def read_response(tls: ssl.SSLSocket) -> http.client.HTTPResponse:
    """The next response on a raw connection, its body read."""
    reply = http.client.HTTPResponse(tls, method="POST")
    reply.begin()
    reply.body = reply.read()
    return reply


def read_until_closed(tls: ssl.SSLSocket, timeout: float = 10) -> bytes:
    """Every byte the server sends until it closes (or resets) the connection."""
    tls.settimeout(timeout)
    data = b""
    try:
        while chunk := tls.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    return data


def refuses_connections(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:``port`` is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# ------------------------------------------------------------------ the daemon


def wait_for(predicate, timeout: float = 5, what: str = "condition"):
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def log_text(d: Daemon) -> str:
    """Everything the daemon has logged so far."""
    return d.log.read_text(encoding="utf-8") if d.log.exists() else ""


def wait_for_log(d: Daemon, text: str, count: int = 1, timeout: float = 5) -> str:
    """Wait until ``text`` appears ``count`` times in the daemon's log file."""
    return wait_for(
        lambda: (log := log_text(d)).count(text) >= count and log,
        timeout,
        f"{text!r} x{count} in {d.log}",
    )


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            packed = bytes.fromhex(address)
            if family == socket.AF_INET:
                packed = packed[::-1]
            else:  # four host-order 32-bit words
                packed = b"".join(
                    packed[i : i + 4][::-1] for i in range(0, len(packed), 4)
                )
            found.add((socket.inet_ntop(family, packed), int(port, 16)))
    return found


@dataclass
class Twistd(Daemon):
    """
    A ``twistd -n gwebhook`` process like conftest's Daemon, that can also
    be given extra environment, a ``--logger`` instead of the log file, a
    wrapper command that execs twistd and file descriptors to pass it, or a
    whole command line of its own (``argv``).  Its stdout and stderr go to
    ``stdout.log`` and ``stderr.log`` in its directory.
    """

    env: dict[str, str] = field(default_factory=dict)
    logger: str | None = None
    wrapper: list[str] = field(default_factory=list)
    pass_fds: tuple[int, ...] = ()
    argv: list[str] = field(default_factory=list)

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.directory / "stderr.log"

    def command(self) -> list[str]:
        if self.argv:
            return [*self.wrapper, *self.argv]
        command = super().command()
        if self.logger:
            at = command.index("--logfile")
            command[at : at + 2] = ["--logger", self.logger]
        return [*self.wrapper, *command]

    def spawn(self) -> Twistd:
        """Start the process without waiting for anything."""
        env = {k: v for k, v in os.environ.items() if k != "GWEBHOOK_PASSWORD"}
        env.pop("NOTIFY_SOCKET", None)
        # Block-buffered stdout, as under systemd (a pipe to the journal): a
        # line the daemon does not flush itself is then seen to be lost.
        env.pop("PYTHONUNBUFFERED", None)
        env.update(self.env)
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                stdout=out,
                stderr=err,
                env=env,
                pass_fds=self.pass_fds,
            )
        return self

    def output(self) -> str:
        """What the process wrote to stdout and stderr."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(
            errors="replace"
        )

    def start(self, timeout: float = 15) -> Twistd:
        """Start the process and wait until its port accepts connections."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"twistd exited {self.process.returncode}: {self.output()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError("twistd did not start listening in time")

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took to exit)."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        status = self.wait(timeout)
        return status, time.monotonic() - started


class Processes:
    """Every twistd a test starts, killed when the test ends."""

    def __init__(self, directory: Path, pki) -> None:
        self.directory = directory
        self.pki = pki
        self.started: list[Twistd] = []

    def __call__(self, *args: str, start: bool = True, **kwargs) -> Twistd:
        kwargs.setdefault("pki", self.pki)
        kwargs.setdefault("directory", self.directory)
        d = Twistd(list(args), **kwargs)
        self.started.append(d)
        return d.start() if start else d.spawn()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        for d in self.started:
            d.kill()


# --------------------------------------------------------------------- systemd


class NotifySocket:
    """A ``$NOTIFY_SOCKET`` (a path): what a service tells systemd arrives here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))

    def receive(self, timeout: float = 10) -> dict[str, str]:
        """The next message, as its KEY=VALUE lines; fails after ``timeout``."""
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            raise AssertionError(f"nothing on $NOTIFY_SOCKET in {timeout} s") from None
        return dict(line.split("=", 1) for line in data.decode().splitlines() if line)

    def pending(self) -> list[dict[str, str]]:
        """Every message already waiting, without blocking."""
        messages = []
        self.socket.setblocking(False)
        try:
            while True:
                data = self.socket.recv(4096)
                messages.append(
                    dict(line.split("=", 1) for line in data.decode().splitlines())
                )
        except BlockingIOError:
            return messages
        finally:
            self.socket.setblocking(True)

    def close(self) -> None:
        self.socket.close()


# --------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample served at http://127.0.0.1:PORT/metrics, by name and labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)
