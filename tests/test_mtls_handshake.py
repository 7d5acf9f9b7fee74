"""
Client certificates over a real TLS socket: a listener that asks for one
completes the handshake whatever the client sends (nothing, a certificate
of an unknown CA, a chain through an intermediate), ``peer_chain`` reads
what was sent, leaf first, and a listener that does not ask gets nothing.

The server is the daemon's own TLS layer (TLSServerEndpoint over
ReloadableTLS) around a protocol that answers its first bytes with what
``peer_chain`` read, as JSON; the client is Python's ssl module.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
from pathlib import Path

import pytest
import pytest_twisted
import trustme
from cryptography import x509
from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread

from gwebhook.clientcert import describe, verify_client
from gwebhook.config import MTLSConfig
from gwebhook.tls import FailureLog, ReloadableTLS, TLSServerEndpoint, peer_chain

pytestmark = pytest.mark.timeout(60)

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


class ReportPeerChain(Protocol):
    """Answers the first bytes with the client certificates read, then closes."""

    def dataReceived(self, data: bytes) -> None:
        chain = [describe(c) for c in peer_chain(self.transport)]
        self.transport.write(json.dumps(chain).encode())
        self.transport.loseConnection()


class Server:
    """A server certificate on disk, and listeners that report peer chains."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert = directory / "server.crt"
        self.key = directory / "server.key"
        self.cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self.key.write_bytes(leaf.private_key_pem.bytes())
        self.ports = []

    async def listen(self, tls, protocol=None) -> int:
        """A TLS listener on 127.0.0.1 with ``tls``, closed at teardown."""
        endpoint = TLSServerEndpoint(
            endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            tls,
            onHandshakeFailure=lambda: None,
            failures=FailureLog(reactor),
        )
        port = await endpoint.listen(Factory.forProtocol(protocol or ReportPeerChain))
        self.ports.append(port)
        return port.getHost().port

    def client_context(self, version=None, certificate=None) -> ssl.SSLContext:
        """A client trusting the server's CA, sending ``certificate`` if given."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if version is not None:
            context.minimum_version = context.maximum_version = version
        if certificate is not None:
            # The key, the leaf and the intermediates between it and its CA.
            certificate.configure_cert(context)
        return context


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    yield server
    for port in server.ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture(scope="module")
def clients_ca() -> trustme.CA:
    """The CA an instance takes client certificates of."""
    return trustme.CA()


def exchange(port: int, context: ssl.SSLContext, session=None):
    """
    Blocking: one connection, with a completed handshake; what the server
    read of the client's certificates, the session, and whether it resumed.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"who am I?")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
        return json.loads(answer), tls.session, tls.session_reused


async def seen(port: int, context: ssl.SSLContext) -> list[dict]:
    chain, _, _ = await deferToThread(exchange, port, context)
    return chain


def described(leaf: trustme.LeafCert) -> list[dict]:
    return [
        describe(x509.load_pem_x509_certificate(p.bytes()))
        for p in leaf.cert_chain_pems
    ]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_asked_a_client_without_certificate_completes_the_handshake(
    server, version
):
    """Asked for a certificate, a client with none is served; nothing is read."""
    port = await server.listen(ReloadableTLS(str(server.cert), str(server.key), True))
    assert await seen(port, server.client_context(version)) == []


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_a_certificate_of_an_unknown_ca_completes_the_handshake(server, version):
    """A certificate no CA here issued is taken in the handshake and read."""
    stranger = trustme.CA().issue_cert("stranger.example.com")
    port = await server.listen(ReloadableTLS(str(server.cert), str(server.key), True))
    context = server.client_context(version, stranger)
    assert await seen(port, context) == described(stranger)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_the_leaf_and_intermediate_sent_are_read_in_order(
    server, clients_ca, version
):
    """A leaf sent with its intermediate is read as sent, leaf first."""
    sensor = clients_ca.create_child_ca().issue_cert("sensor-1.example.com")
    assert len(sensor.cert_chain_pems) == 2
    port = await server.listen(ReloadableTLS(str(server.cert), str(server.key), True))
    context = server.client_context(version, sensor)
    assert await seen(port, context) == described(sensor)


