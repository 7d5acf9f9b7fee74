"""
The ``gwebhook`` console command (docs/reference.md 5), run as a subprocess
against a store that a running daemon writes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import sqlite3
import ssl
import subprocess

import pytest
from cryptography import x509
from support.credentials import AUTH, BASIC_HEADER
from support.daemon import (
    GWEBHOOK,
    assert_one_line_error,
    json_lines,
    log_text,
    run_cli,
    start_daemon,
)
from support.pki import SelfSigned
from support.senders import run_senders

from gwebhook import schema

# Every test here runs the gwebhook command.
pytestmark = pytest.mark.process

HEADERS = {"Authorization": BASIC_HEADER, "X-Sender": "cli-test"}
# What the daemon answers of each incident; 'list' adds the instance.
SUMMARY = {"id", "name", "type", "occurred", "created"}


def listed(answered: list[dict]) -> list[dict]:
    """The daemon's answers as 'list' prints them: of the default instance."""
    return [{**incident, "instance": "default"} for incident in answered]


def post(d, document) -> list[dict]:
    reply = d.request(body=json.dumps(document).encode(), headers=HEADERS)
    assert reply.status == 200, reply.body
    return reply.json()


def cli(*args: str, **kwargs) -> str:
    """Run ``gwebhook ARGS``, which must succeed; return its stdout."""
    result = run_cli(*args, **kwargs)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.fixture
def written(daemon):
    """A running daemon and the incidents it answered for four posts."""
    d = daemon(*AUTH)
    answered = [
        *post(
            d,
            {
                "name": "first",
                "type": "Phishing",
                "occurred": "2024-01-02T03:04:05Z",
                "rawJson": {"k": "v"},
            },
        ),
        *post(d, [{"name": "second"}, {"name": "third", "severity": 3}]),
        *post(d, {"name": "fourth", "raw_json": {"old": True}}),
    ]
    return d, answered


def test_list_prints_summaries_oldest_first(written):
    """'list' prints one summary per line, oldest first, as the daemon answered them."""
    d, answered = written
    lines = json_lines(cli("--db", str(d.db), "list"))
    assert lines == listed(answered)
    assert all(set(line) == SUMMARY | {"instance"} for line in lines)
    assert [int(line["id"]) for line in lines] == sorted(int(a["id"]) for a in answered)


def test_list_after_and_limit(written):
    """'list --after ID --limit N' prints at most N summaries with ids above ID."""
    d, answered = written
    after = answered[0]["id"]
    lines = json_lines(cli("--db", str(d.db), "list", "--after", after, "--limit", "2"))
    assert lines == listed(answered[1:3])
    assert (
        json_lines(cli("--db", str(d.db), "list", "--after", answered[-1]["id"])) == []
    )


def test_db_before_or_after_the_command_or_default(written):
    """--db works before or after the command, and defaults to ./gwebhook.sqlite."""
    d, answered = written
    before = cli("--db", str(d.db), "list")
    assert cli("list", "--db", str(d.db)) == before
    assert cli("list", cwd=d.directory) == before


def test_show_prints_details_and_request(written):
    """'show ID' prints the summary, rawJson with the headers, and the request."""
    d, answered = written
    shown = json.loads(cli("--db", str(d.db), "show", answered[0]["id"]))
    assert {k: shown[k] for k in SUMMARY} == answered[0]
    assert (shown["instance"], shown["fields"]) == ("default", {})
    assert shown["type"] == "Phishing"
    assert shown["occurred"].startswith("2024-01-02T03:04:05")
    headers = shown["rawJson"].pop("headers")
    assert shown["rawJson"] == {"k": "v"}
    assert headers["x-sender"] == "cli-test"
    assert "authorization" not in headers
    request = shown["request"]
    # No client certificate was sent: the request says nothing of one.
    assert set(request) == {"id", "received", "client", "method", "path"}
    # The X-Request-Id it was answered with, as its access line says id=.
    assert request["id"] in log_text(d)
    assert len(request["id"]) == 16 and int(request["id"], 16) >= 0
    assert request["client"] == "127.0.0.1"
    assert (request["method"], request["path"]) == ("POST", "/")
    assert request["received"]

    whole = json.loads(cli("--db", str(d.db), "show", answered[2]["id"]))
    assert whole["rawJson"]["severity"] == 3
    old = json.loads(cli("--db", str(d.db), "show", answered[3]["id"]))
    assert old["rawJson"]["old"] is True


