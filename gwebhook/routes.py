"""
The webhook routes.  Limits were enforced by the channel; each request then
reads top to bottom: credentials, parse, store, answer.

Klein routes every request, except the one thing the daemon does thousands of
times a second: a POST or PUT to a webhook path goes straight to ``ingest``
(see :class:`Front`), which saves werkzeug's matching and a coroutine per
request.  Klein still declares those routes, so the rest of their URL space
(other methods: 405; odd spellings of a path) is answered as before.
"""

from __future__ import annotations

from datetime import UTC, datetime

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from gwebhook import dedup
from gwebhook.addresses import display_host
from gwebhook.answers import (
    NOT_FOUND_MESSAGE,
    RETRY_AFTER_SECONDS,
    encoded_answer,
    error_answer,
    incidents_json,
    json_answer,
)
from gwebhook.config import InstanceConfig
from gwebhook.console.guard import secure_headers
from gwebhook.gate import Admitted, Gate
from gwebhook.headers import headers_for_details
from gwebhook.instances import (
    WEBHOOK_METHODS,
    WEBHOOK_METHODS_BYTES,
    is_webhook_path,
)
from gwebhook.metrics import Metrics
from gwebhook.model import Committed, ReceivedRequest
from gwebhook.payload import (
    PayloadError,
    decode_body,
    incidents_from,
    parse_json,
)
from gwebhook.store import IncidentStore, StoreUnavailable
from gwebhook.timestamps import format_utc

log = Logger()


class WebhookRoutes:
    """Klein routes bound to one store and one gate."""

    app = Klein()

    def __init__(
        self,
        store: IncidentStore,
        gate: Gate,
        metrics: Metrics,
        clock: IReactorTime,
        *,
        max_body_bytes: int,
    ) -> None:
        self.store = store
        self.gate = gate
        self.metrics = metrics
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.store_down = False

    def resource(
        self, api: Resource | None = None, console: Resource | None = None
    ) -> Resource:
        """
        The site's root resource; with the read ``api`` under /api/ and the
        ``console`` under /console/.
        """
        return Front(self, self.app.resource(), api, console)

    # XSOAR's URL forms keep working: /instance/execute/<instance-name>, and
    # XSOAR 8's /xsoar/instance/execute/<instance-name> (see instances.py).
    @app.route("/", methods=WEBHOOK_METHODS, branch=False, endpoint="root")
    @app.route("/instance/execute/<_name>", methods=WEBHOOK_METHODS, endpoint="xsoar6")
    @app.route(
        "/xsoar/instance/execute/<_name>", methods=WEBHOOK_METHODS, endpoint="xsoar8"
    )
    def webhook(self, request, _name: str | None = None) -> bytes | Deferred[bytes]:
        return self.ingest(request)

    def ingest(self, request) -> bytes | Deferred[bytes]:
        """
        Store the incidents a request carries; the answer, with their ids
        once they are committed.
        """
        request.route = "webhook"
        now = self.clock.seconds()
        received = format_utc(datetime.fromtimestamp(now, UTC))

        # For whom, and who sent it, before anything of the body is looked at.
        client = display_host(request.getClientAddress().host or "")
        instance = request.instance
        if instance is None:
            instance, refusal = self._admit(request, client)
            if refusal is not None:
                return refusal

        # What it says.
        credentials = instance.credentials
        headers = headers_for_details(
            request.requestHeaders.getAllRawHeaders(),
            credentials.header if credentials else None,
        )
        raw = request.content.read()
        try:
            body = decode_body(
                raw, headers.get("content-encoding"), self.max_body_bytes
            )
        except PayloadError as e:
            return error_answer(request, e.status, str(e))
        # Signed by the sender?  Over the payload as it signed it, before a
        # byte of it is parsed.
        unsigned = self.gate.check_signature(instance, client, request.signed, body)
        if unsigned is not None:
            return error_answer(request, unsigned.status, unsigned.message)
        try:
            drafts = incidents_from(parse_json(body), instance, received)
        except PayloadError as e:
            return error_answer(request, e.status, str(e))
        if not drafts:
            return json_answer(request, 200, [])

        # Keep it, durably, before saying so.
        kept = ReceivedRequest(
            received=received,
            client=client,
            method=request.method.decode("ascii"),
            path=request.path.decode("ascii"),
            headers=headers,
            body=raw,
            instance=instance.name,
            client_cert=request.client_cert,
            x_request_id=request.requestId,
        )
        # Seen before?  Decided by the store, in the transaction.
        ticket = None
        if instance.dedup is not None:
            header = instance.dedup.header
            ticket = dedup.ticket(
                instance.dedup,
                request.requestHeaders.getRawHeaders(header.encode("ascii"))
                if header
                else None,
                (d.details for d in drafts),
            )
        added = self.store.add(kept, drafts, instance.store_samples, ticket)
        return added.addCallbacks(
            self._stored,
            self._not_stored,
            callbackArgs=(request, now),
            errbackArgs=(request,),
        )

    def _stored(self, committed: Committed, request, started: float) -> bytes:
        self.metrics.commit_seconds.observe(self.clock.seconds() - started)
        if self.store_down:
            self.store_down = False
            log.info("store available again")
        duplicates = committed.duplicates
        request.incidents = len(committed.incidents) - duplicates
        request.duplicates = duplicates
        request.duplicate_of = committed.replay_of
        return encoded_answer(request, 200, incidents_json(committed.incidents))

    def _not_stored(self, failure: Failure, request) -> bytes | Failure:
        if not failure.check(StoreUnavailable):
            return failure
        if not self.store_down:
            self.store_down = True
            log.error(
                "store unavailable, answering 503 until it recovers: {why}",
                why=failure.value,
            )
        request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode("ascii"))
        return error_answer(request, 503, "incident store unavailable; retry later")

    def _admit(
        self, request, client: str
    ) -> tuple[InstanceConfig, None] | tuple[None, bytes]:
        """
        The instance a request is for and may send to, or the refusal to
        answer.  The channel decides this at the end of the headers; this is
        for a request that reached the route another way (a path Klein
        decoded).
        """
        instances = request.channel.site.instances
        instance = instances.for_request(
            request.path.split(b"?", 1)[0], request.channel.localPort
        )
        if instance is None:
            return None, error_answer(request, 404, NOT_FOUND_MESSAGE)
        refusal = self.gate.check(
            instance, client, request.requestHeaders, request.channel.peerChain
        )
        if isinstance(refusal, Admitted):
            request.instance = instance
            request.client_cert = refusal.client_cert
            request.signed = refusal.signature
            return instance, None
        if refusal.retry_after is not None:
            request.setHeader(b"Retry-After", str(refusal.retry_after).encode("ascii"))
        if refusal.challenge is not None:
            request.setHeader(b"WWW-Authenticate", refusal.challenge)
        return None, error_answer(request, refusal.status, refusal.message)

    @app.route("/healthz", methods=["GET", "HEAD"])
    async def healthz(self, request) -> bytes:
        """
        Without credentials: 200 while the store answers, else 503.  After a
        failed commit the check makes a durable commit of its own, and its
        success ends the fault.  Says nothing more, so it helps no attacker.
        """
        request.route = "healthz"
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            await self.store.ping(write=self.store_down)
        except StoreUnavailable:
            healthy = False
        else:
            healthy = True
            if self.store_down:
                self.store_down = False
                log.info("store available again")
        if healthy:
            return json_answer(request, 200, {"status": "ok"})
        request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode("ascii"))
        return json_answer(request, 503, {"status": "unavailable"})

    @app.handle_errors(NotFound)
    def not_found(self, request, failure) -> bytes:
        return error_answer(request, 404, NOT_FOUND_MESSAGE)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request, failure) -> bytes:
        allowed = sorted(failure.value.valid_methods or WEBHOOK_METHODS)
        request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        return error_answer(
            request, 405, f"method not allowed; use {' or '.join(allowed)}"
        )

    @app.handle_errors(Exception)
    def internal_error(self, request, failure) -> bytes:
        log.failure("unexpected error handling {path}", failure, path=request.path)
        return error_answer(request, 500, "internal error; the incident was not stored")


