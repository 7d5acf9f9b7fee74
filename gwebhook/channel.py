"""
The HTTP layer below the routes: limits that must hold before a request is
dispatched (header size, printable ASCII, body size) and the access log.

Twisted's own channel drops an over-long line without a word and answers an
over-large header block with a bare 400; here each limit is answered with
its own status and a JSON reason, then the connection is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ITCPTransport,
)
from twisted.web import http, server

from gwebhook.accesslog import CLIENT_CLOSED_REQUEST, AccessLog, next_request_id
from gwebhook.addresses import client_key, display_host
from gwebhook.answers import (
    NOT_FOUND_MESSAGE,
    RETRY_AFTER_SECONDS,
    error_answer,
    raw_response,
)
from gwebhook.config import InstanceConfig
from gwebhook.gate import Gate, Refusal
from gwebhook.headers import is_printable_ascii
from gwebhook.instances import WEBHOOK_METHODS_BYTES, Instances, is_webhook_path
from gwebhook.metrics import Metrics
from gwebhook.signatures import Expected
from gwebhook.tls import peer_chain

DEFAULT_MAX_HEADER_BYTES = 65536
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 100
# A TLS close waits for the peer's close_notify; a peer that never sends it
# does not get to keep the socket longer than this.
CLOSE_GRACE_SECONDS = 5.0
# The site's attribute holding each phase's limit, in seconds.
_PHASE_LIMITS = {
    "idle": "idle_timeout",
    "headers": "header_timeout",
    "body": "body_timeout",
}

# A connection over a cap gets this long to send its first bytes (and read
# its 503); then it is dropped, so it cannot hold a descriptor for long.
OVER_LIMIT_SECONDS = 2.0
# At shutdown, long enough to flush an answer already written, no longer.
SHUTDOWN_GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class ChannelLimits:
    """What one connection and one request may take: bytes, seconds, count."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class WebhookRequest(server.Request):
    """
    A request that counts its body against the channel's limit as it
    arrives, and is tracked as in flight from the end of its headers until
    it is answered or its connection is lost.
    """

    # Made by WebhookSite's channels only (Twisted types it HTTPChannel).
    channel: LimitedChannel
    incidents = 0
    # Of the answer's incidents, those an earlier request created; and, when
    # the whole request repeated an earlier one, that one's request id.
    duplicates = 0
    duplicate_of: str | None = None
    route = "other"
    # The instance the channel resolved it to (a webhook; it reaches a route
    # only once admitted), and the client certificate that instance checked
    # ({"subject", "sha256"}).
    instance: InstanceConfig | None = None
    client_cert: dict[str, str] | None = None
    # Its signature's headers, as the gate read them (the body to check).
    signed: Expected | None = None
    # The message of an error answer (see answers.error_answer), for the
    # access line.
    error: str | None = None
    # The most its body may be, when the site gives its path a smaller limit
    # than the channel's (WebhookSite.body_limits); None: the channel's.
    body_limit: int | None = None

    def process(self) -> None:
        # Twisted answers a path of "*" itself (in HTML) and Klein answers a
        # path that is not UTF-8 with an HTML 400 and a logged traceback;
        # neither is a webhook path, so answer them as any unknown path.
        if self.path == b"*" or not _is_utf8(unquote_to_bytes(self.path)):
            self.site = self.channel.site
            self._identify()
            self.write(error_answer(self, 404, NOT_FOUND_MESSAGE))
            self.finish()
            return
        super().process()

    def _identify(self) -> None:
        # Twisted names itself and its version; a probe learns nothing here.
        self.setHeader(b"Server", b"gwebhook")
        self.setHeader(b"X-Request-Id", self.requestId.encode("ascii"))

    def render(self, resource) -> None:
        self._identify()
        if self.channel.site.draining:
            # Shutting down: answer this one, then let the client reconnect elsewhere.
            self.channel.persistent = False
            self.setHeader(b"Connection", b"close")
        super().render(resource)

    def gotLength(self, length: int | None) -> None:
        self.startedAt = self.channel.site.reactor.seconds()
        self.requestId = next_request_id()
        self._bodyBytes = 0
        self.channel.site.track(self)
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyBytes += len(data)
        limit = self.body_limit
        if limit is None:
            limit = self.channel.limits.max_body_bytes
        if self._bodyBytes > limit:
            self.channel.refuse(413, self.channel.bodyLimitMessage(limit))
            return
        super().handleContentChunk(data)


class LimitedChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that refuses what is over its limits with a status.

    Time is limited per phase, with deadlines that arriving bytes do not
    push back (a client trickling one byte a second gets no more time):
    ``idle`` from the connection's start or the last answer to the first
    byte of a request (then a silent close), ``headers`` from that byte to
    the end of the headers, ``body`` to the end of the body (then 408).
    While a request is handled there is no deadline: shutdown bounds that.
    """

    # Made by WebhookSite, over TCP or TLS (Twisted types them Site and an
    # ITransport that is None until the connection is made).
    site: WebhookSite
    transport: ITCPTransport
    limits = ChannelLimits()
    _refused = False
    _headerBytes = 0
    _phase: str | None = None
    _deadline: DelayedCall | None = None
    _phaseEnds: float | None = None
    _aborting: IDelayedCall | None = None
    _overLimit: str | None = None
    client = "-"
    clientKey = "-"
    localPort: int | None = None
    _host: IAddress | None = None
    admitted = False
    requestStarted: float | None = None

    def bodyLimitMessage(self, limit: int | None = None) -> str:
        if limit is None or limit == self.limits.max_body_bytes:
            return f"body is over the limit of {self.limits.max_body_bytes} bytes"
        return f"body is over the limit of {limit} bytes for this path"

    def bodyLimitFor(self, method: bytes, path: bytes) -> int | None:
        """
        The most a body may be on ``path``, a path other than a webhook's;
        None: it takes no body.  The site says which POSTs take one.
        """
        if method != b"POST":
            return None
        return self.site.body_limits.get(path)

    def refuse(
        self,
        status: int,
        message: str,
        retry_after: int | None = None,
        challenge: bytes | None = None,
        allow: str | None = None,
    ) -> None:
        """Answer ``status`` with a JSON reason, close, and ignore the rest."""
        if self._refused:
            return
        self._refused = True
        self._enter(None)
        request = self.requests[-1] if self.requests else None
        request_id = getattr(request, "requestId", None) or next_request_id()
        if request is not None:
            # Answered here: no longer in flight, and not "cut off" later.
            self.site.settle(request)
        self.site.refused(self, status, message, request, request_id)
        self.transport.write(
            raw_response(status, message, request_id, retry_after, challenge, allow)
        )
        self.closeFirmly()

    def closeFirmly(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Close politely; abort if the peer has not let go after ``grace`` s."""
        self.loseConnection()
        if self._aborting is None:
            self._aborting = self.callLater(grace, self.transport.abortConnection)

    def _enter(self, phase: str | None) -> None:
        """
        Start ``phase`` and its deadline (None: no deadline).

        One timer per connection, moved only when a deadline comes sooner than
        it: a keep-alive connection goes through every phase per request, and
        a timer per phase was a callLater and a cancel each time.  A timer
        that fires before its phase's deadline just waits the rest.
        """
        self._phase = phase
        if phase == "headers":
            self.requestStarted = self.site.reactor.seconds()
        seconds = self._seconds(phase)
        if not seconds:
            self._phaseEnds = None
            return
        timer = self._deadline
        if timer is not None and timer.active():
            self._phaseEnds = timer.seconds() + seconds
            if timer.getTime() <= self._phaseEnds:
                return
            # Sooner: a new timer (DelayedCall.reset to an earlier time
            # searches every pending timer of the reactor).
            timer.cancel()
        self._deadline = self.callLater(seconds, self._tick)
        self._phaseEnds = self._deadline.getTime()

    def _seconds(self, phase: str | None) -> float | None:
        if phase is None:
            return None
        if phase == "refusing":
            return OVER_LIMIT_SECONDS
        return getattr(self.limits, _PHASE_LIMITS[phase])

    def _tick(self) -> None:
        timer, self._deadline = self._deadline, None
        assert timer is not None  # the timer firing is this one
        phase, ends = self._phase, self._phaseEnds
        if phase is None or ends is None:
            return
        left = ends - timer.seconds()
        if left > 0:
            self._deadline = self.callLater(left, self._tick)
        else:
            seconds = self._seconds(phase)
            assert seconds is not None  # only phase None has no limit
            self._expired(phase, seconds)

    def _expired(self, phase: str, seconds: float) -> None:
        if phase == "idle":
            self.closeFirmly()
        elif phase == "refusing":
            self.transport.abortConnection()
        else:
            self.refuse(408, f"request {phase} not received within {seconds:g} s")

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._overLimit:
            self.refuse(503, self._overLimit, RETRY_AFTER_SECONDS)
            return
        if self._phase == "idle":
            self._enter("headers")
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(431, self._headerLimitMessage())

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._phase == "idle":
            # A pipelined request replayed from the buffer.
            self._enter("headers")
        first = self._headerBytes == 0
        self._headerBytes += len(line) + 2
        if self._headerBytes > self.limits.max_header_bytes:
            self.refuse(431, self._headerLimitMessage())
            return
        if not is_printable_ascii(line):
            self.refuse(400, _non_ascii_message(line, first))
            return
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.limits.max_body_bytes:
            # Refused on the declared length, before a byte of it is read and
            # before any "100 Continue" invites the client to send it.
            self.refuse(413, self.bodyLimitMessage())
            return
        # The request line as Twisted keeps it until the whole request is in
        # (no public attribute holds it before requestReceived).
        method, path = self._command, self._path.split(b"?", 1)[0]
        request = self.requests[-1]
        if self.length == 0:
            # Nothing to read: Klein routes it, and the webhook route admits
            # it as below (its refusals keep the connection).
            pass
        elif method in WEBHOOK_METHODS_BYTES and is_webhook_path(path):
            # Which instance, then its credentials, before a byte of the body
            # is read (or invited by a "100 Continue"): a stranger's body
            # costs us nothing.
            instance = self.site.instances.for_request(path, self.localPort)
            if instance is None:
                self.refuse(404, NOT_FOUND_MESSAGE)
                return
            request.instance = instance  # for the access line, if refused
            verdict = self.site.gate.check(
                instance, self.client, request.requestHeaders, self.peerChain
            )
            if isinstance(verdict, Refusal):
                self.refuse(
                    verdict.status,
                    verdict.message,
                    verdict.retry_after,
                    verdict.challenge,
                )
                return
            request.client_cert = verdict.client_cert
            request.signed = verdict.signature
        elif (path_limit := self.bodyLimitFor(method, path)) is not None:
            # One of the few other POSTs that carry a body (a login form, a
            # preview), within the small limit the site gives its path.
            limit = request.body_limit = min(path_limit, self.limits.max_body_bytes)
            if self.length is not None and self.length > limit:
                self.refuse(413, self.bodyLimitMessage(limit))
                return
        else:
            # A body where none is taken is not read: 405 on a path that
            # takes other methods, 404 elsewhere.
            allow = _allowed_methods(path, self.site.serves_api)
            if allow is None:
                self.refuse(404, NOT_FOUND_MESSAGE)
            elif method.decode("ascii", "replace") in allow.split(", "):
                # The method is right; the body is what is wrong.
                self.refuse(
                    400,
                    f"{method.decode('ascii')} takes no body; send it without one",
                )
            else:
                self.refuse(
                    405,
                    f"method not allowed; use {allow.replace(', ', ' or ')}",
                    allow=allow,
                )
            return
        self._enter("body")
        super().allHeadersReceived()

    def peerChain(self) -> list:
        """The certificates the client sent in the TLS handshake, leaf first."""
        return peer_chain(self.transport)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._headerBytes = 0
        self._enter(None)
        super().allContentReceived()

    def requestDone(self, request) -> None:
        # Idle first: replaying a buffered next request moves it on to headers.
        self._enter("idle")
        super().requestDone(request)

    def connectionMade(self) -> None:
        super().connectionMade()
        # The port it came to: an instance's own port makes it that instance's.
        self.localPort = getattr(self.getHost(), "port", None)
        # Refused at its first bytes, not now: over TLS the handshake is not
        # done yet, and the client would read a reset instead of the 503.  A
        # refused connection that says nothing is dropped soon.
        self._overLimit = self.site.connectionOpened(self)
        self._enter("refusing" if self._overLimit else "idle")

    def getHost(self):
        # Asked of the socket once: every request asks for it (Request.host),
        # and each ask was a system call.  A connection's own address does
        # not change while it is open.
        if self._host is None:
            self._host = self.transport.getHost()
        return self._host

    # (Protocol's reason has a default; Twisted always passes one.)
    def connectionLost(self, reason) -> None:  # type: ignore[override]
        self._enter(None)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self._aborting is not None and self._aborting.active():
            self._aborting.cancel()
        self.site.connectionClosed(self)
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "request is not valid HTTP/1.1")

    def _headerLimitMessage(self) -> str:
        limit = self.limits.max_header_bytes
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