def test_export_is_show_per_line(written):
    """'export [--after ID]' prints what 'show' prints, one incident per line."""
    d, answered = written
    shown = [json.loads(cli("--db", str(d.db), "show", a["id"])) for a in answered]
    assert json_lines(cli("--db", str(d.db), "export")) == shown
    after = answered[1]["id"]
    assert json_lines(cli("export", "--after", after, "--db", str(d.db))) == shown[2:]


def test_unknown_id_is_one_line_and_status_1(written):
    """'show' of an id that is not stored is one line on stderr and exit status 1."""
    d, _ = written
    assert_one_line_error(run_cli("--db", str(d.db), "show", "999999"))
    assert_one_line_error(run_cli("--db", str(d.db), "show", "not-an-id"))


@pytest.mark.parametrize("command", [["list"], ["show", "1"], ["export"], ["samples"]])
def test_missing_store_is_one_line_and_not_created(tmp_path, command):
    """Reading a store that does not exist is one line, status 1, creating nothing."""
    db = tmp_path / "absent.sqlite"
    assert_one_line_error(run_cli("--db", str(db), *command))
    assert list(tmp_path.iterdir()) == []


def test_samples_are_the_last_20(daemon):
    """'samples' prints the 20 most recent incidents with details, oldest first."""
    d = daemon(*AUTH, "--store-samples")
    answered = post(d, [{"name": f"n{i}", "rawJson": {"i": i}} for i in range(5)])
    for i in range(5, 25):
        answered += post(d, {"name": f"n{i}", "rawJson": {"i": i}})
    samples = json.loads(cli("--db", str(d.db), "samples"))
    assert isinstance(samples, list)
    assert [s["id"] for s in samples] == [a["id"] for a in answered[-20:]]
    assert [s["name"] for s in samples] == [f"n{i}" for i in range(5, 25)]
    assert [s["rawJson"]["i"] for s in samples] == list(range(5, 25))
    assert all(s["rawJson"]["headers"]["x-sender"] == "cli-test" for s in samples)
    assert {s["instance"] for s in samples} == {"default"}
    of_default = cli("--db", str(d.db), "samples", "--instance", "default")
    assert json.loads(of_default) == samples


def test_no_samples_without_store_samples(written):
    """
    'samples' on a store without samples prints an empty array, exit status 0,
    and says on stderr that samples need --store-samples.
    """
    d, _ = written
    result = run_cli("--db", str(d.db), "samples")
    assert result.returncode == 0
    assert json.loads(result.stdout) == []
    assert result.stderr == (
        f"gwebhook samples: {d.db} holds no samples; they are kept only for an "
        "instance with store_samples = true in --config, or for the default "
        "instance when the daemon runs with --store-samples\n"
    )


def test_reads_while_the_daemon_writes(daemon):
    """'list' and 'export' run while connections post, and see whole requests."""
    d = daemon(*AUTH)
    outputs = []

    def read() -> None:
        for command in ("list", "export", "list"):
            outputs.append(json_lines(cli("--db", str(d.db), command)))

    senders = run_senders(d, HEADERS, 4, then=read, after=0.3)
    assert all(s.failure is None for s in senders), [s.failure for s in senders]
    for lines in outputs:
        ids = [int(line["id"]) for line in lines]
        assert ids == sorted(set(ids))
    # An export never shows part of a request: each of its names has all siblings.
    exported = {line["name"] for line in outputs[1]}
    for name in exported:
        sender, request = name.split("-")[:2]
        siblings = {n for n in exported if n.startswith(f"{sender}-{request}-")}
        size = int(request[1:]) % 4 or 1
        assert len(siblings) == size, name
    acknowledged = {str(i) for s in senders for i, _ in s.acknowledged}
    assert acknowledged <= {
        line["id"] for line in json_lines(cli("list", cwd=d.directory))
    }


