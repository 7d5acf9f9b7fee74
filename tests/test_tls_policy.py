"""
The TLS policy (docs/reference.md 1.4), against the daemon's own TLS listener
in-process: TLS 1.2 minimum, 1.3 offered, no compression, the server's
cipher order, forward-secret AEAD suites only, the whole chain served.
The clients are stdlib ``ssl`` sockets, run in a thread off the reactor.
"""

from __future__ import annotations

import ssl

import pytest
import pytest_twisted
import trustme
from OpenSSL import SSL
from support.http import client_hello, handshake
from support.inprocess import serve_tls
from support.pki import PKI, make_pki
from twisted.internet.threads import deferToThread

from gwebhook.tls import certificate_options

# The record layer's legacy version is what a client puts in its ClientHello.
LEGACY_VERSION = {
    ssl.TLSVersion.TLSv1: b"\x03\x01",
    ssl.TLSVersion.TLSv1_1: b"\x03\x02",
}


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory) -> PKI:
    """As the ``pki`` fixture, with RSA keys (which static-RSA suites could use)."""
    return make_pki(tmp_path_factory.mktemp("rsa-pki"), trustme.KeyType.RSA)


@pytest.fixture
def serve(tmp_path, pki):
    """Start the TLS listener for a PKI (default: ``pki``); closed after the test."""
    servers = []

    async def start(use: PKI = pki, cert=None):
        db = tmp_path / f"gwebhook-{len(servers)}.sqlite"
        server = await serve_tls(db, cert or use.cert, use.key, use.ca, None)
        servers.append(server)
        return server.number

    yield start
    for server in servers:
        pytest_twisted.blockon(server.close())


async def connect(port: int, context: ssl.SSLContext) -> dict:
    return await deferToThread(handshake, port, context)


async def refused(port: int, context: ssl.SSLContext) -> ssl.SSLError:
    with pytest.raises(ssl.SSLError) as caught:
        await connect(port, context)
    return caught.value


