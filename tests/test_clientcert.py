"""
The client-certificate rule of an instance with ``[instance.mtls]``: the
chain a client sent is accepted when it leads to the instance's client CA
and names a sender the instance lists; otherwise it is refused with a short
reason (for the metric) and a message that tells the client nothing about
the CA or the names.
"""

from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gwebhook.clientcert import (
    EXPIRED,
    MISSING,
    NAME,
    UNTRUSTED,
    ClientCert,
    ClientCertRefused,
    describe,
    verify_client,
)
from gwebhook.config import MTLSConfig

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def certificate(pem: trustme.Blob | bytes) -> x509.Certificate:
    data = pem.bytes() if isinstance(pem, trustme.Blob) else pem
    return x509.load_pem_x509_certificate(data)


def sent(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    """What a client configured with trustme's chain sends: leaf, then intermediates."""
    return [certificate(pem) for pem in leaf.cert_chain_pems]


def mtls_for(*cas: trustme.CA, names: tuple[str, ...] = ()) -> MTLSConfig:
    return MTLSConfig(
        "/nonexistent/clients-ca.pem",
        names,
        tuple(certificate(ca.cert_pem) for ca in cas),
    )


def refusal(chain, mtls, now=NOW) -> ClientCertRefused:
    with pytest.raises(ClientCertRefused) as caught:
        verify_client(chain, mtls, now)
    return caught.value


def issue(
    ca: trustme.CA,
    common_name: str = "sensor-1.example.com",
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    """A leaf built by hand, for shapes trustme does not make (no SAN, v3 only)."""
    issuer = certificate(ca.cert_pem)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    key = load_pem_private_key(ca.private_key_pem.bytes(), None)
    return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_a_certificate_of_the_instance_ca_is_accepted(ca):
    """A leaf of the instance's CA is accepted, described by subject and SHA-256."""
    chain = sent(ca.issue_cert("sensor-1.example.com"))
    accepted = verify_client(chain, mtls_for(ca), NOW)
    assert accepted == ClientCert(
        chain[0].subject.rfc4514_string(),
        chain[0].fingerprint(hashes.SHA256()).hex(),
    )
    assert accepted.as_dict() == describe(chain[0])


def test_describe_gives_the_subject_and_a_lowercase_fingerprint_without_colons(ca):
    """describe gives the RFC 4514 subject and 64 lowercase hex digits."""
    leaf = sent(ca.issue_cert("a.example", common_name="Sensor, One"))[0]
    described = describe(leaf)
    assert set(described) == {"subject", "sha256"}
    assert described["subject"].startswith("CN=Sensor\\, One,")
    assert len(described["sha256"]) == 64
    assert described["sha256"] == described["sha256"].lower()
    assert ":" not in described["sha256"]


def test_an_intermediate_the_client_sends_completes_the_chain(ca):
    """A leaf of an intermediate CA is accepted when the client sends that CA."""
    chain = sent(ca.create_child_ca().issue_cert("sensor-1.example.com"))
    assert len(chain) == 2
    assert verify_client(chain, mtls_for(ca), NOW).subject == (
        chain[0].subject.rfc4514_string()
    )


def test_without_the_intermediate_the_leaf_is_not_trusted(ca):
    """The same leaf sent alone does not reach the CA and is refused as untrusted."""
    chain = sent(ca.create_child_ca().issue_cert("sensor-1.example.com"))
    assert refusal(chain[:1], mtls_for(ca)).reason == UNTRUSTED


def test_a_client_sending_the_root_too_is_accepted(ca):
    """A client that sends the CA itself after its leaf is still accepted."""
    chain = sent(ca.issue_cert("sensor-1.example.com")) + [certificate(ca.cert_pem)]
    verify_client(chain, mtls_for(ca), NOW)


def test_a_certificate_of_another_ca_is_refused_as_untrusted(ca):
    """A leaf of another CA is refused as untrusted, in a message naming no CA."""
    other = trustme.CA()
    refused = refusal(sent(other.issue_cert("sensor-1.example.com")), mtls_for(ca))
    assert refused.reason == UNTRUSTED
    issuer = certificate(ca.cert_pem).subject.rfc4514_string()
    assert issuer not in refused.message
    assert "Testing CA" not in refused.message


def test_a_file_of_several_cas_accepts_each_of_them(ca):
    """When the client CA file holds two CAs, a leaf of either is accepted."""
    other = trustme.CA()
    mtls = mtls_for(ca, other)
    verify_client(sent(ca.issue_cert("a.example")), mtls, NOW)
    verify_client(sent(other.issue_cert("a.example")), mtls, NOW)


def test_no_certificate_is_refused_as_missing(ca):
    """No client certificate is refused as missing, saying that one is required."""
    refused = refusal([], mtls_for(ca))
    assert refused.reason == MISSING
    assert refused.message == (
        "a client certificate issued by this instance's CA is required"
    )
    assert str(refused) == refused.message


def test_a_name_not_in_client_names_is_refused(ca):
    """A leaf whose CN and SAN names are not listed is refused as name, naming none."""
    chain = sent(ca.issue_cert("sensor-2.example.com", common_name="sensor-2"))
    refused = refusal(chain, mtls_for(ca, names=("sensor-1.example.com",)))
    assert refused.reason == NAME
    assert "sensor-1" not in refused.message
    assert "sensor-2" in refused.detail


def test_a_name_in_the_cn_only_is_accepted(ca):
    """A listed name found only in the subject CN (the SAN has another) is accepted."""
    chain = sent(ca.issue_cert("other.example.com", common_name="sensor-1.example.com"))
    verify_client(chain, mtls_for(ca, names=("sensor-1.example.com",)), NOW)


def test_a_certificate_without_san_is_matched_by_its_cn(ca):
    """A leaf with no subject alternative name at all is accepted by its CN."""
    leaf = issue(ca, "sensor-1.example.com")
    mtls = mtls_for(ca, names=("sensor-1.example.com",))
    assert verify_client([leaf], mtls, NOW).subject == "CN=sensor-1.example.com"
    assert refusal([leaf], mtls_for(ca, names=("sensor-9",))).reason == NAME


def test_a_name_in_the_san_only_is_accepted(ca):
    """A listed name found only among the SAN DNS names (not the CN) is accepted."""
    chain = sent(
        ca.issue_cert("x.example.com", "sensor-1.example.com", common_name="Sensor A")
    )
    verify_client(chain, mtls_for(ca, names=("sensor-1.example.com",)), NOW)


def test_names_match_without_regard_to_case_but_otherwise_exactly(ca):
    """Names compare case-insensitively; a wildcard or a suffix is not a match."""
    chain = sent(ca.issue_cert("Sensor-1.Example.COM"))
    verify_client(chain, mtls_for(ca, names=("sensor-1.example.com",)), NOW)
    for listed in ("*.example.com", "example.com", "sensor-1.example.com."):
        assert refusal(chain, mtls_for(ca, names=(listed,))).reason == NAME


def test_an_expired_certificate_of_the_ca_is_refused_as_expired(ca):
    """A leaf of the instance's CA past its validity is refused as expired."""
    chain = sent(
        ca.issue_cert(
            "sensor-1.example.com", not_before=NOW - 3 * DAY, not_after=NOW - DAY
        )
    )
    refused = refusal(chain, mtls_for(ca))
    assert refused.reason == EXPIRED
    assert "expired" in refused.message


def test_a_certificate_not_yet_valid_is_refused_as_expired(ca):
    """A leaf of the instance's CA valid from tomorrow on is refused as expired."""
    chain = sent(
        ca.issue_cert(
            "sensor-1.example.com", not_before=NOW + DAY, not_after=NOW + 3 * DAY
        )
    )
    assert refusal(chain, mtls_for(ca)).reason == EXPIRED


def test_an_expired_certificate_of_another_ca_is_untrusted(ca):
    """An expired leaf that would not be trusted anyway is refused as untrusted."""
    chain = sent(
        trustme.CA().issue_cert(
            "sensor-1.example.com", not_before=NOW - 3 * DAY, not_after=NOW - DAY
        )
    )
    assert refusal(chain, mtls_for(ca)).reason == UNTRUSTED


def test_a_certificate_for_servers_only_is_refused(ca):
    """A leaf whose extended key usage allows server authentication only is refused."""
    leaf = issue(
        ca,
        "sensor-1.example.com",
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    refused = refusal([leaf], mtls_for(ca))
    assert refused.reason == UNTRUSTED
    assert "client authentication" in refused.detail


def test_a_certificate_for_client_authentication_is_accepted(ca):
    """A leaf whose extended key usage allows client authentication is accepted."""
    leaf = issue(
        ca,
        "sensor-1.example.com",
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), True),
    )
    verify_client([leaf], mtls_for(ca), NOW)


def test_a_ca_certificate_sent_as_the_leaf_is_refused(ca):
    """The CA's own certificate, sent as if it were a client's, is refused."""
    refused = refusal([certificate(ca.cert_pem)], mtls_for(ca))
    assert refused.reason == UNTRUSTED


def test_an_unknown_critical_extension_is_refused(ca):
    """A leaf with a critical extension nobody here understands is refused."""
    unknown = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"
    )
    assert refusal([issue(ca, "a", (unknown, True))], mtls_for(ca)).reason == UNTRUSTED


def test_a_ca_without_key_usage_is_accepted_as_openssl_makes_it():
    """A CA with no key usage extension ('openssl req -x509' makes one) is accepted."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Clients CA")])
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .sign(key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensor-1")]))
        .issuer_name(name)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    mtls = MTLSConfig("/nonexistent/ca.pem", ("sensor-1",), (root,))
    assert verify_client([leaf], mtls, NOW).subject == "CN=sensor-1"
