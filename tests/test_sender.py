"""
``gwebhook send``: the test sender, run as operators run it against a real
daemon, and its rules tested directly.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import sqlite3
import subprocess
import time
from contextlib import closing

import pytest
import trustme
from support.credentials import AUTH
from support.daemon import assert_one_line_error, run_cli
from support.ports import free_port
from twisted.internet import error
from twisted.python.failure import Failure

from gwebhook import sender


def send(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``gwebhook send ARGS`` to completion."""
    return run_cli("send", *args, timeout=timeout)


def url(d) -> str:
    return f"https://127.0.0.1:{d.port}/"


def stored(d) -> list[tuple]:
    """(name, method, details) of every stored incident, oldest first."""
    with closing(sqlite3.connect(d.db)) as db:
        rows = db.execute(
            "SELECT i.name, r.method, i.details, r.headers FROM incidents i"
            " JOIN requests r ON r.id = i.request_id ORDER BY i.id"
        ).fetchall()
    # As `gwebhook show` reads them: the request's headers are kept once.
    return [
        (name, method, {**json.loads(details), "headers": json.loads(headers)})
        for name, method, details, headers in rows
    ]


def requests_stored(d) -> int:
    with closing(sqlite3.connect(d.db)) as db:
        return db.execute("SELECT count(*) FROM requests").fetchone()[0]


# Against a real daemon -----------------------------------------------------


def test_default_test_incident_is_stored(daemon, pki):
    """Without --data the documented test incident is posted, answered and stored."""
    d = daemon(*AUTH)
    result = send(url(d), "--cacert", str(pki.ca), "--user", "admin:pw")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    status, body = result.stdout.split("\n", 1)
    assert status == "HTTP/1.1 200 OK"
    [answer] = json.loads(body)
    assert answer["name"] == sender.TEST_INCIDENTS[0]["name"]
    assert answer["type"] == "Info"
    [(name, method, details)] = stored(d)
    assert (name, method) == (answer["name"], "POST")
    assert details["summary"] == "[Test Message] New vulnerability identified"
    assert details["headers"]["content-type"] == "application/json"
    assert "authorization" not in details["headers"]


