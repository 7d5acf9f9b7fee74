"""
HAProxy in front of several servers: TCP mode (TLS passes through
untouched), a frontend on 127.0.0.1 balanced round-robin over backend ports
on 127.0.0.1, each health-checked (``check inter 500ms fall 2 rise 1``: a
TCP connect every half second, down after two failures, up after one
success).  ``haproxy -f CFG -db`` runs in the foreground as our child, in
its own process group, its log in its directory; an admin socket there
answers what it thinks of each backend.

HAProxy is found on PATH or at /usr/sbin/haproxy; without it the tests skip
(``apt-get install haproxy``), or fail under ``GWEBHOOK_TEST_NO_SKIP=1``.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from support.ports import free_port
from support.postgres import skip_or_fail
from support.proc import listening_sockets
from support.wait import wait_for

HEALTH_CHECK = "check inter 500ms fall 2 rise 1"


def haproxy_binary() -> str | None:
    """The haproxy executable: on PATH, else /usr/sbin/haproxy; None if neither."""
    found = shutil.which("haproxy")
    if found:
        return found
    if os.access("/usr/sbin/haproxy", os.X_OK):
        return "/usr/sbin/haproxy"
    return None


def haproxy_available() -> str | None:
    """None when haproxy can run here, else why not and how to install it."""
    binary = haproxy_binary()
    if binary is None:
        return (
            "haproxy is not installed (not on PATH nor /usr/sbin/haproxy): "
            "apt-get install haproxy"
        )
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{binary} -v failed: {e}"
    return None


class Haproxy:
    """
    ``haproxy`` balancing 127.0.0.1:``port`` (default: a free one) over
    127.0.0.1:``backends`` in TCP mode.  ``server_options`` are each
    backend's (default: the health check); ``timeout`` bounds the start and
    the stop.  ``start()``, ``stop()``; as a context manager it does both.
    """

    def __init__(
        self,
        backends: Sequence[int],
        directory: Path,
        port: int | None = None,
        *,
        server_options: str = HEALTH_CHECK,
        timeout: float = 10,
    ) -> None:
        if not backends:
            raise ValueError("haproxy needs at least one backend")
        self.backends = list(backends)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.server_options = server_options
        self.timeout = timeout
        self.config = self.directory / "haproxy.cfg"
        self.log = self.directory / "haproxy.log"
        self.admin_socket = self.directory / "haproxy.sock"
        self.process: subprocess.Popen | None = None

    def server_name(self, backend: int) -> str:
        """The name of the backend at port ``backend`` in the config and stats."""
        return f"b{backend}"

    def config_text(self) -> str:
        servers = "".join(
            f"    server {self.server_name(p)} 127.0.0.1:{p} {self.server_options}\n"
            for p in self.backends
        )
        return (
            "global\n"
            "    maxconn 512\n"
            f"    stats socket {self.admin_socket} mode 600 level admin\n"
            "    log stdout format raw local0 info\n"
            "defaults\n"
            "    mode tcp\n"
            "    log global\n"
            "    option tcplog\n"
            "    timeout connect 2s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "frontend front\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    default_backend back\n"
            "backend back\n"
            "    balance roundrobin\n"
            f"{servers}"
        )

    def start(self) -> Haproxy:
        """Start haproxy and return once its frontend listens."""
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError(haproxy_available())
        try:
            self._start(binary)
        except AssertionError:
            # The free port was taken before haproxy bound it: once more.
            if self._fixed_port or "cannot bind" not in self.log_text():
                raise
            self.port = free_port()
            self._start(binary)
        self._fixed_port = True
        return self

    def _start(self, binary: str) -> None:
        self.config.write_text(self.config_text())
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-f", str(self.config), "-db"],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process

        # Listening, seen in /proc: a test connection would reach a backend.
        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"haproxy exited {process.returncode}: {self.log_text()}"
                )
            try:
                return ("127.0.0.1", self.port) in listening_sockets(process.pid)
            except OSError:
                return False

        try:
            wait_for(listening, self.timeout, f"haproxy to listen on {self.port}")
        except AssertionError:
            self.stop()
            raise

    def log_text(self) -> str:
        """What haproxy wrote (its start-up messages and connection log)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM its process group, SIGKILL if it lingers; its exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(self.timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(self.timeout)
        return process.returncode

    def __enter__(self) -> Haproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it thinks of its backends

    def command(self, line: str) -> str:
        """One command on the admin socket (``show stat``, ``disable server``...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self) -> dict[int, str]:
        """Each backend port's status as haproxy sees it: ``UP``, ``DOWN``..."""
        text = self.command("show stat").lstrip("# ")
        states = {}
        for row in csv.DictReader(text.splitlines()):
            if row["pxname"] == "back" and row["svname"] not in ("BACKEND",):
                port = int(row["svname"][1:])
                states[port] = row["status"].split()[0]
        return states

    def wait_state(self, backend: int, state: str, timeout: float = 10) -> None:
        """Wait until haproxy calls backend ``backend`` ``state`` (UP, DOWN)."""
        wait_for(
            lambda: self.server_states().get(backend) == state,
            timeout,
            f"haproxy to see backend {backend} {state}",
        )


def require_haproxy() -> None:
    """Skip the test (with how to install haproxy) when it cannot run here."""
    reason = haproxy_available()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture
def haproxy(tmp_path) -> Iterator:
    """
    ``haproxy(backends, **options) -> Haproxy``: started in front of the
    ports ``backends``; every one stopped at teardown.  Skips when haproxy is
    not installed.
    """
    require_haproxy()
    started: list[Haproxy] = []

    def start(backends: Sequence[int], **options) -> Haproxy:
        proxy = Haproxy(backends, tmp_path / f"haproxy{len(started)}", **options)
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
