"""
PostgreSQL for the tests: the machine's server (a fresh database per test),
a private cluster of our own for fault tests (stopped, killed, restarted at
will), and reading back what was stored.

The machine's server is the one at ``postgresql://postgres@127.0.0.1:5432/postgres``
(trust authentication), or the admin URI in ``GWEBHOOK_TEST_PG``: a user
allowed to ``CREATE DATABASE`` and to terminate other sessions.  Never
reconfigured, never stopped: tests only create and drop their own databases.
When the default one does not answer (or ``GWEBHOOK_TEST_PG=private``), the
fixture databases are made on a private cluster started for the session.

The private cluster runs the Debian server binaries (``/usr/lib/postgresql/*/bin``,
or ``GWEBHOOK_TEST_PG_BIN``); they refuse to run as root, so under root it
runs as the ``postgres`` OS user, in a directory of its own under the
temporary directory.

What is missing (the server, psycopg, the binaries, the ``postgres`` user)
skips the test with a reason that says how to run it; with
``GWEBHOOK_TEST_NO_SKIP=1`` it fails instead (CI, where a silent skip would
let a whole family of tests never run).

psycopg is imported only when used: this module imports without it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from support.ports import free_port
from support.wait import wait_for

DEFAULT_ADMIN_URI = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_URI_ENV = "GWEBHOOK_TEST_PG"
# GWEBHOOK_TEST_PG=private: the fixture databases on a private cluster.
PRIVATE = "private"
BIN_ENV = "GWEBHOOK_TEST_PG_BIN"
NO_SKIP_ENV = "GWEBHOOK_TEST_NO_SKIP"

# Bounds on everything that talks to a server.
CONNECT_TIMEOUT = 5  # seconds, psycopg's connect_timeout
STATEMENT_TIMEOUT_MS = 30_000

# Names of the databases the fixtures create: the pid of the pytest process
# that made them, then randomness.
DATABASE_PREFIX = "gwebhook_t_"

# Directories of private clusters: a file in each names the pytest process.
CLUSTER_PREFIX = "gwebhook-pg-"
OWNER_FILE = "owner.pid"


# ------------------------------------------------------------------ skipping


def skip_or_fail(reason: str) -> None:
    """``pytest.skip(reason)``, or ``pytest.fail`` under GWEBHOOK_TEST_NO_SKIP=1."""
    if os.environ.get(NO_SKIP_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason} ({NO_SKIP_ENV} is set: not skipped)")
    pytest.skip(reason)


def _psycopg():
    """The psycopg module, or None when it is not installed."""
    try:
        import psycopg
    except ImportError:
        return None
    return psycopg


PSYCOPG_MISSING = (
    "psycopg 3 is not installed: pip install 'psycopg[binary]' "
    "(or gwebhook's [test] extra)"
)


# ---------------------------------------------------------- the machine's server


def admin_uri() -> str:
    """The URI of the machine's server the tests administer (env or default)."""
    return os.environ.get(ADMIN_URI_ENV) or DEFAULT_ADMIN_URI


def with_dbname(uri: str, dbname: str) -> str:
    """``uri`` naming database ``dbname`` instead of its own."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path="/" + dbname))


def dbname_of(uri: str) -> str:
    """The database a ``postgresql://`` URI names."""
    return urlsplit(uri).path.lstrip("/")


def connect(uri: str, **kwargs: Any):
    """
    A psycopg connection to ``uri``, autocommit, bounded in time (connect and
    statements).  Close it (``with connect(uri) as conn:``).
    """
    psycopg = _psycopg()
    if psycopg is None:
        raise RuntimeError(PSYCOPG_MISSING)
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("options", f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
    return psycopg.connect(uri, **kwargs)


def psql_rows(uri: str, sql: str, *params: Any) -> list[tuple]:
    """
    The rows ``sql`` (with ``%s`` placeholders for ``params``) answers on a
    new autocommit connection to ``uri``; ``[]`` for a statement that
    returns none.
    """
    with connect(uri) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description is not None else []


def server_available(uri: str | None = None) -> str | None:
    """
    None when the server at ``uri`` (default: ``admin_uri()``) accepts a
    psycopg connection, else why not, with how to make the tests run.
    """
    uri = uri or admin_uri()
    if _psycopg() is None:
        return PSYCOPG_MISSING
    try:
        with connect(uri) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return (
            f"no PostgreSQL server for the tests at {uri} "
            f"({type(e).__name__}: {' '.join(str(e).split())}); run one there "
            "with trust authentication for user postgres (Debian: apt-get "
            f"install postgresql), or set {ADMIN_URI_ENV} to the URI of a user "
            "allowed to create databases"
        )
    return None


def require_server(uri: str | None = None) -> str:
    """The admin URI of the machine's server; skips the test when there is none."""
    uri = uri or admin_uri()
    reason = server_available(uri)
    if reason is not None:
        skip_or_fail(reason)
    return uri


def _terminate_and_drop(admin: str, name: str) -> None:
    from psycopg import sql

    with connect(admin) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )


