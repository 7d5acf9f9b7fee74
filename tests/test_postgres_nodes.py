"""
Several gwebhook nodes on one PostgreSQL database (docs/reference.md 4.8),
as real ``twistd`` processes: nodes starting together create the schema
once; concurrent writes to two nodes get unique ids and every acknowledged
incident is stored; one delivery sent to both nodes at once creates one set;
a node killed mid-stream loses nothing it acknowledged while the other
keeps serving; the database stopped, crashed or ending the sessions is a
503 with Retry-After and the nodes recover by themselves; a database that
cannot be used refuses the start in one line, the password never shown;
and two nodes behind HAProxy keep serving when one dies.

Faults run on a private cluster (``pg_cluster``); the rest on the machine's
server (``pg_database``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.credentials import AUTH, HEADERS
from support.daemon import (
    TWISTD,
    Daemon,
    last_line,
    log_lines,
    log_text,
    run_cli,
    run_twistd,
    wait_for_log,
)
from support.haproxy import require_haproxy
from support.http import Response, ask
from support.instances import connection, instance, write_config
from support.nodes import (
    GwebhookHaproxy,
    Posters,
    Target,
    assert_acknowledged_stored,
    assert_whole_requests,
    listed,
    max_incident_id,
    node,
    start_nodes,
    stored_names,
    wait_listening,
)
from support.ports import free_port, refuses_connections
from support.postgres import connect, dbname_of, psql_rows, with_dbname
from support.senders import Sender
from support.wait import wait_for

from gwebhook.store.postgres_schema import MIGRATION_LOCK, SCHEMA_VERSION

pytestmark = pytest.mark.process

JSON = {"Content-Type": "application/json"}
DELIVERY = "X-Delivery"
# The instance of the shared pair that remembers deliveries and keys.
DEDUP_INSTANCE = (
    instance("delivery", anonymous=True)
    + f'[instance.dedup]\nheader = "{DELIVERY}"\nkeys = ["alertId"]\n'
)


def health(d: Daemon) -> Response:
    return d.request("GET", "/healthz", None, timeout=10)


def post(d: Daemon, body: Any) -> Response:
    """POST ``body`` (JSON) to the default instance, with its credentials."""
    return d.request(body=json.dumps(body).encode(), headers={**HEADERS, **JSON})


def terminate_sessions(admin: str, datname: str) -> int:
    """pg_terminate_backend every session of ``datname`` but ours; how many."""
    rows = psql_rows(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        datname,
    )
    return len(rows)


# ------------------------------------------- two nodes started at one moment


class Pair:
    """Two nodes on one database, and what their start showed."""

    def __init__(self, uri: str, nodes: list[Daemon], waited: int) -> None:
        self.uri = uri
        self.nodes = nodes
        self.waited = waited


@pytest.fixture(scope="module")
def pair(pg_database_module, pki, tmp_path_factory):
    """
    Two nodes spawned at one moment on an empty database, made to meet at
    the schema's upgrade: the test holds the upgrade's advisory lock until
    both wait for it, then lets them go.  The default instance (credentials)
    and instance ``delivery`` (anonymous, deduplicated by X-Delivery and
    alertId).
    """
    uri = pg_database_module
    directory = tmp_path_factory.mktemp("pair")
    config = write_config(directory, DEDUP_INSTANCE)
    nodes: list[Daemon] = []
    waiting = (
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE d.datname = %s AND l.locktype = 'advisory' AND NOT l.granted"
    )
    try:
        with connect(uri) as held:
            held.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            for n in range(2):
                args = [*AUTH, "--config", str(config)]
                node(uri, args, directory / f"node{n}", pki, nodes).spawn()

            def both_wait() -> bool:
                for d in nodes:
                    assert d.process.poll() is None, d.output()
                return psql_rows(uri, waiting, dbname_of(uri)) == [(2,)]

            wait_for(both_wait, 30, "both nodes to wait for the schema's lock")
            [(waited,)] = psql_rows(uri, waiting, dbname_of(uri))
            held.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        wait_listening(nodes)
        yield Pair(uri, nodes, waited)
    finally:
        for d in nodes:
            d.kill()


def test_nodes_started_together_create_the_schema_once_and_both_serve(pair):
    """
    Both nodes waited for the upgrade's lock at once, both started, the
    schema is this gwebhook's version, in one row; both store, and ids
    follow the order of the commits whichever node made them.
    """
    assert pair.waited == 2
    rows = psql_rows(pair.uri, "SELECT version FROM gwebhook_schema")
    assert rows == [(SCHEMA_VERSION,)]
    for d in pair.nodes:
        assert d.process.poll() is None
        assert health(d).status == 200
    ids = []
    for n in range(12):
        d = pair.nodes[n % 2]
        reply = post(d, [{"name": f"turn {n}.{i}"} for i in range(2)])
        assert reply.status == 200, reply.body
        ids += [int(i["id"]) for i in reply.json()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    stored = stored_names(pair.uri)
    assert [stored[i] for i in ids] == [
        f"turn {n}.{i}" for n in range(12) for i in (0, 1)
    ]
    for d in pair.nodes:
        assert log_lines(d, "POST / 200"), "a node served nothing"


def test_concurrent_writes_to_both_nodes_list_exactly_what_was_acknowledged(pair):
    """
    Four senders, two per node, posting single incidents and arrays at
    once: every answer 200, every id given once, and ``gwebhook list --db
    URI`` prints exactly the acknowledged incidents, each id once.
    """
    before = max_incident_id(pair.uri)
    stop = threading.Event()
    senders = [
        Sender(n, pair.nodes[n % 2], {**HEADERS, **JSON}, stop) for n in range(4)
    ]
    for s in senders:
        s.start()
    time.sleep(2.0)
    stop.set()
    for s in senders:
        s.join(15)
    assert not any(s.is_alive() for s in senders)
    assert not [s.failure for s in senders if s.failure]
    assert {status for s in senders for status in s.statuses} == {200}
    assert not [m for s in senders for m in s.mismatches]
    assert all(len(s.acknowledged) > 20 for s in senders), [
        len(s.acknowledged) for s in senders
    ]
    acknowledged = [a for s in senders for a in s.acknowledged]
    assert len({i for i, _ in acknowledged}) == len(acknowledged), "an id twice"

    incidents = listed(pair.uri, "--after", str(before))
    ids = [int(i["id"]) for i in incidents]
    assert len(set(ids)) == len(ids), "list printed an id twice"
    assert ids == sorted(ids)
    assert {int(i["id"]): i["name"] for i in incidents} == dict(acknowledged)
    assert_whole_requests(pair.uri)


def test_one_delivery_sent_to_both_nodes_at_once_creates_one_set(pair, pki):
    """
    Eight connections, four to each node, send the same X-Delivery and the
    same keys at one moment, ten times over: each time one answer created
    the incidents and every other names the same ids as duplicates; the
    instance holds one set per delivery.
    """
    path = "/instance/execute/delivery"
    created_ids: list[str] = []
    for round_ in range(10):
        delivery = f"d{round_}-{os.urandom(4).hex()}"
        body = json.dumps(
            [{"alertId": f"{delivery}-{k}", "name": f"{delivery} {k}"} for k in (1, 2)]
        ).encode()
        headers = {DELIVERY: delivery, **JSON}
        together = threading.Barrier(8, timeout=20)

        def one(n: int, body=body, headers=headers, together=together) -> Response:
            c = connection(pair.nodes[n % 2])
            try:
                c.connect()
                together.wait()
                return ask(c, "POST", path, body, headers)
            finally:
                c.close()

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(one, range(8)))
        assert {r.status for r in replies} == {200}, [r.body for r in replies]
        answers = [r.json() for r in replies]
        creators = [a for a in answers if not any("duplicate" in e for e in a)]
        assert len(creators) == 1, answers
        [created] = creators
        assert len(created) == 2
        for answer in answers:
            assert [e["id"] for e in answer] == [e["id"] for e in created], answers
            if answer is not created:
                assert answer == [{**e, "duplicate": True} for e in created]
        created_ids += [e["id"] for e in created]
    listed_ids = [i["id"] for i in listed(pair.uri, "--instance", "delivery")]
    assert listed_ids == created_ids


# ------------------------------------------------------ a node killed outright


def test_a_node_killed_mid_stream_loses_nothing_and_the_other_serves_on(
    pg_database, pki, tmp_path, started
):
    """
    Two senders to each node posting arrays; SIGKILL of one: every incident
    answered 200 by either node is stored with its id, no request is half
    stored, and the other node's senders keep being answered 200.
    """
    uri = pg_database
    killed, survivor = start_nodes(2, uri, AUTH, tmp_path, pki, started)
    stop = threading.Event()
    senders = [Sender(n, (killed, survivor)[n % 2], {**HEADERS, **JSON}, stop)
               for n in range(4)]  # fmt: skip
    for s in senders:
        s.start()
    try:
        time.sleep(1.5)
        at_kill = [len(s.acknowledged) for s in senders]
        killed.kill()
        time.sleep(1.0)
    finally:
        stop.set()
        for s in senders:
            s.join(15)
    assert not any(s.is_alive() for s in senders)
    assert not [m for s in senders for m in s.mismatches]
    to_killed, to_survivor = senders[0::2], senders[1::2]
    assert all(s.failure for s in to_killed), "the kill did not interrupt them"
    assert not [s.failure for s in to_survivor if s.failure]
    assert {st for s in to_survivor for st in s.statuses} == {200}
    for s in to_survivor:
        assert len(s.acknowledged) > at_kill[s.number] + 5, "the survivor stalled"
    acknowledged = [a for s in senders for a in s.acknowledged]
    assert len(acknowledged) > 100, "too little traffic to mean anything"
    assert_acknowledged_stored(acknowledged, uri)
    assert_whole_requests(uri)
    reply = post(survivor, {"name": "after the kill"})
    assert reply.status == 200, reply.body
    assert int(reply.json()[0]["id"]) > max(i for i, _ in acknowledged)


# --------------------------------------------------- faults of the database


def assert_503s_only_and_stored(posters: Posters, uri: str) -> None:
    """
    Every request was answered (the node stayed up), 200 or 503 with
    Retry-After, and every incident answered 200 is stored.
    """
    attempts = posters.attempts
    assert not [a.error for a in attempts if a.error], "a request got no answer"
    assert {a.status for a in attempts} <= {200, 503}, {a.status for a in attempts}
    assert all(a.retry_after for a in attempts if a.status == 503)
    assert not [m for p in posters.posters for m in p.mismatches]
    assert_acknowledged_stored(posters.acknowledged, uri)
    assert_whole_requests(uri)


def wait_health(d: Daemon, status: int, timeout: float) -> Response:
    return wait_for(
        lambda: (r := health(d)).status == status and r,
        timeout,
        f"/healthz {status}",
    )


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_database_stopped_under_load_is_503_until_it_is_back(
    pg_cluster, pg_cluster_db, pki, tmp_path, started, mode
):
    """
    PostgreSQL stopped (``fast``: a clean shutdown; ``immediate``: a crash,
    recovered at the next start) while three posters keep posting arrays:
    webhooks get 503 with Retry-After, never a 200 that is not stored, and
    /healthz 503 within 10 s; once it runs again the node answers 200 within
    15 s without a restart, and every 200 is stored.
    """
    uri = pg_cluster_db
    [d] = start_nodes(1, uri, AUTH, tmp_path, pki, started)
    with Posters([d], {**HEADERS, **JSON}, per_target=3) as posters:
        posters.wait_for_answer(200, 0, 10, count=20)
        stopped = time.monotonic()
        pg_cluster.stop(mode)
        unhealthy = wait_health(d, 503, 10)
        assert unhealthy.headers.get("retry-after")
        posters.wait_for_answer(503, stopped, 10, count=3)
        time.sleep(0.5)
        down = [a for a in posters.answered_after(time.monotonic() - 0.4)]
        assert down and {a.status for a in down} == {503}, "a 200 with it stopped"
        back = time.monotonic()
        pg_cluster.start()
        posters.wait_for_answer(200, back, 15, count=5)
        wait_health(d, 200, 15)
    assert d.process.poll() is None
    assert_503s_only_and_stored(posters, uri)
    wait_for_log(d, "store unavailable, answering 503")
    wait_for_log(d, "store available again")


def test_sessions_ended_by_the_database_are_replaced_under_load(
    pg_cluster, pg_cluster_db, pki, tmp_path, started
):
    """
    pg_terminate_backend of the node's session, three times, while three
    posters keep posting: the request on the lost session is a 503 with
    Retry-After, the next ones 200 on a new session; every 200 stored.
    """
    uri = pg_cluster_db
    [d] = start_nodes(1, uri, AUTH, tmp_path, pki, started)
    with Posters([d], {**HEADERS, **JSON}, per_target=3) as posters:
        posters.wait_for_answer(200, 0, 10, count=20)
        ended = 0
        for _ in range(3):
            ended += terminate_sessions(pg_cluster.uri(), dbname_of(uri))
            time.sleep(0.4)
        last = time.monotonic()
        posters.wait_for_answer(200, last, 15, count=10)
        assert health(d).status == 200
    assert ended >= 3
    assert_503s_only_and_stored(posters, uri)
    assert any(a.status == 503 for a in posters.attempts), "no session was lost"


# The writer lock held by a session whose node stopped in mid-transaction.
HOLDER = (
    "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND a.datname = %s"
    " AND a.state = 'idle in transaction'"
)


def freeze_holding_the_writer_lock(d: Daemon, uri: str, tries: int = 60) -> int:
    """
    SIGSTOP ``d`` (under load) until it is stopped between the statements
    of a write transaction, holding the writer lock; its session's pid.
    """
    for _ in range(tries):
        d.signal(signal.SIGSTOP)
        time.sleep(0.15)
        holders = psql_rows(uri, HOLDER, dbname_of(uri))
        if holders:
            return holders[0][0]
        d.signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"never stopped {d.port} inside a write transaction")


def test_a_node_frozen_inside_a_transaction_does_not_stall_the_others(
    pg_cluster_db, pki, tmp_path, started
):
    """
    One node stopped (SIGSTOP: a paused VM, a stalled process) between the
    statements of a write transaction, holding the writer lock: the other
    node still answers a webhook (200, or 503 with Retry-After) and its
    /healthz within 20 s.
    """
    uri = pg_cluster_db
    frozen, other = start_nodes(2, uri, AUTH, tmp_path, pki, started)
    with Posters([frozen], {**HEADERS, **JSON}, per_target=3) as posters:
        posters.wait_for_answer(200, 0, 10, count=10)
        freeze_holding_the_writer_lock(frozen, uri)
        try:
            with ThreadPoolExecutor(2) as pool:
                webhook = pool.submit(
                    other.request,
                    body=b'{"name": "while the other is frozen"}',
                    headers=HEADERS,
                    timeout=20,
                )
                healthz = pool.submit(other.request, "GET", "/healthz", None, None, 20)
                answers = [f.exception() or f.result() for f in (webhook, healthz)]
        finally:
            frozen.kill()
    for answer in answers:
        assert isinstance(answer, Response), f"no answer in 20 s: {answer!r}"
        assert answer.status == 200 or (
            answer.status == 503 and answer.headers.get("retry-after")
        ), answer


# ------------------------------------------------------- start-up refusals


@pytest.fixture(scope="module")
def password_role(pg_cluster):
    """
    A role that must give its password (scram-sha-256 for it alone in the
    private cluster's pg_hba.conf; postgres keeps trust): (name, password).
    """
    role = "gwebhook_pw"
    password = "pg-" + secrets.token_hex(8)
    admin = pg_cluster.uri()
    psql_rows(admin, f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    hba = pg_cluster.data / "pg_hba.conf"
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    psql_rows(admin, "SELECT pg_reload_conf()")

    def asks_for_it() -> bool:
        reason = ""
        try:
            psql_rows(pg_cluster.uri(user=role), "SELECT 1")
        except Exception as e:
            reason = str(e)
        return "password" in reason

    wait_for(asks_for_it, 10, "pg_hba.conf to ask the role for a password")
    return role, password


def password_file(directory: Path, text: str) -> Path:
    path = directory / "db-password"
    path.write_text(text)
    path.chmod(0o600)
    return path


def refusal_case(case: str, tmp_path: Path, request) -> tuple[list[str], str, str]:
    """(--db and --db-password-file options, what the line says, a secret)."""
    secret = "pw-" + secrets.token_hex(8)
    if case == "no such database":
        admin = request.getfixturevalue("pg_admin_uri")
        uri = with_dbname(admin, f"gwebhook_t_missing_{secrets.token_hex(4)}")
        return ["--db", uri], "does not exist; create the database", secret
    if case == "nothing listens":
        uri = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        return ["--db", uri], "check that PostgreSQL runs and listens", secret
    if case == "wrong password":
        cluster = request.getfixturevalue("pg_cluster")
        role, _ = request.getfixturevalue("password_role")
        wrong = password_file(tmp_path, secret + "\n")
        return (
            ["--db", cluster.uri(user=role), "--db-password-file", str(wrong)],
            f'password authentication failed for user "{role}"; give the password',
            secret,
        )
    uri = "postgresql://postgres@127.0.0.1:5432/postgres"
    if case == "password file missing":
        missing = tmp_path / "nope"
        return (
            ["--db", uri, "--db-password-file", str(missing)],
            f"cannot read the password file {missing}",
            secret,
        )
    assert case == "password file empty"
    empty = password_file(tmp_path, "")
    return (
        ["--db", uri, "--db-password-file", str(empty)],
        f"the password file {empty} is empty",
        secret,
    )


@pytest.mark.parametrize(
    "case",
    [
        "no such database",
        "nothing listens",
        "wrong password",
        "password file missing",
        "password file empty",
    ],
)
def test_a_database_that_cannot_be_used_refuses_the_start_in_one_line(
    tmp_path, pki, request, case
):
    """
    The daemon exits non-zero, no traceback, its last line ``--db:`` and
    the fix, nothing listening; ``gwebhook list`` refuses in one line too.
    Neither shows the password given.
    """
    options, expected, secret = refusal_case(case, tmp_path, request)
    port = free_port()
    result = run_twistd(
        [
            "--interface", "127.0.0.1", "--port", str(port),
            "--cert", str(pki.cert), "--key", str(pki.key), *AUTH, *options,
        ],
        tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    line = last_line(result)
    assert line.startswith(f"{TWISTD} -n: --db: "), line
    assert expected in line, line
    assert secret not in output
    assert refuses_connections(port)

    read = run_cli("list", *options, cwd=tmp_path)
    assert read.returncode == 1, read
    assert read.stdout == ""
    assert len(read.stderr.splitlines()) == 1, read.stderr
    assert expected in read.stderr, read.stderr
    assert secret not in read.stderr


def config_node(config: Path, directory: Path, pki, started: list[Daemon]) -> Daemon:
    """
    A node whose store is the ``db`` of its ``--config`` file: a command
    line of its own, since Daemon's gives a SQLite ``--db``, which would win.
    """
    directory.mkdir()
    port = free_port()
    argv = [
        TWISTD, "-n", "--pidfile=", "--logfile", str(directory / "twistd.log"),
        "gwebhook", "--interface", "127.0.0.1", "--port", str(port),
        "--cert", str(pki.cert), "--key", str(pki.key), *AUTH,
        "--config", str(config),
    ]  # fmt: skip
    d = Daemon([], directory, pki, port=port, argv=argv)
    started.append(d)
    return d


def test_the_password_is_never_shown_and_reconnecting_uses_it(
    pg_cluster, pg_cluster_db, password_role, pki, tmp_path, started
):
    """
    Two nodes whose role needs a password, one given --db-password-file,
    the other ``db`` and ``db_password_file`` in its --config: both store;
    the password is in neither's command line, environment nor log, not
    even after a lost session, which each replaces with the same password;
    ``gwebhook list`` reads the incidents with --db-password-file, and with
    --config.
    """
    role, password = password_role
    name = dbname_of(pg_cluster_db)
    psql_rows(pg_cluster.uri(), f'ALTER DATABASE "{name}" OWNER TO {role}')
    uri = pg_cluster.uri(name, user=role)
    secret_file = password_file(tmp_path, password + "\n")
    config = write_config(
        tmp_path,
        f'db = "{uri}"\ndb_password_file = "{secret_file.name}"\n',
        instance("open", anonymous=True),
    )
    option = [*AUTH, "--db-password-file", str(secret_file)]
    by_option = node(uri, option, tmp_path / "a", pki, started)
    by_config = config_node(config, tmp_path / "b", pki, started)
    for d in (by_option, by_config):
        d.spawn()
    wait_listening([by_option, by_config])

    expected = []
    for d in (by_option, by_config):
        first = post(d, {"name": f"{d.port} with a password"})
        assert first.status == 200, first.body
        assert terminate_sessions(pg_cluster.uri(), name) >= 1
        lost = post(d, {"name": f"{d.port} on the lost session"})
        assert lost.status == 503, lost.body
        again = post(d, {"name": f"{d.port} on a new session"})
        assert again.status == 200, again.body
        wait_for_log(d, "store available again")
        expected += [f"{d.port} with a password", f"{d.port} on a new session"]

    for d in (by_option, by_config):
        for what in ("cmdline", "environ"):
            shown = Path(f"/proc/{d.process.pid}/{what}").read_bytes()
            assert password.encode() not in shown, what
        assert password not in log_text(d) + d.output()
    for options in (
        ["--db", uri, "--db-password-file", str(secret_file)],
        ["--config", str(config)],
    ):
        listing = run_cli("list", *options)
        assert listing.returncode == 0, listing
        names = [json.loads(line)["name"] for line in listing.stdout.splitlines()]
        assert names == expected, options
        assert password not in listing.stdout + listing.stderr


# ------------------------------------------------------------------ HAProxy


def test_two_nodes_behind_haproxy_serve_on_when_one_is_killed(
    pg_database, pki, tmp_path, started
):
    """
    Two nodes behind HAProxy (TCP, TLS passed through; the README's
    configuration): posts through it reach both and are stored; SIGKILL of
    one: the proxy marks it down and posts keep succeeding through the
    other; every acknowledged incident is stored.
    """
    require_haproxy()
    uri = pg_database
    killed, survivor = start_nodes(2, uri, AUTH, tmp_path, pki, started)
    proxy = GwebhookHaproxy([killed.port, survivor.port], tmp_path / "haproxy", pki.ca)
    try:
        proxy.start()
        # Servers start out UP, before any check: wait for each node's
        # /healthz to have answered 200 over verified TLS.
        wait_for(
            lambda: set(proxy.check_statuses().values()) == {"L7OK"},
            10,
            "both nodes' health checks to pass",
        )
        assert set(proxy.server_states().values()) == {"UP"}
        through = Target(proxy.port, pki)
        with Posters([through], {**HEADERS, **JSON}, per_target=3) as posters:
            posters.wait_for_answer(200, 0, 10, count=30)
            for d in (killed, survivor):
                wait_for_log(d, "POST / 200")
            killed.kill()
            dead = time.monotonic()
            proxy.wait_state(killed.port, "DOWN", 10)
            marked = time.monotonic()
            posters.wait_for_answer(200, marked, 10, count=30)
    finally:
        proxy.stop()
    assert marked - dead < 5, f"marked down {marked - dead:.1f} s after the kill"
    after = posters.answered_after(dead)
    failed = [a for a in after if a.status != 200]
    assert not failed, [(a.status, a.error) for a in failed][:5]
    assert not [m for p in posters.posters for m in p.mismatches]
    acknowledged = posters.acknowledged
    assert len(acknowledged) > 50
    assert_acknowledged_stored(acknowledged, uri)
    assert_whole_requests(uri)
    served_after = [a for a in after if a.status == 200]
    assert len(served_after) >= 30
