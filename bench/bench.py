"""
gwebhook's benchmark: each scenario is driven by wrk over TLS against
gwebhook (under twistd) and against the reference (FastAPI on uvicorn), in
the same run, each server with a fresh store.  Run it through ``bench/run``,
which prepares bench/.venv and wrk; see bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import hmac
import itertools
import json
import os
import platform
import re
import resource
import secrets
import shlex
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.client import HTTPSConnection
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ports import free_port

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
LUA = HERE / "post.lua"
CONFIGS = HERE / "instances"
PAYLOADS = HERE / "payloads"
OUT = HERE / "out"
TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"
USERNAME = "bench"
# Where the config-instance scenarios (b-plain, b-signed, b-dedup...) post:
# every config in bench/instances declares one instance, named bench.
INSTANCE_PATH = "/instance/execute/bench"
# The environment variable the signed configs read their secret from.
SECRET_ENV = "BENCH_SIGNATURE_SECRET"  # noqa: S105 (a name, not a secret)
# The read API's scenarios: the token bench/waiters.py sends, and room for
# its connections besides the load's.
API_TOKEN = "bench-api-token"  # noqa: S105 (made up for the run's servers)
API_MAX_CONNECTIONS = 2000
WAITER_SOURCES = [f"127.0.0.{n}" for n in range(2, 6)]


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    connections: int
    batch: int = 1
    close: bool = False
    discard: bool = False
    workers: int = 1
    threads: int = 1
    # gwebhook only: --config bench/instances/CONFIG.toml, requests posted to
    # INSTANCE_PATH.
    config: str | None = None
    # Every request distinct and signed (post.lua's BENCH_VARY).
    vary: bool = False
    # gwebhook only: the store in a fresh PostgreSQL database (--pg) rather
    # than a fresh SQLite file.
    postgres: bool = False
    # gwebhook only: this many gwebhook processes on ports of their own, one
    # database, each pinned to a core of its own; one wrk per node, the
    # connections split between them.
    nodes: int = 1
    # gwebhook only: the read API on (--api-token-file), and this many long
    # polls held open by bench/waiters.py during the warm-up and the run.
    api: bool = False
    waiters: int = 0
    # The waiters' instance= filter: an instance the load never posts to,
    # so that they stay waiting; None: no filter, each is answered by the
    # load's next commit and asks again (consumers following the stream).
    waiter_instance: str | None = None
    # The body of every request: a file of bench/payloads (what senders
    # send), instead of post.lua's small incident (or batch of them).
    payload: str | None = None
    # gwebhook only: a [[forward]] of every incident (bench/instances/
    # forward.toml, appended to the config's) to a second gwebhook that the
    # bench starts on core 1 (forward-receiver.toml).
    forward: bool = False

    @property
    def per_request(self) -> int:
        """Incidents in each request's body."""
        return payload_incidents(self.payload) if self.payload else self.batch

    @property
    def pinned(self) -> bool:
        """One server process: server on core 0, wrk on core 1."""
        return self.workers == 1 and self.nodes == 1

    @property
    def gwebhook_only(self) -> bool:
        return bool(self.config or self.postgres or self.nodes > 1 or self.api)

    def runs_on(self, server: str) -> bool:
        """The config-instance, PostgreSQL and read-API scenarios are gwebhook's."""
        return not self.gwebhook_only or server == "gwebhook"


def payload_incidents(name: str) -> int:
    """Incidents in a payload file: one per object, one per array element."""
    document = json.loads((PAYLOADS / name).read_bytes())
    return len(document) if isinstance(document, list) else 1


ALERT = "alert.json"  # a ~650-byte security alert, nested three levels
ALERTS = "alerts-100.json"  # an array of 100 such alerts (~64 kB)

SCENARIOS = {
    s.key: s
    for s in [
        Scenario("a", "1 incident/request, keep-alive, 1 connection", 1),
        Scenario("b", "1 incident/request, keep-alive, 32 connections", 32),
        Scenario(
            "c",
            "1 incident/request, new TLS connection per request, 32 conns",
            32,
            close=True,
        ),
        Scenario(
            "d",
            "100 incidents/request (array), keep-alive, 32 connections",
            32,
            batch=100,
        ),
        Scenario(
            "e",
            "store disabled, 1 incident/request, keep-alive, 32 connections",
            32,
            discard=True,
        ),
        Scenario(
            "f",
            "2 server processes, 1 incident/request, keep-alive, 32 conns",
            32,
            workers=2,
            threads=2,
        ),
        Scenario(
            "g",
            "2 server processes, 100 incidents/request, keep-alive, 32 conns",
            32,
            batch=100,
            workers=2,
            threads=2,
        ),
        # As b, but every request distinct (its own alertId and webhook-id)
        # and signed (Standard Webhooks), to one config instance that checks
        # Basic auth and, depending on the scenario, the signature, the
        # duplicates, or both: the same requests each time, only the
        # instance's config differs.
        Scenario(
            "b-plain",
            "as b, distinct signed requests, instance checks Basic auth only",
            32,
            config="plain",
            vary=True,
        ),
        Scenario(
            "b-signed",
            "as b-plain, instance also verifies the signature (standard)",
            32,
            config="signed",
            vary=True,
        ),
        Scenario(
            "b-dedup",
            "as b-plain, instance also deduplicates (keys alertId, header webhook-id)",
            32,
            config="dedup",
            vary=True,
        ),
        Scenario(
            "b-signed-dedup",
            "as b-plain, instance verifies the signature and deduplicates",
            32,
            config="signed-dedup",
            vary=True,
        ),
        # b-plain's instance, and a forward of every incident (xsoar, 100 a
        # request, TLS) to a receiving gwebhook on core 1.
        Scenario(
            "b-forward",
            "as b-plain, every incident forwarded (xsoar, batch 100) to a gwebhook",
            32,
            config="plain",
            vary=True,
            forward=True,
        ),
        # gwebhook on PostgreSQL (a fresh database per run, --pg), against
        # b and d on SQLite: one node, then two nodes on one database.
        Scenario(
            "b-pg",
            "as b, store on PostgreSQL, one node",
            32,
            postgres=True,
        ),
        Scenario(
            "d-pg",
            "as d, store on PostgreSQL, one node",
            32,
            batch=100,
            postgres=True,
        ),
        Scenario(
            "b-pg2",
            "as b-pg, two nodes (one per core) on one database, 16 conns each",
            32,
            postgres=True,
            nodes=2,
        ),
        Scenario(
            "d-pg2",
            "as d-pg, two nodes (one per core) on one database, 16 conns each",
            32,
            batch=100,
            postgres=True,
            nodes=2,
        ),
        # The read API's long polls: b with the API on, without and with
        # 1,000 long polls waiting (bench/waiters.py) while the load runs.
        Scenario(
            "b-api",
            "as b, read API on (--api-token-file), no long polls",
            32,
            api=True,
        ),
        Scenario(
            "b-api-waiting",
            "as b-api, 1,000 long polls waiting for another instance",
            32,
            api=True,
            waiters=1000,
            waiter_instance="idle",
        ),
        Scenario(
            "b-api-following",
            "as b-api, 1,000 long polls of all incidents, each asking again",
            32,
            api=True,
            waiters=1000,
        ),
        # What senders send (bench/payloads): a ~650-byte nested alert, 100
        # of them in an array, a Wallarm hit array, a GitHub push event; the
        # letter says which of a-g's loads each is.
        Scenario(
            "b-alert",
            "650-byte nested alert/request, keep-alive, 32 connections",
            32,
            payload=ALERT,
        ),
        Scenario(
            "c-alert",
            "650-byte nested alert/request, new TLS connection per request, 32 conns",
            32,
            close=True,
            payload=ALERT,
        ),
        Scenario(
            "d-alert",
            "arrays of 100 nested alerts (64 kB)/request, keep-alive, 32 conns",
            32,
            payload=ALERTS,
        ),
        Scenario(
            "e-alert",
            "store disabled, 650-byte alert/request, keep-alive, 32 connections",
            32,
            discard=True,
            payload=ALERT,
        ),
        Scenario(
            "f-alert",
            "2 server processes, 650-byte alert/request, keep-alive, 32 conns",
            32,
            workers=2,
            threads=2,
            payload=ALERT,
        ),
        Scenario(
            "g-alert",
            "2 server processes, arrays of 100 alerts/request, keep-alive, 32 conns",
            32,
            workers=2,
            threads=2,
            payload=ALERTS,
        ),
        Scenario(
            "b-github",
            "GitHub push event (6 kB)/request, keep-alive, 32 connections",
            32,
            payload="github-push.json",
        ),
        Scenario(
            "b-wallarm",
            "Wallarm hit array (900 bytes)/request, keep-alive, 32 connections",
            32,
            payload="wallarm-hits.json",
        ),
    ]
}
# Scenarios compared with another of the same round: (the base, the least
# ratio of the scenario's throughput to the base's that meets the target,
# None for no target).  The config-instance ones against b-plain: the most
# a signature check and dedup may cost; PostgreSQL against SQLite, one node;
# two nodes against one; the API's long polls against none.
COMPARISONS: dict[str, tuple[str, float | None]] = {
    "b-signed": ("b-plain", 0.95),
    "b-dedup": ("b-plain", 0.90),
    "b-signed-dedup": ("b-plain", None),
    "b-forward": ("b-plain", 0.85),
    "b-pg": ("b", 0.70),
    "d-pg": ("d", 0.70),
    "b-pg2": ("b-pg", None),
    "d-pg2": ("d-pg", None),
    "b-api-waiting": ("b-api", None),
    "b-api-following": ("b-api", None),
}
DEFAULT_SCENARIOS = "a,b,c,d,e,rss"
# gwebhook's memory growth over 10,000 and 100,000 requests of this load.
RSS_SCENARIOS = {"rss": "b", "rss-alert": "b-alert"}
# --scenarios realistic: every scenario the real-payload targets judge.
REALISTIC = "b,b-alert,c-alert,d-alert,b-github,b-wallarm,e-alert,f-alert,rss,rss-alert"
# The PostgreSQL server the -pg scenarios create their databases in.
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
# How long a PostgreSQL backend may keep its statistics before reporting
# them (it does so at most once a second, when idle): waited before reading
# them.
STATS_DELAY = 1.5


