"""
Start-up of ``twistd gwebhook`` as an operator runs it: every misconfiguration
is refused in one line naming the option and the fix, and the ways of giving a
password and of serving plain HTTP work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from support.credentials import AUTH as CREDENTIALS
from support.credentials import basic
from support.daemon import last_line, run_twistd
from support.pki import PKI
from support.ports import occupied_port


@dataclass
class Refusal:
    """Arguments that must be refused, and words the last line must hold."""

    args: list[str]
    words: list[str]


def _tls(pki: PKI) -> list[str]:
    return ["--cert", str(pki.cert), "--key", str(pki.key)]


def no_cert_nor_key(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(CREDENTIALS, ["--cert", "--key", "--no-tls"])


def cert_missing(tmp_path: Path, pki: PKI) -> Refusal:
    missing = tmp_path / "missing.crt"
    return Refusal(
        ["--cert", str(missing), "--key", str(pki.key), *CREDENTIALS],
        ["--cert", str(missing), "does not exist"],
    )


def key_is_a_directory(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        ["--cert", str(pki.cert), "--key", str(tmp_path), *CREDENTIALS],
        ["--key", str(tmp_path), "cannot read"],
    )


def key_mismatched(tmp_path: Path, pki: PKI) -> Refusal:
    other = tmp_path / "other.key"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    return Refusal(
        ["--cert", str(pki.cert), "--key", str(other), *CREDENTIALS],
        ["--key", str(other), "not the private key", "matching"],
    )


def cert_without_pem(tmp_path: Path, pki: PKI) -> Refusal:
    text = tmp_path / "server.crt"
    text.write_text("this is not a certificate\n")
    return Refusal(
        ["--cert", str(text), "--key", str(pki.key), *CREDENTIALS],
        ["--cert", str(text), "no PEM"],
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
        ["--cert", str(pki.cert), "--key", str(encrypted), *CREDENTIALS],
        ["--key", "encrypted", "without a passphrase"],
    )


def no_credentials(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(_tls(pki), ["--username", "--password", "--allow-anonymous"])


def username_without_password(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--username", "admin"],
        ["--username", "--password", "GWEBHOOK_PASSWORD"],
    )


def password_file_missing(tmp_path: Path, pki: PKI) -> Refusal:
    missing = tmp_path / "password.txt"
    return Refusal(
        [*_tls(pki), "--username", "admin", "--password-file", str(missing)],
        ["--password-file", str(missing), "No such file"],
    )


def port_out_of_range(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *CREDENTIALS, "--port", "99999"], ["--port", "99999", "0-65535"]
    )


def port_not_a_number(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), *CREDENTIALS, "--port", "abc"], ["--port", "abc", "0-65535"]
    )


def db_in_missing_directory(tmp_path: Path, pki: PKI) -> Refusal:
    db = tmp_path / "no-such-directory" / "gwebhook.sqlite"
    return Refusal([*_tls(pki), *CREDENTIALS, "--db", str(db)], ["--db", str(db)])


def no_tls_with_cert(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        ["--no-tls", "--cert", str(pki.cert), *CREDENTIALS], ["--no-tls", "--cert"]
    )


def header_name_not_a_token(tmp_path: Path, pki: PKI) -> Refusal:
    return Refusal(
        [*_tls(pki), "--username", "_header:X Tök", "--password", "secret"],
        ["--username", "_header:NAME", "_header:Authorization"],
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
    password_file_missing,
    port_out_of_range,
    port_not_a_number,
    db_in_missing_directory,
    no_tls_with_cert,
    header_name_not_a_token,
]


def assert_refused(result, words: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    line = last_line(result)
    for word in words:
        assert word in line, f"{word!r} not in the last line {line!r}"


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.__name__)
def test_refusal(tmp_path, pki, case):
    """A misconfiguration is refused with a non-zero exit and one line naming it."""
    refusal = case(tmp_path, pki)
    assert_refused(run_twistd(refusal.args, tmp_path), refusal.words)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads a file whatever its mode says"
)
def test_refusal_key_unreadable(tmp_path, pki):
    """A key file without read permission is refused in one line naming --key."""
    key = tmp_path / "server.key"
    key.write_bytes(pki.key.read_bytes())
    key.chmod(0)
    result = run_twistd(
        ["--cert", str(pki.cert), "--key", str(key), *CREDENTIALS], tmp_path
    )
    assert_refused(result, ["--key", str(key), "Permission denied"])


def test_refusal_port_in_use(tmp_path, pki):
    """A port another socket listens on is refused in one line naming --port."""
    with occupied_port() as holder:
        port = str(holder.getsockname()[1])
        args = [*_tls(pki), *CREDENTIALS, "--interface", "127.0.0.1", "--port", port]
        result = run_twistd(args, tmp_path)
    assert_refused(result, ["--port", port, "in use", "another --port"])


def test_password_file(daemon, tmp_path):
    """The password read from --password-file authenticates, a wrong one does not."""
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    d = daemon("--username", "admin", "--password-file", str(secret))
    assert d.request(headers=basic("admin", "from-a-file")).status == 200
    assert d.request(headers=basic("admin", "wrong")).status == 401


def test_password_from_environment(daemon):
    """The password read from $GWEBHOOK_PASSWORD authenticates, a wrong one does not."""
    d = daemon("--username", "admin", env={"GWEBHOOK_PASSWORD": "from-the-environment"})
    assert d.request(headers=basic("admin", "from-the-environment")).status == 200
    assert d.request(headers=basic("admin", "wrong")).status == 401


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
