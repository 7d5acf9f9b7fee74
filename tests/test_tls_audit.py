"""
A TLS audit of the running daemon, as an outside scanner sees it: sslyze
(protocol versions, every cipher suite, compression, renegotiation, the
certificate chain, Heartbleed, ROBOT, OpenSSL CCS injection), then the
parts that matter most checked again with the ``openssl s_client`` command,
which needs nothing installed from PyPI.

The daemon is given a chain built here rather than by trustme: sslyze
validates paths with ``cryptography``'s RFC 5280 verifier, which rejects
trustme's leaf ("EE subjectAltName MUST NOT be critical when subject is
nonempty"), a property of the test certificate, not of the server.  The
chain is root → intermediate → leaf, with an ECDSA or an RSA leaf key (RSA
key exchange and ROBOT only mean something with an RSA key).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.credentials import AUTH
from support.daemon import Processes
from support.pki import make_strict_chain

TLS12_FORWARD_SECRET_AEAD = ("_GCM_", "_CHACHA20_POLY1305_")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.process,
    # sslyze's bundled trust stores hold certificates cryptography frowns on.
    pytest.mark.filterwarnings(
        "ignore::cryptography.utils.CryptographyDeprecationWarning"
    ),
]


@pytest.fixture(scope="module", params=["ecdsa", "rsa"])
def audited(request, tmp_path_factory):
    """A daemon serving an RFC 5280-clean chain with an ECDSA or RSA leaf key."""
    directory = tmp_path_factory.mktemp(f"audit-{request.param}")
    chain = make_strict_chain(directory / "chain", request.param)
    with Processes(directory, chain) as started:
        d = started(*AUTH)
        d.chain = chain
        d.key_type = request.param
        yield d


# -- sslyze ---------------------------------------------------------------------


def scan(d):
    """Every check the audit needs, in one sslyze scan of the daemon."""
    sslyze = pytest.importorskip(
        "sslyze", reason="sslyze runs in the audit venv of the README's test command"
    )
    from sslyze.plugins.certificate_info.implementation import (
        CertificateInfoExtraArgument,
    )

    commands = {
        sslyze.ScanCommand.SSL_2_0_CIPHER_SUITES,
        sslyze.ScanCommand.SSL_3_0_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_1_0_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_1_1_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_1_2_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_1_3_CIPHER_SUITES,
        sslyze.ScanCommand.TLS_COMPRESSION,
        sslyze.ScanCommand.SESSION_RENEGOTIATION,
        sslyze.ScanCommand.CERTIFICATE_INFO,
        sslyze.ScanCommand.HEARTBLEED,
        sslyze.ScanCommand.ROBOT,
        sslyze.ScanCommand.OPENSSL_CCS_INJECTION,
    }
    request = sslyze.ServerScanRequest(
        server_location=sslyze.ServerNetworkLocation(
            "localhost", d.port, ip_address="127.0.0.1"
        ),
        scan_commands=commands,
        scan_commands_extra_arguments=sslyze.ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=d.chain.ca)
        ),
    )
    scanner = sslyze.Scanner()
    scanner.queue_scans([request])
    [result] = list(scanner.get_results())
    assert result.scan_status == sslyze.ServerScanStatusEnum.COMPLETED, (
        result.connectivity_error_trace
    )
    attempts = result.scan_result
    for command in commands:
        attempt = getattr(attempts, command.value)
        assert attempt.status == sslyze.ScanCommandAttemptStatusEnum.COMPLETED, (
            command,
            attempt.error_reason,
            attempt.error_trace,
        )
    return attempts


def accepted(attempt) -> list[str]:
    return [suite.cipher_suite.name for suite in attempt.result.accepted_cipher_suites]


def test_sslyze_audit(audited):
    """
    sslyze finds only TLS 1.2 with ECDHE+AEAD suites and TLS 1.3, no
    compression, no client renegotiation, a complete chain, and none of
    Heartbleed, ROBOT or CCS injection.
    """
    found = scan(audited)  # skips where sslyze is not installed
    from sslyze.plugins.robot.implementation import RobotScanResultEnum

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert accepted(getattr(found, f"{old}_cipher_suites")) == [], old
    tls12 = accepted(found.tls_1_2_cipher_suites)
    assert tls12, "TLS 1.2 is refused"
    for suite in tls12:
        assert suite.startswith("TLS_ECDHE_"), suite
        assert any(aead in suite for aead in TLS12_FORWARD_SECRET_AEAD), suite
    assert accepted(found.tls_1_3_cipher_suites), "TLS 1.3 is not offered"
    assert found.tls_compression.result.supports_compression is False

    renegotiation = found.session_renegotiation.result
    assert renegotiation.is_vulnerable_to_client_renegotiation_dos is False
    assert renegotiation.client_renegotiations_success_count == 0

    [deployment] = found.certificate_info.result.certificate_deployments
    received = deployment.received_certificate_chain
    assert len(received) == 2, "the chain is not leaf + intermediate"
    assert received[0].subject == audited.chain.leaf_subject
    assert deployment.received_chain_has_valid_order is True
    assert deployment.received_chain_contains_anchor_certificate is False
    [supplied] = [
        v
        for v in deployment.path_validation_results
        if v.trust_store.path == audited.chain.ca
    ]
    assert supplied.was_validation_successful, supplied.validation_error
    assert len(supplied.verified_certificate_chain) == 3

    assert found.heartbleed.result.is_vulnerable_to_heartbleed is False
    assert found.openssl_ccs_injection.result.is_vulnerable_to_ccs_injection is False
    robot = found.robot.result.robot_result
    if audited.key_type == "rsa":
        assert robot == RobotScanResultEnum.NOT_VULNERABLE_RSA_NOT_SUPPORTED
    else:
        assert robot in (
            RobotScanResultEnum.NOT_VULNERABLE_RSA_NOT_SUPPORTED,
            RobotScanResultEnum.NOT_VULNERABLE_NO_ORACLE,
        )


# -- openssl s_client -------------------------------------------------------------

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is not installed"
)


def s_client(d, *options: str, send: bytes = b"Q\n") -> str:
    """Run ``openssl s_client`` against the daemon; its combined output."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}",
         "-servername", "localhost", "-CAfile", str(d.chain.ca), *options],
        input=send,
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    return (done.stdout + done.stderr).decode("utf-8", "replace")


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_openssl_old_protocols_refused(audited, version):
    """openssl s_client cannot agree on TLS 1.0 or 1.1 with the daemon."""
    out = s_client(audited, version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "Cipher is (NONE)" in out or "alert protocol version" in out, out


@needs_openssl
def test_openssl_client_renegotiation_refused(audited):
    """A TLS 1.2 client asking to renegotiate ('R') is refused."""
    out = s_client(audited, "-tls1_2", "-verify_return_error", send=b"R\n")
    assert "Verify return code: 0 (ok)" in out, out
    assert "RENEGOTIATING" in out
    assert "no renegotiation" in out, out


@needs_openssl
def test_openssl_chain_verifies_against_the_root_only(audited):
    """The served chain (leaf, intermediate) verifies against the root CA alone."""
    out = s_client(audited, "-verify_return_error", "-showcerts")
    assert "Verify return code: 0 (ok)" in out, out
    assert out.count("-----BEGIN CERTIFICATE-----") == 2
    assert "Compression: NONE" in out
