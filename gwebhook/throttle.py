"""Failed authentications per client address, and who must wait (pure, clocked)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from gwebhook.addresses import client_key


class AuthThrottle:
    """
    A client with ``limit`` failed authentications within ``window``
    seconds is refused until the oldest of them is ``window`` seconds old.
    A client is an IPv4 address or an IPv6 /64 (see ``addresses.client_key``).
    Memory is bounded: at most ``max_clients`` addresses are remembered, the
    least recently failing forgotten first.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        now: Callable[[], float],
        max_clients: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.now = now
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int:
        """Seconds ``client`` must wait before trying again; 0 if it may try now."""
        client = client_key(client)
        failures = self._failures.get(client)
        if failures is None or len(failures) < self.limit:
            return 0
        wait = failures[0] + self.window - self.now()
        if wait <= 0:
            del self._failures[client]
            return 0
        return math.ceil(wait)

    def failed(self, client: str) -> bool:
        """Record a failure; True when it is the one that blocks ``client``."""
        client = client_key(client)
        now = self.now()
        failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        failures.append(now)
        # Re-inserted last, so the dict's first key is the stalest client.
        self._failures[client] = failures
        if len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]
        return len(failures) == self.limit
