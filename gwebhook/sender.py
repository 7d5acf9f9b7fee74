"""
``gwebhook send``: post one webhook the way a sender such as Wallarm does, to
try a receiver (gwebhook or any other) end to end, TLS included.

The rules (headers, body, URL, what a failure means) are pure functions; the
Twisted I/O is ``deliver`` and ``run`` at the bottom.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import sys
from dataclasses import dataclass
from typing import IO, Any

import hyperlink
import treq
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from gwebhook import urls
from gwebhook.headers import is_printable_ascii, is_token
from gwebhook.payload import PayloadError, parse_json
from gwebhook.tls import TLSConfigError, load_chain

DEFAULT_TIMEOUT = 15.0  # Wallarm's "Request timeout"
DEFAULT_CONNECT_TIMEOUT = 20.0  # Wallarm's "Connection timeout"
METHODS = ("POST", "PUT")
USER_AGENT = "gwebhook-send"

# Sent when no --data is given: Wallarm's "Test integration" message, named so
# that whoever reads the receiver's incidents knows it was a test.
TEST_INCIDENTS: list[dict[str, Any]] = [
    {
        "name": "gwebhook send: test incident",
        "title": "Test",
        "source": "gwebhook send",
        "type": "Info",
        "domain": "example.com",
        "threat": "Medium",
        "link": "https://example.com/object/555",
        "summary": "[Test Message] New vulnerability identified",
    }
]

# Headers the client computes itself; a second copy would corrupt the request.
_COMPUTED = {"content-length", "transfer-encoding"}

# OpenSSL's X509_V_ERR_* codes a sender meets, in OpenSSL's own words.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}
_UNKNOWN_ISSUER = {2, 20, 21}
_UNTRUSTED_SELF_SIGNED = {18, 19}
# What to do when the chain is sound but its CA is not trusted.
TRUST_HINT = (
    "to trust it, give its CA certificate with --cacert FILE"
    " (or -k to skip verification, for a trial only)"
)
TLS_MINIMUM = TLSVersion.TLSv1_2


class ArgumentError(Exception):
    """A command-line value that cannot be used; nothing was sent."""


@dataclass(frozen=True)
class Outgoing:
    """Everything about the one request to send, checked."""

    url: str
    method: str
    headers: list[tuple[str, str]]
    body: bytes
    trust: list[Certificate] | None  # None: the system's CAs
    cacert: str | None
    insecure: bool
    timeout: float
    connect_timeout: float

    @property
    def https(self) -> bool:
        return self.url.lower().startswith("https://")


# The rules ------------------------------------------------------------------


def parse_header(text: str) -> tuple[str, str]:
    """Split ``'Name: value'`` into its name and value (surrounding blanks cut)."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip(" \t")
    if not colon or not name:
        raise ArgumentError(f"--header {text!r} is not 'Name: value'")
    if not is_token(name):
        raise ArgumentError(f"--header {text!r}: {name!r} is not a header name")
    if not (value.isascii() and is_printable_ascii(value.encode("ascii"))):
        raise ArgumentError(f"--header {name}: the value must be printable ASCII")
    if name.lower() in _COMPUTED:
        raise ArgumentError(f"--header {name}: computed from the body, cannot be set")
    return name, value


def basic_authorization(user_password: str) -> str:
    """The ``Authorization`` value for ``--user USER:PASSWORD`` (UTF-8)."""
    user, colon, password = user_password.partition(":")
    if not colon or not user:
        raise ArgumentError("--user must be USER:PASSWORD")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def request_headers(
    given: list[str], user_password: str | None = None
) -> list[tuple[str, str]]:
    """
    The headers to send: ``Content-Type: application/json`` and a
    ``User-Agent`` unless ``--header`` names them, every ``--header`` in
    order (repeats are all sent), and Basic credentials for ``--user``.
    """
    headers = [parse_header(text) for text in given]
    names = {name.lower() for name, _ in headers}
    if user_password is not None:
        if "authorization" in names:
            raise ArgumentError("give --user or an Authorization header, not both")
        headers.append(("Authorization", basic_authorization(user_password)))
    defaults = [("Content-Type", "application/json"), ("User-Agent", USER_AGENT)]
    return [d for d in defaults if d[0].lower() not in names] + headers


def json_body(raw: bytes, source: str = "--data") -> bytes:
    """
    Return ``raw`` unchanged if gwebhook's receiver would read it as JSON;
    else refuse it, nothing sent, with the reason the receiver would give.
    """
    try:
        parse_json(raw)
    except PayloadError as e:
        raise ArgumentError(f"{source}: {e}; nothing sent") from None
    return raw