HEALTH_PATH = b"/healthz"


def _allowed_methods(path: bytes, serves_api: bool = False) -> str | None:
    """The methods ``path`` takes, for a 405; None for no such path."""
    if is_webhook_path(path):
        return "POST, PUT"
    if path == HEALTH_PATH or (serves_api and path.startswith(b"/api/")):
        return "GET, HEAD"
    return None


def _why(status: int, message: str) -> str:
    """The reason an access line gives for an error answer."""
    return f"{'refused' if status < 500 else 'failed'}: {message}"


class WebhookSite(server.Site):
    """
    A Site speaking HTTP/1.1 through :class:`LimitedChannel`.  Form bodies
    are not parsed: every body is JSON, whatever its Content-Type says.
    """

    # Twisted types this as the maker of its HTTP/2-negotiating wrapper; any
    # HTTPChannel class serves (HTTP/1.x only here).
    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = WebhookRequest
    noisy = False
    # Whether /api/ is the read API's (there are API tokens).
    serves_api = False
    # The paths other than webhooks' whose POST may carry a body (the
    # console's login, the read API's preview...), and the most bytes each
    # may have (the channel's own limit still holds); any other body is
    # refused before it is read.  Set by whoever serves those paths.
    body_limits: Mapping[bytes, int] = {}

    draining = False

    def __init__(
        self,
        resource,
        *,
        instances: Instances,
        gate: Gate,
        metrics: Metrics,
        access_log: AccessLog,
        limits: ChannelLimits,
        reactor: IReactorTime,
    ) -> None:
        """
        ``instances`` says which instance a webhook is for, and ``gate``
        whether it may send to it, at the end of its headers, before its body
        is read; a reload replaces ``instances`` whole.  ``reactor`` gives every
        deadline and duration of the request path its time.
        """
        # The channel's own deadlines replace Twisted's resettable timeout.
        super().__init__(
            resource, parsePOSTFormSubmission=False, timeout=None, reactor=reactor
        )
        self.instances = instances
        self.gate = gate
        self.metrics = metrics
        self.access = access_log
        self.limits = limits
        self._channels: set[LimitedChannel] = set()
        self._perClient: dict[str, int] = {}
        self._admitted = 0
        self._inFlight: set[WebhookRequest] = set()
        self._drained: Deferred[None] | None = None
        self._allClosed: Deferred[None] | None = None

    def acceptableProtocols(self) -> list[bytes]:
        # Twisted's Site offers h2 in ALPN whenever the h2 package is
        # installed; this channel speaks HTTP/1.x only.
        return [b"http/1.1"]

    def connectionOpened(self, channel: LimitedChannel) -> str | None:
        """
        Admit a connection, or say why it is refused.  Only admitted ones
        count against the caps: refused ones cannot crowd out other clients.
        """
        channel.client = display_host(getattr(channel.transport.getPeer(), "host", "-"))
        # Counted per client: an IPv4 address, or an IPv6 host's /64.
        key = channel.clientKey = client_key(channel.client)
        self._channels.add(channel)
        if self._admitted >= self.limits.max_connections:
            return "too many connections; retry later"
        if self._perClient.get(key, 0) >= self.limits.max_connections_per_client:
            return "too many connections from this address; retry later"
        channel.admitted = True
        self._admitted += 1
        self._perClient[key] = self._perClient.get(key, 0) + 1
        self.metrics.connections.inc()
        return None

    def connectionClosed(self, channel: LimitedChannel) -> None:
        self._channels.discard(channel)
        if channel.admitted:
            channel.admitted = False
            self._admitted -= 1
            count = self._perClient.pop(channel.clientKey) - 1
            if count:
                self._perClient[channel.clientKey] = count
            self.metrics.connections.dec()
        if self._allClosed is not None and not self._channels:
            gone, self._allClosed = self._allClosed, None
            gone.callback(None)

    def track(self, request: WebhookRequest) -> None:
        """Count ``request`` as in flight until it is answered or cut off."""
        self._inFlight.add(request)
        request.notifyFinish().addCallbacks(
            lambda _: self.settle(request), lambda _: self._cutOff(request)
        )

    def _cutOff(self, request: WebhookRequest) -> None:
        # The client went away before its answer; what was committed for it
        # stays (a 200 was never sent), so say so in the access log.
        if request not in self._inFlight:
            return  # answered by the channel (refused) already
        started = getattr(request, "startedAt", None)
        self.access.write(
            client=request.channel.client if request.channel else "-",
            method=request.method,
            path=getattr(request, "path", None) or b"-",
            status=CLIENT_CLOSED_REQUEST,
            incidents=request.incidents,
            body_bytes=getattr(request, "_bodyBytes", 0),
            seconds=self._since(started),
            request_id=getattr(request, "requestId", "-"),
            route=request.route,
            reason="cut off: the client went away before its answer",
        )
        self.settle(request)

    def settle(self, request: WebhookRequest) -> None:
        """``request`` is answered (or lost): it no longer holds up a drain."""
        self._inFlight.discard(request)
        if self._drained is not None and not self._inFlight:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def drain(self, timeout: float) -> Deferred[int]:
        """
        Let the requests in flight finish (at most ``timeout`` seconds), then
        close every connection; those still unanswered are cut off, so they
        never get a 200.  Fires with the number cut off.
        """
        self.draining = True
        clock = self.reactor
        waiting: Deferred[None] = Deferred()
        if self._inFlight:
            self._drained = waiting
            # (`a or f()`, `a and f()`: f() for its effect; mypy refuses the
            # None it returns being used as a value.)
            timer = clock.callLater(
                timeout,
                lambda: waiting.called or waiting.callback(None),  # type: ignore[func-returns-value]
            )
            waiting.addCallback(lambda _: timer.active() and timer.cancel())  # type: ignore[func-returns-value, call-overload]
        else:
            waiting.callback(None)

        def close(_: object) -> int:
            self._drained = None
            cut = len(self._inFlight)
            for channel in list(self._channels):
                if channel.requests:
                    # Not answered yet: cut off, so it never gets a 200.
                    channel.transport.abortConnection()
                else:
                    channel.closeFirmly(SHUTDOWN_GRACE_SECONDS)
            return cut

        def closed(cut: int) -> Deferred[int] | int:
            # Answers already written must reach their clients before the
            # reactor stops and cuts whatever is still open.
            if not self._channels:
                return cut
            gone: Deferred[None] = Deferred()
            self._allClosed = gone
            timer = clock.callLater(
                SHUTDOWN_GRACE_SECONDS + 1,
                lambda: gone.called or gone.callback(None),  # type: ignore[func-returns-value]
            )
            gone.addCallback(lambda _: timer.active() and timer.cancel())  # type: ignore[func-returns-value, call-overload]
            return gone.addCallback(lambda _: cut)

        return waiting.addCallback(close).addCallback(closed)

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.limits = self.limits
        # Our byte count is the one limit: Twisted's own line length, block
        # size and header count limits must never fire first.
        channel.MAX_LENGTH = self.limits.max_header_bytes
        channel.totalHeadersSize = self.limits.max_header_bytes
        channel.maxHeaders = self.limits.max_header_bytes
        return channel

    # (Narrower than HTTPFactory's Request: requestFactory makes only these.)
    def log(self, request: WebhookRequest) -> None:  # type: ignore[override]
        """Count a request a route answered, and write its access line."""
        started = getattr(request, "startedAt", None)
        self.access.write(
            client=display_host(request.getClientAddress().host or "-"),
            method=request.method,
            path=request.path,
            status=request.code,
            incidents=request.incidents,
            body_bytes=getattr(request, "_bodyBytes", 0),
            seconds=self._since(started),
            request_id=getattr(request, "requestId", "-"),
            route=request.route,
            reason=request.error and _why(request.code, request.error),
            instance=request.instance.name if request.instance else None,
            duplicates=request.duplicates,
            duplicate_of=request.duplicate_of,
        )

    def refused(
        self,
        channel: LimitedChannel,
        status: int,
        reason: str,
        request: WebhookRequest | None,
        request_id: str,
    ) -> None:
        """Count a request the channel refused, and write its access line."""
        self.metrics.refusals.labels(str(status)).inc()
        started = channel.requestStarted
        self.access.write(
            client=channel.client,
            # The request line, when it was read before the refusal.
            method=getattr(channel, "_command", b"-"),
            path=getattr(channel, "_path", b"-").split(b"?", 1)[0],
            status=status,
            incidents=0,
            body_bytes=getattr(request, "_bodyBytes", 0),
            seconds=self._since(started),
            request_id=request_id,
            route="channel",
            reason=f"refused: {reason}",
            instance=request.instance.name if request and request.instance else None,
        )

    def _since(self, started: float | None) -> float:
        return self.reactor.seconds() - started if started else 0.0