@dataclass
class Run:
    scenario: str
    server: str
    # The reference's variant (--reference-modes): its mode, "-nolog"
    # without its access log; "" for gwebhook.
    variant: str = ""
    requests_per_s: float = 0.0
    incidents_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_us_per_request: float = 0.0
    cpu_us_per_incident: float = 0.0
    cpu_percent: float = 0.0
    main_thread_us_per_request: float = 0.0
    wrk_cpu_percent: float = 0.0
    other_cpu_percent: float = 0.0
    steal_percent: float = 0.0
    acknowledged: int = 0
    stored: int | None = None
    errors: int = 0
    rss_mb: float = 0.0
    skipped: str | None = None
    wrk: dict = field(default_factory=dict)
    tls: str = ""
    round: int = 0
    duplicates: int = 0  # answer entries marked "duplicate": true
    # PostgreSQL scenarios: CPU of the database's processes serving the run
    # (the backends of its database, and the server's own background
    # processes), not in cpu_* nor in other_cpu_percent.
    db_cpu_percent: float = 0.0
    db_cpu_us_per_request: float = 0.0
    db_backends: int = 0
    # Transactions committed in the run's database during the measured run
    # (the writers' batches, and the readers' queries if any).
    db_commits: int = 0
    # Read-API scenarios: what bench/waiters.py saw during the measured run.
    waiters: dict = field(default_factory=dict)
    # Forwarding scenarios: the forward's queue and its receiver (see
    # Gwebhook.forward_state): backlog at the end of the measured run, the
    # deliveries by state and the receiver's incidents once both stopped.
    forward: dict = field(default_factory=dict)

    @property
    def who(self) -> str:
        """The server, and the reference's variant: "reference loop-nolog"."""
        return f"{self.server} {self.variant}" if self.variant else self.server


@dataclass(frozen=True)
class Credentials:
    """What the load needs to be let in: Basic auth and a signing key."""

    password: str
    signing_key: bytes  # the Standard Webhooks HMAC key

    @property
    def auth(self) -> str:
        """The Authorization header's value."""
        token = base64.b64encode(f"{USERNAME}:{self.password}".encode()).decode()
        return "Basic " + token

    @property
    def secret(self) -> str:
        """The key as a Standard Webhooks secret, for the instance's config."""
        return "whsec_" + base64.b64encode(self.signing_key).decode()


def standard_signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """webhook-signature for a body, as Standard Webhooks senders make it."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Failed(Exception):
    pass


# --- processes ---------------------------------------------------------------

started: list[subprocess.Popen] = []
wrk_pids: set[int] = set()


def _die_with_parent() -> None:
    # Should this driver be killed outright (SIGKILL), its servers follow.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    """Start a process we will be sure to end (its own process group)."""
    process = subprocess.Popen(
        argv, start_new_session=True, preexec_fn=_die_with_parent, **kwargs
    )
    started.append(process)
    return process


def end(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process (and its group: uvicorn's workers), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    if process in started:
        started.remove(process)


def end_all() -> None:
    for process in list(started):
        end(process, grace=3.0)


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def descendants(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def main_thread_cpu(pid: int) -> float:
    """utime + stime of the main thread of the process and of each descendant."""
    ticks = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/task/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants, all threads."""
    ticks = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15
        except OSError:
            pass
    return ticks / TICKS


PF_KTHREAD = 0x00200000


def user_processes() -> dict[tuple[int, str], int]:
    """
    CPU ticks of every user-space process on the machine, with those of its
    children it has waited for; keyed by pid and start time.
    """
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & PF_KTHREAD:  # field 9, flags
            continue
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        found[(int(entry), fields[19])] = ticks  # field 22, starttime
    return found


def stolen() -> float:
    """CPU seconds the hypervisor gave to other guests (steal, all cores)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / TICKS


def others_cpu(before: dict, after: dict, ours: set[int]) -> float:
    """CPU seconds other people's processes used between two snapshots."""
    ticks = 0
    for key, value in after.items():
        if key[0] not in ours:
            ticks += value - before.get(key, 0)
    return max(0, ticks) / TICKS


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float:
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# --- PostgreSQL ----------------------------------------------------------------

# Databases created and not yet dropped: dropped on exit, error or Ctrl-C.
created_databases: list[Database] = []


@dataclass
class Database:
    """
    A fresh PostgreSQL database for one run, in the server that ``--pg``
    names (connected to as its user, with libpq's own password sources).
    """

    admin: str  # the --pg URI, whose database is only connected to
    name: str

    @classmethod
    def create(cls, admin: str, label: str) -> Database:
        name = (
            "gwebhook_bench_" + re.sub(r"\W", "_", label) + "_" + secrets.token_hex(3)
        )
        database = cls(admin, name)
        database._admin(f'CREATE DATABASE "{name}"')
        created_databases.append(database)
        return database

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as c:
            c.execute(statement)

    @property
    def uri(self) -> str:
        """The --pg URI with this database's name."""
        parts = urlsplit(self.admin)
        return urlunsplit(parts._replace(path="/" + self.name))

    def commits(self) -> int:
        """
        Transactions committed in this database so far (pg_stat_database),
        as the server has been told: each backend reports its own at most
        once a second, so read it after its sessions have been idle a while.
        """
        import psycopg

        with psycopg.connect(self.admin, autocommit=True, connect_timeout=10) as c:
            return c.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                (self.name,),
            ).fetchone()[0]

    def count_incidents(self) -> int:
        import psycopg

        with psycopg.connect(self.uri, connect_timeout=10) as c:
            return c.execute("SELECT count(*) FROM incidents").fetchone()[0]

    def drop(self) -> None:
        # WITH (FORCE) ends sessions still open on it (a node that was
        # SIGKILLed may leave one for a moment): only this database's.
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if self in created_databases:
            created_databases.remove(self)


def drop_all_databases() -> None:
    for database in list(created_databases):
        try:
            database.drop()
        except Exception as e:  # noqa: BLE001 (cleaning up: say it, go on)
            print(f"bench: could not drop {database.name}: {e}", file=sys.stderr)


