"""
The running daemon as a Twisted service: listens, reloads its certificate on
SIGHUP, and on stop stops accepting, drains the requests in flight, and
closes the store last.  Tells systemd each step when run under it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, NamedTuple

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gwebhook import collector, systemd
from gwebhook.channel import WebhookSite
from gwebhook.config import ConfigError
from gwebhook.instances import Instances
from gwebhook.listen import OwnPorts
from gwebhook.store import IncidentStore
from gwebhook.tls import ReloadableTLS, TLSConfigError
from gwebhook.workerpool import WorkerPool

log = Logger()


class Reconfigured(NamedTuple):
    """
    What a reload read, all of it checked, none of it in service yet: the
    instances (None: no ``--config``, they stay as they are), the
    certificates of those with ports of their own, and the read API's
    tokens (``()``: none configured).
    """

    instances: Instances | None
    own_tls: dict[str, ReloadableTLS]
    api_tokens: tuple[bytes, ...]


# Session tickets are encrypted with a key that is replaced this often.
TICKET_KEY_LIFETIME_SECONDS = 3600


class WebhookService(service.MultiService):
    """
    The listener(s) are children; the site and store are sequenced here, as
    MultiService would stop every child at once and close the store under
    requests still being answered.
    """

    def __init__(
        self,
        site: WebhookSite,
        store: IncidentStore,
        tls: ReloadableTLS | None,
        shutdown_timeout: float,
        reactor,
        workers: WorkerPool | None = None,
        own_ports: OwnPorts | None = None,
        reconfigure: Callable[[], Reconfigured] | None = None,
        use_api_tokens: Callable[[tuple[bytes, ...]], bool] | None = None,
    ) -> None:
        """
        ``workers``: the other processes of ``--workers N``, told of each
        reload; they are a child service like the listeners.
        ``reconfigure``: reads the ``--config`` file and the API tokens'
        file again on a reload, for the instances in service, ``own_ports``'
        listeners and the tokens; ``use_api_tokens`` puts the tokens in
        service, False when they are those in service already (None: the
        read API is off since start-up).
        """
        super().__init__()
        self.site = site
        self.store = store
        self.tls = tls
        self.shutdown_timeout = shutdown_timeout
        self.reactor = reactor
        self.workers = workers
        self.own_ports = own_ports
        self.reconfigure = reconfigure
        self.use_api_tokens = use_api_tokens
        # What signal.signal gave back: a handler, SIG_DFL or SIG_IGN.
        self._previous_hup: Callable[[int, FrameType | None], Any] | int | None = None
        self._rotation: LoopingCall | None = None

    def privilegedStartService(self) -> None:
        # Always ours, and before the port is bound: SIGHUP's default action
        # would kill a daemon that already accepts connections (twistd calls
        # startService only later).
        self._catch_hup()
        super().privilegedStartService()

    def _catch_hup(self) -> None:
        if self._previous_hup is None:
            self._previous_hup = signal.signal(signal.SIGHUP, self._hup)

    def startService(self) -> None:
        collector.tune()
        super().startService()
        self._catch_hup()  # when started without privilegedStartService
        if self.tls is not None:
            self._rotation = LoopingCall(self.tls.rotate_ticket_key)
            self._rotation.clock = self.reactor
            self._rotation.start(TICKET_KEY_LIFETIME_SECONDS, now=False)
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        systemd.notify("READY=1\nSTATUS=accepting webhooks")
        log.info("gwebhook ready")

    def _hup(self, signum, frame) -> None:
        # Signal handlers run between bytecodes; do the work in the reactor.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """
        Re-read the ``--config`` file, the API tokens' file, and the
        certificate and key together (SIGHUP, ``systemctl reload``): all are
        put in service, or none.
        """
        if not self.running:
            # Queued by a SIGHUP just before the stop began: nothing to
            # reload into a daemon that is closing.
            return False
        systemd.notify("RELOADING=1")
        if self.workers is not None:
            self.workers.signal("HUP")
        try:
            return self._reload()
        finally:
            systemd.notify("READY=1")

    def _reload(self) -> bool:
        new = None
        if self.reconfigure is not None:
            try:
                new = self.reconfigure()
            except (ConfigError, TLSConfigError) as e:
                log.error(
                    "configuration not reloaded, the running one stays in "
                    "service: {why}",
                    why=e,
                )
                return False
        instances = new.instances if new is not None else None
        ask = instances.needs_client_certificate if instances is not None else None
        if self.tls is not None and not self.tls.reload(ask_client_certificate=ask):
            if new is not None:
                self._keep_asking_as_before()
                log.error("configuration not reloaded either: both or neither")
            return False
        if new is None:
            if self.tls is None:
                log.info(
                    "SIGHUP: nothing to reload without TLS, --config or an API "
                    "tokens file"
                )
                return False
            return True
        if instances is not None:
            if self.own_ports is not None and not self.own_ports.match(
                instances, new.own_tls
            ):
                self._keep_asking_as_before()
                log.error(
                    "configuration not reloaded, the running one stays in "
                    "service: a port of its own could not be opened (see above)"
                )
                return False
            self.site.instances = instances
            log.info(
                "configuration reloaded: instances {names}",
                names=", ".join(i.name for i in instances.all) or "none",
            )
        self._use_api_tokens(new.api_tokens)
        return True

    def _use_api_tokens(self, tokens: tuple[bytes, ...]) -> None:
        """
        The tokens read again in service, if they changed: a token taken
        out is refused from now on, and so are the console sessions made
        with it.  Whether ``/api/`` and ``/console/`` are served at all was
        decided at start-up.
        """
        if self.use_api_tokens is None:
            if tokens:
                log.warn(
                    "API tokens read, but the read API has been off since "
                    "start-up: restart gwebhook to serve /api/ and /console/"
                )
            return
        if not self.use_api_tokens(tokens):
            return
        if tokens:
            log.info("API tokens reloaded: {count} in service", count=len(tokens))
        else:
            log.warn(
                "no API token is configured any more: /api/ and /console/ "
                "refuse every token, and go at the next restart"
            )

    def _keep_asking_as_before(self) -> None:
        # The certificate was re-read with the new configuration's wish for
        # client certificates; the running configuration's stays in force.
        if self.tls is not None:
            running = self.site.instances.needs_client_certificate
            self.tls.ask_client_certificate = running
            self.tls.rotate_ticket_key()

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # A SIGHUP while draining (systemctl reload during a stop) is
        # ignored: the signal's default action would end the drain, and a
        # reload would put in service what is being closed.  The handler
        # from before start goes back once the store is closed.
        previous, self._previous_hup = self._previous_hup, None
        if previous is not None:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            await self._drain_and_close()
        finally:
            if previous is not None:
                signal.signal(signal.SIGHUP, previous)

    async def _drain_and_close(self) -> None:
        if self._rotation is not None and self._rotation.running:
            self._rotation.stop()
        systemd.notify("STOPPING=1")
        log.info(
            "stopping: draining requests in flight (at most {t} s)",
            t=self.shutdown_timeout,
        )
        # Stop accepting and stop the other children (workers drain too,
        # retention, metrics) at the same moment as this process drains, so
        # the whole stop stays within one shutdown timeout ...
        children = super().stopService()
        drained = self.site.drain(self.shutdown_timeout)
        _, cut = await gatherResults([children, drained])
        if cut:
            log.warn(
                "{n} requests were cut off unanswered at the shutdown timeout", n=cut
            )
        # ... and only then close the store.
        self.store.close()
        log.info("stopped: store closed")
