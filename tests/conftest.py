"""
Shared test fixtures: a test PKI (root CA, intermediate, server certificate)
and real ``twistd gwebhook`` processes.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

TWISTD = str(Path(sys.executable).with_name("twistd"))
GWEBHOOK = str(Path(sys.executable).with_name("gwebhook"))


@dataclass
class PKI:
    """A root CA, an intermediate, and a server certificate issued by it."""

    root: trustme.CA
    intermediate: trustme.CA
    leaf: trustme.LeafCert
    ca: Path  # the root only: clients must verify through the served chain
    cert: Path  # leaf then intermediate
    key: Path

    def client_context(self, **kwargs) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        for name, value in kwargs.items():
            setattr(context, name, value)
        return context


def make_pki(directory: Path) -> PKI:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("localhost", "127.0.0.1")
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = (
        directory / "ca.pem",
        directory / "server.crt",
        directory / "server.key",
    )
    root.cert_pem.write_to_path(str(ca))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return PKI(root, intermediate, leaf, ca, cert, key)


@pytest.fixture(autouse=True)
def no_password_from_the_shell(monkeypatch):
    """A GWEBHOOK_PASSWORD exported in the shell must not reach test daemons."""
    monkeypatch.delenv("GWEBHOOK_PASSWORD", raising=False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Daemon:
    """A ``twistd -n gwebhook`` process on 127.0.0.1."""

    args: list[str]
    directory: Path
    pki: PKI | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def db(self) -> Path:
        return self.directory / "gwebhook.sqlite"

    @property
    def log(self) -> Path:
        return self.directory / "twistd.log"

    def command(self) -> list[str]:
        tls = (
            ["--cert", str(self.pki.cert), "--key", str(self.pki.key)]
            if self.pki
            else []
        )
        return [
            TWISTD, "-n", "--pidfile=", "--logfile", str(self.log), "gwebhook",
            "--interface", "127.0.0.1", "--port", str(self.port), "--db", str(self.db),
            *tls, *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 15) -> Daemon:
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode()
                raise AssertionError(f"twistd exited {self.process.returncode}: {out}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError("twistd did not start listening in time")

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def request(
        self,
        method: str = "POST",
        path: str = "/",
        body: bytes | None = b"{}",
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Response:
        """One request on a new connection, verifying the server through the root CA."""
        if self.pki:
            connection = http.client.HTTPSConnection(
                "127.0.0.1",
                self.port,
                timeout=timeout,
                context=self.pki.client_context(),
            )
        else:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=timeout
            )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            reply = connection.getresponse()
            return Response(
                reply.status,
                {k.lower(): v for k, v in reply.getheaders()},
                reply.read(),
            )
        finally:
            connection.close()


@pytest.fixture
def daemon(tmp_path, pki):
    """Start ``twistd gwebhook`` with extra arguments; killed at teardown."""
    started: list[Daemon] = []

    def start(*args: str, tls: bool = True, directory: Path | None = None) -> Daemon:
        d = Daemon(list(args), directory or tmp_path, pki if tls else None)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.kill()


def run_twistd(
    args: list[str], cwd: Path, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Run ``twistd -n gwebhook ARGS`` to completion (for start-up refusals)."""
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "gwebhook", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def spawn(tmp_path, pki):
    """
    ``twistd gwebhook`` processes with their own environment, logger or
    command line (service_support.Processes), all stopped at teardown.
    """
    # Imported here: service_support imports Daemon from this module.
    from service_support import Processes

    with Processes(tmp_path, pki) as started:
        yield started