def default_body() -> bytes:
    """The default body: ``TEST_INCIDENTS`` as JSON."""
    return json.dumps(TEST_INCIDENTS, indent=2).encode() + b"\n"


def check_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host and valid port."""
    try:
        return urls.check_url(url)
    except ValueError as e:
        raise ArgumentError(str(e)) from None


def verify_problem(code: int, subject: str, issuer: str, trusted: str) -> str:
    """
    Why a certificate did not verify: OpenSSL's words for its error ``code``
    and, when the trust is what failed, which CA was missing from ``trusted``
    and how to trust it.
    """
    words = _VERIFY_ERRORS.get(code, f"OpenSSL verify error {code}")
    if code in _UNKNOWN_ISSUER:
        return (
            f"{words}: '{subject}' was issued by '{issuer}', which is not in "
            f"{trusted}; {TRUST_HINT}"
        )
    if code in _UNTRUSTED_SELF_SIGNED:
        return f"{words}: '{subject}' is not in {trusted}; {TRUST_HINT}"
    return f"{words} ('{subject}')"


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName)] + [
        str(address) for address in names.get_values_for_type(x509.IPAddress)
    ]


def name_problem(host: str, names: list[str]) -> str:
    """Why a certificate for ``names`` does not do for ``host``."""
    valid = ", ".join(names) if names else "no host name at all"
    return f"the certificate is not valid for {host} (it is for {valid})"


def status_line(version: tuple[bytes, int, int], code: int, phrase: bytes) -> str:
    """``HTTP/1.1 200 OK`` from the parts of a response."""
    protocol, major, minor = version
    reason = phrase.decode("latin-1")
    return f"{protocol.decode('ascii')}/{major}.{minor} {code} {reason}".rstrip()


def _host_port(url: str) -> tuple[str, int]:
    parsed = hyperlink.URL.from_text(url)
    return parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)


def describe_failure(reason: Failure, outgoing: Outgoing, problem: str | None) -> str:
    """
    One line saying why ``outgoing`` got no answer; ``problem`` is why the
    server's certificate did not verify, if that is known.
    """
    host, port = _host_port(outgoing.url)
    where = f"{host}:{port}"
    if reason.check(_TimedOut):
        return (
            f"no complete answer from {where} within {outgoing.timeout:g} s (--timeout)"
        )
    if reason.check(error.TimeoutError):
        return (
            f"cannot connect to {where}: no answer within "
            f"{outgoing.connect_timeout:g} s (--connect-timeout)"
        )
    if reason.check(error.ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused (nothing listening?)"
    if reason.check(error.DNSLookupError):
        return f"cannot resolve {host}"
    if reason.check(error.ConnectError):
        return f"cannot connect to {where}: {reason.getErrorMessage()}"
    # The client wraps what went wrong on an open connection in a list.
    inner = getattr(reason.value, "reasons", None) or [reason]
    for each in inner:
        if each.check(SSL.Error):
            if problem:
                return f"certificate verification failed for {where}: {problem}"
            return f"TLS with {where} failed: {_openssl_reason(each.value)}"
    for each in inner:
        if each.check(error.ConnectionLost, error.ConnectionDone):
            hint = "" if outgoing.https else " (is it an https:// URL?)"
            return f"{where} closed the connection without a complete answer{hint}"
    why = inner[0].getErrorMessage() or type(inner[0].value).__name__
    return f"request to {where} failed: {why}"


def _openssl_reason(e: SSL.Error) -> str:
    try:
        return "; ".join(entry[2] for entry in e.args[0]) or "handshake failed"
    except (IndexError, TypeError):
        return str(e) or "handshake failed"


# Reading what the command line names ----------------------------------------


def read_data(argument: str | None, stdin: IO[bytes] | None = None) -> bytes:
    """
    The body for ``--data``: the test incident when absent, the bytes of a
    file for ``@FILE`` (``@-`` is standard input), else the text itself;
    refused unless it is JSON.
    """
    if argument is None:
        return default_body()
    if not argument.startswith("@"):
        return json_body(argument.encode("utf-8", "surrogateescape"))
    path = argument[1:]
    if path == "-":
        return json_body((stdin or sys.stdin.buffer).read(), "--data @-")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ArgumentError(
            f"--data @{path}: cannot read it ({e.strerror}); nothing sent"
        ) from None
    return json_body(raw, f"--data @{path}")


def read_cacert(path: str) -> list[Certificate]:
    """Every PEM certificate in ``--cacert FILE``, read as the daemon reads its own."""
    try:
        chain = load_chain(path)
    except TLSConfigError as e:
        # load_chain's messages name the daemon's option; this one is ours.
        raise ArgumentError(str(e).replace("--cert", "--cacert")) from None
    return [Certificate(crypto.X509.from_cryptography(c)) for c in chain]


def build_request(
    url: str,
    *,
    method: str = "POST",
    data: str | None = None,
    headers: list[str] | None = None,
    user: str | None = None,
    cacert: str | None = None,
    insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Outgoing:
    """
    The request the command line describes, checked, with the body and the
    --cacert file read; ArgumentError if anything cannot be used.
    """
    url = check_url(url)
    method = method.upper()
    if method not in METHODS:
        raise ArgumentError(f"--method {method}: give POST or PUT")
    for option, value in (
        ("--timeout", timeout),
        ("--connect-timeout", connect_timeout),
    ):
        if not value > 0:
            raise ArgumentError(f"{option} must be a positive number of seconds")
    if cacert and insecure:
        raise ArgumentError("give --cacert or --insecure, not both")
    if (cacert or insecure) and not url.lower().startswith("https://"):
        raise ArgumentError("--cacert and --insecure apply to https:// URLs only")
    return Outgoing(
        url=url,
        method=method,
        headers=request_headers(headers or [], user),
        body=read_data(data),
        trust=read_cacert(cacert) if cacert else None,
        cacert=cacert,
        insecure=insecure,
        timeout=timeout,
        connect_timeout=connect_timeout,
    )


# Twisted: TLS policy, the request, the exit status --------------------------


class _TimedOut(Exception):
    """The whole request took longer than --timeout."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IPolicyForHTTPS)
