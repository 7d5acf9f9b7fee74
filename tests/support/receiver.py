"""
A receiver of what gwebhook forwards: an HTTPS (or plain HTTP) server on
127.0.0.1, in threads of the test process, that records every request (when
it arrived, method, path, headers, body) and answers as the test scripts it:
a status with headers and a body, after a delay if asked, no answer at all
(the connection closed, an unknown outcome for the sender), or whatever a
callable of the test's decides (``relay``: pass the request on to another
server, a second gwebhook, say).
"""

from __future__ import annotations

import http.client
import http.server
import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from support.pki import Served
from support.ports import free_port
from support.wait import wait_for


@dataclass(frozen=True)
class Received:
    """One request as the receiver read it; header names in lower case."""

    at: float  # time.monotonic() once the body was read
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """An answer: ``status`` with ``headers`` and ``body``, ``delay`` s late."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    delay: float = 0.0


# Close the connection without answering: the sender cannot know whether
# the request took effect.
DROP = Reply(status=0)

Respond = Callable[[Received], Reply]


class Receiver:
    """
    The server; a context manager.  Answers ``then`` (200 unless set) to
    every request after the scripted ``replies``, or what ``respond`` says
    when it is set.
    """

    def __init__(self, served: Served | None, port: int | None = None) -> None:
        self.served = served
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._replies: deque[Reply] = deque()
        self._then = Reply()
        self._respond: Respond | None = None
        self.handshake_failures = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the script ---------------------------------------------------------

    def answer(self, *replies: Reply, then: Reply | None = None) -> None:
        """The next requests get ``replies`` in turn, later ones ``then``."""
        with self._lock:
            self._replies = deque(replies)
            if then is not None:
                self._then = then
            self._respond = None

    def respond(self, respond: Respond | None) -> None:
        """Every request is answered by ``respond(request)`` (None: the script)."""
        with self._lock:
            self._respond = respond

    def _reply_to(self, request: Received) -> Reply:
        with self._lock:
            self._received.append(request)
            respond = self._respond
            if respond is None:
                return self._replies.popleft() if self._replies else self._then
        return respond(request)

    # -- what arrived -----------------------------------------------------------

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def wait_for_requests(self, count: int, timeout: float = 10) -> list[Received]:
        """Wait until at least ``count`` requests arrived; all of them."""
        return wait_for(
            lambda: found if len(found := self.requests) >= count else None,
            timeout,
            f"{count} requests at the receiver on port {self.port}",
        )

    # -- the server -----------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "http" if self.served is None else "https"

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        context = None
        if self.served is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.served.cert), str(self.served.key))
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        server.context = context
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening (the port refuses connections again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # A handler sleeping through a Reply's delay must not hold up close().
    block_on_close = False
    allow_reuse_address = True
    receiver: Receiver
    context: ssl.SSLContext | None

    def handle_error(self, request, client_address) -> None:
        # A client that gives up on the handshake (an untrusted certificate)
        # or the connection: counted, not printed.
        with self.receiver._lock:
            self.receiver.handshake_failures += 1


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        # The handshake in this connection's own thread, not the accepting one.
        if self.server.context is not None:
            self.request.settimeout(10)
            self.request = self.server.context.wrap_socket(
                self.request, server_side=True
            )
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Received(
            time.monotonic(),
            self.command,
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        reply = self.server.receiver._reply_to(request)
        if reply.delay:
            time.sleep(reply.delay)
        self.close_connection = True
        if reply.status == 0:
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_PUT = do_GET = _any


def relay(
    port: int, served: Served | None, answer: Callable[[Reply], Reply] | None = None
) -> Respond:
    """
    A ``respond`` that passes each request on, the same, to the server on
    127.0.0.1:``port`` (HTTPS trusting ``served``'s CA) and answers with its
    answer, or with what ``answer`` makes of that answer (DROP, say).
    """

    def respond(request: Received) -> Reply:
        if served is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        else:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=10, context=served.client_context()
            )
        skip = {"host", "content-length", "connection"}
        headers = {k: v for k, v in request.headers.items() if k not in skip}
        try:
            connection.request(request.method, request.path, request.body, headers)
            reply = connection.getresponse()
            got = Reply(
                reply.status,
                {"Content-Type": reply.getheader("Content-Type") or "text/plain"},
                reply.read(),
            )
        finally:
            connection.close()
        return got if answer is None else answer(got)

    return respond