def _served_certificate(port: int, ca, hostname: str) -> dict:
    """Handshake with 127.0.0.1:port as ``hostname``, verifying against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return tls.getpeercert()


def test_make_cert_is_served(tmp_path):
    """'make-cert DIR' writes a key of mode 0600 and a certificate twistd serves."""
    out = cli("make-cert", str(tmp_path / "certs"))
    cert, key = tmp_path / "certs" / "server.crt", tmp_path / "certs" / "server.key"
    assert str(cert) in out and str(key) in out
    assert key.stat().st_mode & 0o777 == 0o600
    pair = SelfSigned(cert, key)
    started = []
    try:
        d = start_daemon(AUTH, tmp_path, pair, started)
        peer = _served_certificate(d.port, cert, "localhost")
        assert ("DNS", "localhost") in peer["subjectAltName"]
        connection = http.client.HTTPSConnection(
            "127.0.0.1", d.port, timeout=10, context=pair.client_context()
        )
        try:
            connection.request(
                "POST", "/", body=b'{"name": "self-signed"}', headers=HEADERS
            )
            assert connection.getresponse().status == 200
        finally:
            connection.close()
    finally:
        for started_daemon in started:
            started_daemon.kill()


def test_make_cert_hostnames(tmp_path):
    """'make-cert --hostname NAME ...' names exactly those hosts in the certificate."""
    cli(
        "make-cert", str(tmp_path), "--hostname", "gw.example", "--hostname", "10.1.2.3"
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gw.example"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_make_cert_keeps_an_existing_key(tmp_path):
    """'make-cert' where a key exists is one line, status 1, and keeps the key."""
    cli("make-cert", str(tmp_path))
    key = (tmp_path / "server.key").read_bytes()
    assert_one_line_error(run_cli("make-cert", str(tmp_path)))
    assert (tmp_path / "server.key").read_bytes() == key


@pytest.mark.parametrize("where", ["/proc/nope", "a-file"])
def test_make_cert_where_it_cannot_write_is_one_line(tmp_path, where):
    """'make-cert' into a directory it cannot create or write is one line, status 1."""
    (tmp_path / "a-file").write_text("kept")
    directory = where if where.startswith("/") else str(tmp_path / where)
    result = run_cli("make-cert", directory)
    assert_one_line_error(result)
    assert result.stderr.startswith(f"gwebhook: cannot write {directory}: ")
    assert result.stderr.endswith("; choose a directory you can write\n")
    assert (tmp_path / "a-file").read_text() == "kept"


# -- a reader that stops early -------------------------------------------------


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A store whose export is far larger than a pipe holds (64 KiB)."""
    path = tmp_path_factory.mktemp("big") / "gwebhook.sqlite"
    schema.create_or_upgrade(str(path))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO requests (received, client, method, path, headers, body)"
            " VALUES ('2026-01-01T00:00:00Z', '127.0.0.1', 'POST', '/', '{}', '[]')"
        )
        db.executemany(
            "INSERT INTO incidents (request_id, position, name, type, occurred,"
            " created, details) VALUES (1, ?, ?, 'T', '2026-01-01T00:00:00Z',"
            " '2026-01-01T00:00:00Z', ?)",
            [(i, f"n{i}", json.dumps({"text": "x" * 200})) for i in range(2000)],
        )
        db.execute("INSERT INTO samples (incident_id) SELECT id FROM incidents")
        db.execute("COMMIT")
    return path


@pytest.mark.parametrize("command", ["list", "export", "samples"])
@pytest.mark.parametrize("lines_read", [0, 1])
def test_a_reader_that_stops_early_is_no_error(big_store, command, lines_read):
    """
    ``gwebhook export | head -n 1``: when the reader closes the pipe, early
    or before reading anything, the command stops quietly with status 0 and
    nothing on stderr.
    """
    process = subprocess.Popen(
        [GWEBHOOK, "--db", str(big_store), command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(lines_read):
            assert process.stdout.readline()
        process.stdout.close()
        status = process.wait(30)
        errors = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()
    assert (status, errors) == (0, "")


def test_a_reader_that_stops_early_in_a_shell_pipeline(big_store):
    """
    In a shell pipeline with pipefail, ``gwebhook export | head -n 1`` gives
    the first incident and succeeds.
    """
    pipeline = '"$0" --db "$1" export | head -n 1'
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline, GWEBHOOK, str(big_store)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, "")
    [first] = json_lines(result.stdout)
    assert first["name"] == "n0"