class _Trust:
    """
    The TLS policy: verify the chain against ``trust`` (the system's CAs when
    None) and the URL's host name, as Twisted's BrowserLikePolicyForHTTPS
    does, but remember why verification failed so the error can say so; or,
    with ``verify=False``, check nothing at all.
    """

    def __init__(
        self,
        trust: list[Certificate] | None,
        cacert: str | None = None,
        verify: bool = True,
    ) -> None:
        if verify:
            root = trustRootFromCertificates(trust) if trust else platformTrust()
            options = CertificateOptions(trustRoot=root, raiseMinimumTo=TLS_MINIMUM)
        else:
            options = CertificateOptions(verify=False, raiseMinimumTo=TLS_MINIMUM)
        self.context = options.getContext()
        self.verify = verify
        self.trusted = f"--cacert {cacert}" if cacert else "the system's trusted CAs"
        self.problem: str | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> _Connections:
        return _Connections(self, hostname.decode("ascii"))


@implementer(IOpenSSLClientConnectionCreator)
class _Connections:
    """TLS client connections to one host under a ``_Trust`` policy."""

    def __init__(self, policy: _Trust, host: str) -> None:
        self.policy, self.host = policy, host

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        connection = SSL.Connection(self.policy.context, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self.host):
            connection.set_tlsext_host_name(self.host.encode("idna"))
        if self.policy.verify:
            connection.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._check
            )
        return connection

    def _check(self, connection, certificate, code, depth, ok) -> bool:
        # Called by OpenSSL for each certificate, root first; it must answer,
        # not raise.
        if not ok:
            if self.policy.problem is None:
                self.policy.problem = verify_problem(
                    code,
                    _name(certificate.get_subject()),
                    _name(certificate.get_issuer()),
                    self.policy.trusted,
                )
            return False
        if depth != 0:
            return True
        leaf = certificate.to_cryptography()
        try:
            if _is_ip(self.host):
                verify_certificate_ip_address(leaf, self.host)
            else:
                verify_certificate_hostname(leaf, self.host)
        except (VerificationError, CertificateError, ValueError):
            self.policy.problem = name_problem(self.host, certificate_names(leaf))
            return False
        return True


def _name(name: crypto.X509Name) -> str:
    parts = name.get_components()
    return ", ".join(f"{k.decode()}={v.decode(errors='replace')}" for k, v in parts)


class _QuietFactory(client._HTTP11ClientFactory):
    # Not a "Starting factory" and "Stopping factory" log line per request.
    noisy = False


def connection_pool(reactor, persistent: bool) -> client.HTTPConnectionPool:
    """
    Connections for ``send``: a new one per request, or (``persistent``)
    kept open between the requests of one sender, such as a forward.
    """
    pool = client.HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = 1
    pool._factory = _QuietFactory
    return pool


