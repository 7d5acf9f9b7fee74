"""
TLS for the listener: the certificate chain and key read from PEM files, the
policy (TLS 1.2 minimum, 1.3 offered, no compression, the server's cipher
order, forward-secret AEAD suites only), and what becomes of connections
that fail before TLS is up: plain HTTP is answered 400 in clear text, and
both it and failed handshakes leave a rate-limited log line (FailureLog).

When an instance takes client certificates, the listener asks every client
for one and completes the handshake whatever it sends; ``peer_chain`` gives
a request what its client sent, to be checked against the request's
instance (gwebhook.clientcert).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL, crypto
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IProtocolNegotiationFactory,
    IReactorTime,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from gwebhook.addresses import client_key, display_host

log = Logger()

# TLS 1.2 suites, named: ECDHE for forward secrecy, AEAD only.  TLS 1.3 suites
# are all forward-secret AEAD and are left to OpenSSL.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)


HTTP_1_1 = b"http/1.1"
HTTP_1_0 = b"http/1.0"


NO_EXECUTABLE_MEMORY = (
    "TLS cannot be set up: this process may not have memory that is both "
    "writable and executable, which pyOpenSSL's callbacks need; lift that "
    "restriction (MemoryDenyWriteExecute= in a systemd unit, prctl PR_SET_MDWE)"
)


class TLSConfigError(Exception):
    """TLS cannot be served as configured; the message says how to fix it."""


def _read(path: str, what: str, option: str) -> bytes:
    fix = f"give {option} the path of the PEM {what} file"
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSConfigError(
            f"{option}: {what} file {path} does not exist; {fix}"
        ) from None
    except OSError as e:
        raise TLSConfigError(
            f"{option}: cannot read {what} file {path}: {e.strerror}; {fix}"
        ) from None


def load_chain(path: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first."""
    data = _read(path, "certificate", "--cert")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise TLSConfigError(
            f"--cert: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
            "give it in PEM (convert DER with 'openssl x509 -inform der')"
        )
    return chain


def load_key(path: str):
    """The private key in a PEM file."""
    data = _read(path, "key", "--key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"--key: {path} is encrypted; give the key without a passphrase "
            "(openssl pkey -in KEY -out PLAIN)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(
            f"--key: {path} holds no usable PEM private key ({e})"
        ) from None


def load_pair(cert_path: str, key_path: str) -> tuple[list[crypto.X509], crypto.PKey]:
    """
    The chain and key from PEM files, refusing a missing, unreadable or
    mismatched pair with a TLSConfigError.
    """
    certificates = load_chain(cert_path)
    private_key = load_key(key_path)
    check = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        check.use_certificate(certificates[0])
        check.use_privatekey(private_key)
        check.check_privatekey()
    except SSL.Error:
        raise TLSConfigError(
            f"--key: {key_path} is not the private key of the first certificate in "
            f"{cert_path}; give the matching pair (the leaf certificate comes first)"
        ) from None
    # Twisted's CertificateOptions still takes pyOpenSSL's wrappers.
    chain = [crypto.X509.from_cryptography(c) for c in certificates]
    return chain, crypto.PKey.from_cryptography_key(private_key)


def choose_protocol(offered: Sequence[bytes], served: Sequence[bytes]) -> bytes | None:
    """
    The ALPN protocol to answer a client that offers ``offered``: the first
    of ``served`` it offers, else None, meaning "no protocol chosen, carry
    on".  RFC 7301 would have the handshake fail then, but a client that
    names only what we do not (curl --http1.0 offers just "http/1.0") may
    well speak what we serve; if it does not, it says so in HTTP.  An
    HTTP/1.1 server serves HTTP/1.0, so "http/1.0" is chosen when offered
    alone.
    """
    if HTTP_1_1 in served and HTTP_1_0 not in served:
        served = [*served, HTTP_1_0]
    for protocol in served:
        if protocol in offered:
            return protocol
    return None


def _served_protocols(connection: SSL.Connection) -> Sequence[bytes]:
    # As Twisted finds them: the application factory behind this
    # connection's TLS layer names the protocols it speaks, if any.
    tls_protocol = connection.get_app_data()
    wrapped = IProtocolNegotiationFactory(tls_protocol.factory.wrappedFactory, None)
    return wrapped.acceptableProtocols() if wrapped is not None else ()


