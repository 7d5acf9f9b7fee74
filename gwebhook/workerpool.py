"""
``--workers N``: serve from N processes on one port.  The main process serves
and spawns N - 1 workers, each with its own reactor and its own connection to
the same store (WAL; writers take turns).  Each process binds its own socket
with SO_REUSEPORT (``listen.SocketEndpoint``), and the kernel spreads new
connections across them; under socket activation the workers share the socket
systemd passed instead.
Worker log events come back to the main process's log.  SIGHUP and SIGTERM
are forwarded; a worker that dies is replaced, after a delay that doubles
while its replacements keep dying young.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel

from gwebhook import affinity
from gwebhook.logs import as_format

log = Logger()

# How a worker learns its configuration: the environment, never its command
# line, where the password would be visible to everyone in `ps`.
ARGV_ENVIRONMENT = "GWEBHOOK_WORKER_ARGV"
# Set when the worker is to serve the socket systemd passed, as its fd 3.
INHERIT_ENVIRONMENT = "GWEBHOOK_WORKER_INHERITS"
RESPAWN_DELAY_SECONDS = 1.0
MAX_RESPAWN_DELAY_SECONDS = 60.0
# A worker that stayed up this long was healthy: its replacement starts after
# RESPAWN_DELAY_SECONDS again.
STABLE_AFTER_SECONDS = 30.0
# A worker's output line longer than this is relayed in pieces rather than
# held in memory whole.
MAX_LINE_BYTES = 1 << 20
# Extra time, after the shutdown timeout, before workers are killed outright.
KILL_AFTER_SECONDS = 5.0
_NOT_INHERITED = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# Keys of a worker's record that are not passed on as fields: those the main
# process sets itself, and Logger.emit's own parameters.
_RECORD_KEYS = frozenset(
    {
        "time",
        "level",
        "namespace",
        "message",
        "traceback",
        "worker",
        "worker_message",
        "worker_traceback",
        "format",
    }
)
_SCALARS = (str, int, float, bool, type(None))


def respawn_delay(previous: float | None, uptime: float) -> float:
    """
    Seconds to wait before replacing a worker that ran for ``uptime`` seconds,
    when the wait before it was started was ``previous`` (None: none yet).
    """
    if previous is None or uptime >= STABLE_AFTER_SECONDS:
        return RESPAWN_DELAY_SECONDS
    return min(previous * 2, MAX_RESPAWN_DELAY_SECONDS)


def _complete_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines in ``buffer``, and the rest to keep for later."""
    *lines, rest = buffer.split(b"\n")
    if len(rest) > MAX_LINE_BYTES:
        lines.append(rest)
        rest = b""
    return lines, rest


def _parse_record(line: bytes) -> tuple[LogLevel, dict] | None:
    """A worker's JSON log line as its level and a record; None if it is not one."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    level = record.get("level", "info") if isinstance(record, dict) else None
    if not isinstance(level, str):
        return None
    try:
        return LogLevel.levelWithName(level), record
    except InvalidLogLevelError:
        return None


def _safe_fields(record: dict) -> dict:
    """The scalar fields of ``record`` that can be passed on to Logger.emit."""
    return {
        key: value
        for key, value in record.items()
        if key.isidentifier()
        and not key.startswith("log_")
        and key not in _RECORD_KEYS
        and isinstance(value, _SCALARS)
    }


class _Worker(ProcessProtocol):
    """Relays one worker's JSON-lines log (and stderr) into the main process's log."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        lines, self._out = _complete_lines(self._out + data)
        for line in lines:
            self._relay(line)

    def errReceived(self, data: bytes) -> None:
        # Whole lines only, so a traceback is not cut up mid-line.
        lines, self._err = _complete_lines(self._err + data)
        for line in lines:
            self._warn(line)

    def _warn(self, line: bytes) -> None:
        log.warn(
            "worker {worker}: {line}",
            worker=self.index,
            line=line.decode("utf-8", "replace"),
        )

    def _relay(self, line: bytes) -> None:
        parsed = _parse_record(line)
        if parsed is None:
            log.info(
                "worker {worker}: {line}",
                worker=self.index,
                line=line.decode("utf-8", "replace"),
            )
            return
        level, record = parsed
        fields = _safe_fields(record)
        if isinstance(record.get("traceback"), str):
            fields["worker_traceback"] = record["traceback"]
        message = str(record.get("message", ""))
        # Formatted here, once (see as_format): every request a worker
        # serves passes through here.
        log.emit(
            level,
            as_format(f"worker {self.index}: {message}"),
            worker=self.index,
            worker_message=message,
            **fields,
        )

    def processEnded(self, reason) -> None:
        if self._out:
            self._relay(self._out)
        if self._err:
            self._warn(self._err)
        self._out = self._err = b""
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
        cpus: list[int] | None = None,
    ) -> None:
        self.count = count
        # With --pin-cpus: the CPUs to pin workers to (see gwebhook.affinity).
        self.cpus = cpus
        self.argv = argv
        self.inherited_socket = inherited_socket
        self.shutdown_timeout = shutdown_timeout
        self.reactor = reactor
        self.processes: dict[int, IProcessTransport] = {}
        self._all_ended: Deferred[None] | None = None
        # Per worker index: when it was last started, the wait before that
        # start (absent for the first), and its pending replacement.
        self._started: dict[int, float] = {}
        self._delays: dict[int, float] = {}
        self._respawns: dict[int, IDelayedCall] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._respawns.pop(index, None)
        if not self.running:
            return
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env[ARGV_ENVIRONMENT] = json.dumps(self.argv)
        if self.cpus:
            env[affinity.WORKER_CPU_ENVIRONMENT] = str(
                affinity.cpu_for(index, self.cpus)
            )
        fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r"}
        if self.inherited_socket is not None:
            env[INHERIT_ENVIRONMENT] = "1"
            fds[3] = self.inherited_socket
        # The worker starts with SIGHUP blocked (a signal mask is inherited
        # through fork and exec): one passed on while it starts, before its
        # service takes the signal, waits instead of ending it, and is a
        # reload once the worker unblocks it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            self.processes[index] = self.reactor.spawnProcess(
                _Worker(self, index),
                sys.executable,
                [sys.executable, "-m", "gwebhook.workerprocess", str(index)],
                env=env,
                childFDs=fds,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._started[index] = self.reactor.seconds()
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
        """Worker ``index`` exited (``why``): replace it, or finish stopping."""
        self.processes.pop(index, None)
        if self.running:
            uptime = self.reactor.seconds() - self._started.get(index, 0.0)
            delay = respawn_delay(self._delays.get(index), uptime)
            self._delays[index] = delay
            log.error(
                "worker {worker} exited ({why}); starting another in {delay:g} s",
                worker=index,
                why=why,
                delay=delay,
            )
            self._respawns[index] = self.reactor.callLater(delay, self._spawn, index)
        elif not self.processes and self._all_ended is not None:
            ended, self._all_ended = self._all_ended, None
            ended.callback(None)

    def stopService(self) -> Deferred[None]:
        """Ask every worker to drain and stop; kill those that outstay the timeout."""
        super().stopService()
        for pending in self._respawns.values():
            pending.cancel()
        self._respawns.clear()
        if not self.processes:
            return succeed(None)
        ended: Deferred[None] = Deferred()
        self._all_ended = ended
        self.signal("TERM")
        timer = self.reactor.callLater(
            self.shutdown_timeout + KILL_AFTER_SECONDS, self.signal, "KILL"
        )
        ended.addCallback(lambda _: timer.active() and timer.cancel())
        return ended
