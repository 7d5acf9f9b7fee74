"""TLS session resumption: a sender that reconnects skips the full handshake."""

import socket
import ssl

import pytest
import pytest_twisted
from support.inprocess import make_site
from twisted.internet import endpoints, reactor
from twisted.internet.threads import deferToThread

from gwebhook.tls import FailureLog, ReloadableTLS, TLSServerEndpoint

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.fixture
def served(tmp_path, pki):
    """The site over TLS with reloadable options, on an ephemeral port."""
    site, store = make_site(tmp_path / "store.sqlite", None, 65536, 1 << 20, None)
    tls = ReloadableTLS(str(pki.cert), str(pki.key))
    endpoint = TLSServerEndpoint(
        endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        tls,
        onHandshakeFailure=lambda: None,
        failures=FailureLog(reactor),
    )
    port = pytest_twisted.blockon(endpoint.listen(site))
    yield tls, port.getHost().port
    pytest_twisted.blockon(port.stopListening())
    store.close()


def visit(port: int, context: ssl.SSLContext, session=None):
    """Blocking: one request on a new connection; (session, whether it was resumed)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := tls.recv(4096):  # TLS 1.3 tickets arrive after the handshake
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        return tls.session, tls.session_reused


def context_for(pki, version) -> ssl.SSLContext:
    context = pki.client_context()
    context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_a_reconnecting_sender_resumes_its_session(served, pki, version):
    """The second connection with the first one's session is resumed."""
    _, port = served
    context = context_for(pki, version)
    session, resumed = await deferToThread(visit, port, context)
    assert not resumed
    _, resumed = await deferToThread(visit, port, context, session)
    assert resumed


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
@pytest_twisted.ensureDeferred
async def test_a_rotated_ticket_key_ends_resumption(served, pki, version):
    """After the ticket key is rotated, an older session makes a full handshake."""
    tls, port = served
    context = context_for(pki, version)
    session, _ = await deferToThread(visit, port, context)
    tls.rotate_ticket_key()
    _, resumed = await deferToThread(visit, port, context, session)
    assert not resumed
