"""
Certificates and keys for a server under test, and client contexts that
trust them: a trustme root, intermediate and leaf (the usual case), a
self-signed pair (what ``gwebhook make-cert`` writes), and a chain built
with ``cryptography`` that strict RFC 5280 path validation accepts.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Served:
    """The certificate and key files a server is given, and the CA a client trusts."""

    cert: Path  # the leaf, then any intermediates
    key: Path
    ca: Path

    def client_context(self, **settings) -> ssl.SSLContext:
        """A client context trusting ``ca`` only, with ``settings`` set on it."""
        context = ssl.create_default_context(cafile=str(self.ca))
        for name, value in settings.items():
            setattr(context, name, value)
        return context


@dataclass
class PKI(Served):
    """A root CA, an intermediate, and a server certificate issued by it."""

    # ``ca`` is the root only: clients must verify through the served chain.
    root: trustme.CA
    intermediate: trustme.CA
    leaf: trustme.LeafCert


def make_pki(directory: Path, key_type: trustme.KeyType | None = None) -> PKI:
    """Write a trustme chain for localhost/127.0.0.1 into ``directory``."""
    kind = {} if key_type is None else {"key_type": key_type}
    root = trustme.CA(**kind)
    intermediate = root.create_child_ca(**kind)
    leaf = intermediate.issue_cert("localhost", "127.0.0.1", **kind)
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = (
        directory / "ca.pem",
        directory / "server.crt",
        directory / "server.key",
    )
    root.cert_pem.write_to_path(str(ca))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return PKI(cert, key, ca, root, intermediate, leaf)


class SelfSigned(Served):
    """A certificate that is its own CA (as ``gwebhook make-cert`` writes one)."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(cert, key, cert)


def sha256(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as hex."""
    return hashlib.sha256(der).hexdigest()


def leaf_fingerprint(pki: PKI) -> str:
    """The fingerprint of the leaf certificate a PKI's server should present."""
    pem = pki.leaf.cert_chain_pems[0].bytes().decode("ascii")
    return sha256(ssl.PEM_cert_to_DER_cert(pem))


# -- a chain that strict path validation accepts -------------------------------


@dataclass
class Chain(Served):
    """A root CA, and the served chain (leaf, intermediate) and key."""

    leaf_subject: x509.Name


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gwebhook tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(subject, key, issuer, issuer_key, ca: bool, leaf_sans=None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=True, crl_sign=True, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        builder = (
            builder.add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )  # fmt: skip
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(x509.SubjectAlternativeName(leaf_sans), critical=False)
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_strict_chain(directory: Path, key_type: str) -> Chain:
    """
    Write a root, an intermediate, and a leaf for localhost/127.0.0.1 whose
    leaf key is ``"rsa"`` or ECDSA.  Unlike trustme's, this leaf passes
    ``cryptography``'s RFC 5280 verifier (which rejects a critical
    subjectAltName beside a non-empty subject), as scanners such as sslyze
    require.
    """
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    middle_key = ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        leaf_key = ec.generate_private_key(ec.SECP256R1())
    root_name, middle_name = _name("Audit Root CA"), _name("Audit Intermediate CA")
    leaf_name = _name("localhost")
    root = _issue(root_name, root_key, root_name, root_key, ca=True)
    middle = _issue(middle_name, middle_key, root_name, root_key, ca=True)
    sans = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    leaf = _issue(
        leaf_name, leaf_key, middle_name, middle_key, ca=False, leaf_sans=sans
    )
    pem = serialization.Encoding.PEM
    chain = Chain(
        directory / "server.crt",
        directory / "server.key",
        directory / "ca.pem",
        leaf_name,
    )
    chain.ca.write_bytes(root.public_bytes(pem))
    chain.cert.write_bytes(leaf.public_bytes(pem) + middle.public_bytes(pem))
    chain.key.write_bytes(
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return chain
