"""
Real processes: ``twistd -n gwebhook`` started as an operator starts it
(on 127.0.0.1, with the test PKI), with its own environment, logger,
wrapper command or command line when a test needs one; and the ``gwebhook``
console command run to completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.http import Response, send
from support.pki import Served
from support.ports import accepts_connections, free_port
from support.wait import wait_for

TWISTD = str(Path(sys.executable).with_name("twistd"))
GWEBHOOK = str(Path(sys.executable).with_name("gwebhook"))


@dataclass
class Daemon:
    """
    A ``twistd -n gwebhook`` process on 127.0.0.1, serving TLS with ``pki``
    (plain HTTP when it is None).  It can also be given extra environment, a
    ``--logger`` instead of the log file, a wrapper command that execs twistd
    and file descriptors to pass it, or a whole command line of its own
    (``argv``).  Its stdout and stderr go to ``stdout.log`` and
    ``stderr.log`` in its directory.
    """

    args: list[str]
    directory: Path
    pki: Served | None
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    logger: str | None = None
    wrapper: list[str] = field(default_factory=list)
    pass_fds: tuple[int, ...] = ()
    argv: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def db(self) -> Path:
        return self.directory / "gwebhook.sqlite"

    @property
    def log(self) -> Path:
        return self.directory / "twistd.log"

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.directory / "stderr.log"

    def command(self) -> list[str]:
        if self.argv:
            return [*self.wrapper, *self.argv]
        tls = (
            ["--cert", str(self.pki.cert), "--key", str(self.pki.key)]
            if self.pki
            else []
        )
        log = ["--logger", self.logger] if self.logger else ["--logfile", str(self.log)]
        return [
            *self.wrapper, TWISTD, "-n", "--pidfile=", *log, "gwebhook",
            "--interface", "127.0.0.1", "--port", str(self.port), "--db", str(self.db),
            *tls, *self.args,
        ]  # fmt: skip

    def ports(self) -> list[int]:
        """Every port the daemon is to listen on: the webhook's, and the metrics'."""
        ports = [self.port]
        if "--metrics-port" in self.args:
            ports.append(int(self.args[self.args.index("--metrics-port") + 1]))
        return ports

    def spawn(self) -> Daemon:
        """Start the process without waiting for anything."""
        # A password exported in the shell must not reach it: a test that
        # means to give one passes it in ``env``.
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

    def start(self, timeout: float = 15) -> Daemon:
        """
        Start the process and wait until every port it listens on accepts
        connections: the metrics listener is bound a moment after the
        webhook's, and a test must not see one without the other.
        """
        self.spawn()
        deadline = time.monotonic() + timeout
        for port in self.ports():
            while not accepts_connections(port):
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"twistd exited {self.process.returncode}: {self.output()}"
                    )
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"twistd did not listen on {port} in time")
                time.sleep(0.05)
        return self

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int:
        """SIGTERM (unless it already exited); its exit status."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took to exit)."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        status = self.wait(timeout)
        return status, time.monotonic() - started

    def request(
        self,
        method: str = "POST",
        path: str = "/",
        body: bytes | None = b"{}",
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Response:
        """One request on a new connection, verifying the server through its CA."""
        return send(self, body, headers, method=method, path=path, timeout=timeout)


class Processes:
    """Every daemon a test starts, killed when the test ends."""

    def __init__(self, directory: Path, pki: Served | None) -> None:
        self.directory = directory
        self.pki = pki
        self.started: list[Daemon] = []

    def __call__(self, *args: str, start: bool = True, **kwargs) -> Daemon:
        """A daemon with ``args``; ``start=False`` spawns it without waiting."""
        kwargs.setdefault("pki", self.pki)
        kwargs.setdefault("directory", self.directory)
        d = Daemon(list(args), **kwargs)
        self.started.append(d)
        return d.start() if start else d.spawn()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        for d in self.started:
            d.kill()


def start_daemon(
    args: list[str], directory: Path, pki: Served, started: list[Daemon]
) -> Daemon:
    """Start a daemon serving ``pki``; the caller kills what is in ``started``."""
    d = Daemon(list(args), directory, pki)
    started.append(d)
    return d.start()


# -------------------------------------------------------------------- its log


def log_text(d: Daemon) -> str:
    """Everything the daemon has logged so far."""
    return d.log.read_text(encoding="utf-8") if d.log.exists() else ""


def log_lines(d: Daemon, containing: str) -> list[str]:
    """The lines of the daemon's log file that contain ``containing``."""
    return [line for line in log_text(d).splitlines() if containing in line]


def wait_for_log(d: Daemon, text: str, count: int = 1, timeout: float = 5) -> str:
    """Wait until ``text`` appears ``count`` times in the daemon's log file."""
    return wait_for(
        lambda: (log := log_text(d)).count(text) >= count and log,
        timeout,
        f"{text!r} x{count} in {d.log}",
    )


# ---------------------------------------------------------- run to completion


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


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line a process wrote: what an operator reads first."""
    lines = (result.stdout + result.stderr).splitlines()
    written = [line.strip() for line in lines if line.strip()]
    return written[-1] if written else ""


def assert_one_line_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """Exit ``status``, nothing on stdout, one line on stderr and no traceback."""
    assert result.returncode == status, result
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def json_lines(text: str) -> list[dict]:
    """Each non-empty line of ``text`` read as one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
