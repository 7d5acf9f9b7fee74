"""
Start-up of ``twistd gwebhook`` as an operator runs it: every misconfiguration
is refused in one line naming the option and the fix, and the ways of giving a
password and of serving plain HTTP work.

A refusal is the ``usage.UsageError`` the plugin's ``Options`` raises, which
twistd prints, after its usage text, as the last line an operator reads
("twistd -n: <message>") before it exits 1.  Each is checked in-process,
through ``Options().parseOptions``, for its exact message; a few are checked
end to end against a real ``twistd`` too, for that last line and exit status.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from support.credentials import AUTH, USERNAME, basic
from support.daemon import TWISTD, last_line, run_twistd
from support.pki import PKI
from support.ports import occupied_port
from twisted.python import usage

from gwebhook.tap import Options


@dataclass
class Refusal:
    """Arguments that must be refused, and the one line that refuses them."""

    args: list[str]
    message: str


def here(tmp_path: Path) -> list[str]:
    """
    Where a start-up that got that far would listen and store: 127.0.0.1 on
    an ephemeral port, a store in ``tmp_path``, and few enough connections
    that the open-file limit of the test's own process is never the matter.
    """
    return [
        "--interface", "127.0.0.1", "--port", "0",
        "--db", str(tmp_path / "gwebhook.sqlite"), "--max-connections", "10",
    ]  # fmt: skip


def parse(tmp_path: Path, args: list[str]) -> Options:
    """Parse ``args`` as twistd would hand them to the plugin (no environment)."""
    options = Options(environ={})
    options.parseOptions([*here(tmp_path), *args])
    return options


def _tls(pki: PKI) -> list[str]:
    return ["--cert", str(pki.cert), "--key", str(pki.key)]


# -- the refusals ------------------------------------------------------------


def no_cert_nor_key(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        AUTH,
        "TLS needs --cert and --key (make a test pair with 'gwebhook make-cert "
        "DIR'), or --no-tls behind a TLS-terminating proxy",
    )


def cert_missing(tmp_path: Path, pki: PKI) -> Refusal:
    missing = tmp_path / "missing.crt"
    return Refusal(
        ["--cert", str(missing), "--key", str(pki.key), *AUTH],
        f"--cert: certificate file {missing} does not exist; give --cert the path "
        "of the PEM certificate file",
    )


def key_is_a_directory(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        ["--cert", str(pki.cert), "--key", str(tmp_path), *AUTH],
        f"--key: cannot read key file {tmp_path}: Is a directory; give --key the "
        "path of the PEM key file",
    )


def key_mismatched(tmp_path: Path, pki: PKI) -> Refusal:
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    return Refusal(
        ["--cert", str(pki.cert), "--key", str(other), *AUTH],
        f"--key: {other} is not the private key of the first certificate in "
        f"{pki.cert}; give the matching pair (the leaf certificate comes first)",
    )


def cert_without_pem(tmp_path: Path, pki: PKI) -> Refusal:
    text = tmp_path / "server.crt"
    text.write_text("this is not a certificate\n")
    return Refusal(
        ["--cert", str(text), "--key", str(pki.key), *AUTH],
        f"--cert: {text} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
        "give it in PEM (convert DER with 'openssl x509 -inform der')",
    )


def key_encrypted(tmp_path: Path, pki: PKI) -> Refusal:
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return Refusal(
        ["--cert", str(pki.cert), "--key", str(encrypted), *AUTH],
        f"--key: {encrypted} is encrypted; give the key without a passphrase "
        "(openssl pkey -in KEY -out PLAIN)",
    )


def no_credentials(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        _tls(pki),
        "no credentials: give --username and --password (or --password-file, or "
        "$GWEBHOOK_PASSWORD), or --allow-anonymous to accept anyone",
    )


def username_without_password(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--username", USERNAME],
        f"--username {USERNAME} needs a non-empty --password (or --password-file, "
        "or $GWEBHOOK_PASSWORD)",
    )


def password_without_username(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--password", "secret"],
        "a password was given without --username",
    )


def password_and_password_file(tmp_path: Path, pki: PKI) -> Refusal:
    secret = tmp_path / "password"
    secret.write_text("secret\n")
    return Refusal(
        [*_tls(pki), *AUTH, "--password-file", str(secret)],
        "give --password or --password-file, not both",
    )


def password_file_missing(tmp_path: Path, pki: PKI) -> Refusal:
    missing = tmp_path / "password.txt"
    return Refusal(
        [*_tls(pki), "--username", USERNAME, "--password-file", str(missing)],
        f"--password-file: cannot read {missing}: No such file or directory; give "
        "a file the daemon can read, holding just the password",
    )


def anonymous_with_credentials(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *AUTH, "--allow-anonymous"],
        "--allow-anonymous cannot be combined with credentials",
    )


def auth_header_with_username(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--auth-header", "t0ken", "--username", USERNAME],
        "give --auth-header or --username/--password, not both",
    )


def colon_in_username(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--username", "ad:min", "--password", "secret"],
        "--username cannot contain ':' (HTTP Basic forbids it)",
    )


def header_name_not_a_token(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--username", "_header:X Tök", "--password", "secret"],
        "--username _header:NAME needs a header name (letters, digits and "
        "!#$%&'*+-.^_`|~), e.g. _header:Authorization",
    )


def port_out_of_range(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *AUTH, "--port", "99999"],
        "Parameter type enforcement failed: --port 99999 is not a TCP port (0-65535)",
    )


def port_not_a_number(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *AUTH, "--port", "abc"],
        "Parameter type enforcement failed: --port abc is not a TCP port (0-65535)",
    )


def workers_out_of_range(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *AUTH, "--workers", "0"],
        "Parameter type enforcement failed: --workers 0 is not a number of "
        "processes, 1 to 64",
    )


def timeout_not_positive(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *AUTH, "--header-timeout", "-1"],
        "Parameter type enforcement failed: --header-timeout -1 is not a positive "
        "number of seconds",
    )


def db_in_missing_directory(tmp_path: Path, pki: PKI) -> Refusal:
    db = tmp_path / "no-such-directory" / "gwebhook.sqlite"
    return Refusal(
        [*_tls(pki), *AUTH, "--db", str(db)],
        f"--db: the directory {db.parent} of the store {db} does not exist; "
        "create it or give another --db",
    )


def no_tls_with_cert(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        ["--no-tls", "--cert", str(pki.cert), *AUTH],
        "--no-tls cannot be combined with --cert/--key; drop --no-tls to serve "
        "TLS, or drop --cert and --key behind a TLS proxy",
    )


REFUSALS: list[Callable[[Path, PKI], Refusal]] = [
    no_cert_nor_key,
    cert_missing,
    key_is_a_directory,
    key_mismatched,
    cert_without_pem,
    key_encrypted,
    no_credentials,
    username_without_password,
    password_without_username,
    password_and_password_file,
    password_file_missing,
    anonymous_with_credentials,
    auth_header_with_username,
    colon_in_username,
    header_name_not_a_token,
    port_out_of_range,
    port_not_a_number,
    workers_out_of_range,
    timeout_not_positive,
    db_in_missing_directory,
    no_tls_with_cert,
]


def assert_refused(tmp_path: Path, args: list[str], message: str) -> None:
    """``args`` are refused with exactly ``message``, and no store is made."""
    with pytest.raises(usage.UsageError) as refused:
        parse(tmp_path, args)
    assert str(refused.value) == message
    assert "\n" not in message
    assert not (tmp_path / "gwebhook.sqlite").exists()


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.__name__)
def test_refusal(tmp_path, pki, case):
    """A misconfiguration is refused with one line naming the option and the fix."""
    refusal = case(tmp_path, pki)
    assert_refused(tmp_path, refusal.args, refusal.message)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads a file whatever its mode says"
)
def test_refusal_key_unreadable(tmp_path, pki):
    """A key file without read permission is refused in one line naming --key."""
    key = tmp_path / "server.key"
    key.write_bytes(pki.key.read_bytes())
    key.chmod(0)
    assert_refused(
        tmp_path,
        ["--cert", str(pki.cert), "--key", str(key), *AUTH],
        f"--key: cannot read key file {key}: Permission denied; give --key the "
        "path of the PEM key file",
    )


def port_in_use(port: int) -> str:
    return (
        f"--port {port}: cannot listen on 127.0.0.1: Address already in use; "
        "choose another --port or interface, or stop what holds it"
    )


def test_refusal_port_in_use(tmp_path, pki):
    """A port another socket listens on is refused in one line naming --port."""
    with occupied_port() as holder:
        port = holder.getsockname()[1]
        args = [*_tls(pki), *AUTH, "--port", str(port)]
        assert_refused(tmp_path, args, port_in_use(port))


def test_a_good_configuration_is_accepted(tmp_path, pki):
    """The options every refusal above spoils are accepted, and make the store."""
    options = parse(tmp_path, [*_tls(pki), *AUTH])
    assert options["credentials"] is not None and options["tls"] is not None
    assert (tmp_path / "gwebhook.sqlite").exists()


# -- end to end: what an operator sees of a refusal --------------------------


def assert_twistd_refused(result, message: str) -> None:
    """twistd exited 1 with ``message`` as its last line and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert last_line(result) == f"{TWISTD} -n: {message}"


