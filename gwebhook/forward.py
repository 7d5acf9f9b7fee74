"""
Forwarding (docs/reference.md 10): every incident of a forward's instances,
delivered onward — to XSOAR's Generic Webhook, another gwebhook, any
receiver — at least once and in order.

The rules (the body of each format, the headers, what an answer means, the
backoff) are pure functions; :class:`Forwarder` at the bottom is the
Twisted side: one per ``[[forward]]``, one batch in flight at a time, the
queue in the store (``gwebhook.store.deliveries``), the HTTP client of
``gwebhook send`` (``sender.send``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import crypto
from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.ssl import Certificate
from twisted.logger import Logger

from gwebhook import sender
from gwebhook.config import ForwardConfig
from gwebhook.metrics import Metrics
from gwebhook.store import IncidentStore, StoreUnavailable
from gwebhook.store import deliveries as queue

log = Logger()

# Backoff between attempts of a batch: from 1 s, doubling, to 5 min.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 300.0
# How often an idle forwarder looks for work another process queued (or a
# redeliver); this process's commits wake it at once.
IDLE_POLL = 1.0
# After a batch that was not full was delivered, how long the forwarder lets
# the queue fill before it takes the next: under a steady stream of commits,
# batches of what arrived in that time rather than of one commit each, and so
# fewer requests, transactions and fsyncs per incident.  A forwarder that
# found its queue empty is woken by the next commit at once, so a lone
# incident is not held back; a full batch is followed by the next at once.
LINGER = 0.05
USER_AGENT = "gwebhook-forward"
# Of a receiver's answer only the status counts: at most this much is read.
MAX_ANSWER = 64 * 1024


# -- the rules ---------------------------------------------------------------


def element_body(kind: str, incident: dict[str, Any], raw: Any) -> Any:
    """One incident as the forward's ``format`` sends it."""
    if kind == "incident":
        return incident
    if kind == "raw":
        return raw
    details = {k: v for k, v in incident["rawJson"].items() if k != "headers"}
    # What XSOAR's Generic Webhook (and gwebhook) read of an element.
    return {
        "name": incident["name"],
        "type": incident["type"],
        "occurred": incident["occurred"],
        "rawJson": details,
    }


def body(kind: str, batch: int, items: Sequence[tuple[dict, Any]]) -> bytes:
    """
    The request body: one object with ``batch = 1``, else always an array
    (of one or more).
    """
    elements = [element_body(kind, incident, raw) for incident, raw in items]
    document: Any = elements[0] if batch == 1 else elements
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def joined(batch: int, elements: Sequence[str]) -> bytes:
    """
    ``body`` of elements already JSON text (``deliveries.xsoar_elements``):
    the one with ``batch = 1``, else an array.
    """
    text = elements[0] if batch == 1 else "[" + ",".join(elements) + "]"
    return text.encode("utf-8")


def webhook_id(forward: str, first: int) -> str:
    """The id of a batch's request, the same on every retry."""
    return f"{forward}-{first}"


def standard_signature(key: bytes, message_id: str, timestamp: int, data: bytes) -> str:
    """``webhook-signature`` of Standard Webhooks: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{message_id}.{timestamp}.".encode() + data
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(
    config: ForwardConfig, message_id: str, data: bytes, now: float
) -> list[tuple[str, str]]:
    """Every header of a batch's request but those HTTP itself adds."""
    # A User-Agent of the forward's headers replaces gwebhook's.
    own = {name.lower() for name, _ in config.headers}
    result = [("Content-Type", "application/json")]
    if "user-agent" not in own:
        result.append(("User-Agent", USER_AGENT))
    result += [("webhook-id", message_id), *config.headers]
    if config.username is not None and config.password is not None:
        result.append(
            (
                "Authorization",
                sender.basic_authorization(f"{config.username}:{config.password}"),
            )
        )
    if config.sign_key is not None:
        timestamp = int(now)
        result.append(("webhook-timestamp", str(timestamp)))
        result.append(
            (
                "webhook-signature",
                standard_signature(config.sign_key, message_id, timestamp, data),
            )
        )
    return result


@dataclass(frozen=True)
class Outcome:
    """What became of an attempt: ``state`` delivered, retry or dead."""

    state: str
    reason: str  # the metric's label: "2xx", "429", "connect", ...
    message: str  # the log's and ``last_error``'s words
    retry_after: float | None = None


