"""
``--workers N``: serve from N processes on one port.  The main process serves
and spawns N - 1 workers, each with its own reactor and its own connection to
the same store (WAL; writers take turns).  Each process binds its own socket
with SO_REUSEPORT, and the kernel spreads new connections across them; under
socket activation the workers share the socket systemd passed instead.
Worker log events come back to the main process's log.  SIGHUP and SIGTERM
are forwarded; a worker that dies is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

log = Logger()

# How a worker learns its configuration: the environment, never its command
# line, where the password would be visible to everyone in `ps`.
ARGV_ENVIRONMENT = "GWEBHOOK_WORKER_ARGV"
# Set when the worker is to serve the socket systemd passed, as its fd 3.
INHERIT_ENVIRONMENT = "GWEBHOOK_WORKER_INHERITS"
RESPAWN_DELAY_SECONDS = 1.0
# Extra time, after the shutdown timeout, before workers are killed outright.
KILL_AFTER_SECONDS = 5.0
_NOT_INHERITED = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_RECORD_KEYS = (
    "time",
    "level",
    "namespace",
    "message",
    "traceback",
    "worker",
    "log_format",
)


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP listening socket that other processes may bind too (SO_REUSEPORT)."""

    def __init__(self, reactor, port: int, interface: str, backlog: int) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def listen(self, factory):
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind((self.interface, self.port))
            except OSError as e:
                return fail(CannotListenError(self.interface, self.port, e))
            s.listen(self.backlog)
            s.setblocking(False)
            # Twisted takes a duplicate; this one closes on leaving.
            return succeed(self.reactor.adoptStreamPort(s.fileno(), family, factory))


class _Worker(ProcessProtocol):
    """Relays one worker's JSON-lines log into the main process's log."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._relay(line)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.warn("worker {worker}: {line}", worker=self.index, line=line)

    def _relay(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            level = LogLevel.levelWithName(record.get("level", "info"))
        except (ValueError, TypeError, AttributeError, KeyError):
            log.info(
                "worker {worker}: {line}",
                worker=self.index,
                line=line.decode("utf-8", "replace"),
            )
            return
        fields = {k: v for k, v in record.items() if k not in _RECORD_KEYS}
        if "traceback" in record:
            fields["worker_traceback"] = record["traceback"]
        log.emit(
            level,
            "worker {worker}: {worker_message}",
            worker=self.index,
            worker_message=record.get("message", ""),
            **fields,
        )

    def processEnded(self, reason) -> None:
        self.pool.ended(self.index, reason.value)


class WorkerPool(service.Service):
    """The N - 1 worker processes beside the main one."""

    def __init__(
        self,
        count: int,
        argv: list[str],
        inherited_socket: int | None,
        shutdown_timeout: float,
        reactor,
    ) -> None:
        self.count = count
        self.argv = argv
        self.inherited_socket = inherited_socket
        self.shutdown_timeout = shutdown_timeout
        self.reactor = reactor
        self.processes: dict[int, object] = {}
        self._all_ended: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if not self.running:
            return
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env[ARGV_ENVIRONMENT] = json.dumps(self.argv)
        fds = {0: "w", 1: "r", 2: "r"}
        if self.inherited_socket is not None:
            env[INHERIT_ENVIRONMENT] = "1"
            fds[3] = self.inherited_socket
        self.processes[index] = self.reactor.spawnProcess(
            _Worker(self, index),
            sys.executable,
            [sys.executable, "-m", "gwebhook.worker", str(index)],
            env=env,
            childFDs=fds,
        )
        log.info(
            "worker {worker} started (pid {pid})",
            worker=index,
            pid=self.processes[index].pid,
        )

    def signal(self, name: str) -> None:
        """Send signal ``name`` (``"HUP"``, ``"TERM"``, ``"KILL"``) to every worker."""
        for process in list(self.processes.values()):
            with contextlib.suppress(ProcessExitedAlready):
                process.signalProcess(name)

    def ended(self, index: int, why) -> None:
        self.processes.pop(index, None)
        if self.running:
            log.error(
                "worker {worker} exited ({why}); starting another in {delay} s",
                worker=index,
                why=why,
                delay=RESPAWN_DELAY_SECONDS,
            )
            self.reactor.callLater(RESPAWN_DELAY_SECONDS, self._spawn, index)
        elif not self.processes and self._all_ended is not None:
            self._all_ended, ended = None, self._all_ended
            ended.callback(None)

    def stopService(self) -> Deferred[None]:
        """Ask every worker to drain and stop; kill those that outstay the timeout."""
        super().stopService()
        if not self.processes:
            return succeed(None)
        self._all_ended = ended = Deferred()
        self.signal("TERM")
        timer = self.reactor.callLater(
            self.shutdown_timeout + KILL_AFTER_SECONDS, self.signal, "KILL"
        )
        ended.addCallback(lambda _: timer.active() and timer.cancel())
        return ended
