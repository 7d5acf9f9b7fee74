"""
Request ids and the access log: one line per request, whoever answered it
(a route, the channel's limits, or nobody because the client went away),
counted in the metrics as it is written.
"""

from __future__ import annotations

import os

from twisted.logger import Logger, LogLevel

from gwebhook.logs import as_format
from gwebhook.metrics import Metrics

log = Logger()

# As nginx logs it: the client closed the connection before the answer.
CLIENT_CLOSED_REQUEST = 499

_ACCESS_LINE = "%s %s %s %d incidents=%d bytes=%d %.1fms id=%s"

# Request ids: 64 random bits each, as 16 hex digits, cut from one read of
# the system's randomness per 256 ids (a counter would be cheaper, but would
# tell anyone who gets two ids how many requests came in between).
_IDS_PER_READ = 256
_unused_ids: list[str] = []


def next_request_id() -> str:
    """A new request id: 16 random hex digits."""
    if not _unused_ids:
        digits = os.urandom(8 * _IDS_PER_READ).hex()
        _unused_ids.extend(digits[i : i + 16] for i in range(0, len(digits), 16))
    return _unused_ids.pop()


class AccessLog:
    """Writes the access line of each request and counts it in ``metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def write(
        self,
        *,
        client: str,
        method: bytes,
        path: bytes,
        status: int,
        incidents: int,
        body_bytes: int,
        seconds: float,
        request_id: str,
        route: str,
        reason: str | None = None,
        instance: str | None = None,
        duplicates: int = 0,
        duplicate_of: str | None = None,
    ) -> None:
        """
        One access line: client, method, path, status, incidents, body
        bytes, duration, request id; the duplicates it was answered with
        and, for a request that repeated an earlier one's idempotency key,
        that request's id; and why it was refused when it was — never a
        header value, a credential or a body.
        """
        method_text = method.decode("ascii", "replace")
        path_text = path.decode("ascii", "replace")
        self.metrics.answered(
            method_text,
            route,
            status,
            seconds,
            body_bytes,
            incidents,
            instance,
            duplicates,
        )
        line = _ACCESS_LINE % (
            client,
            method_text,
            path_text,
            status,
            incidents,
            body_bytes,
            seconds * 1000,
            request_id,
        )
        if duplicates:
            line = f"{line} duplicates={duplicates}"
        if duplicate_of is not None:
            line = f"{line} duplicate-of={duplicate_of or '-'}"
        if reason:
            line = f"{line} {reason}"
        # Formatted here, once (see as_format); the fields ride along for
        # observers that want them (the JSON log).
        log.emit(
            LogLevel.info,
            as_format(line),
            client=client,
            method=method_text,
            path=path_text,
            status=status,
            incidents=incidents,
            bytes=body_bytes,
            duration_ms=seconds * 1000,
            request_id=request_id,
            reason=reason,
            instance=instance,
            duplicates=duplicates,
            duplicate_of=duplicate_of,
        )
