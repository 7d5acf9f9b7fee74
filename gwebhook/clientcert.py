"""
Who sent a request, by client certificate: the chain a client presented in
the TLS handshake, checked against one instance's client CA and names.

The listener asks every client for a certificate and takes whatever it
sends (instances differ in the CA they trust, and some need none); the
check happens here, per request, once the request's instance is known.

The chain is verified by cryptography's own X.509 path validation, with
the intermediates the client sent.  Its default rules are the public web's
(CA/Browser Forum), which a private client CA rarely follows; the rules
here are those of RFC 5280 as OpenSSL applies them to client certificates:

- the leaf may lack a subject alternative name or an authority key
  identifier, and may mark its subject alternative name or extended key
  usage critical;
- a CA may lack a key usage extension, but one that has it must allow
  certificate signing;
- an extended key usage, when present, must allow client authentication;
- v1 certificates, unknown critical extensions, a leaf that is a CA, and
  anything outside its validity period are refused.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gwebhook.config import MTLSConfig

# Why a certificate was refused: short words, for a metric label.
MISSING = "missing"
UNTRUSTED = "untrusted"
EXPIRED = "expired"
NAME = "name"

# What the client is told (a 401 body).  Nothing about the CA or the names
# the instance accepts: a client learns only what to fix on its own side.
_MESSAGES = {
    MISSING: "a client certificate issued by this instance's CA is required",
    UNTRUSTED: (
        "the client certificate is not accepted: it must be issued by this "
        "instance's CA and allow client authentication"
    ),
    EXPIRED: "the client certificate has expired or is not yet valid",
    NAME: "the client certificate's name is not accepted by this instance",
}

# Intermediates a client may send that are looked at: a chain longer than
# this is a client set up wrong, or one making the server work.
MAX_INTERMEDIATES = 8


class ClientCertRefused(Exception):
    """
    A request's client certificate does not open its instance.  ``reason``
    is one of MISSING, UNTRUSTED, EXPIRED, NAME; ``message`` is for the
    client; ``detail`` says more, for the server's log only.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(_MESSAGES[reason])
        self.reason = reason
        self.message = _MESSAGES[reason]
        self.detail = detail or self.message


@dataclass(frozen=True)
class ClientCert:
    """
    The certificate a request was accepted with, as a request records it:
    the leaf's subject (RFC 4514) and its SHA-256 fingerprint (lowercase
    hex, no colons).
    """

    subject: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        """``{"subject": ..., "sha256": ...}``."""
        return {"subject": self.subject, "sha256": self.sha256}


def describe(leaf: x509.Certificate) -> dict[str, str]:
    """
    What a request records of a client certificate, accepted or not:
    ``{"subject": "<RFC 4514>", "sha256": "<lowercase hex, no colons>"}``.
    """
    return {
        "subject": leaf.subject.rfc4514_string(),
        "sha256": leaf.fingerprint(hashes.SHA256()).hex(),
    }


def verify_client(
    chain: Sequence[x509.Certificate],
    mtls: MTLSConfig,
    now: datetime.datetime,
) -> ClientCert:
    """
    Accept ``chain`` (the leaf first, then the intermediates the client
    sent, if any) for an instance whose client certificates are described
    by ``mtls``, at time ``now`` (timezone-aware).  Raises ClientCertRefused.
    """
    if not chain:
        raise ClientCertRefused(MISSING, "no client certificate was sent")
    leaf, intermediates = chain[0], list(chain[1 : 1 + MAX_INTERMEDIATES])
    try:
        _verify(leaf, intermediates, mtls, now)
    except _Invalid as e:
        why = _why_invalid(leaf, intermediates, mtls, now)
        raise ClientCertRefused(why, str(e)) from None
    wanted = {_fold(name) for name in mtls.client_names}
    if wanted and not wanted & _names(leaf):
        raise ClientCertRefused(
            NAME,
            f"{leaf.subject.rfc4514_string() or 'no subject'}: neither the "
            "subject CN nor a SAN DNS name is in client_names",
        )
    seen = describe(leaf)
    return ClientCert(seen["subject"], seen["sha256"])


class _Invalid(Exception):
    pass


def _verify(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    mtls: MTLSConfig,
    when: datetime.datetime,
) -> None:
    verifier = (
        PolicyBuilder()
        .store(Store(list(mtls.ca_certificates)))
        .time(when)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except (VerificationError, x509.UnsupportedGeneralNameType) as e:
        raise _Invalid(str(e)) from None


def _why_invalid(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    mtls: MTLSConfig,
    now: datetime.datetime,
) -> str:
    # "expired" only for a certificate that would be accepted in its own
    # time: one from another CA, expired or not, is simply not trusted.
    if leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return UNTRUSTED
    if now > leaf.not_valid_after_utc:
        when = leaf.not_valid_after_utc
    else:
        when = leaf.not_valid_before_utc
    try:
        _verify(leaf, intermediates, mtls, when)
    except _Invalid:
        return UNTRUSTED
    return EXPIRED


def _fold(name: str) -> str:
    # DNS names compare without regard to ASCII case (RFC 4343); other
    # letters are left as they are, so that no two different names meet.
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _names(leaf: x509.Certificate) -> set[str]:
    names: set[str] = set()
    for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            names.add(_fold(attribute.value))
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return names
    names.update(_fold(name) for name in san.value.get_values_for_type(x509.DNSName))
    return names


# -- the rules, as cryptography's extension policies -------------------------


def _ca_key_usage(_policy, _certificate, key_usage: x509.KeyUsage | None) -> None:
    if key_usage is not None and not key_usage.key_cert_sign:
        raise ValueError("a CA's key usage does not allow certificate signing")


def _client_purpose(_policy, _certificate, usage: x509.ExtendedKeyUsage | None) -> None:
    if usage is not None and not _allows_client_auth(usage):
        raise ValueError("the extended key usage does not allow client authentication")


def _allows_client_auth(usage: Iterable[x509.ObjectIdentifier]) -> bool:
    allowed = (
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    )
    return any(purpose in allowed for purpose in usage)


_CA_POLICY = ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage
)
_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _client_purpose)
)
