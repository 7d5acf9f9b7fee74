"""
The PostgreSQL and HAProxy test support works: a fixture database exists
and is gone afterwards, a private cluster starts, serves, stops, crashes and
comes back with its data, its sessions can be killed, and haproxy forwards
TCP round-robin to the backends it sees up.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from support import haproxy as haproxy_support
from support import postgres
from support.ports import free_port
from support.postgres import (
    PrivateCluster,
    connect,
    created_database,
    database_exists,
    dbname_of,
    psql_rows,
    server_available,
)

# The fixtures live in the support modules (pytest finds them here).
pg_admin_uri = postgres.pg_admin_uri
pg_database = postgres.pg_database
pg_cluster = postgres.pg_cluster
pg_cluster_db = postgres.pg_cluster_db
haproxy = haproxy_support.haproxy


# ------------------------------------------------------- the machine's server


def test_no_server_at_a_closed_port_is_a_reason_saying_how_to_run():
    uri = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    reason = server_available(uri)
    assert reason is not None
    assert uri in reason
    assert postgres.ADMIN_URI_ENV in reason


def test_the_fixture_database_is_fresh_and_writable(pg_admin_uri, pg_database):
    admin = pg_admin_uri
    name = dbname_of(pg_database)
    assert name.startswith(postgres.DATABASE_PREFIX)
    assert pg_database == postgres.with_dbname(admin, name)
    assert database_exists(admin, name)
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert psql_rows(pg_database, tables) == [(0,)]
    psql_rows(pg_database, "CREATE TABLE t (x int)")
    psql_rows(pg_database, "INSERT INTO t VALUES (%s), (%s)", 1, 2)
    assert psql_rows(pg_database, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]


def test_a_created_database_is_dropped_even_with_a_session_left_open(pg_admin_uri):
    admin = pg_admin_uri
    with created_database(admin) as uri:
        name = dbname_of(uri)
        assert database_exists(admin, name)
        left_open = connect(uri)
        left_open.execute("SELECT 1")
    try:
        assert not database_exists(admin, name)
        with pytest.raises(Exception, match="terminat|closed|connection"):
            left_open.execute("SELECT 1")
    finally:
        left_open.close()


def test_two_fixture_databases_have_their_own_names(pg_admin_uri):
    with created_database(pg_admin_uri) as a, created_database(pg_admin_uri) as b:
        assert dbname_of(a) != dbname_of(b)


# ------------------------------------------------------------ private cluster


def refused(uri: str) -> bool:
    try:
        with connect(uri, connect_timeout=2):
            return False
    except Exception:
        return True


@pytest.mark.process
def test_the_private_cluster_stops_and_starts_again_with_its_data(pg_cluster):
    assert pg_cluster.running
    assert pg_cluster.pid is not None
    uri = pg_cluster.create_database("kept")
    assert uri == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/kept"
    psql_rows(uri, "CREATE TABLE t (x int)")
    psql_rows(uri, "INSERT INTO t VALUES (1)")
    try:
        pg_cluster.stop()
        assert not pg_cluster.running
        assert refused(uri)
        pg_cluster.start()
        assert psql_rows(uri, "SELECT x FROM t") == [(1,)]
        # Immediate: no shutdown checkpoint, the committed row survives recovery.
        psql_rows(uri, "INSERT INTO t VALUES (2)")
        pg_cluster.stop("immediate")
        assert refused(uri)
        pg_cluster.restart()
        assert psql_rows(uri, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        assert "database system was interrupted" in pg_cluster.log_text()
    finally:
        if not pg_cluster.running:
            pg_cluster.start()
        pg_cluster.drop_database("kept")


@pytest.mark.process
def test_a_killed_private_cluster_recovers_at_the_next_start(pg_cluster, pg_cluster_db):
    psql_rows(pg_cluster_db, "CREATE TABLE t (x int)")
    psql_rows(pg_cluster_db, "INSERT INTO t VALUES (7)")
    pid = pg_cluster.pid
    pg_cluster.kill()
    assert not postgres._pid_alive(pid)
    assert refused(pg_cluster_db)
    pg_cluster.start()
    assert psql_rows(pg_cluster_db, "SELECT x FROM t") == [(7,)]


@pytest.mark.process
def test_kill_connections_ends_every_session_of_the_database(pg_cluster, pg_cluster_db):
    name = dbname_of(pg_cluster_db)
    other = pg_cluster.create_database()
    sessions = [connect(pg_cluster_db) for _ in range(2)]
    bystander = connect(other)
    try:
        for s in [*sessions, bystander]:
            s.execute("SELECT 1")
        assert len(pg_cluster.backends(name)) == 2
        assert pg_cluster.kill_connections(name) == 2
        assert pg_cluster.backends(name) == []
        for s in sessions:
            with pytest.raises(Exception, match="terminat|closed|connection"):
                s.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        # The database itself is still there for new sessions.
        assert psql_rows(pg_cluster_db, "SELECT 1") == [(1,)]
    finally:
        for s in [*sessions, bystander]:
            s.close()
        pg_cluster.drop_database(dbname_of(other))


@pytest.mark.process
def test_a_closed_cluster_is_stopped_and_its_directory_gone():
    postgres.require_cluster()
    cluster = PrivateCluster()
    with cluster:
        pid = cluster.pid
        assert pid is not None and postgres._pid_alive(pid)
        assert cluster.directory.is_dir()
    assert not postgres._pid_alive(pid)
    assert not cluster.directory.exists()
    assert refused(cluster.uri())


# -------------------------------------------------------------------- haproxy


class Echo(socketserver.ThreadingTCPServer):
    """Answers each line with ``PORT:line``: which backend answered is seen."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    self.wfile.write(f"{server.port}:".encode() + line)

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@pytest.fixture
def echoes() -> Iterator[list[Echo]]:
    servers = [Echo(), Echo()]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def ask(port: int, line: bytes = b"hello\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(line)
        return s.makefile("rb").readline()


@pytest.mark.process
def test_haproxy_forwards_round_robin_to_the_backends_it_sees_up(haproxy, echoes):
    a, b = echoes
    proxy = haproxy([a.port, b.port])
    for e in echoes:
        proxy.wait_state(e.port, "UP")
    answers = {ask(proxy.port) for _ in range(4)}
    assert answers == {f"{a.port}:hello\n".encode(), f"{b.port}:hello\n".encode()}
    # One backend gone: after two failed checks every connection goes to the other.
    b.close()
    proxy.wait_state(b.port, "DOWN", timeout=5)
    assert {ask(proxy.port) for _ in range(4)} == {f"{a.port}:hello\n".encode()}
    assert proxy.stop() is not None
    assert proxy.process.poll() is not None


def test_haproxy_is_found_or_the_reason_says_how_to_install_it():
    reason = haproxy_support.haproxy_available()
    if haproxy_support.haproxy_binary() is None:
        assert reason is not None and "apt-get install haproxy" in reason
    else:
        assert reason is None