def old_client(pki: PKI, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers ``version`` and nothing newer, and is able to use it."""
    context = pki.client_context()
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
@pytest_twisted.ensureDeferred
async def test_old_tls_is_refused_by_the_server(serve, pki, version):
    """A client offering only TLS 1.1 (or 1.0) gets the server's version alert."""
    port = await serve()
    context = old_client(pki, version)
    # The client really puts the old version on the wire...
    hello = client_hello(context)
    assert hello[0] == 0x16 and hello[5] == 0x01, "not a ClientHello"
    assert hello[9:11] == LEGACY_VERSION[version]
    # ...and it is the server that refuses: this reason is the peer's alert
    # (a client refusing to send would fail with NO_PROTOCOLS_AVAILABLE).
    error = await refused(port, context)
    assert error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest_twisted.ensureDeferred
async def test_tls12_is_accepted(serve, pki):
    """A client offering at most TLS 1.2 is served with TLS 1.2."""
    port = await serve()
    context = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    assert (await connect(port, context))["version"] == "TLSv1.2"


@pytest_twisted.ensureDeferred
async def test_tls13_is_accepted(serve, pki):
    """A client offering only TLS 1.3 is served with TLS 1.3."""
    port = await serve()
    context = pki.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    assert (await connect(port, context))["version"] == "TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_tls13_is_preferred(serve, pki):
    """A client offering every version gets TLS 1.3."""
    port = await serve()
    assert (await connect(port, pki.client_context()))["version"] == "TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_tls12_cipher_is_ecdhe_aead(serve, pki):
    """A default TLS 1.2 client negotiates an ECDHE suite with an AEAD cipher."""
    port = await serve()
    context = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    cipher = (await connect(port, context))["cipher"]
    assert cipher.startswith("ECDHE-")
    assert cipher.endswith(("-GCM-SHA256", "-GCM-SHA384", "-CHACHA20-POLY1305"))


@pytest_twisted.ensureDeferred
async def test_cbc_only_client_is_refused(serve, pki):
    """A TLS 1.2 client offering only CBC suites gets the server's handshake failure."""
    port = await serve()
    context = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256")
    # The server's key is ECDSA, so ECDHE-ECDSA-AES128-SHA256 would work if allowed.
    assert pki.leaf.private_key_pem.bytes().startswith(b"-----BEGIN EC PRIVATE KEY")
    error = await refused(port, context)
    assert error.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


def tls12_suites() -> list[dict]:
    """Every TLS 1.2-usable suite this client's OpenSSL can offer, with metadata."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return [c for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]


def sweep(port: int, pki: PKI) -> set[str]:
    """Blocking: the suites the server accepts when a client offers each alone."""
    accepted = set()
    for suite in tls12_suites():
        context = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
        try:
            context.set_ciphers(suite["name"] + ":@SECLEVEL=0")
            accepted.add(handshake(port, context)["cipher"])
        except (ssl.SSLError, OSError):
            continue
    return accepted


def forward_secret_aead(name: str) -> bool:
    [suite] = [c for c in tls12_suites() if c["name"] == name]
    return suite["aead"] and suite["kea"] in ("kx-ecdhe", "kx-dhe")


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
@pytest_twisted.ensureDeferred
async def test_only_forward_secret_aead_suites_accepted(serve, pki, rsa_pki, key_type):
    """Of all TLS 1.2 suites offered alone, only forward-secret AEAD ones work."""
    use = pki if key_type == "ecdsa" else rsa_pki
    port = await serve(use)
    accepted = await deferToThread(sweep, port, use)
    assert accepted, "no suite accepted: the sweep proves nothing"
    assert {name for name in accepted if not forward_secret_aead(name)} == set()
    if key_type == "rsa":
        # Static RSA key exchange with AEAD is usable with this key, and refused.
        assert "AES256-GCM-SHA384" not in accepted
        assert "ECDHE-RSA-AES256-GCM-SHA384" in accepted


@pytest_twisted.ensureDeferred
async def test_server_cipher_order_wins(serve, pki):
    """The server picks its own preferred suite, not the client's first choice."""
    port = await serve()
    context = pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
        "ECDHE-ECDSA-AES256-GCM-SHA384"
    )
    assert (await connect(port, context))["cipher"] == "ECDHE-ECDSA-AES256-GCM-SHA384"


@pytest_twisted.ensureDeferred
async def test_full_chain_is_served(serve, pki):
    """
    The intermediate is served with the leaf: a client trusting only the root
    CA verifies the server.  (Python 3.11 cannot list the chain a peer sent,
    ``get_unverified_chain`` is 3.13+, so a verification that needs the
    intermediate, which the client does not have, is the proof.)
    """
    port = await serve()
    assert (
        b"".join(p.bytes() for p in pki.leaf.cert_chain_pems) == pki.cert.read_bytes()
    )
    assert pki.intermediate.cert_pem.bytes() not in pki.ca.read_bytes()
    info = await connect(port, pki.client_context())
    assert ("DNS", "localhost") in info["peercert"]["subjectAltName"]


@pytest_twisted.ensureDeferred
async def test_leaf_alone_does_not_verify(serve, pki, tmp_path):
    """A --cert of the leaf alone fails a root-only client: the chain test can fail."""
    leaf_only = tmp_path / "leaf.crt"
    pki.leaf.cert_chain_pems[0].write_to_path(str(leaf_only))
    port = await serve(cert=leaf_only)
    error = await refused(port, pki.client_context())
    assert error.reason == "CERTIFICATE_VERIFY_FAILED"


@pytest_twisted.ensureDeferred
async def test_compression_is_off(serve, pki):
    """No TLS compression is negotiated, and the server's context forbids it."""
    port = await serve()
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = pki.client_context(maximum_version=version)
        context.options &= ~ssl.OP_NO_COMPRESSION
        assert (await connect(port, context))["compression"] is None
    context = certificate_options(str(pki.cert), str(pki.key)).getContext()
    # set_options(0) adds nothing and answers the options in force.
    assert context.set_options(0) & SSL.OP_NO_COMPRESSION