def test_put_with_headers_and_a_data_file(daemon, pki, tmp_path):
    """--method PUT, a header token, extra headers and --data @FILE arrive as sent."""
    d = daemon("--username", "_header:X-Token", "--password", "s3cret")
    data = tmp_path / "wallarm.json"
    data.write_text('[{"name": "hit", "type": "sqli"}, {"name": "vuln"}]')
    result = send(
        url(d) + "instance/execute/wallarm",
        "--cacert", str(pki.ca),
        "--method", "put",
        "--header", "X-Token: s3cret",
        "-H", "X-Sender: one",
        "-H", "X-Sender: two",
        "--data", f"@{data}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [(n, m) for n, m, _ in stored(d)] == [("hit", "PUT"), ("vuln", "PUT")]
    headers = stored(d)[0][2]["headers"]
    assert headers["x-sender"] == "one, two"
    assert "x-token" not in headers


def test_wrong_credentials_print_the_status_and_exit_1(daemon, pki):
    """A 401 is printed with its body, exit status 1, and nothing is stored."""
    d = daemon(*AUTH)
    result = send(url(d), "--cacert", str(pki.ca), "--user", "admin:wrong")
    assert result.returncode == 1
    assert result.stderr == ""
    status, body = result.stdout.split("\n", 1)
    assert status == "HTTP/1.1 401 Unauthorized"
    assert "error" in json.loads(body)
    assert stored(d) == []


def test_certificate_from_another_ca_is_refused(daemon, tmp_path):
    """A server certificate not issued under --cacert fails in one line naming why."""
    d = daemon(*AUTH)
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    result = send(url(d), "--cacert", str(other), "--user", "admin:pw")
    line = assert_one_line_error(result)
    assert "certificate verification failed" in line
    assert "unable to get local issuer certificate" in line
    assert f"not in --cacert {other}" in line
    assert stored(d) == []


def test_certificate_for_another_name_is_refused(daemon, tmp_path):
    """A certificate valid for other names fails in one line saying which."""
    ca = trustme.CA()
    leaf = ca.issue_cert("example.org")
    cert, key, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    d = daemon("--allow-anonymous", "--cert", str(cert), "--key", str(key), tls=False)
    line = assert_one_line_error(send(url(d), "--cacert", str(ca_file)))
    assert "not valid for 127.0.0.1 (it is for example.org)" in line
    assert requests_stored(d) == 0


def test_insecure_sends_without_verifying_and_says_so(daemon, tmp_path):
    """--insecure posts to a server whose CA is unknown, and warns on stderr."""
    d = daemon(*AUTH)
    result = send(url(d), "--insecure", "--user", "admin:pw", "--data", '{"name": "k"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK\n")
    assert len(result.stderr.splitlines()) == 1
    assert "--insecure" in result.stderr and "not verified" in result.stderr
    assert [n for n, _, _ in stored(d)] == ["k"]


@pytest.mark.process
def test_connection_refused(tmp_path):
    """A port with nothing listening is one line naming the refusal."""
    port = free_port()
    line = assert_one_line_error(send(f"https://127.0.0.1:{port}/"))
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in line


@pytest.mark.process
def test_server_that_never_answers_times_out():
    """A server that accepts but never answers fails after --timeout, saying so."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        result = send(f"https://127.0.0.1:{port}/", "--timeout", "1", timeout=15)
        elapsed = time.monotonic() - started
    line = assert_one_line_error(result)
    assert f"no complete answer from 127.0.0.1:{port} within 1 s (--timeout)" in line
    # Well before the 15 s this test waits at most: --timeout ended it, even
    # on a loaded machine where starting the command takes seconds.
    assert elapsed < 12


def test_bad_data_is_refused_before_sending(daemon, pki):
    """--data that is not JSON, or a file that cannot be read, sends nothing."""
    d = daemon(*AUTH)
    for data, reason in [
        ('{"name": ', "--data: body is not JSON"),
        ("@/nonexistent/file.json", "cannot read it (No such file or directory)"),
    ]:
        result = send(url(d), "--cacert", str(pki.ca), "-u", "admin:pw", "-d", data)
        assert reason in assert_one_line_error(result, status=2)
    assert requests_stored(d) == 0
    assert "POST" not in d.log.read_text()


@pytest.mark.parametrize(
    "target, reason",
    [
        ("ftp://127.0.0.1/", "is not an http:// or https:// URL"),
        ("https://127.0.0.1:99999/", "port 99999 is out of range"),
        ("127.0.0.1:8443", "is not an http:// or https:// URL"),
        ("https:///path", "has no host"),
    ],
)
@pytest.mark.process
def test_invalid_url_is_refused(target, reason):
    """A URL that is not http(s) with a host and a valid port is one line, status 2."""
    assert reason in assert_one_line_error(send(target), status=2)


# The rules -----------------------------------------------------------------


def test_parse_header():
    """'Name: value' splits at the first colon; blanks around the value go."""
    assert sender.parse_header("X-Token:  Bearer a:b  ") == ("X-Token", "Bearer a:b")
    assert sender.parse_header("X-Empty:") == ("X-Empty", "")


@pytest.mark.parametrize(
    "text",
    [
        "no colon",
        ": value",
        "Bad Name: x",
        "X-A: caf\u00e9",
        "X-A: a\rb",
        "Content-Length: 2",
    ],
)
def test_parse_header_refuses(text):
    """Bad names, non-ASCII or control characters, computed headers are refused."""
    with pytest.raises(sender.ArgumentError, match="--header"):
        sender.parse_header(text)


def test_request_headers_defaults_repeats_and_user():
    """Defaults unless overridden, repeats kept in order, --user as Basic."""
    headers = sender.request_headers(
        ["content-type: text/plain", "X-A: 1", "X-A: 2"], "admin:p:w"
    )
    token = base64.b64encode(b"admin:p:w").decode()
    assert headers == [
        ("User-Agent", sender.USER_AGENT),
        ("content-type", "text/plain"),
        ("X-A", "1"),
        ("X-A", "2"),
        ("Authorization", f"Basic {token}"),
    ]


def test_user_and_authorization_header_conflict():
    """--user and an Authorization header together are refused."""
    with pytest.raises(sender.ArgumentError, match="not both"):
        sender.request_headers(["Authorization: Bearer x"], "admin:pw")
    with pytest.raises(sender.ArgumentError, match="USER:PASSWORD"):
        sender.basic_authorization("admin")


def test_json_body_is_checked_and_kept_byte_for_byte():
    """UTF-8 JSON (BOM allowed) is sent as given; anything else is refused."""
    raw = b'\xef\xbb\xbf{ "name" : "caf\xc3\xa9" }'
    assert sender.json_body(raw) == raw
    for bad in [b"\xff{}", b"[1, Infinity]", b"NaN", b"", b"[" * 100_000, b"{'a': 1}"]:
        with pytest.raises(sender.ArgumentError, match="nothing sent"):
            sender.json_body(bad)


def test_read_data_default_inline_and_stdin():
    """No --data is the test incident; text is sent as is; @- reads stdin."""
    incidents = json.loads(sender.read_data(None))
    assert len(incidents) == 1 and "gwebhook" in incidents[0]["name"]
    assert sender.read_data('{"a": 1}') == b'{"a": 1}'
    assert sender.read_data("@-", stdin=io.BytesIO(b"[]")) == b"[]"


def test_cacert_must_hold_a_certificate(tmp_path, pki):
    """--cacert must name a readable file with at least one PEM certificate."""
    assert len(sender.read_cacert(str(pki.ca))) == 1
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here")
    with pytest.raises(sender.ArgumentError, match="holds no PEM certificate"):
        sender.read_cacert(str(empty))
    with pytest.raises(sender.ArgumentError, match="does not exist"):
        sender.read_cacert(str(tmp_path / "absent.pem"))


def test_build_request_refuses_contradictions(pki):
    """--cacert with --insecure, or either with an http:// URL, is refused."""
    with pytest.raises(sender.ArgumentError, match="not both"):
        sender.build_request("https://h/", cacert=str(pki.ca), insecure=True)
    with pytest.raises(sender.ArgumentError, match="https:// URLs only"):
        sender.build_request("http://h/", insecure=True)


def test_verify_problem_names_the_missing_ca():
    """A certificate error says OpenSSL's reason and what trust was missing."""
    assert sender.verify_problem(20, "CN=inter", "CN=root", "--cacert ca.pem") == (
        "unable to get local issuer certificate: 'CN=inter' was issued by"
        " 'CN=root', which is not in --cacert ca.pem; " + sender.TRUST_HINT
    )
    assert sender.verify_problem(18, "CN=me", "CN=me", "--cacert x").startswith(
        "self-signed certificate: 'CN=me' is not in --cacert x"
    )
    assert sender.verify_problem(10, "CN=old", "CN=ca", "x") == (
        "certificate has expired ('CN=old')"
    )


def test_certificate_names(pki):
    """The names a certificate is valid for are its DNS names and IP addresses."""
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(pki.leaf.cert_chain_pems[0].bytes())
    assert sender.certificate_names(leaf) == ["localhost", "127.0.0.1"]


def test_connect_timeout_and_name_failures_are_described():
    """A connect timeout names --connect-timeout; an unknown host says so."""
    outgoing = sender.build_request(
        "https://example.invalid:8443/", connect_timeout=2.5
    )
    timeout = Failure(error.TimeoutError())
    assert sender.describe_failure(timeout, outgoing, None) == (
        "cannot connect to example.invalid:8443: no answer within 2.5 s"
        " (--connect-timeout)"
    )
    unknown = Failure(error.DNSLookupError("no results"))
    assert sender.describe_failure(unknown, outgoing, None) == (
        "cannot resolve example.invalid"
    )


def test_status_line():
    """The status line reads as HTTP writes it."""
    assert sender.status_line((b"HTTP", 1, 1), 401, b"Unauthorized") == (
        "HTTP/1.1 401 Unauthorized"
    )
    assert sender.status_line((b"HTTP", 1, 1), 599, b"") == "HTTP/1.1 599"


# One rule for what JSON is: the receiver's ------------------------------------


def test_data_the_receiver_refuses_is_refused_with_its_reason(daemon):
    """
    --data the receiver answers with 400 (a number too large for a double, an
    unpaired surrogate escape, NaN) is refused with the receiver's own reason,
    exit status 2, and no connection is made.
    """
    d = daemon(*AUTH)
    authorization = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        target = f"https://127.0.0.1:{listener.getsockname()[1]}/"
        for data in ['{"a": 1e400}', '{"a": "\\ud800"}', "[NaN]"]:
            reply = d.request(body=data.encode(), headers=authorization)
            assert reply.status == 400, data
            reason = reply.json()["error"]
            line = assert_one_line_error(send(target, "--data", data), status=2)
            assert line == f"gwebhook send: --data: {reason}; nothing sent\n"
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert requests_stored(d) == 0


# One reader for PEM certificates: the daemon's ------------------------------


def test_cacert_bundle_trusts_each_of_its_certificates(daemon, tmp_path, pki):
    """--cacert with several CAs, the right one last, verifies the server."""
    d = daemon(*AUTH)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        b"# a bundle as distributions ship them\n"
        + trustme.CA().cert_pem.bytes()
        + pki.ca.read_bytes()
    )
    result = send(url(d), "--cacert", str(bundle), "-u", "admin:pw", "-d", "{}")
    assert result.returncode == 0, result.stderr
    assert requests_stored(d) == 1


@pytest.mark.process
def test_cacert_without_a_certificate_is_refused_naming_cacert(tmp_path):
    """A --cacert file with no PEM certificate is one line naming --cacert, status 2."""
    der = tmp_path / "ca.der"
    der.write_bytes(b"0\x82\x01\x0a not PEM")
    port = free_port()
    line = assert_one_line_error(
        send(f"https://127.0.0.1:{port}/", "--cacert", str(der)), status=2
    )
    assert line.startswith(f"gwebhook send: --cacert: {der} holds no PEM certificate")
    assert "--cert " not in line and "--cert:" not in line


def test_untrusted_server_suggests_cacert_or_insecure(daemon):
    """
    A server whose CA the system does not trust fails in one line that says
    which CA is missing and suggests --cacert FILE, or -k for a trial.
    """
    d = daemon(*AUTH)
    line = assert_one_line_error(send(url(d), "-u", "admin:pw", "-d", "{}"))
    where = f"127.0.0.1:{d.port}"
    assert line.startswith(f"gwebhook: certificate verification failed for {where}: ")
    assert "which is not in the system's trusted CAs; " in line
    assert line.endswith(
        "give its CA certificate with --cacert FILE"
        " (or -k to skip verification, for a trial only)\n"
    )
    assert requests_stored(d) == 0
