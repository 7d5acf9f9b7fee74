"""
Where the daemon listens: the endpoint for its options (TCP, TLS, a socket
from systemd, SO_REUSEPORT for workers), the service that binds it at
start-up, and the checks that refuse, in one line, what cannot be bound.
"""

from __future__ import annotations

import os
import resource
import socket

from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.defer import fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from gwebhook.metrics import Metrics
from gwebhook.tls import FailureLog, ReloadableTLS, TLSServerEndpoint

log = Logger()

# Twisted's default of 50 overflows under a burst of new connections.
LISTEN_BACKLOG = 1024
# Descriptors beyond the connections: the store, logs, listeners, temp files.
DESCRIPTOR_MARGIN = 64


def ensure_descriptors(max_connections: int) -> None:
    """
    Raise the soft limit on open files to what --max-connections needs, or
    refuse to start: past it, accept() fails for everyone.
    """
    needed = max_connections * 2 + DESCRIPTOR_MARGIN  # a refused one may wait too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise usage.UsageError(
            f"--max-connections {max_connections} needs {needed} open files, but "
            f"the limit is {hard}; lower --max-connections or raise the limit "
            "(ulimit -n, or LimitNOFILE= in the systemd unit)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def check_bindable(option: str, interface: str, port: int) -> None:
    """
    Refuse at start-up, in one line, a port that cannot be bound (in use, or
    privileged), rather than with the traceback twistd prints when the
    listener fails later.
    """
    try:
        bound_socket(interface, port).close()
    except OSError as e:
        where = interface or "all interfaces"
        raise usage.UsageError(
            f"{option} {port}: cannot listen on {where}: {e.strerror}; "
            f"choose another {option} or interface, or stop what holds it"
        ) from None