class Front(Resource):
    """
    The root: a webhook POST or PUT goes to :meth:`WebhookRoutes.ingest`
    directly, /api/ to the read API and /console/ to the console when there
    are API tokens, anything else to Klein.  Writes the answer as Klein would.
    """

    isLeaf = True

    def __init__(
        self,
        routes: WebhookRoutes,
        klein: Resource,
        api: Resource | None = None,
        console: Resource | None = None,
    ) -> None:
        super().__init__()
        self.routes = routes
        self.klein = klein
        self.api = api
        self.console = console

    def render(self, request):
        path = request.path
        if self.api is not None and path.startswith(b"/api/"):
            return self.api.render(request)
        if path.startswith(b"/console") and (
            len(path) == 8 or path[8:9] in (b"/", b"?")
        ):
            if self.console is not None:
                return self.console.render(request)
            # No console here (no API tokens): a 404, with the headers every
            # answer under /console/ carries.
            secure_headers(request)
        if request.method not in WEBHOOK_METHODS_BYTES or not is_webhook_path(
            request.path
        ):
            return self.klein.render(request)
        try:
            answer = self.routes.ingest(request)
        except Exception:
            return self.routes.internal_error(request, Failure())
        if isinstance(answer, bytes):
            return answer
        # As Klein does: the client may go while the store commits, and then
        # there is nothing to write to.
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        answer.addErrback(lambda failure: self.routes.internal_error(request, failure))
        answer.addCallback(_send, request, gone)
        return NOT_DONE_YET


def _send(body: bytes, request, gone: list[Failure]) -> None:
    if gone:
        return
    request.write(body)
    request.finish()