def checked_against(mtls: MTLSConfig) -> type[Protocol]:
    """A protocol answering with the instance check of the chain read."""

    class Checked(Protocol):
        def dataReceived(self, data: bytes) -> None:
            now = datetime.datetime.now(datetime.UTC)
            accepted = verify_client(peer_chain(self.transport), mtls, now)
            self.transport.write(json.dumps([accepted.as_dict()]).encode())
            self.transport.loseConnection()

    return Checked


@pytest_twisted.ensureDeferred
async def test_what_is_read_passes_the_instance_check(server, clients_ca):
    """The chain read from the socket is what the instance's CA check accepts."""
    sensor = clients_ca.create_child_ca().issue_cert("sensor-1.example.com")
    root = x509.load_pem_x509_certificate(clients_ca.cert_pem.bytes())
    mtls = MTLSConfig("ca.pem", ("sensor-1.example.com",), (root,))
    tls = ReloadableTLS(str(server.cert), str(server.key), True)
    port = await server.listen(tls, checked_against(mtls))
    context = server.client_context(certificate=sensor)
    answer = await seen(port, context)
    assert answer == described(sensor)[:1]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_not_asked_a_client_certificate_is_not_sent(server, clients_ca, version):
    """Without asking, a client holding a certificate sends none: nothing is read."""
    sensor = clients_ca.issue_cert("sensor-1.example.com")
    port = await server.listen(ReloadableTLS(str(server.cert), str(server.key)))
    assert await seen(port, server.client_context(version, sensor)) == []


@pytest_twisted.ensureDeferred
async def test_reload_starts_and_stops_asking(server, clients_ca):
    """reload(ask_client_certificate=...) decides for the connections after it."""
    sensor = clients_ca.issue_cert("sensor-1.example.com")
    tls = ReloadableTLS(str(server.cert), str(server.key))
    port = await server.listen(tls)
    context = server.client_context(certificate=sensor)
    assert await seen(port, context) == []
    assert tls.reload(ask_client_certificate=True)
    assert await seen(port, context) == described(sensor)
    assert tls.reload()  # as before: still asking
    assert await seen(port, context) == described(sensor)
    tls.rotate_ticket_key()
    assert await seen(port, context) == described(sensor)
    assert tls.reload(ask_client_certificate=False)
    assert await seen(port, context) == []


@pytest_twisted.ensureDeferred
async def test_a_bad_new_pair_still_changes_the_asking(server, clients_ca):
    """When the new pair cannot be read, the old one serves, asking as told."""
    sensor = clients_ca.issue_cert("sensor-1.example.com")
    tls = ReloadableTLS(str(server.cert), str(server.key))
    port = await server.listen(tls)
    server.cert.write_text("not a certificate\n")
    assert not tls.reload(ask_client_certificate=True)
    assert tls.ask_client_certificate
    assert await seen(port, server.client_context(certificate=sensor)) == (
        described(sensor)
    )


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_while_asking_sessions_are_not_resumed(server, clients_ca, version):
    """Asking, every connection makes a full handshake and sends its whole chain."""
    sensor = clients_ca.create_child_ca().issue_cert("sensor-1.example.com")
    port = await server.listen(ReloadableTLS(str(server.cert), str(server.key), True))
    context = server.client_context(version, sensor)
    first, session, _ = await deferToThread(exchange, port, context)
    again, _, resumed = await deferToThread(exchange, port, context, session)
    assert not resumed
    assert first == again == described(sensor)


@pytest_twisted.ensureDeferred
async def test_no_chain_is_read_from_plain_tcp(server):
    """Over plain TCP (no TLS) nothing is read, and nothing fails."""
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(Factory.forProtocol(ReportPeerChain))
    server.ports.append(port)

    def plain(number: int) -> bytes:
        with socket.create_connection(("127.0.0.1", number), timeout=5) as raw:
            raw.sendall(b"hello")
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
            return answer

    assert await deferToThread(plain, port.getHost().port) == b"[]"