@pytest.mark.process
@pytest.mark.parametrize(
    "case", [key_mismatched, no_credentials], ids=lambda case: case.__name__
)
def test_twistd_prints_a_refusal_as_its_last_line_and_exits_1(tmp_path, pki, case):
    """twistd's last line is the refusal, and it exits 1 without a traceback."""
    refusal = case(tmp_path, pki)
    result = run_twistd([*here(tmp_path), *refusal.args], tmp_path)
    assert_twistd_refused(result, refusal.message)


@pytest.mark.process
def test_twistd_refuses_a_port_in_use_and_exits_1(tmp_path, pki):
    """A busy port stops twistd before it binds anything: one line, exit 1."""
    with occupied_port() as holder:
        port = holder.getsockname()[1]
        args = [*here(tmp_path), *_tls(pki), *AUTH, "--port", str(port)]
        result = run_twistd(args, tmp_path)
    assert_twistd_refused(result, port_in_use(port))


# -- the ways of starting that work ------------------------------------------


def test_password_file(daemon, tmp_path):
    """The password read from --password-file authenticates, a wrong one does not."""
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    d = daemon("--username", USERNAME, "--password-file", str(secret))
    assert d.request(headers=basic(USERNAME, "from-a-file")).status == 200
    assert d.request(headers=basic(USERNAME, "wrong")).status == 401


def test_password_from_environment(daemon):
    """The password read from $GWEBHOOK_PASSWORD authenticates, a wrong one does not."""
    d = daemon("--username", USERNAME, env={"GWEBHOOK_PASSWORD": "from-the-env"})
    assert d.request(headers=basic(USERNAME, "from-the-env")).status == 200
    assert d.request(headers=basic(USERNAME, "wrong")).status == 401


def test_auth_header_token(daemon):
    """--auth-header TOKEN accepts 'Authorization: TOKEN' and nothing else."""
    d = daemon("--auth-header", "t0ken-XYZ")
    assert d.request(headers={"Authorization": "t0ken-XYZ"}).status == 200
    assert d.request(headers={"Authorization": "Bearer t0ken-XYZ"}).status == 401
    assert d.request(headers={}).status == 401


def test_no_tls_serves_plain_http(daemon):
    """--no-tls --allow-anonymous answers plain HTTP without credentials."""
    d = daemon("--no-tls", "--allow-anonymous", tls=False)
    reply = d.request(body=b'{"name": "plain"}')
    assert reply.status == 200, reply.body
    assert [i["name"] for i in reply.json()] == ["plain"]
