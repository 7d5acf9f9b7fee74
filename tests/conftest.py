"""
Fixtures shared by every test module: the test PKI and real ``twistd
gwebhook`` processes.  The helpers behind them are in the ``support``
package; this module holds fixtures only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.daemon import Daemon, Processes
from support.pki import PKI, make_pki

# Fixtures that start a real process: a test using one is marked ``process``.
PROCESS_FIXTURES = {
    "daemon",
    "spawn",
    "started",
    "pg_cluster",
    "pg_cluster_db",
    "haproxy",
}

# The PostgreSQL and HAProxy fixtures live beside their support code.
pytest_plugins = ["support.postgres", "support.haproxy"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``process`` every test that starts twistd through a fixture."""
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def no_password_from_the_shell(monkeypatch):
    """A GWEBHOOK_PASSWORD exported in the shell must not reach what a test runs."""
    monkeypatch.delenv("GWEBHOOK_PASSWORD", raising=False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    """A root CA, an intermediate and a localhost server certificate, as files."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def spawn(tmp_path, pki):
    """
    ``spawn(*args, start=True, **fields)``: a ``twistd gwebhook`` process
    (a ``support.daemon.Daemon``, its fields overridable: ``pki``, ``env``,
    ``logger``, ``wrapper``, ``argv``...), started in ``tmp_path``; every one
    is killed at teardown.
    """
    with Processes(tmp_path, pki) as started:
        yield started


@pytest.fixture
def daemon(spawn):
    """
    ``daemon(*args, tls=True, directory=None, **fields)``: ``spawn`` for a
    daemon started and listening, serving TLS with ``pki`` unless ``tls`` is
    false.
    """

    def start(
        *args: str, tls: bool = True, directory: Path | None = None, **fields
    ) -> Daemon:
        if not tls:
            fields["pki"] = None
        if directory is not None:
            fields["directory"] = directory
        return spawn(*args, **fields)

    return start


@pytest.fixture
def started() -> Iterator[list[Daemon]]:
    """
    A list for the daemons a test builds and starts itself (nodes of one
    PostgreSQL database, a forward's receiver): every one is killed at its
    end.
    """
    daemons: list[Daemon] = []
    try:
        yield daemons
    finally:
        for d in daemons:
            d.kill()
