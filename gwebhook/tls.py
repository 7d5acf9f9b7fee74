"""
TLS for the listener: the certificate chain and key read from PEM files and
the policy of SPEC section 1 (TLS 1.2 minimum, 1.3 offered, no compression,
server cipher order, forward-secret AEAD suites only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolNegotiationFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

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


def options_for(chain: list[crypto.X509], key: crypto.PKey) -> CertificateOptions:
    """
    The TLS policy for this chain and key.  Each call makes a new context
    and so a new random session-ticket key.

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
        # tickets, TLS 1.3 tickets) instead of a full handshake.
        enableSessions=True,
        enableSessionTickets=True,
    )
    try:
        context = options.getContext()
    except MemoryError as e:
        if "write+execute" not in str(e):
            raise
        # Twisted's ALPN callback is a cffi closure: where no memory may be
        # both writable and executable, no context can be made.  Said now,
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


def certificate_options(cert_path: str, key_path: str) -> CertificateOptions:
    """The server's TLS options from PEM files (see load_pair)."""
    return options_for(*load_pair(cert_path, key_path))


def describe(options: CertificateOptions) -> str:
    """Subject, SHA-256 fingerprint and expiry of the served certificate, for logs."""
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
    """

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._pair = load_pair(cert_path, key_path)
        self.options = options_for(*self._pair)

    def serverConnectionForTLS(self, protocol):
        return self.options.serverConnectionForTLS(protocol)

    def reload(self) -> bool:
        """Re-read the pair; True if the new one is now served."""
        try:
            pair = load_pair(self.cert_path, self.key_path)
            options = options_for(*pair)
            options.getContext()
        except (TLSConfigError, SSL.Error) as e:
            log.error(
                "certificate not reloaded, the old one stays in service: {why}", why=e
            )
            return False
        self._pair, self.options = pair, options
        log.info("certificate reloaded: {what}", what=describe(options))
        return True

    def rotate_ticket_key(self) -> None:
        """A new context for the same pair: new session-ticket key, empty cache."""
        self.options = options_for(*self._pair)


class _ServerTLSProtocol(BufferingTLSTransport):
    # Twisted's default for TLSMemoryBIOFactory: an answer's headers and body,
    # written separately, leave in one TLS record and one encryption call.
    def connectionLost(self, reason):
        if not self._handshakeDone and self.factory.onHandshakeFailure:
            self.factory.onHandshakeFailure()
        super().connectionLost(reason)


class ServerTLSFactory(TLSMemoryBIOFactory):
    """TLS over a wrapped factory, telling when a handshake never completes."""

    protocol = _ServerTLSProtocol

    def __init__(
        self, creator, wrapped, onHandshakeFailure: Callable[[], None] | None = None
    ):
        super().__init__(creator, False, wrapped)
        self.onHandshakeFailure = onHandshakeFailure


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """TLS over any stream endpoint (TCP on IPv4 or IPv6, an adopted socket)."""

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        creator: IOpenSSLServerConnectionCreator,
        onHandshakeFailure: Callable[[], None] | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.creator = creator
        self.onHandshakeFailure = onHandshakeFailure

    def listen(self, factory):
        return self.wrapped.listen(
            ServerTLSFactory(self.creator, factory, self.onHandshakeFailure)
        )
