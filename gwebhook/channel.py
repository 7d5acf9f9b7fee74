"""
The HTTP layer below the routes: limits that must hold before a request is
dispatched (header size, printable ASCII, body size) and the access log.

Twisted's own channel drops an over-long line without a word and answers an
over-large header block with a bare 400; here each limit is answered with
its own status and a JSON reason, then the connection is closed.
"""

from __future__ import annotations

import json
import time

from twisted.logger import Logger
from twisted.web import http, server

from gwebhook.headers import is_printable_ascii

log = Logger()

DEFAULT_MAX_HEADER_BYTES = 65536
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


def raw_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = json.dumps({"error": message}).encode("utf-8")
    reason = http.RESPONSES.get(status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (status, reason, len(body))
    )
    return head + body


class WebhookRequest(server.Request):
    """A request that counts its body against the channel's limit as it arrives."""

    incidents = 0

    def render(self, resource) -> None:
        # Twisted names itself and its version; a probe learns nothing here.
        self.setHeader(b"Server", b"gwebhook")
        super().render(resource)

    def gotLength(self, length: int | None) -> None:
        self.startedAt = time.monotonic()
        self._bodyBytes = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyBytes += len(data)
        if self._bodyBytes > self.channel.maxBodyBytes:
            self.channel.refuse(413, self.channel.bodyLimitMessage())
            return
        super().handleContentChunk(data)


class LimitedChannel(http.HTTPChannel):
    """An HTTP/1.1 channel that refuses what is over its limits with a status."""

    maxHeaderBytes = DEFAULT_MAX_HEADER_BYTES
    maxBodyBytes = DEFAULT_MAX_BODY_BYTES
    _refused = False
    _headerBytes = 0

    def bodyLimitMessage(self) -> str:
        return f"body is over the limit of {self.maxBodyBytes} bytes"

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON reason, close, and ignore the rest."""
        if self._refused:
            return
        self._refused = True
        peer = self.transport.getPeer()
        log.info(
            "refused {client}: {status} {reason}",
            client=getattr(peer, "host", "-"),
            status=status,
            reason=message,
        )
        self.transport.write(raw_response(status, message))
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(431, self._headerLimitMessage())

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        first = self._headerBytes == 0
        self._headerBytes += len(line) + 2
        if self._headerBytes > self.maxHeaderBytes:
            self.refuse(431, self._headerLimitMessage())
            return
        if not is_printable_ascii(line):
            self.refuse(400, _non_ascii_message(line, first))
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.maxBodyBytes:
            # Refused on the declared length, before a byte of it is read and
            # before any "100 Continue" invites the client to send it.
            self.refuse(413, self.bodyLimitMessage())
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._headerBytes = 0
        super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "request is not valid HTTP/1.1")

    def _headerLimitMessage(self) -> str:
        limit = self.maxHeaderBytes
        return f"request line and headers are over the limit of {limit} bytes"


def _non_ascii_message(line: bytes, first: bool) -> str:
    if first:
        return "request line is not printable ASCII"
    name = line.split(b":", 1)[0]
    if b":" in line and is_printable_ascii(name):
        return (
            f"header {name.decode('ascii')!r} has a value that is not printable ASCII"
        )
    return "a header name is not printable ASCII"


class WebhookSite(server.Site):
    """
    A Site speaking HTTP/1.1 through :class:`LimitedChannel`.  Form bodies
    are not parsed: every body is JSON, whatever its Content-Type says.
    """

    protocol = LimitedChannel
    requestFactory = WebhookRequest

    def __init__(
        self,
        resource,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        **kwargs,
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.maxHeaderBytes = max_header_bytes
        self.maxBodyBytes = max_body_bytes

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.maxHeaderBytes = self.maxHeaderBytes
        channel.maxBodyBytes = self.maxBodyBytes
        # Our byte count is the one limit: Twisted's own line length, block
        # size and header count limits must never fire first.
        channel.MAX_LENGTH = self.maxHeaderBytes
        channel.totalHeadersSize = self.maxHeaderBytes
        channel.maxHeaders = self.maxHeaderBytes
        return channel

    def log(self, request: WebhookRequest) -> None:
        """One access line per request: never a header value, never a body."""
        started = getattr(request, "startedAt", None)
        duration = (time.monotonic() - started) * 1000 if started else 0.0
        log.info(
            "{client} {method} {path} {status} incidents={incidents} "
            "bytes={bytes} {duration:.1f}ms",
            client=request.getClientAddress().host or "-",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            status=request.code,
            incidents=request.incidents,
            bytes=getattr(request, "_bodyBytes", 0),
            duration=duration,
        )