def outcome_of_answer(code: int, retry_after: str | None) -> Outcome:
    """What an answer's status means for the batch."""
    if 200 <= code < 300:
        return Outcome("delivered", "2xx", f"answered {code}")
    if code in (408, 429) or code >= 500:
        return Outcome(
            "retry", str(code), f"answered {code}", parse_retry_after(retry_after)
        )
    if 300 <= code < 400:
        return Outcome(
            "dead", str(code), f"answered {code}, a redirect; give the final url"
        )
    return Outcome("dead", str(code), f"answered {code}")


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds only), at most 5 minutes."""
    text = (value or "").strip()
    # isascii: "²" is a digit to str.isdigit, not to float().
    if not (text.isascii() and text.isdigit()):
        return None
    return min(float(text), MAX_BACKOFF)


def backoff(attempts: int, retry_after: float | None, rand: random.Random) -> float:
    """
    Seconds until the next attempt after ``attempts`` failed ones: 1 s
    doubling to 5 min, less up to half of it at random (so that many
    forwards do not retry in step), and never sooner than ``Retry-After``.
    """
    base = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(attempts - 1, 0))
    delay = base * (0.5 + rand.random() / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


# -- the Twisted side ----------------------------------------------------------


def _trust(config: ForwardConfig) -> list[Certificate] | None:
    if config.trust is None:
        return None
    return [Certificate(crypto.X509.from_cryptography(c)) for c in config.trust]


class Forwarder(service.Service):
    """
    Delivers one forward's queue: takes the next batch (and the forward's
    lease, so one process of all nodes delivers it), sends it, records what
    became of it, and goes on at once, at the batch's next attempt, or when
    something is committed.
    """

    def __init__(
        self,
        config: ForwardConfig,
        store: IncidentStore,
        clock,
        metrics: Metrics,
        holder: str | None = None,
        rand: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = metrics
        # Who holds the lease: the same after a restart (so a restarted node
        # takes its forwards back at once), another for each node.
        self.holder = holder or socket.gethostname()
        # Longer than the slowest attempt, so a lease cannot lapse while its
        # holder still waits for an answer.
        self.lease = max(
            queue.LEASE_SECONDS, config.timeout + config.connect_timeout + 30
        )
        self.rand = rand or random.Random()
        self._trust = _trust(config)
        # One connection kept open to the receiver, and one TLS context,
        # for all of the forward's requests.
        self._pool = sender.connection_pool(clock, persistent=True)
        self._policy: Any = None
        self._loop: Deferred[None] | None = None
        self._sleep: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._sending: Deferred | None = None
        # A batch delivered but not yet marked so in the store: marked in
        # the transaction that takes the next one (one fsync instead of two).
        self._delivered: int | None = None
        # Whether the last look found nothing to send, so that a commit has
        # something for it.  A forwarder waiting for a batch's next attempt
        # (or letting the queue fill) is not woken by commits: what they
        # queue is sent after that batch anyway, and each wake would be a
        # write transaction (the take) for nothing.
        self._idle = False
        store.on_commit.append(self._committed)

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(
            lambda f: log.failure("forward {name} stopped", f, name=self.config.name)
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._sending is not None:
            # Its outcome is unknown: the batch stays pending, the same
            # request is sent again after the restart (same webhook-id).
            self._sending.cancel()
        self.wake()
        closed = self._pool.closeCachedConnections()
        if self._loop is None:
            return closed
        loop, self._loop = self._loop, None
        return loop.addBoth(lambda _: closed)

    def _committed(self, instances: set[str]) -> None:
        if self._idle and any(self.config.takes(instance) for instance in instances):
            self.wake()

    def wake(self) -> None:
        """Look at the queue now (something was committed, or the daemon stops)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        sleep, self._sleep = self._sleep, None
        if sleep is not None:
            sleep.callback(None)

    async def _run(self) -> None:
        while self.running:
            try:
                wait = await self._once()
            except StoreUnavailable as e:
                log.warn(
                    "forward {name}: store unavailable, trying again: {why}",
                    name=self.config.name,
                    why=e,
                )
                wait = 5.0
            except CancelledError:
                wait = 0.0
            except Exception:
                # Never stop delivering: log it, and try again later.
                log.failure(
                    "forward {name}: unexpected error; trying again in 5 s",
                    name=self.config.name,
                )
                wait = 5.0
            if self.running and wait > 0:
                await self._pause(wait)
        with contextlib.suppress(StoreUnavailable):
            if self._delivered is not None:
                done, self._delivered = self._delivered, None
                await self.store.write(queue.delivered, self.config.name, done)
            await self.store.write(queue.release, self.config.name, self.holder)

    def _pause(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._sleep = d
        self._timer = self.clock.callLater(seconds, self.wake)
        return d

    async def _once(self) -> float:
        """One batch, if one is due: the seconds until the next look."""
        config = self.config
        now = self.clock.seconds()
        taken = await self.store.write(
            queue.take,
            config.name,
            self.holder,
            now,
            config.batch,
            self.lease,
            self._delivered,
        )
        self._delivered = None
        self.metrics.forward_pending.labels(config.name).set(taken.pending)
        batch = taken.batch
        # (Another node's lease: looked at again after IDLE_POLL, not at
        # every commit of this one's.)
        self._idle = batch is None and taken.held
        if batch is None:
            return IDLE_POLL
        if batch.next_attempt > now:
            return min(batch.next_attempt - now, IDLE_POLL * 5)
        if now - batch.queued > config.max_age:
            await self._give_up(
                batch, f"not delivered within max_age ({config.max_age} s)", False
            )
            return 0.0
        if config.format == "xsoar":
            # The details as stored are what xsoar sends: no parse, no dump.
            found = await self.store.read(queue.xsoar_elements, batch.ids)
        else:
            found = await self.store.read(
                queue.items, batch.ids, config.format == "raw"
            )
        if not found:
            # Its incidents were deleted (retention): nothing to send.
            await self._give_up(batch, "its incidents were deleted", False)
            return 0.0
        if config.format == "xsoar":
            data = joined(config.batch, found)
        else:
            data = body(config.format, config.batch, found)
        message_id = webhook_id(config.name, batch.first)
        outgoing = sender.Outgoing(
            url=config.url,
            method=config.method,
            headers=headers(config, message_id, data, now),
            body=data,
            trust=self._trust,
            cacert=f"ca_file {config.ca_file}" if config.ca_file else None,
            insecure=not config.verify,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
        )
        if self._policy is None:
            self._policy = sender.trust_policy(outgoing)
        # Why the last handshake failed, if one did, is not this one's.
        self._policy.problem = None
        self._sending = sender.send(
            self.clock, outgoing, MAX_ANSWER, self._pool, self._policy
        )
        try:
            answer = await self._sending
            result = outcome_of_answer(answer.code, answer.headers.get("retry-after"))
        except sender.SendFailed as e:
            result = Outcome("retry", "connect", str(e))
        finally:
            self._sending = None
        return await self._record(batch, result, message_id)

    async def _record(self, batch, result: Outcome, message_id: str) -> float:
        config = self.config
        count = len(batch.ids)
        span = _span(batch.ids)
        if result.state == "delivered":
            # Marked by the next take (at once after a full batch, the queue
            # may hold more; else after LINGER).
            self._delivered = batch.first
            self.metrics.forward_delivered.labels(config.name).inc(count)
            log.info(
                "forward {name}: delivered {span} ({message_id}): {why}",
                name=config.name,
                span=span,
                message_id=message_id,
                why=result.message,
            )
            return 0.0 if count >= config.batch else LINGER
        self.metrics.forward_failures.labels(config.name, result.reason).inc(count)
        if result.state == "dead":
            await self._give_up(batch, result.message, True)
            return 0.0
        delay = backoff(batch.attempts + 1, result.retry_after, self.rand)
        await self.store.write(
            queue.retry,
            config.name,
            batch.first,
            result.message,
            self.clock.seconds() + delay,
        )
        log.warn(
            "forward {name}: {span} ({message_id}) not delivered, attempt "
            "{attempt}, retrying in {delay:.1f} s: {why}",
            name=config.name,
            span=span,
            message_id=message_id,
            attempt=batch.attempts + 1,
            delay=delay,
            why=result.message,
        )
        return delay

    async def _give_up(self, batch, why: str, attempted: bool) -> None:
        config = self.config
        count = await self.store.write(
            queue.dead, config.name, batch.first, why, attempted
        )
        self.metrics.forward_dead.labels(config.name).inc(count)
        log.error(
            "forward {name}: gave up {span}: {why}; `gwebhook redeliver --forward "
            "{name} --dead` queues it again",
            name=config.name,
            span=_span(batch.ids),
            why=why,
        )


def _span(ids: Sequence[int]) -> str:
    if len(ids) == 1:
        return f"incident {ids[0]}"
    return f"incidents {ids[0]}..{ids[-1]} ({len(ids)})"
