"""
Log observers for ``twistd --logger``, each writing to stdout:

- ``gwebhook.logs.text_observer``: twistd's own text lines, written for a
  daemon that logs a line per request (see :class:`BatchingLogObserver`);
- ``gwebhook.logs.json_observer``: JSON lines, one object per event, with
  the event's own named fields (client, status, request_id, ...) so a log
  shipper needs no parsing; Twisted's internals (``log_*`` keys, objects)
  are left out.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import sys
import threading
from collections.abc import Callable
from typing import IO

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    ILogObserver,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

_SCALARS = (str, int, float, bool, type(None))

# How long a line may wait to be written, and how many characters of lines:
# lines are written together at most this long after the first of them was
# logged, or once they are this long, one system call for all of them.
FLUSH_SECONDS = 0.1
FLUSH_CHARS = 64 * 1024


def as_format(text: str) -> str:
    """
    ``text`` as a log format that says exactly that: a line formatted once,
    by its emitter, is not parsed for fields again (braces in a client's path
    included).
    """
    return text.replace("{", "{{").replace("}", "}}")


class _PerSecond:
    """
    ``formatTime(second, time_format)`` for whole seconds, formatted once per
    second rather than per line: a busy daemon writes a line per request.
    """

    def __init__(self, time_format: str) -> None:
        self.time_format = time_format
        self.second: int | None = None
        self.text = ""

    def __call__(self, second: int) -> str:
        if second != self.second:
            self.second, self.text = second, formatTime(second, self.time_format)
        return self.text


_date, _zone = _PerSecond("%Y-%m-%dT%H:%M:%S"), _PerSecond("%z")
_classic = _PerSecond(timeFormatRFC3339)


def timestamp(when: float | None) -> str:
    """``formatTime(when, "%Y-%m-%dT%H:%M:%S.%f%z")``, for the JSON log."""
    if when is None:
        return "-"
    whole = int(when // 1)
    return f"{_date(whole)}.{int((when - whole) * 1_000_000):06d}{_zone(whole)}"


def classic_time(when: float | None) -> str:
    """``formatTime(when)``, as twistd's text lines stamp them."""
    return "-" if when is None else _classic(int(when // 1))


def _plain_text(event: dict) -> str | None:
    """
    The event's text when its format is plain text, with nothing to fill in:
    no braces (an access line, formatted once by its emitter, has none unless
    its path had), no newline, no traceback.  None for any other event, which
    Twisted's own formatting then renders.
    """
    text = event.get("log_format")
    if (
        type(text) is not str
        or not text
        or "{" in text
        or "}" in text
        or "\n" in text
        or "log_failure" in event
        or "log_flattened" in event
    ):
        return None
    return text


def _system(event: dict) -> str | None:
    """``[namespace#level]`` as Twisted writes it; None for a ``log_system``."""
    if event.get("log_system") is not None:
        return None
    level = event.get("log_level")
    namespace = event.get("log_namespace", "-")
    if type(namespace) is not str:
        return None
    return f"{namespace}#{'-' if level is None else level.name}"


def to_text(event: dict) -> str | None:
    """
    One event as twistd's text observer writes it.  An event of plain text
    (an access line: one per request) is written here, byte for byte as
    Twisted's formatting writes it, at a tenth of the cost.
    """
    text = _plain_text(event)
    system = None if text is None else _system(event)
    if system is None:
        return formatEventAsClassicLogText(event, formatTime=classic_time)
    return f"{classic_time(event.get('log_time'))} [{system}] {text}\n"


def to_json(event: dict) -> str:
    """One event as one line of JSON."""
    record = {
        "time": timestamp(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": _plain_text(event) or formatEvent(event),
    }
    for key, value in event.items():
        if (
            not key.startswith("log_")
            and key not in record
            and isinstance(value, _SCALARS)
        ):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


@implementer(ILogObserver)
class BatchingLogObserver:
    """
    Writes each event as ``formatter`` renders it, as FileLogObserver does,
    but gathers the lines and writes them together, in one system call, at
    most FLUSH_SECONDS after the first of them (or once they reach
    FLUSH_CHARS), rather than once per line: a busy daemon writes a line per
    request, and a system call per line was a tenth of its CPU.  Its own
    buffer, not the stream's: with PYTHONUNBUFFERED set (as container images
    often set it) the stream writes every line at once.  Lines are written
    at once when a thread other than the reactor's logs (after the lines
    gathered before it, so the log keeps their order), or the reactor is
    not running (start-up, after it stopped); at the end of the reactor's
    shutdown, and at exit.  A process killed outright (SIGKILL) loses at most
    the lines of its last FLUSH_SECONDS.
    """

    def __init__(self, stream: IO[str], formatter: Callable, reactor=None) -> None:
        self._stream = stream
        self._formatter = formatter
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        # The lines not written yet, and their length: the reactor's thread
        # adds to them, another thread's line takes them to write first.
        # Reentrant: a signal handler (twistd's, on SIGTERM) may log in the
        # reactor's thread while it holds the lock.
        self._lines: list[str] = []
        self._chars = 0
        self._lock = threading.RLock()
        self._pending: IDelayedCall | None = None
        # The last lines' flush never runs once the reactor stops: flush when
        # its shutdown is done (twistd then exits by signal, skipping atexit).
        if hasattr(reactor, "addSystemEventTrigger"):
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)
        atexit.register(self.flush)

    def __call__(self, event: dict) -> None:
        text = self._formatter(event)
        if not text:
            return
        if not isInIOThread():
            self._write_gathered(text)
            return
        with self._lock:
            self._lines.append(text)
            self._chars += len(text)
        if self._chars >= FLUSH_CHARS or not getattr(self._reactor, "running", True):
            self.flush()
        elif self._pending is None:
            self._pending = self._reactor.callLater(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write the lines gathered so far, and flush the stream."""
        if self._pending is not None:
            if self._pending.active():
                self._pending.cancel()
            self._pending = None
        self._write_gathered()

    def _write_gathered(self, *then: str) -> None:
        """The lines gathered so far, then ``then``, in one write."""
        with self._lock:
            lines, self._lines, self._chars = self._lines, [], 0
            self._write([*lines, *then])

    def _write(self, lines: list[str]) -> None:
        # A closed or broken stream: nothing more can be written to it.
        with contextlib.suppress(OSError, ValueError):
            if lines:
                try:
                    self._stream.write("".join(lines))
                except UnicodeEncodeError:
                    # A line the stream's encoding cannot hold (an ASCII
                    # locale) costs only its own characters, not the batch.
                    self._write_escaped(lines)
            self._stream.flush()

    def _write_escaped(self, lines: list[str]) -> None:
        encoding = getattr(self._stream, "encoding", None) or "utf-8"
        for line in lines:
            try:
                self._stream.write(line)
            except UnicodeEncodeError:
                self._stream.write(
                    line.encode(encoding, "backslashreplace").decode(encoding)
                )


def text_observer(stream: IO[str] | None = None, reactor=None) -> BatchingLogObserver:
    """A log observer writing twistd's text lines to ``stream`` (default stdout)."""
    return BatchingLogObserver(stream or sys.stdout, to_text, reactor)


def json_observer(stream: IO[str] | None = None, reactor=None) -> BatchingLogObserver:
    """A log observer writing JSON lines to ``stream`` (default stdout)."""
    return BatchingLogObserver(stream or sys.stdout, to_json, reactor)