@implementer(IStreamServerEndpoint)
class SocketEndpoint:
    """
    A TCP listening socket made here rather than by Twisted, for what its
    endpoints cannot ask for: other processes binding the same port
    (``reuse_port``, for ``--workers``), and on ``::`` one socket for IPv6
    and IPv4 clients alike whatever the host's ``bindv6only`` says.
    """

    def __init__(
        self, reactor, port: int, interface: str, backlog: int, reuse_port: bool
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.reuse_port = reuse_port

    def listen(self, factory):
        try:
            s = bound_socket(self.interface, self.port, self.reuse_port)
        except OSError as e:
            return fail(CannotListenError(self.interface, self.port, e))
        with s:
            s.listen(self.backlog)
            s.setblocking(False)
            # Twisted takes a duplicate; this one closes on leaving.
            return succeed(self.reactor.adoptStreamPort(s.fileno(), s.family, factory))


def bound_socket(interface: str, port: int, reuse_port: bool = False) -> socket.socket:
    """
    A TCP socket bound to ``interface`` and ``port`` as the listener binds
    it; ``::`` serves IPv4 clients too (as ``::ffff:a.b.c.d``).
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's listener does, so a port in TIME_WAIT is not "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and interface == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((interface, port))
    except BaseException:
        s.close()
        raise
    return s


def webhook_endpoint(reactor, config, metrics: Metrics, failures: FailureLog):
    """Where the webhooks arrive, as the options say: TLS over TCP, usually."""
    fd = config["inherited-socket"]
    interface = config["interface"]
    if fd is not None:
        # Socket activation (or a worker of such a daemon): the port is bound
        # already and shared; TLS is still ours.
        with socket.socket(fileno=os.dup(fd)) as inherited:
            family = inherited.family
        # Twisted closes the descriptor it adopts; fd itself stays open for
        # the workers, which are handed it as their fd 3.
        plain: IStreamServerEndpoint = endpoints.AdoptedStreamServerEndpoint(
            reactor, os.dup(fd), family
        )
    else:
        reuse_port = config["workers"] > 1 or config.worker
        plain = SocketEndpoint(
            reactor, config["port"], interface, LISTEN_BACKLOG, reuse_port
        )
    if config["tls"] is None:
        return plain
    return TLSServerEndpoint(
        plain,
        config["tls"],
        onHandshakeFailure=metrics.tls_handshake_failures.inc,
        failures=failures,
    )


class Listener(service.Service):
    """
    Listens on an endpoint when the daemon starts (before privileges are
    dropped), failing start-up if it cannot; keeps the port for the workers.
    """

    def __init__(self, endpoint, factory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failed: list = []
        self.endpoint.listen(self.factory).addCallbacks(self._listening, failed.append)
        if failed:
            failed[0].raiseException()

    def _listening(self, port) -> None:
        self.port = port

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def metrics_site(metrics: Metrics) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    site = Site(root)
    site.noisy = False
    # A scrape every few seconds is not news: this one site's log method is
    # replaced on the instance, which mypy refuses for any method.
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


class OwnPorts(service.MultiService):
    """
    The listeners of the instances that have a port of their own, opened
    and closed to match the instances in service (a reload may add, change
    or remove them).  Each serves ``site``; the channel tells the instance
    by the port a connection came to.
    """

    def __init__(
        self,
        reactor,
        site,
        interface: str,
        tls,
        metrics: Metrics,
        failures: FailureLog,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.site = site
        self.interface = interface
        self.tls = tls  # the main listener's, for instances without their own
        self.metrics = metrics
        self.failures = failures
        self.reuse_port = False
        # port -> (certificate and key files, or None for the main pair,
        # the instance's own TLS or None, its Listener)
        self._open: dict[
            int, tuple[tuple[str, str] | None, ReloadableTLS | None, Listener]
        ] = {}

    def match(self, instances, own_tls: dict) -> bool:
        """
        Listen on exactly the own ports of ``instances`` (an Instances),
        with each instance's own certificate (``own_tls``, by name) or the
        main one; False, with nothing changed, when a port new to the set
        cannot be bound.  A port that stays keeps its listener (its own
        certificate re-read); one that goes stops listening, and the
        requests in flight on it finish.
        """
        wanted = {}
        asks = {}
        for instance in instances.by_port.values():
            pair = (instance.cert, instance.key) if instance.cert else None
            wanted[instance.port] = (pair, own_tls.get(instance.name))
            asks[instance.port] = instance.mtls is not None
        # New port numbers first, all or none, before anything is let go.
        opened: list[tuple[int, Listener]] = []
        for port in sorted(set(wanted) - set(self._open)):
            pair, tls = wanted[port]
            listener = self._listen(port, tls)
            if listener is None:
                for port_, listener_ in opened:
                    del self._open[port_]
                    listener_.disownServiceParent()
                return False
            self._open[port] = (pair, tls, listener)
            opened.append((port, listener))
        for port in list(self._open):
            if any(port == p for p, _ in opened):
                continue
            pair, tls, listener = self._open[port]
            if port in wanted and wanted[port][0] == pair:
                if tls is not None:
                    tls.reload(ask_client_certificate=asks[port])
                continue
            del self._open[port]
            listener.disownServiceParent()
            log.info("stopped listening on port {port}", port=port)
            if port in wanted:
                # The same port with another certificate: reopened at once.
                new_pair, new_tls = wanted[port]
                replacement = self._listen(port, new_tls)
                if replacement is not None:
                    self._open[port] = (new_pair, new_tls, replacement)
        return True

    def _listen(self, port: int, tls) -> Listener | None:
        """A listener on ``port`` in this service (bound if it runs), or None."""
        plain = SocketEndpoint(
            self.reactor, port, self.interface, LISTEN_BACKLOG, self.reuse_port
        )
        serving = tls if tls is not None else self.tls
        endpoint: IStreamServerEndpoint = plain
        if serving is not None:
            endpoint = TLSServerEndpoint(
                plain,
                serving,
                onHandshakeFailure=self.metrics.tls_handshake_failures.inc,
                failures=self.failures,
            )
        listener = Listener(endpoint, self.site)
        try:
            listener.setServiceParent(self)
        except Exception as e:  # a reload must not take the daemon down
            log.error("cannot listen on port {port}: {why}", port=port, why=e)
            listener.disownServiceParent()
            return None
        if self.running:
            log.info("listening on port {port}", port=port)
        return listener
