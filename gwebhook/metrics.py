"""
What the daemon counts, for Prometheus (``--metrics-port``).  One registry per
daemon, so tests and several daemons in one process never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)


class Metrics:
    """The daemon's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gwebhook_requests",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.incidents = Counter(
            "gwebhook_incidents_created",
            "Incidents committed to the store, by instance.",
            ["instance"],
            registry=r,
        )
        self.duplicates = Counter(
            "gwebhook_duplicates",
            "Elements that created no incident because the instance had seen "
            "them (their composite key, or their request's idempotency key), "
            "by instance.",
            ["instance"],
            registry=r,
        )
        # Forwarding counts incidents, not requests.
        self.forward_pending = Gauge(
            "gwebhook_forward_pending",
            "Incidents queued for a forward and not yet delivered or given up.",
            ["forward"],
            registry=r,
        )
        self.forward_delivered = Counter(
            "gwebhook_forward_delivered",
            "Incidents a forward delivered (a 2xx answer).",
            ["forward"],
            registry=r,
        )
        self.forward_failures = Counter(
            "gwebhook_forward_failures",
            "Incidents of a forward's failed attempts, by reason (connect, or "
            "the status answered).",
            ["forward", "reason"],
            registry=r,
        )
        self.forward_dead = Counter(
            "gwebhook_forward_dead",
            "Incidents a forward gave up (kept; gwebhook redeliver queues them again).",
            ["forward"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "gwebhook_request_duration_seconds",
            "From the end of the headers to the answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "gwebhook_commit_duration_seconds",
            "Time for a request's incidents to be committed.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.body_bytes = Histogram(
            "gwebhook_request_body_bytes",
            "Request body sizes as received.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "gwebhook_auth_failures",
            "Requests refused for missing or wrong credentials, by instance "
            "and reason (missing, wrong, client_certificate).",
            ["instance", "reason"],
            registry=r,
        )
        self.refusals = Counter(
            "gwebhook_channel_refusals",
            "Requests refused by the HTTP channel's limits, by status.",
            ["status"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "gwebhook_tls_handshake_failures",
            "Connections closed before their TLS handshake completed.",
            registry=r,
        )
        self.connections = Gauge(
            "gwebhook_connections_open", "Client connections open now.", registry=r
        )
        # The counters' children by labels: ``labels()`` is not free.  (The
        # instances are the configuration's: a bounded set.)
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._incidents: dict[str, Counter] = {}
        self._duplicates: dict[str, Counter] = {}

    def answered(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        body_bytes: int,
        incidents: int,
        instance: str | None = None,
        duplicates: int = 0,
    ) -> None:
        """
        Count one answered request (``instance``: whose, when it had one),
        the incidents it created and the duplicates it was answered with.
        """
        key = (method, route, status)
        counter = self._requests.get(key)
        if counter is None:
            # A label from a fixed set: a client choosing methods must not be
            # able to grow the metrics without end.
            label = method if method in _KNOWN_METHODS else "other"
            counter = self.requests.labels(label, route, str(status))
            if label == method:
                self._requests[key] = counter
        counter.inc()
        self.request_seconds.observe(seconds)
        self.body_bytes.observe(body_bytes)
        if instance is not None:
            if incidents:
                _child(self._incidents, self.incidents, instance).inc(incidents)
            if duplicates:
                _child(self._duplicates, self.duplicates, instance).inc(duplicates)


def _child(children: dict[str, Counter], counter: Counter, label: str) -> Counter:
    """``counter.labels(label)``, kept in ``children`` after the first time."""
    child = children.get(label)
    if child is None:
        child = children[label] = counter.labels(label)
    return child