async def _exchange(
    reactor,
    outgoing: Outgoing,
    policy: _Trust,
    max_answer: int | None = None,
    pool: client.HTTPConnectionPool | None = None,
) -> tuple[IResponse, bytes]:
    if pool is None:
        pool = connection_pool(reactor, persistent=False)
    agent = client.Agent(
        reactor,
        contextFactory=policy,
        connectTimeout=outgoing.connect_timeout,
        pool=pool,
    )
    headers: dict[bytes | str, list[bytes | str]] = {}
    for name, value in outgoing.headers:
        headers.setdefault(name, []).append(value)
    response = await treq.request(
        outgoing.method,
        outgoing.url,
        data=outgoing.body,
        headers=headers,
        agent=agent,
        allow_redirects=False,
        reactor=reactor,
    )
    if max_answer is None:
        return response, await treq.content(response)
    # The status is what counts: keep at most max_answer bytes of the body,
    # reading (and dropping) the rest.
    kept: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        if size < max_answer:
            kept.append(data[: max_answer - size])
        size += len(data)

    await treq.collect(response, collect)
    return response, b"".join(kept)


def trust_policy(outgoing: Outgoing) -> _Trust:
    """How ``outgoing``'s server is verified (made once per sender: a TLS context)."""
    return _Trust(outgoing.trust, outgoing.cacert, verify=not outgoing.insecure)


class SendFailed(Exception):
    """No answer to a request; the message says why in one line."""


@dataclass(frozen=True)
class Answer:
    """A receiver's answer: status, its headers (lower-case names), body."""

    code: int
    phrase: bytes
    version: tuple[bytes, int, int]
    headers: dict[str, str]
    body: bytes


def send(
    reactor,
    outgoing: Outgoing,
    max_answer: int | None = None,
    pool: client.HTTPConnectionPool | None = None,
    policy: _Trust | None = None,
) -> defer.Deferred[Answer]:
    """
    Send ``outgoing`` (TLS verified as ``Outgoing`` says, the whole request
    bounded by its timeout, the connection by its connect timeout); fires
    with the answer, whatever its status, or fails with SendFailed saying
    why there was none.  ``gwebhook send`` and the forwarders both use it.
    """
    if policy is None:
        policy = trust_policy(outgoing)
    d = defer.Deferred.fromCoroutine(
        _exchange(reactor, outgoing, policy, max_answer, pool)
    )
    d.addTimeout(
        outgoing.timeout,
        reactor,
        onTimeoutCancel=lambda result, timeout: Failure(_TimedOut()),
    )

    def answered(result) -> Answer:
        response, body = result
        headers = {
            name.decode("latin-1").lower(): values[0].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return Answer(response.code, response.phrase, response.version, headers, body)

    def failed(reason: Failure) -> Failure:
        # Cancelled by the caller (a daemon stopping): not a failure of the
        # receiver's.  The client may wrap it in a list of reasons.
        inner = getattr(reason.value, "reasons", None) or []
        if reason.check(defer.CancelledError) or any(
            r.check(defer.CancelledError) for r in inner
        ):
            return Failure(defer.CancelledError())
        return Failure(SendFailed(describe_failure(reason, outgoing, policy.problem)))

    return d.addCallbacks(answered, failed)


def deliver(
    reactor, outgoing: Outgoing, stdout: IO[bytes], stderr: IO[str]
) -> defer.Deferred[int]:
    """
    Send the request; print the status line and the answer's body to
    ``stdout``, or one line to ``stderr`` if there is no answer.  The
    Deferred fires with the exit status: 0 for a 2xx answer, else 1.
    """
    if outgoing.insecure:
        stderr.write(
            "gwebhook: warning: --insecure: the server's certificate is not verified\n"
        )

    def answered(answer: Answer) -> int:
        line = status_line(answer.version, answer.code, answer.phrase)
        stdout.write(line.encode() + answer.body.join([b"\n", b""]))
        if answer.body and not answer.body.endswith(b"\n"):
            stdout.write(b"\n")
        stdout.flush()
        return 0 if 200 <= answer.code < 300 else 1

    def failed(reason: Failure) -> int:
        reason.trap(SendFailed)
        stderr.write(f"gwebhook: {reason.getErrorMessage()}\n")
        return 1

    return send(reactor, outgoing).addCallbacks(answered, failed)


def run(outgoing: Outgoing) -> int:
    """Send ``outgoing`` on the global reactor and return the exit status."""

    def main(reactor):
        d = deliver(reactor, outgoing, sys.stdout.buffer, sys.stderr)
        return d.addCallback(_exit)

    try:
        task.react(main)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    # (react() always ends in SystemExit; a status all the same.)
    return 0  # type: ignore[unreachable]


def _exit(status: int) -> None:
    # react() exits 0 unless main fails with SystemExit.
    if status:
        raise SystemExit(status)