@contextlib.contextmanager
def created_database(admin: str | None = None) -> Iterator[str]:
    """
    A new database with a unique name on the server at ``admin`` (default:
    ``admin_uri()``): its URI, the same user and host; dropped on exit, its
    remaining sessions terminated first.  Skips when there is no server.
    """
    from psycopg import sql

    admin = require_server(admin)
    name = f"{DATABASE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    with connect(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin, name)
    finally:
        _terminate_and_drop(admin, name)


def database_exists(admin: str, name: str) -> bool:
    """True when the server at ``admin`` has a database ``name``."""
    return bool(psql_rows(admin, "SELECT 1 FROM pg_database WHERE datname = %s", name))


# ----------------------------------------------------------- a private cluster


def server_bindir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres (env, else newest Debian's)."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: (
            int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0
        ),
    )
    return found[-1].parent if found else None


def _run_as() -> str | None:
    """The OS user the server binaries run as: None for ourselves (not root)."""
    return "postgres" if os.geteuid() == 0 else None


def cluster_available() -> str | None:
    """None when a private cluster can be made here, else why not."""
    if _psycopg() is None:
        return PSYCOPG_MISSING
    bindir = server_bindir()
    if bindir is None or not all(
        (bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")
    ):
        where = bindir or "/usr/lib/postgresql/*/bin"
        return (
            f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {where}: "
            f"apt-get install postgresql, or set {BIN_ENV} to their directory"
        )
    user = _run_as()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return (
                f"running as root and there is no {user!r} OS user to run a "
                "private PostgreSQL cluster as (initdb refuses root): create "
                "it, or run the tests as another user"
            )
    return None


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PrivateCluster:
    """
    A PostgreSQL cluster of our own, on 127.0.0.1 at a free port, trust
    authentication, small shared buffers, fsync on; its unix socket, log and
    data in its own directory.  ``init()`` then ``start()`` (or use it as a
    context manager, which does both and ``close()``s it); ``close()`` stops
    it whatever state it is in and removes its directory.

    Everything is bounded: ``timeout`` seconds for pg_ctl's waits, connections
    by psycopg's connect timeout.
    """

    SETTINGS = {
        "listen_addresses": "'127.0.0.1'",
        "shared_buffers": "'16MB'",
        "max_connections": "50",
        "fsync": "on",
        "logging_collector": "off",
        "log_line_prefix": "'%m [%p] %d '",
        "log_connections": "on",
        "log_disconnections": "on",
    }

    def __init__(
        self,
        port: int | None = None,
        *,
        timeout: float = 30,
        settings: dict[str, str] | None = None,
    ) -> None:
        reason = cluster_available()
        if reason is not None:
            raise RuntimeError(reason)
        bindir = server_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.user = _run_as()
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.timeout = timeout
        self.settings = {**self.SETTINGS, **(settings or {})}
        reap_stale_clusters()
        self.directory = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX))
        (self.directory / OWNER_FILE).write_text(f"{os.getpid()}\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._closed = False
        atexit.register(self.close)

    # -- running the binaries

    def _run(self, *args: str, timeout: float | None = None) -> str:
        """Run a server binary as the cluster's user; its output; fail on error."""
        command = [str(self.bindir / args[0]), *args[1:]]
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user, group=self.user, extra_groups=[])
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.directory),
        }
        # Output to a file, not a pipe: the postmaster pg_ctl starts must
        # not hold our pipe open.
        with tempfile.TemporaryFile() as out:
            try:
                done = subprocess.run(
                    command,
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=timeout or self.timeout + 10,
                    **kwargs,
                )
            except subprocess.TimeoutExpired as e:
                raise AssertionError(
                    f"{' '.join(command)} did not finish in {e.timeout} s"
                    f"{self._log_tail()}"
                ) from None
            out.seek(0)
            output = out.read().decode(errors="replace")
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode}: {output}"
                f"{self._log_tail()}"
            )
        return output

    def _log_tail(self, lines: int = 20) -> str:
        text = self.log_text()
        return (
            "\n--- postgres.log:\n" + "\n".join(text.splitlines()[-lines:])
            if text
            else ""
        )

    def log_text(self) -> str:
        """What the server logged so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # -- life cycle

    def init(self) -> PrivateCluster:
        """initdb: superuser ``postgres``, trust authentication, UTF-8."""
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C.UTF-8",
            # initdb's own flushing only; the server runs with fsync on.
            "--no-sync",
        )  # fmt: skip
        self._write_settings()
        return self

    def _write_settings(self) -> None:
        settings = {
            **self.settings,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# gwebhook tests\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    @property
    def running(self) -> bool:
        """What ``pg_ctl status`` says."""
        if not (self.data / "PG_VERSION").exists():
            return False
        try:
            self._run("pg_ctl", "status", "-D", str(self.data), timeout=10)
        except AssertionError:
            return False
        return True

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (from postmaster.pid), None when it is not running."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def start(self) -> PrivateCluster:
        """Start the server and wait until it accepts connections."""
        try:
            self._pg_ctl_start()
        except AssertionError:
            # Someone took the free port between our choice and the bind:
            # only before the first start, when no URI has been handed out.
            if self._fixed_port or "could not bind" not in self.log_text():
                raise
            self._fixed_port = True
            self.port = free_port()
            self._rewrite_port()
            self._pg_ctl_start()
        self._fixed_port = True
        wait_for(self._accepts, self.timeout, f"{self} to accept connections")
        return self

    def _pg_ctl_start(self) -> None:
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-w", "-t", str(int(self.timeout)),
            "-l", str(self.log),
        )  # fmt: skip

    def _rewrite_port(self) -> None:
        conf = self.data / "postgresql.conf"
        text = re.sub(r"(?m)^port = \d+$", f"port = {self.port}", conf.read_text())
        conf.write_text(text)

    def _accepts(self) -> bool:
        try:
            with connect(self.uri(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def stop(self, mode: str = "fast") -> None:
        """
        pg_ctl stop: ``fast`` (sessions rolled back, clean shutdown),
        ``immediate`` (no shutdown checkpoint: crash recovery at the next
        start) or ``smart`` (waits for the sessions to end).  Nothing when it
        is not running.
        """
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if not self.running:
            return
        self._run(
            "pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w",
            "-t", str(int(self.timeout)),
        )  # fmt: skip

    def restart(self, mode: str = "fast") -> PrivateCluster:
        """``stop(mode)`` then ``start()``: the same port, the same data."""
        self.stop(mode)
        return self.start()

    def kill(self) -> None:
        """
        SIGKILL the postmaster and every process it started (a crash the
        server could not see coming); the next ``start()`` recovers.
        """
        pid = self.pid
        if pid is not None:
            _kill_tree(pid)
        # Its lock files name a pid that may linger as a zombie until init
        # reaps it, which the next postmaster would take for a live one.
        locks = [self.data / "postmaster.pid", *self.directory.glob(".s.PGSQL.*.lock")]
        for lock in locks:
            with contextlib.suppress(OSError):
                lock.unlink()

    def close(self) -> None:
        """Stop the server whatever its state (immediately) and remove its directory."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self.pid is not None:
                self.stop("immediate")
        except AssertionError:
            self.kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateCluster:
        try:
            return self.init().start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PrivateCluster 127.0.0.1:{self.port} {self.directory}>"

    # -- databases and sessions

    def uri(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """``postgresql://USER@127.0.0.1:PORT/DBNAME`` on this cluster."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create database ``name`` (default: a unique one); its URI."""
        from psycopg import sql

        name = name or f"{DATABASE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        with connect(self.uri()) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, its sessions terminated first."""
        _terminate_and_drop(self.uri(), name)

    def backends(self, datname: str) -> list[int]:
        """Pids of the client backends connected to ``datname`` (ours excluded)."""
        rows = psql_rows(
            self.uri(),
            "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            datname,
        )
        return [pid for (pid,) in rows]

    def kill_connections(self, datname: str, timeout: float = 10) -> int:
        """
        pg_terminate_backend every session of ``datname`` but our own, and
        wait until they are gone; how many there were.
        """
        rows = psql_rows(
            self.uri(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            datname,
        )
        wait_for(
            lambda: not self.backends(datname),
            timeout,
            f"the sessions of {datname} to end",
        )
        return len(rows)


def reap_stale_clusters() -> None:
    """
    Stop and remove the private clusters of pytest processes that are gone
    (killed before their teardown could run): their postmaster would
    otherwise run forever.
    """
    for directory in Path(tempfile.gettempdir()).glob(CLUSTER_PREFIX + "*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pidfile = directory / "data" / "postmaster.pid"
            _kill_tree(int(pidfile.read_text().split("\n", 1)[0]))
        shutil.rmtree(directory, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces and parentheses.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL a postmaster and its children, if it is one; wait until gone."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return
    if comm not in ("postgres", "postmaster"):
        return  # the pid was reused by something else
    victims = [pid, *_children(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: not any(_pid_alive(v) for v in victims),
        10,
        f"postmaster {pid} and its children to die",
    )


def require_cluster() -> None:
    """Skip the test (with how to run it) when no private cluster can be made."""
    reason = cluster_available()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PrivateCluster]:
    """
    A running ``PrivateCluster`` shared by a module's tests (initdb takes
    seconds); stopped and removed at the module's end.  A test that stops it
    leaves it stopped for the next: ``pg_cluster_db`` starts it again.
    """
    require_cluster()
    with PrivateCluster() as cluster:
        yield cluster


@pytest.fixture
def pg_cluster_db(pg_cluster: PrivateCluster) -> Iterator[str]:
    """
    URI of a fresh database on ``pg_cluster``, started first if a test left it
    stopped; dropped at teardown (the cluster started again if need be).
    """
    if not pg_cluster.running:
        pg_cluster.start()
    uri = pg_cluster.create_database()
    try:
        yield uri
    finally:
        if not pg_cluster.running:
            pg_cluster.start()
        pg_cluster.drop_database(dbname_of(uri))


# ------------------------------------------------------ fixture databases


@pytest.fixture(scope="session")
def pg_admin_uri() -> Iterator[str]:
    """
    The admin URI the fixture databases are created with: ``GWEBHOOK_TEST_PG``
    when set (skips if it does not answer; ``private``: a private cluster);
    else the machine's server at 127.0.0.1:5432 when it answers; else a
    private cluster for the session, when one can be made here; else skips,
    saying why.
    """
    explicit = os.environ.get(ADMIN_URI_ENV)
    if explicit == PRIVATE:
        reason = f"{ADMIN_URI_ENV}={PRIVATE}"
    else:
        uri = explicit or DEFAULT_ADMIN_URI
        reason = server_available(uri)
        if reason is None:
            yield uri
            return
        if explicit:
            skip_or_fail(reason)
    cluster_reason = cluster_available()
    if cluster_reason is not None:
        skip_or_fail(f"{reason}; and no private cluster: {cluster_reason}")
    with PrivateCluster() as cluster:
        yield cluster.uri()


@pytest.fixture
def pg_database(pg_admin_uri: str) -> Iterator[str]:
    """
    URI of a fresh database on the tests' server (``pg_admin_uri``):
    ``postgresql://postgres@127.0.0.1:5432/gwebhook_t_PID_RANDOM`` on this
    machine; dropped at teardown, its remaining sessions terminated first.
    """
    with created_database(pg_admin_uri) as uri:
        yield uri


@pytest.fixture(scope="module")
def pg_database_module(pg_admin_uri: str) -> Iterator[str]:
    """``pg_database`` shared by the tests of a module."""
    with created_database(pg_admin_uri) as uri:
        yield uri