def postgres_processes(database: str) -> tuple[set[int], set[int]]:
    """
    The PostgreSQL server's processes on this machine, by their titles: those
    serving ``database`` (its backends and autovacuum workers), and the
    server's own (postmaster, checkpointer, walwriter, background writer...),
    which work for every database but mostly for the benchmark's during a
    run.  Other databases' backends are in neither: other people's.
    """
    mine, server = set(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        first = argv[0].decode(errors="replace")
        if first.startswith("postgres: "):
            # "postgres: 15/main: USER DB 127.0.0.1(PORT) idle", or
            # "postgres: 15/main: walwriter"
            words = first.replace(":", " ").split()
            if database in words:
                mine.add(int(entry))
            elif not any("(" in w or w == "[local]" for w in words) and (
                "autovacuum worker" not in first
            ):
                server.add(int(entry))
        elif first.endswith("/bin/postgres") or first.endswith("/bin/postmaster"):
            server.add(int(entry))
    return mine, server


# --- servers -----------------------------------------------------------------


_serial = itertools.count(1)


class Server:
    name = ""

    def __init__(
        self,
        work: Path,
        cert: Path,
        key: Path,
        credentials: Credentials,
        options: argparse.Namespace,
    ) -> None:
        self.work, self.cert, self.key = work, cert, key
        self.credentials = credentials
        self.password = credentials.password
        self.options = options
        # One process per node (one but in the two-node scenarios), each on
        # a port of its own; process and port are the first node's.
        self.processes: list[subprocess.Popen] = []
        self.ports: list[int] = []
        self.db: Path | None = None
        self.database: Database | None = None  # PostgreSQL scenarios
        self.log: Path | None = None

    @property
    def process(self) -> subprocess.Popen | None:
        return self.processes[0] if self.processes else None

    @property
    def port(self) -> int:
        return self.ports[0] if self.ports else 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    @property
    def helper_pids(self) -> list[int]:
        """Processes the bench started for the server (a receiver): not its CPU."""
        return []

    def command(
        self, scenario: Scenario, node: int
    ) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def path(self, scenario: Scenario) -> str:
        """The path every request of the scenario's load is posted to."""
        return "/"

    @property
    def db_arg(self) -> str:
        """The store the server is given: the SQLite file or the database URI."""
        return self.database.uri if self.database else str(self.db)

    def start(self, scenario: Scenario, label: str) -> None:
        # A fresh store every time, even for a repeated run of one scenario.
        label = f"{label}-{next(_serial)}"
        self.db = self.work / f"{label}.sqlite"
        if scenario.postgres:
            self.database = Database.create(self.options.pg, label)
        self.ports = [free_port() for _ in range(scenario.nodes)]
        self.processes = []
        for node in range(scenario.nodes):
            self.log = self.work / f"{label}{f'-node{node + 1}' if node else ''}.log"
            argv, env = self.command(scenario, node)
            if scenario.pinned:
                argv = ["taskset", "-c", SERVER_CPU, *argv]
            elif scenario.nodes > 1:
                # Each node on a core of its own, as --pin-cpus would.
                cpus = sorted(os.sched_getaffinity(0))
                argv = ["taskset", "-c", str(cpus[node % len(cpus)]), *argv]
            with open(self.log, "wb") as log:
                self.processes.append(
                    spawn(
                        argv,
                        env={**os.environ, **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.work,
                    )
                )
            # One at a time: the first creates the schema.
            self._wait_ready(self.processes[-1], self.ports[node])

    def _wait_ready(
        self, process: subprocess.Popen, port: int, timeout: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout
        context = ssl._create_unverified_context()  # noqa: S323 (our own cert)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise Failed(f"{self.name} exited at start-up:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        self.tls = f"{tls.version()} {tls.cipher()[0]}"
                        return
            except OSError:
                time.sleep(0.1)
        raise Failed(
            f"{self.name} did not answer within {timeout} s:\n{self.log_tail()}"
        )

    def probe(self, scenario: Scenario) -> int:
        """One real POST to each node; the incidents they acknowledged."""
        return sum(self._probe_one(scenario, port) for port in self.ports)

    def _probe_one(self, scenario: Scenario, port: int) -> int:
        context = ssl._create_unverified_context()  # noqa: S323
        connection = HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        body = b'{"name": "bench probe"}'
        headers = {
            "Authorization": self.credentials.auth,
            "Content-Type": "application/json",
        }
        if scenario.vary:
            # Signed as the load's requests are, under an id of its own.
            message_id, now = f"msg_probe_{secrets.token_hex(4)}", int(time.time())
            headers["webhook-id"] = message_id
            headers["webhook-timestamp"] = str(now)
            headers["webhook-signature"] = standard_signature(
                self.credentials.signing_key, message_id, now, body
            )
        try:
            connection.request("POST", self.path(scenario), body=body, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        if answer.status != 200:
            raise Failed(f"{self.name}: probe answered {answer.status}: {body[:200]!r}")
        return len(json.loads(body))

    def exited(self) -> str:
        """How any of the nodes' processes ended, if one did: "" if none."""
        return ", ".join(
            f"status {p.returncode}" for p in self.processes if p.poll() is not None
        )

    def stop(self) -> None:
        """End every node (the database, if any, stays until dropped)."""
        for process in self.processes:
            end(process, grace=15.0)
        self.processes = []

    def stored(self) -> int:
        if self.database:
            return self.database.count_incidents()
        connection = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return connection.execute("SELECT count(*) FROM incidents").fetchone()[0]
        finally:
            connection.close()

    def drop(self) -> None:
        """Drop the run's PostgreSQL database, once its nodes are stopped."""
        if self.database:
            self.database.drop()
            self.database = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Gwebhook(Server):
    name = "gwebhook"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The forwarding scenarios' receiver: a second gwebhook on core 1.
        self.receiver: subprocess.Popen | None = None
        self.receiver_db: Path | None = None
        self.receiver_log: Path | None = None
        self.forward_config: Path | None = None

    @property
    def helper_pids(self) -> list[int]:
        return [self.receiver.pid] if self.receiver else []

    def start(self, scenario: Scenario, label: str) -> None:
        if scenario.forward:
            self._start_receiver(label)
        super().start(scenario, label)

    def _start_receiver(self, label: str) -> None:
        """
        The receiving gwebhook of forward-receiver.toml, on a port of its
        own with a store of its own, on core 1 (wrk's); and the forwarding
        config, plain.toml with forward.toml's [[forward]] of every incident
        to it.
        """
        label = f"{label}-{next(_serial)}"
        port = free_port()
        self.receiver_db = self.work / f"{label}-receiver.sqlite"
        self.receiver_log = self.work / f"{label}-receiver.log"
        argv = [
            "taskset",
            "-c",
            LOAD_CPU,
            str(VENV_BIN / "twistd"),
            "-n",
            "--pidfile=",
            "--logger",
            "gwebhook.logs.text_observer",
            "gwebhook",
            "--port",
            str(port),
            "--interface",
            "127.0.0.1",
            "--cert",
            str(self.cert),
            "--key",
            str(self.key),
            "--config",
            str(CONFIGS / "forward-receiver.toml"),
            "--db",
            str(self.receiver_db),
            "--shutdown-timeout",
            "10",
        ]
        with open(self.receiver_log, "wb") as log:
            self.receiver = spawn(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.work
            )
        self.log = self.receiver_log  # what _wait_ready tells of a failure
        self._wait_ready(self.receiver, port)
        text = (CONFIGS / "plain.toml").read_text() + "\n"
        text += (CONFIGS / "forward.toml").read_text()
        text = text.replace("@RECEIVER_PORT@", str(port))
        text = text.replace("@CA_FILE@", str(self.cert))
        self.forward_config = self.work / f"{label}-forward.toml"
        self.forward_config.write_text(text)

    def stop(self) -> None:
        """The server, then its receiver (which may take a last batch meanwhile)."""
        super().stop()
        if self.receiver:
            end(self.receiver, grace=15.0)
            self.receiver = None

    def deliveries(self) -> dict:
        """
        The forward's queue, read from the server's store (read-only, also
        while it runs): deliveries by state, the batches delivered and their
        sizes, the most attempts a delivery took.
        """
        connection = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            states = dict(
                connection.execute(
                    "SELECT state, count(*) FROM deliveries GROUP BY state"
                )
            )
            sizes = [
                n
                for (n,) in connection.execute(
                    "SELECT count(*) FROM deliveries WHERE state = 'delivered' "
                    "GROUP BY batch"
                )
            ]
            attempts = connection.execute(
                "SELECT coalesce(max(attempts), 0) FROM deliveries"
            ).fetchone()[0]
        finally:
            connection.close()
        return {
            "pending": states.get("pending", 0),
            "delivered": states.get("delivered", 0),
            "dead": states.get("dead", 0),
            "queued": sum(states.values()),
            "batches": len(sizes),
            "median_batch": statistics.median(sizes) if sizes else 0,
            "most_attempts": attempts,
        }

    def drain(self, timeout: float = 60.0) -> dict:
        """
        After the measured run: the forward's backlog then, and how long it
        took to deliver it (None: not within ``timeout``, or the server
        exited), so that the receiver can be checked against every incident.
        """
        started = time.monotonic()
        backlog = self.deliveries()["pending"]
        pending = backlog
        while pending and not self.exited():
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.2)
            pending = self.deliveries()["pending"]
        seconds = time.monotonic() - started
        return {"backlog": backlog, "drained_s": None if pending else seconds}

    def received(self) -> int:
        """The incidents in the receiver's store (once it has stopped)."""
        connection = sqlite3.connect(f"file:{self.receiver_db}?mode=ro", uri=True)
        try:
            return connection.execute("SELECT count(*) FROM incidents").fetchone()[0]
        finally:
            connection.close()

    def path(self, scenario: Scenario) -> str:
        if scenario.config:
            return INSTANCE_PATH
        return self.options.gwebhook_path

    def command(self, scenario, node):
        if scenario.discard and scenario.workers > 1:
            # The store is disabled in the main process only (discard_twistd).
            raise Failed("gwebhook: a disabled store needs one server process")
        # With the store disabled, twistd's entry point is run by
        # bench/discard_twistd.py, which patches the store first; gwebhook
        # itself has no such switch.
        launcher = (
            [sys.executable, str(HERE / "discard_twistd.py")]
            if scenario.discard
            else [str(VENV_BIN / "twistd")]
        )
        argv = [
            *launcher,
            "-n",
            "--pidfile=",
            # As systemd/gwebhook.service runs it (README, "Logs").
            "--logger",
            "gwebhook.logs.text_observer",
            "gwebhook",
            "--port",
            str(self.ports[node]),
            "--interface",
            "127.0.0.1",
            "--cert",
            str(self.cert),
            "--key",
            str(self.key),
            "--username",
            USERNAME,
            "--db",
            self.db_arg,
            "--max-connections-per-client",
            "1000",
            "--shutdown-timeout",
            "10",
        ]
        if scenario.api:
            # The read API on, room for the waiters' connections besides
            # the load's, and an instance nobody posts to for them to wait
            # on (the load goes to the command line's instance, at /).
            argv += [
                "--api-token-file",
                str(self.work / "api-tokens"),
                "--config",
                str(CONFIGS / "api.toml"),
                "--max-connections",
                str(API_MAX_CONNECTIONS),
            ]
        if scenario.workers > 1:
            argv += shlex.split(
                self.options.gwebhook_workers_args.format(workers=scenario.workers)
            )
        if scenario.forward:
            # The config's instance and the forward (made by _start_receiver).
            argv += ["--config", str(self.forward_config)]
        elif scenario.config:
            argv += ["--config", str(CONFIGS / f"{scenario.config}.toml")]
        # Last, so that they can add to everything above (--config, say).
        argv += shlex.split(self.options.gwebhook_args)
        env = {"GWEBHOOK_PASSWORD": self.password, SECRET_ENV: self.credentials.secret}
        return argv, env


REFERENCE_MODES = ("offload", "loop", "threadpool")
# Each mode with its access log (uvicorn's default) and without it
# (--no-access-log): "offload", "offload-nolog", "loop"...
REFERENCE_VARIANTS = tuple(
    v for mode in REFERENCE_MODES for v in (mode, f"{mode}-nolog")
)


def reference_variants(spec: str) -> list[str]:
    """--reference-modes: "all", or variants separated by commas."""
    if spec.strip() == "all":
        return list(REFERENCE_VARIANTS)
    variants = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in variants if v not in REFERENCE_VARIANTS]
    if unknown or not variants:
        raise ValueError(
            f"unknown reference variant(s) {','.join(unknown) or '(none)'}: use "
            f"all, or some of {','.join(REFERENCE_VARIANTS)}"
        )
    return list(dict.fromkeys(variants))


class Reference(Server):
    name = "reference"

    def __init__(self, *args, variant: str = "offload", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.variant = variant
        self.mode = variant.removesuffix("-nolog")
        self.access_log = not variant.endswith("-nolog")

    def command(self, scenario, node):
        argv = [
            str(VENV_BIN / "uvicorn"),
            "app:app",
            "--app-dir",
            str(HERE / "reference"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ssl-certfile",
            str(self.cert),
            "--ssl-keyfile",
            str(self.key),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--workers",
            str(scenario.workers),
        ]
        if not self.access_log:
            argv.append("--no-access-log")
        env = {
            "REFERENCE_DB": str(self.db),
            "REFERENCE_USERNAME": USERNAME,
            "REFERENCE_PASSWORD": self.password,
            "REFERENCE_MODE": self.mode,
        }
        if scenario.discard:
            env["REFERENCE_DISCARD"] = "1"
        return argv, env


# --- load --------------------------------------------------------------------


def load_env(scenario: Scenario, credentials: Credentials) -> dict[str, str]:
    """post.lua's settings for the scenario's load (see its header)."""
    return {
        **os.environ,
        "BENCH_AUTH": credentials.auth,
        "BENCH_BATCH": str(scenario.batch),
        "BENCH_BODY_FILE": str(PAYLOADS / scenario.payload) if scenario.payload else "",
        "BENCH_CLOSE": "1" if scenario.close else "0",
        "BENCH_VARY": "1" if scenario.vary else "0",
        "BENCH_SIGNING_KEY": credentials.signing_key.hex(),
        # New for every wrk: the warm-up's ids are not the measured run's.
        "BENCH_SALT": secrets.token_hex(6),
    }


def wrk(
    port: int | list[int],
    scenario: Scenario,
    seconds: float,
    credentials: Credentials,
    until=None,
    path: str = "/",
) -> dict:
    """
    Run wrk against the port; with ``until``, a function polled while it
    runs, stop it early (SIGINT: wrk then reports as usual) once that is true.
    Given several ports (the nodes of a two-node scenario), one wrk for each
    at once, the connections split between them, and their results added up
    (the latencies: the worst of theirs).
    """
    ports = port if isinstance(port, list) else [port]
    connections = max(1, scenario.connections // len(ports))
    threads = scenario.threads if len(ports) == 1 else 1
    env = load_env(scenario, credentials)
    processes = []
    for p in ports:
        argv = [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            f"https://127.0.0.1:{p}{path}",
        ]
        if scenario.pinned:
            argv = ["taskset", "-c", LOAD_CPU, *argv]
        process = spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wrk_pids.add(process.pid)
        processes.append(process)
    outputs = []
    try:
        if until is not None:
            deadline = time.monotonic() + seconds
            while processes[0].poll() is None and time.monotonic() < deadline:
                if until():
                    for process in processes:
                        process.send_signal(signal.SIGINT)
                    break
                time.sleep(0.2)
        for process in processes:
            output, _ = process.communicate(timeout=seconds + 120)
            outputs.append(output.decode(errors="replace"))
    finally:
        for process in processes:
            end(process, grace=2.0)
    results = []
    for text in outputs:
        match = re.search(r"^BENCH-RESULT (\{.*\})$", text, re.MULTILINE)
        if not match:
            raise Failed(f"wrk printed no result:\n{text}")
        results.append(json.loads(match.group(1)))
    if len(results) == 1:
        return results[0]
    merged = {"parts": results}
    for k in results[0]:
        if k == "mean_us":
            merged[k] = sum(r[k] for r in results) / len(results)
        elif k.endswith("_us") or k == "body_bytes":
            merged[k] = max(r[k] for r in results)
        else:
            merged[k] = sum(r[k] for r in results)
    return merged


def measure(
    server: Server, scenario: Scenario, options, credentials: Credentials
) -> Run:
    variant = getattr(server, "variant", "")
    run = Run(scenario.key, server.name, variant)
    label = f"{scenario.key}-{server.name}" + (f"-{variant}" if variant else "")
    try:
        try:
            server.start(scenario, label)
        except Failed as e:
            if scenario.workers > 1 and server.name == "gwebhook":
                run.skipped = f"did not start with {options.gwebhook_workers_args!r}"
                print(f"  {label}: skipped: {e}", file=sys.stderr)
                return run
            raise
        run.tls = server.tls
        try:
            result = _measured(server, scenario, options, credentials, run)
            if scenario.forward:
                # Outside the measured run: the rest of the queue delivered,
                # so that the receiver can be held against every incident.
                run.forward.update(server.drain())
            exited = server.exited()
        finally:
            server.stop()
        if exited:
            # Killed or crashed under load (on a shared machine, someone
            # else's cleanup may end it): the run's numbers mean nothing.
            run.skipped = f"the server exited during the run ({exited})"
            print(f"  {label}: {run.skipped}:\n{server.log_tail()}", file=sys.stderr)
            return run
        run.stored = None if scenario.discard else server.stored()
        if scenario.forward:
            # Both stopped: what the server queued and delivered, and what
            # the receiver holds.
            run.forward.update(server.deliveries())
            run.forward["received"] = server.received()
    finally:
        server.stop()
        server.drop()
    _fill(run, scenario, result)
    return run


def _measured(
    server: Server, scenario: Scenario, options, credentials: Credentials, run: Run
) -> dict:
    """The warm-up and the measured run, with the CPU each part used."""
    path = server.path(scenario)
    waiters = None
    acked = server.probe(scenario)
    if scenario.waiters:
        waiters = Waiters(server, scenario)
    try:
        ports = server.ports
        if options.warmup > 0:
            warm = wrk(ports, scenario, options.warmup, credentials, path=path)
            acked += warm["acked"]
        pids = server.pids
        if server.database:
            # The warm-up's commits reported before they are counted.
            time.sleep(STATS_DELAY)
            commits = server.database.commits()
        before = sum(cpu_seconds(p) for p in pids)
        main_before = sum(main_thread_cpu(p) for p in pids)
        mine, pg_server = (
            postgres_processes(server.database.name) if server.database else ((), ())
        )
        db_pids = {*mine, *pg_server}
        if waiters:
            waiters.mark()
        helpers = server.helper_pids
        helpers_before = sum(cpu_seconds(p) for p in helpers)
        others, load, steal = user_processes(), children_cpu(), stolen()
        result = wrk(ports, scenario, options.seconds, credentials, path=path)
        after = user_processes()
        helpers_cpu = sum(cpu_seconds(p) for p in helpers) - helpers_before
        steal = stolen() - steal
        cpu = sum(cpu_seconds(p) for p in pids) - before
        main_cpu = sum(main_thread_cpu(p) for p in pids) - main_before
        if server.database:
            mine2, pg_server2 = postgres_processes(server.database.name)
            mine = {*mine, *mine2}
            db_pids |= {*mine2, *pg_server2}
            run.db_backends = len(mine)
            db_cpu = others_cpu(others, after, set()) - others_cpu(
                others, after, db_pids
            )
        else:
            db_cpu = 0.0
        ours = {os.getpid(), *wrk_pids, *db_pids}
        for p in [*pids, *helpers]:
            ours.update(descendants(p))
        if helpers:
            # The receiver's CPU, on core 1 beside wrk (not the server's).
            run.forward["receiver_cpu_percent"] = (
                100 * helpers_cpu / (result["duration_us"] / 1e6)
            )
        if waiters:
            ours.add(waiters.process.pid)
            run.waiters = waiters.status()
        others = others_cpu(others, after, ours)
        load = children_cpu() - load
        run.rss_mb = sum(rss_mb(p) for p in pids)
        if server.database:
            time.sleep(STATS_DELAY)
            run.db_commits = server.database.commits() - commits
    finally:
        if waiters:
            waiters.stop()
    seconds = result["duration_us"] / 1e6
    run.acknowledged = acked + result["acked"]
    run.cpu_percent = 100 * cpu / seconds
    run.cpu_us_per_request = 1e6 * cpu / max(1, result["ok"])
    run.cpu_us_per_incident = 1e6 * cpu / max(1, result["acked"])
    run.main_thread_us_per_request = 1e6 * main_cpu / max(1, result["ok"])
    run.db_cpu_percent = 100 * db_cpu / seconds
    run.db_cpu_us_per_request = 1e6 * db_cpu / max(1, result["ok"])
    run.wrk_cpu_percent = 100 * load / seconds
    # What other people's processes used meanwhile: on a shared machine they
    # make every number here lower.
    # (Approximate: a process that reaps a long-lived child during the run is
    # charged with all of that child's time, hence the cap at both cores.)
    run.other_cpu_percent = min(100 * others / seconds, 100.0 * (os.cpu_count() or 2))
    run.steal_percent = 100 * steal / seconds
    return result


def _fill(run: Run, scenario: Scenario, result: dict) -> None:
    """The run's numbers from wrk's result."""
    seconds = result["duration_us"] / 1e6
    run.wrk = result
    run.requests_per_s = result["ok"] / seconds
    run.incidents_per_s = result["acked"] / seconds
    run.p50_ms = result["p50_us"] / 1000
    run.p99_ms = result["p99_us"] / 1000
    run.duplicates = result.get("duplicates", 0)
    run.errors = (
        result["other"]
        + result["connect_errors"]
        + result["read_errors"]
        + result["write_errors"]
        + result["timeouts"]
    )


class Waiters:
    """
    bench/waiters.py against the server: ``scenario.waiters`` long polls held
    open over as many TLS connections, from several loopback addresses, each
    asking again whenever answered.  On core 1 with wrk in one-process
    scenarios.
    """

    def __init__(self, server: Server, scenario: Scenario) -> None:
        self.status_file = server.work / f"waiters-{next(_serial)}.json"
        argv = [
            sys.executable,
            str(HERE / "waiters.py"),
            "--port",
            str(server.port),
            "--count",
            str(scenario.waiters),
            "--sources",
            ",".join(WAITER_SOURCES),
            "--token",
            API_TOKEN,
            "--status",
            str(self.status_file),
        ]
        if scenario.waiter_instance:
            argv += ["--instance", scenario.waiter_instance]
        if scenario.pinned:
            argv = ["taskset", "-c", LOAD_CPU, *argv]
        self.process = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Failed(
                    "bench/waiters.py exited: "
                    + self.process.stderr.read().decode(errors="replace")[-2000:]
                )
            status = self._read()
            if status.get("waiting", 0) >= scenario.waiters:
                return
            time.sleep(0.2)
        raise Failed(f"bench/waiters.py: not {scenario.waiters} waiting within 60 s")

    def _read(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def mark(self) -> None:
        """The start of the measured run: status() counts from here."""
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        self.start = self._read()

    def status(self) -> dict:
        """What the waiters saw since mark(): answers, errors, still waiting."""
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        now = self._read()
        start = getattr(self, "start", {})
        return {
            "connections": now.get("connections", 0),
            "waiting": now.get("waiting", 0),
            "answered": now.get("answered", 0) - start.get("answered", 0),
            "incidents": now.get("incidents", 0) - start.get("incidents", 0),
            "errors": now.get("errors", 0) - start.get("errors", 0),
            "closed": now.get("closed", 0) - start.get("closed", 0),
            "cpu_seconds": now.get("cpu_seconds", 0) - start.get("cpu_seconds", 0),
        }

    def stop(self) -> None:
        end(self.process, grace=5.0)


def rss_growth(server: Gwebhook, credentials: Credentials, load: str = "b") -> dict:
    """
    gwebhook's RSS after 10,000 and after 100,000 requests of a scenario's
    load (32 connections), counted as stored incidents.
    """
    scenario = SCENARIOS[load]
    server.start(scenario, f"rss-{load}-gwebhook")
    try:
        server.probe(scenario)
        points = {}
        for target in (10_000, 100_000):
            wrk(
                server.port,
                scenario,
                600,
                credentials,
                # Stop early, too, should the server have gone.
                until=lambda target=target: (
                    server.process.poll() is not None or server.stored() >= target
                ),
                path=server.path(scenario),
            )
            if server.exited():
                error = f"gwebhook exited during the run ({server.exited()})"
                print(f"  rss: {error}:\n{server.log_tail()}", file=sys.stderr)
                return {"scenario": load, "error": error}
            points[target] = (server.stored(), rss_mb(server.process.pid))
    finally:
        server.stop()
    (n1, r1), (n2, r2) = points[10_000], points[100_000]
    return {
        "scenario": load,
        "requests_1": n1,
        "rss_mb_1": r1,
        "requests_2": n2,
        "rss_mb_2": r2,
        "growth_mb": r2 - r1,
    }


# --- profile -----------------------------------------------------------------


def profile(server: Gwebhook, options, credentials: Credentials) -> dict:
    """py-spy on gwebhook under a one-process scenario: where the CPU goes."""
    scenario = SCENARIOS[options.profile_scenario]
    server.start(scenario, "profile-gwebhook")
    raw = OUT / f"profile-{scenario.key}.txt"
    path = server.path(scenario)
    waiters = None
    try:
        server.probe(scenario)
        if scenario.waiters:
            waiters = Waiters(server, scenario)
        wrk(server.port, scenario, options.warmup or 1, credentials, path=path)
        env = load_env(scenario, credentials)
        load = spawn(
            [
                "taskset",
                "-c",
                LOAD_CPU,
                "wrk",
                "-t1",
                f"-c{scenario.connections}",
                f"-d{options.profile_seconds + 4}s",
                "-s",
                str(LUA),
                f"https://127.0.0.1:{server.port}{path}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        argv = [
            str(VENV_BIN / "py-spy"),
            "record",
            "--pid",
            str(server.process.pid),
            "--duration",
            str(options.profile_seconds),
            "--rate",
            "250",
            "--format",
            "raw",
            "--threads",
            "-o",
            str(raw),
        ]
        if not options.profile_lines:
            argv.append("--nolineno")
        if options.profile_native:
            argv.append("--native")
        spy = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = spy.communicate(timeout=options.profile_seconds + 60)
        end(spy)
        end(load, grace=2.0)
        if not raw.exists():
            raise Failed(f"py-spy wrote no profile:\n{output.decode(errors='replace')}")
    finally:
        if waiters:
            waiters.stop()
        server.stop()
        server.drop()
    return summarise_profile(raw, 250, options.profile_seconds)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "lib/python3.":
                where = "stdlib/" + where.split("/", 1)[-1]
    return f"{name} ({where})" if where else name


def _area(frame: str) -> str:
    """The package a frame's code belongs to: twisted/web, OpenSSL, stdlib/json..."""
    where = frame.rpartition(" (")[2].rstrip(")")
    parts = where.split("/")
    if parts[0] in ("twisted", "stdlib") and len(parts) > 2:
        return "/".join(parts[:2])
    if parts[0] == "stdlib" and len(parts) == 2:
        return "stdlib/" + parts[1].removesuffix(".py")
    return parts[0] if len(parts) > 1 else where.removesuffix(".py")


def summarise_profile(path: Path, rate: int, seconds: float, top: int = 25) -> dict:
    """
    Own and total shares per function, for each thread: the reactor's
    (MainThread), which bounds a single process, and adbapi's pool thread.
    Idle samples (waiting in epoll) are not recorded by py-spy, so a
    thread's samples against ``rate * seconds`` say how busy it was.
    """
    threads: dict[str, dict] = {}
    # Each thread pool's thread apart (the store's, and any other the daemon
    # has, idle or not), numbered as they first appear: their names are
    # PoolThread-<the pool's id>-<n>, which change from run to run.
    pools: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread "):
            thread = frames.pop(0).split(": ", 1)[-1]
            if thread.startswith("PoolThread"):
                thread = pools.setdefault(thread, f"PoolThread {len(pools) + 1}")
        frames = [_short(f) for f in frames if not f.startswith("process ")]
        if not frames:
            continue
        t = threads.setdefault(
            thread,
            {"samples": 0, "own": Counter(), "total": Counter(), "area": Counter()},
        )
        t["samples"] += n
        t["own"][frames[-1]] += n
        t["area"][_area(frames[-1])] += n
        for f in set(frames):
            t["total"][f] += n
    expected = rate * seconds
    summary = {}
    for name, t in threads.items():
        n = t["samples"]

        def row(f: str, t=t, n=n) -> dict:
            return {
                "function": f,
                "own": 100 * t["own"][f] / n,
                "total": 100 * t["total"][f] / n,
            }

        summary[name] = {
            "samples": n,
            "busy_percent": 100 * n / expected,
            "by_own": [row(f) for f, _ in t["own"].most_common(top)],
            # The chain every sample shares (twistd's main loop) says nothing.
            "by_total": [row(f) for f, c in t["total"].most_common() if c < 0.98 * n][
                :top
            ],
            "by_area": [
                {"area": a, "own": 100 * c / n} for a, c in t["area"].most_common()
            ],
        }
    return summary


# --- report ------------------------------------------------------------------


def versions() -> dict:
    def pip_version(name: str) -> str:
        try:
            from importlib.metadata import version

            return version(name)
        except Exception:
            return "?"

    wrk_line = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "openssl (python)": ssl.OPENSSL_VERSION,
        "sqlite": sqlite3.sqlite_version,
        "wrk": (wrk_line.stdout + wrk_line.stderr)
        .splitlines()[0]
        .split(" Copyright")[0],
        **{
            p: pip_version(p)
            for p in (
                "gwebhook",
                "twisted",
                "klein",
                "pyopenssl",
                "cryptography",
                "fastapi",
                "starlette",
                "uvicorn",
                "uvloop",
                "httptools",
                "pydantic",
                "py-spy",
            )
        },
    }


def source_state() -> str:
    """Which gwebhook was measured: the commit, and whether the tree differs."""
    project = HERE.parent
    installed = os.environ.get("BENCH_INSTALLED_COMMIT")
    if installed:
        return f"{installed[:7]} (a git archive of that commit, not the working tree)"

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(project), *args], capture_output=True, text=True
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    changed = git("status", "--porcelain", "--", "gwebhook", "twisted", "setup.py")
    files = len(changed.splitlines())
    return commit + (f" + uncommitted changes in {files} file(s)" if files else "")


def _functions_table(title: str, rows: list[dict]) -> list[str]:
    """A profile's functions as a markdown table under ``title``."""
    return [
        "",
        title,
        "",
        "| function | own % | total % |",
        "|---|---|---|",
        *(f"| {r['function']} | {r['own']:.1f} | {r['total']:.1f} |" for r in rows),
    ]


def table(runs: list[Run], rounds: bool = False) -> str:
    """The runs as a markdown table; with ``rounds``, each run's round first."""
    head = (
        *(("round",) if rounds else ()),
        "scen",
        "server",
        "req/s",
        "incidents/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "CPU us/incident",
        "main thread us/req",
        "CPU %",
        "wrk CPU %",
        "other CPU %",
        "steal %",
        "acked",
        "stored",
        "errors",
        "RSS MB",
    )
    # The PostgreSQL scenarios: the database's CPU beside the server's.
    database = any(r.db_backends for r in runs)
    if database:
        head = (*head, "DB CPU %", "DB us/req")
    rows = []
    for r in runs:
        first = (str(r.round),) if rounds else ()
        if r.skipped:
            rows.append(
                (
                    *first,
                    r.scenario,
                    r.who,
                    "skipped: " + r.skipped,
                    *[""] * (len(head) - len(first) - 3),
                )
            )
            continue
        extra = ()
        if database:
            extra = (
                (f"{r.db_cpu_percent:.0f}", f"{r.db_cpu_us_per_request:,.0f}")
                if r.db_backends
                else ("", "")
            )
        stored = "n/a (disabled)" if r.stored is None else str(r.stored)
        rows.append(
            (
                *first,
                r.scenario,
                r.who,
                f"{r.requests_per_s:,.0f}",
                f"{r.incidents_per_s:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.cpu_us_per_request:,.0f}",
                f"{r.cpu_us_per_incident:,.1f}",
                f"{r.main_thread_us_per_request:,.0f}",
                f"{r.cpu_percent:.0f}",
                f"{r.wrk_cpu_percent:.0f}",
                f"{r.other_cpu_percent:.0f}",
                f"{r.steal_percent:.0f}",
                str(r.acknowledged),
                stored,
                str(r.errors),
                f"{r.rss_mb:.0f}",
                *extra,
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt.format(*head), sep, *(fmt.format(*row) for row in rows)])


def strongest_references(runs: list[Run]) -> dict[str, Run]:
    """Per scenario, the reference's run with the most requests/s."""
    best: dict[str, Run] = {}
    for r in runs:
        if r.server == "reference" and not r.skipped:
            mine = best.get(r.scenario)
            if mine is None or r.requests_per_s > mine.requests_per_s:
                best[r.scenario] = r
    return best


def head_to_head(runs: list[Run]) -> list[Run]:
    """gwebhook's runs and, of the reference's, the strongest per scenario."""
    strongest = strongest_references(runs)
    return [
        r for r in runs if r.server != "reference" or strongest.get(r.scenario) is r
    ]


def ratios(runs: list[Run]) -> list[str]:
    """gwebhook against the reference (its strongest variant) per scenario."""
    by = {(r.scenario, r.server): r for r in head_to_head(runs) if not r.skipped}
    several = len({r.variant for r in runs if r.server == "reference"}) > 1
    lines = []
    for key, s in SCENARIOS.items():
        g, ref = by.get((key, "gwebhook")), by.get((key, "reference"))
        if g and ref and ref.requests_per_s:
            lines.append(
                f"({key}) {s.title}: gwebhook/reference"
                + (f" ({ref.variant}, the strongest)" if several else "")
                + f" req/s {g.requests_per_s / ref.requests_per_s:.2f}, "
                f"p99 {g.p99_ms / ref.p99_ms:.2f}, "
                f"CPU/req {g.cpu_us_per_request / ref.cpu_us_per_request:.2f}, "
                f"CPU/incident {g.cpu_us_per_incident / ref.cpu_us_per_incident:.2f}"
            )
    return lines


def strongest_lines(runs: list[Run], every: list[Run]) -> list[str]:
    """Which of the reference's variants was the strongest in each scenario."""
    if len({r.variant for r in runs if r.server == "reference"}) < 2:
        return []
    lines = [
        "",
        "the reference's strongest variant per scenario (most req/s, best of "
        "its rounds; ratios and targets are taken against it), then the others:",
    ]
    for key, best in strongest_references(runs).items():
        others = sorted(
            (
                r
                for r in runs
                if r.server == "reference" and r.scenario == key and r is not best
            ),
            key=lambda r: -r.requests_per_s,
        )
        per_round = [
            ref.variant for _, (_, ref) in sorted(rounds_of(every, key).items())
        ]
        lines.append(
            f"({key}) {best.variant}: {best.requests_per_s:,.0f} req/s, "
            f"p99 {best.p99_ms:.2f} ms; "
            + ", ".join(f"{r.variant} {r.requests_per_s:,.0f}" for r in others)
            + (
                "; strongest round by round: " + " ".join(per_round)
                if len(per_round) > 1
                else ""
            )
        )
    return lines


def instance_ratios(every: list[Run]) -> dict[str, list[tuple[int, Run, Run]]]:
    """
    For each scenario of COMPARISONS, its runs paired with its base's run
    of the same round (gwebhook's): (round, the run, the base's run).
    Rounds rather than each one's best: the same load, minutes apart at
    most, so their ratio is what the difference between them costs (an
    instance's config, PostgreSQL, a second node, long polls).
    """
    base_runs = {
        (r.scenario, r.round): r
        for r in every
        if r.server == "gwebhook" and not r.skipped
    }
    pairs: dict[str, list[tuple[int, Run, Run]]] = {}
    for r in every:
        if r.scenario in COMPARISONS and not r.skipped and r.server == "gwebhook":
            base = base_runs.get((COMPARISONS[r.scenario][0], r.round))
            if base and base.requests_per_s:
                pairs.setdefault(r.scenario, []).append((r.round, r, base))
    return pairs


def _numbers(values: list[float], fmt: str) -> str:
    return " ".join(fmt.format(x) for x in values)


def instance_lines(every: list[Run]) -> list[str]:
    """Each compared scenario against its base, round by round."""
    lines = []
    for key, pairs in instance_ratios(every).items():
        base_key = COMPARISONS[key][0]
        scenario = SCENARIOS[key]
        rps = [r.requests_per_s / base.requests_per_s for _, r, base in pairs]
        cpu = [r.cpu_us_per_request - base.cpu_us_per_request for _, r, base in pairs]
        main = [
            r.main_thread_us_per_request - base.main_thread_us_per_request
            for _, r, base in pairs
        ]
        bound = [cpu_bound_ratio(r, base) for _, r, base in pairs]
        line = (
            f"{key} / {base_key}, round by round: req/s "
            + _numbers(rps, "{:.3f}")
            + f" (range {min(rps):.3f}-{max(rps):.3f}); "
        )
        if scenario.nodes == 1 and SCENARIOS[base_key].nodes == 1:
            line += (
                f"{base_key} CPU/req over its CPU/req "
                + _numbers(bound, "{:.3f}")
                + f" (range {min(bound):.3f}-{max(bound):.3f}); "
            )
        line += "CPU us/req " + _numbers(cpu, "{:+.0f}")
        line += "; main thread us/req " + _numbers(main, "{:+.0f}")
        if scenario.postgres:
            line += "; database commits/s " + _numbers(
                [r.db_commits / r.wrk["duration_us"] * 1e6 for _, r, _ in pairs],
                "{:,.0f}",
            )
            line += ", requests per commit " + _numbers(
                [r.wrk["ok"] / max(1, r.db_commits) for _, r, _ in pairs], "{:.1f}"
            )
            # The database's CPU per request, and the node's plus the
            # database's against the base's (its own, or SQLite in-process).
            line += "; database CPU us/req " + _numbers(
                [r.db_cpu_us_per_request for _, r, _ in pairs], "{:.0f}"
            )
            line += "; node + database CPU us/req against the base's " + "; ".join(
                f"{r.cpu_us_per_request + r.db_cpu_us_per_request:,.0f} vs "
                f"{base.cpu_us_per_request + base.db_cpu_us_per_request:,.0f}"
                for _, r, base in pairs
            )
        if scenario.api:
            line += (
                "; p99 ms "
                + "; ".join(
                    f"{r.p99_ms:.1f} vs {base.p99_ms:.1f}" for _, r, base in pairs
                )
                + "; RSS MB "
                + "; ".join(
                    f"{r.rss_mb:.0f} vs {base.rss_mb:.0f}" for _, r, base in pairs
                )
                + "; long polls waiting at the end "
                + _numbers([r.waiters.get("waiting", 0) for _, r, _ in pairs], "{}")
                + ", answered during the run "
                + _numbers([r.waiters.get("answered", 0) for _, r, _ in pairs], "{}")
            )
        lines.append(line)
    return lines


def cpu_bound_ratio(run: Run, base: Run) -> float:
    """
    base's CPU per request over run's: the ratio of their req/s if each had
    its core to itself (both are bound by one core).  When other processes
    take part of that core, req/s follows the share they leave, which differs
    from run to run; CPU per request much less.
    """
    return base.cpu_us_per_request / run.cpu_us_per_request


def targets(
    runs: list[Run], rss: dict | None, every: list[Run] | None = None
) -> list[str]:
    by = {(r.scenario, r.server): r for r in runs if not r.skipped}
    lines = []

    def check(name, value, goal, fmt="{:.2f}", higher=True):
        if value is None:
            return
        ok = value >= goal if higher else value <= goal
        rel = ">=" if higher else "<="
        lines.append(
            f"[{'met' if ok else 'MISSED'}] {name}: "
            f"{fmt.format(value)} (target {rel} {fmt.format(goal)})"
        )

    def ratio(a, b, attr="requests_per_s"):
        x, y = by.get(a), by.get(b)
        return (
            getattr(x, attr) / getattr(y, attr)
            if x and y and getattr(y, attr)
            else None
        )

    check(
        "keep-alive 32 conns, gwebhook/reference req/s",
        ratio(("b", "gwebhook"), ("b", "reference")),
        1.5,
    )
    check("  stretch", ratio(("b", "gwebhook"), ("b", "reference")), 2.0)
    check(
        "2 processes each, gwebhook/reference req/s",
        ratio(("f", "gwebhook"), ("f", "reference")),
        1.5,
    )
    check(
        "gwebhook store enabled/disabled req/s (b/e)",
        ratio(("b", "gwebhook"), ("e", "gwebhook")),
        0.9,
    )
    for key, where in (("d", "one process"), ("g", "two processes")):
        run = by.get((key, "gwebhook"))
        check(
            f"arrays of 100, {where}, gwebhook durable incidents/s",
            run.incidents_per_s if run else None,
            40_000,
            "{:,.0f}",
        )
    check(
        "gwebhook 2 processes / 1 process req/s (f/b)",
        ratio(("f", "gwebhook"), ("b", "gwebhook")),
        1.7,
    )
    check(
        "new TLS connection per request, gwebhook/reference req/s",
        ratio(("c", "gwebhook"), ("c", "reference")),
        1.0,
    )
    g, ref = by.get(("b", "gwebhook")), by.get(("b", "reference"))
    if g and ref:
        check(
            "p99 at 32 conns, gwebhook ms (vs the reference's)",
            g.p99_ms,
            ref.p99_ms,
            higher=False,
        )
    if rss:
        check(
            f"RSS growth {rss['requests_1']:,} -> {rss['requests_2']:,} requests, MB",
            rss["growth_mb"],
            20.0,
            "{:.1f}",
            higher=False,
        )
    # What an instance's signature check and dedup may cost: judged on the
    # median of the rounds' ratios (each round's pair ran minutes apart).
    for key, pairs in instance_ratios(every or []).items():
        base_key, least = COMPARISONS[key]
        if least is None:
            continue
        rps = sorted(r.requests_per_s / base.requests_per_s for _, r, base in pairs)
        check(
            f"{key}/{base_key} req/s, median of {len(rps)} round(s) "
            f"(range {rps[0]:.3f}-{rps[-1]:.3f})",
            statistics.median(rps),
            least,
            "{:.3f}",
        )
        bound = sorted(cpu_bound_ratio(r, base) for _, r, base in pairs)
        check(
            f"  the same from CPU per request ({base_key}'s over {key}'s"
            + (", the node's alone" if SCENARIOS[key].postgres else "")
            + f"), median (range {bound[0]:.3f}-{bound[-1]:.3f})",
            statistics.median(bound),
            least,
            "{:.3f}",
        )
    return lines


def rounds_of(every: list[Run], key: str) -> dict[int, tuple[Run, Run]]:
    """
    Per round, gwebhook's run of the scenario and the strongest of the
    reference's runs of that round (its variants ran minutes apart at most).
    """
    mine = {
        r.round: r
        for r in every
        if r.scenario == key and r.server == "gwebhook" and not r.skipped
    }
    theirs: dict[int, Run] = {}
    for r in every:
        if r.scenario == key and r.server == "reference" and not r.skipped:
            other = theirs.get(r.round)
            if other is None or r.requests_per_s > other.requests_per_s:
                theirs[r.round] = r
    return {n: (mine[n], theirs[n]) for n in sorted(mine) if n in theirs}


def gwebhook_rounds(every: list[Run], key: str) -> dict[int, Run]:
    return {
        r.round: r
        for r in every
        if r.scenario == key and r.server == "gwebhook" and not r.skipped
    }


# The real-payload targets: gwebhook against the reference's strongest
# variant in the same round, req/s (the scenario, what it is, the least ratio).
REALISTIC_RATIOS = [
    ("b-alert", "keep-alive, 32 conns, 650-byte alert", 2.0),
    ("b", "keep-alive, 32 conns, small incident", 2.0),
    ("d-alert", "arrays of 100 alerts", 1.5),
    ("b-github", "GitHub push event", 1.5),
    ("c-alert", "new TLS connection per request, alert", 1.2),
    ("b-wallarm", "Wallarm hit array", None),
]


# What a feature of an instance may cost, gwebhook against itself without it
# in the same round (the goals are COMPARISONS'): the scenario, what it is.
FEATURE_TARGETS = [
    ("b-forward", "forwarding on / off"),
    ("b-signed", "signatures"),
    ("b-dedup", "dedup"),
]


@dataclass
class Judged:
    """One target of the real-payload summary, from the rounds that judge it."""

    target: str
    goal: float | None  # None: reported, no target
    values: list[float]  # one per round
    higher: bool = True
    fmt: str = "{:.2f}"
    best: float | None = None  # each side's best run against the other's
    against: str = ""  # which reference variant(s)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return "-"
        met = self.median >= self.goal if self.higher else self.median <= self.goal
        return "met" if met else "**MISSED**"

    def row(self) -> str:
        f = self.fmt.format
        goal = (
            "-"
            if self.goal is None
            else (">= " if self.higher else "<= ") + f(self.goal)
        )
        spread = (
            f"{f(min(self.values))}-{f(max(self.values))}"
            if len(self.values) > 1
            else ""
        )
        return (
            f"| {self.target} | {goal} | {f(self.median)} | {spread} | "
            + " ".join(f(v) for v in self.values)
            + f" | {'' if self.best is None else f(self.best)} | {self.against} | "
            f"{self.verdict} |"
        )


def ratio_rows(what: str, cpu_what: str, least: float, pairs: list) -> list[Judged]:
    """
    Two target rows for ``pairs`` of runs, (measured, base) round by round:
    the ratio of their req/s, and the same judged from CPU per request.
    """
    return [
        Judged(
            f"{what}, gwebhook req/s",
            least,
            [r.requests_per_s / base.requests_per_s for r, base in pairs],
            fmt="{:.3f}",
        ),
        Judged(
            f"  the same from CPU per request ({cpu_what})",
            least,
            [cpu_bound_ratio(r, base) for r, base in pairs],
            fmt="{:.3f}",
        ),
    ]


def realistic_targets(
    runs: list[Run], every: list[Run], rss: dict[str, dict]
) -> list[Judged]:
    """Every real-payload target these runs can judge, on the median of rounds."""
    judged = []
    strongest = strongest_references(runs)
    best = {r.scenario: r for r in runs if r.server == "gwebhook" and not r.skipped}
    for key, what, goal in REALISTIC_RATIOS:
        pairs = rounds_of(every, key)
        if not pairs:
            continue
        variants = [ref.variant for _, ref in pairs.values()]
        judged.append(
            Judged(
                f"({key}) {what}: gwebhook / reference req/s",
                goal,
                [g.requests_per_s / ref.requests_per_s for g, ref in pairs.values()],
                best=best[key].requests_per_s / strongest[key].requests_per_s,
                against=" / ".join(variants),
            )
        )
    d = gwebhook_rounds(every, "d-alert")
    if d:
        judged.append(
            Judged(
                "(d-alert) arrays of 100 alerts: gwebhook durable incidents/s",
                40_000,
                [r.incidents_per_s for r in d.values()],
                fmt="{:,.0f}",
                best=best["d-alert"].incidents_per_s,
            )
        )
    on, off = gwebhook_rounds(every, "b-alert"), gwebhook_rounds(every, "e-alert")
    rounds = [n for n in on if n in off]
    if rounds:
        judged += ratio_rows(
            "store on / off (b-alert / e-alert)",
            "e-alert's over b-alert's",
            0.9,
            [(on[n], off[n]) for n in rounds],
        )
    pairs_of = instance_ratios(every)
    for key, what in FEATURE_TARGETS:
        pairs = pairs_of.get(key)
        if not pairs:
            continue
        base_key, least = COMPARISONS[key]
        judged += ratio_rows(
            f"{what} ({key} / {base_key})",
            f"{base_key}'s over {key}'s",
            least,
            [(r, base) for _, r, base in pairs],
        )
    two = gwebhook_rounds(every, "f-alert")
    rounds = [n for n in two if n in on]
    if rounds:
        judged.append(
            Judged(
                "two processes / one (f-alert / b-alert), gwebhook req/s",
                1.7,
                [two[n].requests_per_s / on[n].requests_per_s for n in rounds],
                fmt="{:.3f}",
            )
        )
    for key in SCENARIOS:
        pairs = rounds_of(every, key)
        if pairs:
            judged.append(
                Judged(
                    f"({key}) p99: gwebhook / reference",
                    1.0,
                    [g.p99_ms / ref.p99_ms for g, ref in pairs.values()],
                    higher=False,
                    best=best[key].p99_ms / strongest[key].p99_ms,
                    against=" / ".join(ref.variant for _, ref in pairs.values()),
                )
            )
    for key, growth in rss.items():
        judged.append(
            Judged(
                f"{key}: RSS growth {growth['requests_1']:,} -> "
                f"{growth['requests_2']:,} requests of ({growth['scenario']}), MB",
                20.0,
                [growth["growth_mb"]],
                higher=False,
                fmt="{:.1f}",
            )
        )
    return judged


def realistic_lines(
    runs: list[Run], every: list[Run], rss: dict[str, dict]
) -> list[str]:
    """The real-payload targets as a table RESULTS.md can take."""
    judged = realistic_targets(runs, every, rss)
    features = {key for key, _ in FEATURE_TARGETS}
    if (
        not any(SCENARIOS[r.scenario].payload for r in every)
        and "rss-alert" not in rss
        and not features & set(instance_ratios(every))
    ):
        return []
    rounds = len({r.round for r in every}) or 1
    return [
        "",
        f"real-payload and feature-cost targets: each judged on the median "
        f"of its {rounds} "
        "round(s); a ratio to the reference is to the strongest of its "
        "variants in the same round (which, round by round: 'against'); 'best' is "
        "each side's "
        "best run against the other's:",
        "",
        "| target | goal | median | range | rounds | best | against | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *(j.row() for j in judged),
    ]


# --- the run -----------------------------------------------------------------

SERVERS: dict[str, type[Server]] = {"gwebhook": Gwebhook, "reference": Reference}


def parse_arguments(
    argv: list[str] | None,
) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The options, the scenario keys to run, and the servers to run them on."""
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="measured seconds per run (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="warm-up seconds before each measured run (default 1)",
    )
    parser.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated, of {','.join(SCENARIOS)},"
        f"{','.join(RSS_SCENARIOS)}, or realistic ({REALISTIC}) "
        f"(default {DEFAULT_SCENARIOS}; f and g: two server "
        "processes; b-plain, b-signed, b-dedup, b-signed-dedup: gwebhook "
        "only, an instance of bench/instances/*.toml, each against b-plain "
        "round by round; b-pg, d-pg: gwebhook only, b and d on PostgreSQL "
        "(--pg), against b and d round by round; b-pg2, d-pg2: two nodes on "
        "one database, against b-pg and d-pg; b-api, b-api-waiting, "
        "b-api-following: gwebhook only, the read API on, without and with "
        "1,000 long polls; b-forward: gwebhook only, b-plain with a forward "
        "of every incident to a second gwebhook, against b-plain; b-alert, "
        "c-alert, d-alert, e-alert, f-alert, g-alert, b-github, b-wallarm: as the letter's scenario with a "
        "payload of bench/payloads; rss-alert: rss with b-alert's load)",
    )
    parser.add_argument(
        "--servers",
        default="gwebhook,reference",
        help="comma-separated: gwebhook, reference",
    )
    parser.add_argument(
        "--reference-mode",
        choices=list(REFERENCE_MODES),
        default="offload",
        help="how the reference calls SQLite, with its access log "
        "(see bench/reference/README.md; default offload); "
        "--reference-modes measures several",
    )
    parser.add_argument(
        "--reference-modes",
        metavar="all|VARIANT,...",
        help="measure the reference in each of these variants and compare "
        "gwebhook with the strongest in each scenario: 'all' (every mode, "
        f"with and without its access log: {','.join(REFERENCE_VARIANTS)}), "
        "or some of them; a variant ending in -nolog runs uvicorn with "
        "--no-access-log (default: --reference-mode's, with its log)",
    )
    parser.add_argument(
        "--gwebhook-workers-args",
        default="--workers {workers} --pin-cpus",
        help="gwebhook options for scenarios f and g "
        "(default '--workers {workers} --pin-cpus')",
    )
    parser.add_argument(
        "--gwebhook-args",
        default="",
        help="more gwebhook options, appended to its command line in every "
        "scenario (e.g. '--config FILE'; the password is in the environment "
        "as GWEBHOOK_PASSWORD)",
    )
    parser.add_argument(
        "--gwebhook-path",
        default="/",
        help="the path gwebhook's requests are posted to (default /; e.g. "
        "/instance/execute/NAME); the reference's stay at /, and the "
        f"b-* config-instance scenarios' at {INSTANCE_PATH}",
    )
    parser.add_argument(
        "--pg",
        default=DEFAULT_PG,
        metavar="URI",
        help="the PostgreSQL server of the -pg scenarios, as a libpq URI of a "
        "database to connect to (default {}): each run creates a database "
        "of its own there and drops it after".format(DEFAULT_PG.replace("%", "%%")),
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="N rounds over the scenarios, the servers alternating "
        "within each; report each server's best (default 1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile gwebhook under scenario b with py-spy",
    )
    parser.add_argument(
        "--profile-only", action="store_true", help="only the profile, no scenarios"
    )
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument(
        "--profile-scenario",
        choices=[k for k, s in SCENARIOS.items() if s.pinned],
        default="b",
        help="the load to profile under (default b)",
    )
    parser.add_argument(
        "--profile-lines",
        action="store_true",
        help="keep line numbers in the profile: a function's lines apart "
        "(which SQL statement of the store, say)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: C frames (OpenSSL, SQLite) too",
    )
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="(bench/run) measure that commit: bench/run installs a git "
        "archive of it instead of the working tree, whose uncommitted "
        "changes may be someone's work in progress",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (stores, logs)",
    )
    options = parser.parse_args(argv)

    keys = [k.strip() for k in options.scenarios.split(",") if k.strip()]
    # "realistic": the real-payload targets' scenarios, among any others.
    keys = list(
        dict.fromkeys(
            x for k in keys for x in (REALISTIC.split(",") if k == "realistic" else [k])
        )
    )
    unknown = [k for k in keys if k not in SCENARIOS and k not in RSS_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {','.join(unknown)}")
    if not options.gwebhook_path.startswith("/"):
        parser.error("--gwebhook-path must start with /")
    servers = [s.strip() for s in options.servers.split(",")]
    if options.commit and not os.environ.get("BENCH_INSTALLED_COMMIT"):
        parser.error("--commit is bench/run's: run bench/run, not bench.py")
    try:
        options.reference_variants = (
            reference_variants(options.reference_modes)
            if options.reference_modes
            else [options.reference_mode]
        )
    except ValueError as e:
        parser.error(f"--reference-modes: {e}")
    if options.profile_only:
        keys, options.profile = [], True
    return options, keys, servers


@dataclass
class Bench:
    """What every server of one benchmark run shares."""

    options: argparse.Namespace
    work: Path
    cert: Path
    key: Path
    credentials: Credentials

    def server(self, name: str, variant: str = "") -> Server:
        """
        A new server of that kind (the reference: of that variant), not yet
        started, with this run's settings.
        """
        args = (self.work, self.cert, self.key, self.credentials, self.options)
        if name == "reference":
            return Reference(*args, variant=variant or self.variants()[0])
        return SERVERS[name](*args)

    def variants(self) -> list[str]:
        """The reference's variants this run measures (--reference-modes)."""
        return self.options.reference_variants


def set_up(work: Path, options: argparse.Namespace) -> Bench:
    """
    A certificate (made in ``work``), a random password for the servers and
    a random signing key for the signed instances.
    """
    made = subprocess.run(
        [str(VENV_BIN / "gwebhook"), "make-cert", str(work / "certs")],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        raise Failed(f"gwebhook make-cert failed: {made.stderr}")
    cert, key = work / "certs" / "server.crt", work / "certs" / "server.key"
    credentials = Credentials(secrets.token_urlsafe(18), secrets.token_bytes(32))
    (work / "api-tokens").write_text(API_TOKEN + "\n")
    return Bench(options, work, cert, key, credentials)


@dataclass
class Results:
    """Everything one benchmark run measured."""

    runs: list[Run] = field(default_factory=list)  # each scenario and server's best
    every: list[Run] = field(default_factory=list)  # every run, --repeat included
    # gwebhook's memory growth, by RSS_SCENARIOS key ("rss", "rss-alert").
    rss: dict[str, dict] = field(default_factory=dict)
    profile: dict | None = None


def run_rss(bench: Bench, key: str = "rss") -> dict:
    """gwebhook's memory growth under scenario b's load (rss-alert: b-alert's)."""
    load = RSS_SCENARIOS[key]
    print(
        f"bench: {key}: gwebhook after 10,000 and 100,000 requests of ({load})",
        file=sys.stderr,
    )
    return rss_growth(bench.server("gwebhook"), bench.credentials, load)


def run_scenario(
    bench: Bench, key: str, name: str, attempt: int, variant: str = ""
) -> Run:
    """One measured run of one scenario against one server, told as it goes."""
    options = bench.options
    scenario = SCENARIOS[key]
    print(
        f"bench: ({key}) {scenario.title}: {name}"
        + (f" {variant}" if variant else "")
        + (f", round {attempt + 1}/{options.repeat}" if options.repeat > 1 else ""),
        file=sys.stderr,
    )
    run = measure(bench.server(name, variant), scenario, options, bench.credentials)
    if not run.skipped:
        print(
            f"bench:     {run.requests_per_s:,.0f} req/s, "
            f"p99 {run.p99_ms:.2f} ms, other CPU "
            f"{run.other_cpu_percent:.0f}%, steal "
            f"{run.steal_percent:.0f}%, acked "
            f"{run.acknowledged}, stored {run.stored}",
            file=sys.stderr,
        )
    return run


def run_scenarios(
    bench: Bench, keys: list[str], servers: list[str], results: Results
) -> None:
    """Every scenario on every server, --repeat rounds; keep each one's best."""
    # Rounds over all scenarios, rather than each scenario N times in a
    # row: a machine whose speed drifts (other guests on the host) then
    # drifts under every scenario alike, and ratios between scenarios
    # (store on/off, one process/two) stay fair.
    # Every other round goes over them backwards (A B, B A, A B...), so that
    # a drift within a round does not always favour the same scenario.
    # The reference runs once per variant (--reference-modes), each kept
    # apart: its best run of each, and the report takes the strongest.
    best: dict[tuple[str, str, str], Run] = {}
    for attempt in range(bench.options.repeat):
        for key in keys if attempt % 2 == 0 else keys[::-1]:
            if key in RSS_SCENARIOS:
                if attempt == 0 and "gwebhook" in servers:
                    results.rss[key] = run_rss(bench, key)
                continue
            for name in servers:
                if not SCENARIOS[key].runs_on(name):
                    continue
                for variant in bench.variants() if name == "reference" else [""]:
                    run = run_scenario(bench, key, name, attempt, variant)
                    run.round = attempt + 1
                    results.every.append(run)
                    mine = best.get((key, name, variant))
                    if mine is None or run.requests_per_s > mine.requests_per_s:
                        best[(key, name, variant)] = run
    results.runs.extend(
        best[(k, name, variant)]
        for k in keys
        if k in SCENARIOS
        for name in servers
        for variant in (bench.variants() if name == "reference" else [""])
        if (k, name, variant) in best
    )


def run_profile(bench: Bench) -> dict:
    """py-spy's profile of gwebhook under the chosen scenario's load."""
    print(
        f"bench: profiling gwebhook under ({bench.options.profile_scenario}) "
        "with py-spy",
        file=sys.stderr,
    )
    return profile(bench.server("gwebhook"), bench.options, bench.credentials)


@dataclass
class Circumstances:
    """When, where and on what the benchmark ran: the report's header."""

    started_at: datetime
    load_at_start: str
    source: str
    info: dict = field(default_factory=dict)


def header_lines(
    circumstances: Circumstances,
    argv: list[str] | None,
    options: argparse.Namespace,
    keys: list[str],
    runs: list[Run],
) -> list[str]:
    """What was run, on what, and the titles of the scenarios."""
    c = circumstances
    lines = [
        f"gwebhook benchmark, {c.started_at:%Y-%m-%d %H:%M} UTC",
        "command: bench/run "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "versions: " + ", ".join(f"{k} {v}" for k, v in c.info.items()),
        f"gwebhook source: {c.source}",
        f"load average at start: {c.load_at_start}",
        "reference: "
        + (
            f"each of {', '.join(options.reference_variants)}, the strongest "
            "per scenario compared"
            if len(options.reference_variants) > 1
            else f"{options.reference_variants[0]}"
        )
        + " (a mode, -nolog: without its access log); TLS: "
        + "; ".join(sorted({f"{r.server} {r.tls}" for r in runs if r.tls})),
        "",
    ]
    for key in keys:
        if key in SCENARIOS:
            lines.append(f"({key}) {SCENARIOS[key].title}")
    return lines


def measurement_lines(
    runs: list[Run], rss: dict[str, dict], every: list[Run] | None = None
) -> list[str]:
    """
    The table, the ratios, a warning for a busy machine, RSS, the targets,
    the real-payload targets.
    """
    lines: list[str] = []
    every = every or []
    failed = {k: v for k, v in rss.items() if "error" in v}
    if runs:
        lines += [
            "",
            table(runs),
            *strongest_lines(runs, every),
            "",
            *ratios(runs),
            *instance_lines(every),
        ]
        if len({r.round for r in every}) > 1 and any(
            r.scenario in COMPARISONS or SCENARIOS[r.scenario].payload for r in every
        ):
            # These ratios are round by round: show the rounds.
            lines += ["", "every run, round by round:", "", table(every, rounds=True)]
        busiest = max(r.other_cpu_percent + r.steal_percent for r in (every or runs))
        if busiest > 10:
            lines += [
                "",
                f"warning: other processes or other guests of the "
                f"hypervisor took up to {busiest:.0f}% CPU (of 200%) during a "
                "measured run; such runs are slower than on a quiet machine",
            ]
    rss = {k: v for k, v in rss.items() if "error" not in v}
    for key, growth in failed.items():
        lines += ["", f"RSS ({key}): not measured: {growth['error']}"]
    for key, growth in rss.items():
        lines += [
            "",
            f"RSS ({key}, the load of {growth.get('scenario', 'b')}): "
            f"{growth['rss_mb_1']:.1f} MB after {growth['requests_1']:,} "
            f"requests, {growth['rss_mb_2']:.1f} MB after {growth['requests_2']:,} "
            f"(growth {growth['growth_mb']:+.1f} MB)",
        ]
    if runs or rss:
        lines += [
            "",
            "targets:",
            *(
                targets(head_to_head(runs), rss.get("rss"), every)
                or ["(none judged by these scenarios)"]
            ),
        ]
    lines += realistic_lines(runs, every, rss)
    return lines


def lost(every: list[Run]) -> list[Run]:
    """The runs whose server stored fewer incidents than it acknowledged."""
    return [r for r in every if r.stored is not None and r.stored < r.acknowledged]


def store_check_lines(every: list[Run]) -> list[str]:
    """A line for every run whose store holds more, or less, than was answered."""
    lines = []
    for r in every:
        # Unanswered at the end of the warm-up and of the measured run: at
        # most one request per connection each time.
        s = SCENARIOS[r.scenario]
        slack = 2 * s.connections * s.per_request + 1
        if r.stored is not None and r.stored > r.acknowledged + slack:
            lines.append(
                f"[CHECK] ({r.scenario}) {r.who}: stored {r.stored} is "
                f"more than acknowledged {r.acknowledged} + {slack} in flight"
            )
        if r.duplicates:
            # Every request of the load is distinct: none may be a duplicate.
            lines.append(
                f"[CHECK] ({r.scenario}) {r.who}: {r.duplicates} answer "
                "entries marked duplicate, though every request was distinct"
            )
    for r in lost(every):
        lines.append(
            f"[FAILED] ({r.scenario}) {r.who}: stored {r.stored} < "
            f"acknowledged {r.acknowledged}"
        )
    return lines


def forward_lost(every: list[Run]) -> list[Run]:
    """The forwarding runs whose receiver lacks an incident delivered to it."""
    return [
        r for r in every if r.forward and r.forward["received"] < r.forward["delivered"]
    ]


def forward_lines(every: list[Run]) -> list[str]:
    """
    For every forwarding run: what the receiver holds against what the
    server stored, queued and delivered (both stopped, after the queue was
    given up to 60 s to drain), and a verdict.
    """
    lines = []
    for r in every:
        f = r.forward
        if not f or "received" not in f:
            continue
        if not lines:
            lines.append("")
        where = f"({r.scenario}) round {r.round}"
        drained = (
            f"delivered {f['drained_s']:.1f} s later"
            if f.get("drained_s") is not None
            else "NOT delivered within 60 s"
        )
        lines.append(
            f"forward {where}: the receiver holds {f['received']:,} incidents of "
            f"the {r.stored:,} stored (acknowledged {r.acknowledged:,}); "
            f"deliveries: {f['delivered']:,} delivered, {f['pending']:,} pending, "
            f"{f['dead']:,} dead; backlog at the end of the measured run "
            f"{f['backlog']:,}, {drained}; {f['batches']:,} batches "
            f"(median {f['median_batch']:g} incidents), at most "
            f"{f['most_attempts']} attempt(s) each; the receiver used "
            f"{f.get('receiver_cpu_percent', 0):.0f}% CPU (core 1, beside wrk)"
        )
        problems = []
        if f["queued"] != r.stored:
            problems.append(f"{f['queued']:,} queued for {r.stored:,} stored")
        if f["dead"]:
            problems.append(f"{f['dead']:,} given up")
        if f["pending"]:
            problems.append(f"{f['pending']:,} still pending when stopped")
        if f["received"] > r.stored:
            problems.append(f"the receiver holds {f['received']:,} > stored")
        # A batch may reach the receiver as the server stops, before the
        # server marks it delivered: at most one batch more than delivered.
        if f["received"] > f["delivered"] + 100:
            problems.append(
                f"the receiver holds {f['received'] - f['delivered']:,} more "
                "than delivered"
            )
        if f["received"] < f["delivered"]:
            lines.append(
                f"[FAILED] forward {where}: the receiver holds {f['received']:,} "
                f"< delivered {f['delivered']:,}"
            )
        elif problems:
            lines.append(f"[CHECK] forward {where}: " + "; ".join(problems))
        else:
            # No problem: every incident stored was queued and delivered, and
            # the receiver holds as many as were delivered.
            lines.append(
                f"[ok] forward {where}: every incident stored was delivered, and "
                "the receiver holds each once"
            )
    return lines


def profile_lines(prof: dict | None, scenario: str) -> list[str]:
    """Each profiled thread's busiest functions and packages, as tables."""
    lines: list[str] = []
    if not prof:
        return lines
    for thread in sorted(prof, key=lambda t: -prof[t]["samples"]):
        p = prof[thread]
        lines += [
            "",
            f"profile: gwebhook under ({scenario}), "
            f"thread {thread}: "
            f"{p['samples']} py-spy samples, busy {p['busy_percent']:.0f}% "
            "of the time (idle excluded); own and total % of its samples",
        ]
        lines += _functions_table("top by own time:", p["by_own"][:20])
        lines += _functions_table(
            "top by total time (without the main loop's chain):",
            p["by_total"][:25],
        )
        lines += [
            "",
            "own time by package:",
            "",
            "| package | own % |",
            "|---|---|",
        ]
        lines += [f"| {r['area']} | {r['own']:.1f} |" for r in p["by_area"][:15]]
    return lines


def report(
    circumstances: Circumstances,
    argv: list[str] | None,
    options: argparse.Namespace,
    keys: list[str],
    results: Results,
) -> None:
    """Print the report and write it, with the raw numbers as JSON, to OUT."""
    lines = [
        *header_lines(circumstances, argv, options, keys, results.runs),
        *measurement_lines(results.runs, results.rss, results.every),
        *store_check_lines(results.every),
        *forward_lines(results.every),
        *profile_lines(results.profile, options.profile_scenario),
    ]
    text = "\n".join(lines)
    print(text)
    started_at = circumstances.started_at
    stamp = started_at.strftime("%Y%m%dT%H%M%S")
    (OUT / f"{stamp}.txt").write_text(text + "\n")
    (OUT / f"{stamp}.json").write_text(
        json.dumps(
            {
                "started": started_at.isoformat(),
                "options": vars(options),
                "versions": circumstances.info,
                "runs": [asdict(r) for r in results.runs],
                "every_run": [asdict(r) for r in results.every],
                "rss": results.rss,
                "profile": results.profile,
            },
            indent=1,
        )
    )


def main(argv: list[str] | None = None) -> int:
    options, keys, servers = parse_arguments(argv)

    # SIGINT too: a shell that starts us in the background sets it to "ignore".
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gwebhook-bench-"))
    results = Results()
    circumstances = Circumstances(
        started_at=datetime.now(UTC),
        load_at_start=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        source=source_state(),
    )
    try:
        bench = set_up(work, options)
        circumstances.info = info = versions()
        print(
            f"bench: {circumstances.started_at:%Y-%m-%d %H:%M} UTC, {info['cpu']}, "
            f"{options.seconds:g} s per run after {options.warmup:g} s warm-up",
            file=sys.stderr,
        )
        run_scenarios(bench, keys, servers, results)
        if options.profile:
            results.profile = run_profile(bench)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        return 130
    except Failed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        end_all()
        drop_all_databases()
        if options.keep:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)

    report(circumstances, argv, options, keys, results)
    return 2 if lost(results.every) or forward_lost(results.every) else 0


if __name__ == "__main__":
    sys.exit(main())
