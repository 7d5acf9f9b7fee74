"""
Renegotiation started by a client is refused: it makes the server do a full
handshake on demand, and nothing gwebhook serves needs it.  The option that
says so is set on the very context every connection is made from.
"""

from __future__ import annotations

import socket
import struct

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from gwebhook.tls import (
    FailureLog,
    ReloadableTLS,
    ServerTLSFactory,
    certificate_options,
)

AUTH = ["--username", "admin", "--password", "pw"]


def renegotiate(port: int, ca: str) -> SSL.Error | None:
    """Blocking: a TLS 1.2 client that asks to renegotiate; the error it got."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.load_verify_locations(ca)
    context.set_verify(SSL.VERIFY_PEER)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # pyOpenSSL wants a blocking socket; the receive timeout still bounds it.
        raw.settimeout(None)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        client = SSL.Connection(context, raw)
        client.set_tlsext_host_name(b"localhost")
        client.set_connect_state()
        client.do_handshake()
        assert client.get_protocol_version_name() == "TLSv1.2"
        assert client.renegotiate()
        try:
            client.do_handshake()
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            client.recv(4096)
        except SSL.Error as e:
            return e
        return None


def test_client_renegotiation_is_refused(spawn, pki):
    """A TLS 1.2 client asking to renegotiate gets a no_renegotiation refusal."""
    d = spawn(*AUTH)
    error = renegotiate(d.port, str(pki.ca))
    assert error is not None, "the server renegotiated"
    assert "no renegotiation" in str(error), error


def connection_options(creator) -> int:
    """The options of the connection ``creator`` makes for a new server protocol."""
    factory = ServerTLSFactory(
        creator,
        Factory.forProtocol(Protocol),
        onHandshakeFailure=lambda: None,
        failures=FailureLog(Clock()),
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    connection = creator.serverConnectionForTLS(protocol)
    return connection.set_options(0)  # adds nothing, says what is set


@pytest.mark.parametrize("when", ["at start", "after a ticket-key rotation"])
def test_every_connection_carries_no_renegotiation(pki, when):
    """Connections are made from the context the option was set on, also after
    the session-ticket key is replaced."""
    tls = ReloadableTLS(str(pki.cert), str(pki.key))
    if when != "at start":
        tls.rotate_ticket_key()
    assert connection_options(tls) & SSL.OP_NO_RENEGOTIATION
    plain = certificate_options(str(pki.cert), str(pki.key))
    assert connection_options(plain) & SSL.OP_NO_RENEGOTIATION