def _select_protocol(connection: SSL.Connection, offered: list[bytes]):
    chosen = choose_protocol(offered, _served_protocols(connection))
    return SSL.NO_OVERLAPPING_PROTOCOLS if chosen is None else chosen


def options_for(
    chain: list[crypto.X509],
    key: crypto.PKey,
    ask_client_certificate: bool = False,
) -> CertificateOptions:
    """
    The TLS policy for this chain and key.  Each call makes a new context
    and so a new random session-ticket key.

    With ``ask_client_certificate`` the server asks every client for a
    certificate, requires none, and takes whatever is sent, unverified:
    which CA a certificate must chain to depends on the instance a request
    is for, known only once its headers are read.  Sessions are then not
    resumed (see below).

    The context is made here rather than at the first connection, and then
    adjusted: CertificateOptions makes it once and every connection it
    creates uses that one.
    """
    options = CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
        # A sender that reconnects resumes (TLS 1.2 session cache and
        # tickets, TLS 1.3 tickets) instead of a full handshake.  Not when
        # client certificates are asked for: a session resumed from a ticket
        # has the client's own certificate but not the intermediates it sent,
        # so a certificate issued by an intermediate CA could not be checked
        # on a resumed connection; and a session cache would hold every
        # client's chain (up to 100 kB each) in memory until it expires.
        enableSessions=not ask_client_certificate,
        enableSessionTickets=not ask_client_certificate,
    )
    try:
        context = options.getContext()
        if ask_client_certificate:
            # VERIFY_PEER without VERIFY_FAIL_IF_NO_PEER_CERT: asked, not
            # required.  Twisted's own verify=True would check every
            # certificate against one set of CAs in the handshake and fail it
            # for any other; here each instance has its own CA.
            context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    except MemoryError as e:
        if "write+execute" not in str(e):
            raise
        # Twisted's ALPN callback (and the verify callback) is a cffi
        # closure: where no memory may be both writable and executable, no
        # context can be made.  Said now,
        # in one line, rather than with every handshake after "ready".
        raise TLSConfigError(NO_EXECUTABLE_MEMORY) from None
    # TLS 1.2 renegotiation started by a client is a cheap way to make the
    # server do handshakes; nothing gwebhook serves needs it.  (OpenSSL 3
    # refuses it by default already; this holds whatever the build.)
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    # Twisted's own ALPN callback fails the handshake when the client offers
    # nothing the application names (it answers b"", which pyOpenSSL takes
    # as "abort"): ours lets it go on (see choose_protocol).
    context.set_alpn_select_callback(_select_protocol)
    return options


def _accept_any_certificate(
    connection: SSL.Connection,
    certificate: crypto.X509,
    error: int,
    depth: int,
    ok: int,
) -> bool:
    # Called by OpenSSL for each certificate of the client's chain, with an
    # error for each it cannot verify (its trust store here is empty): the
    # handshake goes on, and the request is judged by its instance's CA.
    return True


def certificate_options(
    cert_path: str, key_path: str, ask_client_certificate: bool = False
) -> CertificateOptions:
    """The server's TLS options from PEM files (see load_pair and options_for)."""
    return options_for(*load_pair(cert_path, key_path), ask_client_certificate)


def peer_chain(transport) -> list[x509.Certificate]:
    """
    The certificates the client of a TLS connection sent in its handshake:
    its own first, then the intermediates it sent, as it sent them.  Empty
    when it sent none, or when ``transport`` is not TLS.  Nothing here is
    verified.
    """
    get_handle = getattr(transport, "getHandle", None)
    connection = get_handle() if get_handle is not None else None
    if not isinstance(connection, SSL.Connection):
        return []  # plain TCP (--no-tls): getHandle is the socket
    leaf = connection.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return []
    # On the server side OpenSSL's peer chain leaves out the client's own
    # certificate (a client's includes the server's): it is asked for apart.
    intermediates = connection.get_peer_cert_chain(as_cryptography=True) or []
    return [leaf, *intermediates]


