"""
Who may send: credentials and the failed-authentication throttle, decided on
a request's headers alone, so the channel can refuse before reading a byte of
the body.  The route asks the same gate for anything the channel did not.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger
from twisted.web.http_headers import Headers

from gwebhook.credentials import Credentials
from gwebhook.metrics import Metrics
from gwebhook.throttle import AuthThrottle

log = Logger()

BASIC_CHALLENGE = b'Basic realm="gwebhook", charset="UTF-8"'
HEALTH_PATH = b"/healthz"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, and the headers that go with it."""

    status: int
    message: str
    retry_after: int | None = None
    challenge: bytes | None = None


class Gate:
    """The credential check (docs/reference.md 3), with a throttle on failures."""

    def __init__(
        self,
        credentials: Credentials | None,
        throttle: AuthThrottle | None,
        metrics: Metrics,
    ) -> None:
        self.credentials = credentials
        self.throttle = throttle
        self.metrics = metrics

    @staticmethod
    def exempt(method: bytes, path: bytes) -> bool:
        """Only the health check is open to anyone."""
        return method in (b"GET", b"HEAD") and path.split(b"?", 1)[0] == HEALTH_PATH

    def check(self, client: str, headers: Headers) -> Refusal | None:
        """None if ``client`` may send with these headers, else the refusal."""
        if self.throttle and (wait := self.throttle.retry_after(client)):
            return Refusal(429, "too many failed authentications; retry later", wait)
        creds = self.credentials
        if creds is None or creds.accepts(headers.getRawHeaders(creds.field)):
            return None
        self.metrics.auth_failures.inc()
        if self.throttle and self.throttle.failed(client):
            log.warn(
                "{client} refused for {window} s after {limit} failed authentications",
                client=client,
                window=self.throttle.window,
                limit=self.throttle.limit,
            )
        challenge = BASIC_CHALLENGE if creds.basic else None
        return Refusal(401, "missing or wrong credentials", challenge=challenge)
