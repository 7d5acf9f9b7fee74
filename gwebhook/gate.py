"""
Who may send: credentials and the failed-authentication throttle, decided on
a request's headers alone, so the channel can refuse before reading a byte of
the body.  The route asks the same gate for anything the channel did not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from gwebhook.clientcert import UNTRUSTED, ClientCertRefused, verify_client
from gwebhook.config import InstanceConfig
from gwebhook.metrics import Metrics
from gwebhook.signatures import Expected, SignatureRefused, check_headers
from gwebhook.throttle import AuthThrottle

log = Logger()

BASIC_CHALLENGE = b'Basic realm="gwebhook", charset="UTF-8"'


def _read(chain: Callable[[], Sequence[x509.Certificate]]):
    """
    The client's certificates, or the refusal of what cannot be read: the
    handshake takes any certificate (each instance checks its own CA), and
    cryptography refuses some that OpenSSL let through (an X.509 v2, say).
    """
    try:
        return chain()
    except (ValueError, x509.InvalidVersion) as e:
        raise ClientCertRefused(
            UNTRUSTED, f"the client certificate cannot be read: {e}"
        ) from None


@dataclass(frozen=True)
class Admitted:
    """
    A request may send; ``client_cert`` is the certificate it showed, and
    ``signature`` its signature's headers as read (the body still to check).
    """

    client_cert: dict[str, str] | None = None
    signature: Expected | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, and the headers that go with it."""

    status: int
    message: str
    retry_after: int | None = None
    challenge: bytes | None = None


class Gate:
    """
    Who may send to an instance (docs/reference.md 3, 8): every way in it
    has must pass; failures are throttled per client, whichever instance
    they were for.
    """

    def __init__(
        self, throttle: AuthThrottle | None, metrics: Metrics, clock: IReactorTime
    ) -> None:
        """``clock`` says when it is, for the validity of client certificates."""
        self.throttle = throttle
        self.metrics = metrics
        self.clock = clock

    def check(
        self,
        instance: InstanceConfig,
        client: str,
        headers: Headers,
        chain: Callable[[], Sequence[x509.Certificate]] = tuple,
    ) -> Refusal | Admitted:
        """
        Whether ``client`` may send to ``instance`` with these headers and
        the client certificate ``chain()`` gives (leaf first; read only for
        an instance that checks one).
        """
        if self.throttle and (wait := self.throttle.retry_after(client)):
            return Refusal(429, "too many failed authentications; retry later", wait)
        creds = instance.credentials
        if creds is not None:
            values = headers.getRawHeaders(creds.field)
            if not creds.accepts(values):
                return self._failed(
                    instance,
                    client,
                    "missing" if not values else "wrong",
                    "missing or wrong credentials",
                    BASIC_CHALLENGE if creds.basic else None,
                )
        signed = None
        if instance.signature is not None:
            # The body is needed for the signature itself, but not to see
            # that there is none, or a malformed or stale one: refused unread.
            # What was read is kept for the body's check.
            try:
                signed = check_headers(
                    instance.signature, headers.getRawHeaders, self.clock.seconds()
                )
            except SignatureRefused as e:
                return self._failed(
                    instance, client, f"signature_{e.reason}", e.message
                )
        if instance.mtls is None:
            return Admitted(None, signed)
        try:
            now = datetime.fromtimestamp(self.clock.seconds(), UTC)
            accepted = verify_client(_read(chain), instance.mtls, now)
        except ClientCertRefused as e:
            log.info(
                "{client}: client certificate refused for instance {instance}: "
                "{detail}",
                client=client,
                instance=instance.name,
                detail=e.detail,
            )
            return self._failed(
                instance, client, f"client_certificate_{e.reason}", e.message
            )
        return Admitted(accepted.as_dict(), signed)

    def check_signature(
        self,
        instance: InstanceConfig,
        client: str,
        signed: Expected | None,
        body: bytes,
    ) -> Refusal | None:
        """
        Whether ``body`` (as the sender signed it: after gzip decoding) was
        signed with one of ``instance``'s secrets, as its headers, read by
        ``check``, say (``signed``); None if so, or if the instance checks
        no signature.  Asked once the body is in, before it is parsed.
        """
        if instance.signature is None:
            return None
        assert signed is not None  # check admitted it with its signature read
        try:
            signed.check(body)
        except SignatureRefused as e:
            return self._failed(instance, client, f"signature_{e.reason}", e.message)
        return None

    def _failed(
        self,
        instance: InstanceConfig,
        client: str,
        reason: str,
        message: str,
        challenge: bytes | None = None,
    ) -> Refusal:
        self.metrics.auth_failures.labels(instance.name, reason).inc()
        if self.throttle and self.throttle.failed(client):
            log.warn(
                "{client} refused for {window} s after {limit} failed "
                "authentications (the last for instance {instance})",
                client=client,
                window=self.throttle.window,
                limit=self.throttle.limit,
                instance=instance.name,
            )
        return Refusal(401, message, challenge=challenge)