def describe(options: CertificateOptions) -> str:
    """Subject, SHA-256 fingerprint and expiry of the served certificate, for logs."""
    assert options.certificate is not None  # options_for always gives one
    cert = options.certificate.to_cryptography()
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":")
    return (
        f"{cert.subject.rfc4514_string()} sha256={fingerprint} "
        f"expires={cert.not_valid_after_utc.isoformat()}"
    )


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The server's TLS options, re-read from the same files on demand (SIGHUP).
    A new connection gets the options current when it opens; open
    connections keep theirs.  A bad new pair leaves the old one serving.
    The session-ticket key is replaced by ``rotate_ticket_key`` (hourly):
    a stolen key then opens at most an hour of resumed sessions.
    ``ask_client_certificate`` (see options_for) is set at start and may be
    changed by ``reload``, when the instances served here change.
    """

    def __init__(
        self, cert_path: str, key_path: str, ask_client_certificate: bool = False
    ) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.ask_client_certificate = ask_client_certificate
        self._pair = load_pair(cert_path, key_path)
        self.options = options_for(*self._pair, ask_client_certificate)

    def serverConnectionForTLS(self, protocol):
        return self.options.serverConnectionForTLS(protocol)

    def reload(self, ask_client_certificate: bool | None = None) -> bool:
        """
        Re-read the pair; True if the new one is now served.  New
        connections are asked for a client certificate as
        ``ask_client_certificate`` says (None: as before), even when the new
        pair is bad and the old one stays in service.
        """
        if ask_client_certificate is None:
            ask_client_certificate = self.ask_client_certificate
        try:
            pair = load_pair(self.cert_path, self.key_path)
            options = options_for(*pair, ask_client_certificate)
        except (TLSConfigError, SSL.Error) as e:
            log.error(
                "certificate not reloaded, the old one stays in service: {why}", why=e
            )
            if ask_client_certificate != self.ask_client_certificate:
                # The instances changed all the same: a new one that takes
                # client certificates must get them from the next handshake.
                self.ask_client_certificate = ask_client_certificate
                self.options = options_for(*self._pair, ask_client_certificate)
            return False
        self._pair, self.options = pair, options
        self.ask_client_certificate = ask_client_certificate
        log.info("certificate reloaded: {what}", what=describe(options))
        return True

    def rotate_ticket_key(self) -> None:
        """A new context for the same pair: new session-ticket key, empty cache."""
        self.options = options_for(*self._pair, self.ask_client_certificate)


# ------------------------------------------------ connections that fail early

# A request line's method word, whole or cut short, then a space: never the
# first bytes of TLS (a handshake record starts with 0x16).
_METHOD_WORD = re.compile(rb"[A-Z]{1,16}(?: |\Z)")
PLAIN_HTTP = "plain HTTP sent to the TLS port; use https://"
_PLAIN_HTTP_BODY = (
    b'{"error": "plain HTTP request sent to the HTTPS port; use https://"}'
)
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)

# OpenSSL's reasons, as what the operator can do about them.
_REASONS = [
    (("unsupported protocol", "version too low"),
     "the client offers only TLS versions older than 1.2"),
    (("no shared cipher",),
     "no cipher suite in common (the client has no forward-secret AEAD suite)"),
    (("alert unknown ca", "alert bad certificate", "alert certificate unknown",
      "alert certificate expired", "alert certificate revoked"),
     "the client does not accept the server's certificate; give it the CA, "
     "or serve the whole chain"),
    (("wrong version number", "http request", "https proxy request",
      "unknown protocol", "packet length too long"),
     "what the client sent is not TLS"),
    (("unexpected eof while reading",),
     "the client closed the connection during the handshake"),
]  # fmt: skip


def looks_like_plain_http(first: bytes) -> bool:
    """Whether the first bytes of a connection begin an HTTP request, not TLS."""
    return _METHOD_WORD.match(first[:17]) is not None


def explain_handshake_failure(openssl_reasons: Sequence[str]) -> str:
    """
    Why a handshake failed, for the log: what it means, then OpenSSL's own
    words (in parentheses) to search for.
    """
    said = "; ".join(openssl_reasons)
    for markers, meaning in _REASONS:
        if any(marker in said for marker in markers):
            return f"{meaning} ({said})"
    return f"TLS error ({said or 'no reason given'})"


def _openssl_reasons(error: BaseException) -> list[str]:
    # pyOpenSSL's SSL.Error carries OpenSSL's queue: (library, function, reason).
    queue = error.args[0] if error.args else None
    if not isinstance(queue, list):
        return [str(error)] if str(error) else []
    return [str(entry[-1]) for entry in queue if isinstance(entry, tuple) and entry]


# A flood of failures, from a scanner or a sender set up wrong, is told in a
# few lines: per window, one line per client and reason, this many in all.
FAILURE_WINDOW_SECONDS = 10.0
FAILURE_LINES_PER_WINDOW = 10
# Distinct clients counted in a window's summary, at most (memory bound).
_MAX_COUNTED_CLIENTS = 1024


class FailureLog:
    """
    Log lines for connections that fail before TLS is up, each naming the
    client's address and why, rate-limited so that no client can flood the
    log: within a window of ``window`` seconds (starting with the first
    failure after a quiet spell), at most one line per client and reason,
    and ``lines`` lines in all.  A client is an IPv4 address or an IPv6 /64
    (addresses.client_key).  What that holds back is counted, and told in
    one summary line when the window ends ("N more ... from K clients").
    ``flush`` tells it at once (the listener does when it stops).

    Time comes from ``clock`` (the reactor, or ``task.Clock`` in tests).
    Nothing a client sent is logged, only its address and OpenSSL's reason.
    """

    def __init__(
        self,
        clock: IReactorTime,
        window: float = FAILURE_WINDOW_SECONDS,
        lines: int = FAILURE_LINES_PER_WINDOW,
        logger: Logger | None = None,
    ) -> None:
        self.clock = clock
        self.window = window
        self.lines = lines
        self.log = logger or log
        self._ends: float | None = None
        self._logged: set[tuple[str, str]] = set()
        self._suppressed = 0
        self._suppressedFrom: set[str] = set()
        self._summary: IDelayedCall | None = None

    def failed(self, client: str, why: str) -> None:
        """A connection from ``client`` failed before TLS was up, because ``why``."""
        now = self.clock.seconds()
        if self._ends is None or now >= self._ends:
            self.flush()
            self._ends = now + self.window
        key = (client_key(client), why)
        if key in self._logged or len(self._logged) >= self.lines:
            self._suppressed += 1
            if len(self._suppressedFrom) < _MAX_COUNTED_CLIENTS:
                self._suppressedFrom.add(key[0])
            if self._summary is None:
                self._summary = self.clock.callLater(self._ends - now, self.flush)
            return
        self._logged.add(key)
        self.log.warn("{client}: {why}", client=client, why=why)

    def flush(self) -> None:
        """End the window now: the summary line, if anything was held back."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        if self._suppressed:
            many = len(self._suppressedFrom)
            sources = f"{many}+" if many >= _MAX_COUNTED_CLIENTS else str(many)
            sources += " client" if many == 1 else " clients"
            self.log.warn(
                "{count} more connections failed before TLS was up, from "
                "{sources}, in the last {window:g} s (not logged one by one)",
                count=self._suppressed,
                sources=sources,
                window=self.window,
            )
        self._ends = None
        self._logged = set()
        self._suppressed = 0
        self._suppressedFrom = set()


