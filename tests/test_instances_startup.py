"""
Start-up of ``twistd gwebhook --config FILE`` with a file that cannot be
used: refused before anything listens, the last line being the file's one
line (naming the file, the instance and the key), as twistd prints a usage
error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from support.credentials import AUTH
from support.daemon import TWISTD, last_line, run_twistd
from support.instances import instance, write_config
from support.pki import PKI
from support.ports import free_port, refuses_connections

from gwebhook.config import ConfigError, load_config

pytestmark = pytest.mark.process

BASIC = {"username": "u", "password": "p"}


def unparseable(directory: Path) -> Path:
    return write_config(directory, '[[instance]\nname = "a"\nanonymous = true\n')


def unknown_key(directory: Path) -> Path:
    return write_config(directory, instance("a", **BASIC) + 'colour = "red"\n')


def duplicate_name(directory: Path) -> Path:
    return write_config(directory, instance("a", **BASIC), instance("a", **BASIC))


def duplicate_port(directory: Path) -> Path:
    port = free_port()
    return write_config(
        directory, instance("a", port=port, **BASIC), instance("b", port=port, **BASIC)
    )


def missing_password_file(directory: Path) -> Path:
    return write_config(
        directory, instance("a", username="u", password_file="nowhere.pw")
    )


def nobody_can_send(directory: Path) -> Path:
    return write_config(directory, instance("a", incident_type="Lonely"))


def bad_expression(directory: Path) -> Path:
    return write_config(directory, instance("a", map={"name": "title["}, **BASIC))


def client_ca_not_a_ca(directory: Path) -> Path:
    leaf = trustme.CA().issue_cert("sensor-1.example.com")
    leaf.cert_chain_pems[0].write_to_path(str(directory / "leaf.pem"))
    return write_config(directory, instance("a", client_ca="leaf.pem", **BASIC))


BAD_FILES: list[Callable[[Path], Path]] = [
    unparseable,
    unknown_key,
    duplicate_name,
    duplicate_port,
    missing_password_file,
    nobody_can_send,
    bad_expression,
    client_ca_not_a_ca,
]


def the_refusal(config: Path) -> str:
    """The one line the config reader refuses ``config`` with."""
    with pytest.raises(ConfigError) as caught:
        load_config(str(config), os.environ)
    return str(caught.value)


def start_up(directory: Path, pki: PKI, config: Path, *args: str):
    """Run the daemon with ``config`` to completion; (result, its port)."""
    port = free_port()
    result = run_twistd(
        [
            "--interface", "127.0.0.1", "--port", str(port),
            "--db", str(directory / "gwebhook.sqlite"),
            "--cert", str(pki.cert), "--key", str(pki.key),
            "--config", str(config), *args,
        ],
        directory,
    )  # fmt: skip
    return result, port


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda bad: bad.__name__)
def test_a_bad_file_is_refused_at_start_up_in_its_one_line(tmp_path, pki, bad):
    """
    The daemon exits non-zero without a traceback, and its last line is the
    config reader's, after ``twistd -n:`` as every usage error is printed.
    """
    config = bad(tmp_path)
    expected = the_refusal(config)
    assert expected.startswith(f"{config}: "), expected
    result, port = start_up(tmp_path, pki, config, *AUTH)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert last_line(result) == f"{TWISTD} -n: {expected}"
    assert refuses_connections(port)


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_an_instance_on_the_daemons_own_port_is_refused(tmp_path, pki, option):
    """An instance whose port is --port or --metrics-port is refused, naming both."""
    ports = {"--port": free_port(), "--metrics-port": free_port()}
    taken = ports[option]
    config = write_config(tmp_path, instance("a", port=taken, **BASIC))
    result = run_twistd(
        [
            "--interface", "127.0.0.1", "--port", str(ports["--port"]),
            "--metrics-port", str(ports["--metrics-port"]),
            "--db", str(tmp_path / "gwebhook.sqlite"),
            "--cert", str(pki.cert), "--key", str(pki.key),
            "--config", str(config), *AUTH,
        ],
        tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    line = last_line(result)
    for words in (f"{config}: instance 'a': port", str(taken), option):
        assert words in line, line
    assert refuses_connections(ports["--port"])