class _ServerTLSProtocol(BufferingTLSTransport):
    # BufferingTLSTransport is Twisted's default for TLSMemoryBIOFactory: an
    # answer's headers and body, written separately, leave in one TLS record.
    #
    # _handshakeDone and _reason are the base class's documented instance
    # variables: whether the handshake completed, and the OpenSSL error that
    # ended the connection, if one did.

    # Made by ServerTLSFactory, over TCP (Twisted types the factory as its
    # base class and the transport as an ITransport that may be None).
    factory: ServerTLSFactory
    transport: ITCPTransport
    _received = False
    _plainHTTP = False

    def dataReceived(self, data: bytes) -> None:
        if self._plainHTTP:
            return  # answered; the rest of its request is read and dropped
        if not self._received:
            self._received = True
            if looks_like_plain_http(data):
                self._answerPlainHTTP()
                return
        super().dataReceived(data)

    def _answerPlainHTTP(self) -> None:
        self._plainHTTP = True
        self.factory.failures.failed(self._client(), PLAIN_HTTP)
        # In clear text, as nginx does, so the sender's own log says what to
        # fix.  Then a half-close: a full close with its request unread here
        # would reset the connection and could take the answer with it.
        self.transport.write(PLAIN_HTTP_ANSWER)
        self.transport.loseWriteConnection()

    def _flushSendBIO(self) -> None:
        # What TLS has to send, sent at once when nothing is queued before it.
        # Twisted's TCP transport would queue it and have epoll say when the
        # socket takes it: two epoll_ctl calls and a turn of the reactor for
        # every answer, when an idle socket takes an answer at once.  What
        # the socket does not take, and any error, go to the transport's
        # write as before, which queues it or fails the connection.  Not on a
        # connection being aborted: its close_notify is dropped there with
        # the rest, and the client sees a reset, not a clean end.
        try:
            data = self._tlsConnection.bio_read(2**15)
        except SSL.WantReadError:
            return
        # tcp.Connection's own state, which ITCPTransport does not declare;
        # any other transport (a test's) lacks it and takes the write.
        transport: Any = self.transport
        if (
            not self._aborted
            and not getattr(transport, "_aborting", True)
            and getattr(transport, "_tempDataBuffer", None) == []
            and getattr(transport, "dataBuffer", None) == b""
            and transport.connected
            and not transport.disconnecting
            and not getattr(transport, "_writeDisconnected", True)
        ):
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):
                data = data[sent:]
        if data:
            transport.write(data)

    def _client(self) -> str:
        peer = self.transport.getPeer()
        return display_host(str(getattr(peer, "host", peer)))

    # (The base class's reason has a default; Twisted always passes one.)
    def connectionLost(self, reason):  # type: ignore[override]
        if not self._handshakeDone:
            if self.factory.onHandshakeFailure:
                self.factory.onHandshakeFailure()
            # A connection that sent nothing (a port probe, a TCP health
            # check) is not worth a line.
            if self._received and not self._plainHTTP:
                self.factory.failures.failed(
                    self._client(), "TLS handshake failed: " + self._why(reason)
                )
        super().connectionLost(reason)

    def _why(self, reason) -> str:
        if self._reason is not None:
            return explain_handshake_failure(_openssl_reasons(self._reason.value))
        if reason.check(ConnectionAborted):
            return "not completed before the server closed the connection (too slow)"
        return "the client closed the connection during the handshake"


class ServerTLSFactory(TLSMemoryBIOFactory):
    """
    TLS over a wrapped factory, telling when a handshake never completes
    (``onHandshakeFailure``) and logging why (``failures``).
    """

    protocol = _ServerTLSProtocol

    def __init__(
        self,
        creator,
        wrapped,
        *,
        onHandshakeFailure: Callable[[], None] | None,
        failures: FailureLog,
    ):
        super().__init__(creator, False, wrapped)
        self.onHandshakeFailure = onHandshakeFailure
        self.failures = failures

    def stopFactory(self) -> None:
        # Not listening any more: the summary now, and no timer left behind.
        self.failures.flush()
        super().stopFactory()


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    TLS over any stream endpoint (TCP on IPv4 or IPv6, an adopted socket).
    ``onHandshakeFailure`` is told of each connection that fails before TLS
    is up (the metric), ``failures`` logs why.
    """

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        creator: IOpenSSLServerConnectionCreator,
        *,
        onHandshakeFailure: Callable[[], None],
        failures: FailureLog,
    ) -> None:
        self.wrapped = wrapped
        self.creator = creator
        self.onHandshakeFailure = onHandshakeFailure
        self.failures = failures

    def listen(self, factory):
        return self.wrapped.listen(
            ServerTLSFactory(
                self.creator,
                factory,
                onHandshakeFailure=self.onHandshakeFailure,
                failures=self.failures,
            )
        )
