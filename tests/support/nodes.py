"""
Several ``twistd gwebhook`` nodes on one PostgreSQL database, as an
operator runs them: each in its own directory with ``--db postgresql://...``,
senders that keep posting to them (or to a proxy in front of them) and
record every answer with its time, what the database holds afterwards, and
the HAProxy configuration the README shows for such a deployment.
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from support.daemon import Daemon, run_cli
from support.haproxy import Haproxy
from support.http import https
from support.pki import Served
from support.ports import accepts_connections
from support.postgres import psql_rows

# ------------------------------------------------------------------ the nodes


def node(
    uri: str, args: Sequence[str], directory: Path, pki: Served, started: list[Daemon]
) -> Daemon:
    """
    A node on the database ``uri``, not yet spawned: ``args`` then
    ``--db URI``, in its own ``directory`` (created).  Daemon always passes
    a SQLite ``--db`` first; twistd takes the last one given, so ``uri`` wins.
    """
    directory.mkdir(parents=True, exist_ok=True)
    d = Daemon([*args, "--db", uri], directory, pki)
    started.append(d)
    return d


def wait_listening(nodes: Sequence[Daemon], timeout: float = 30) -> None:
    """Wait until every spawned node listens; fail if one exits first."""
    deadline = time.monotonic() + timeout
    for d in nodes:
        while not accepts_connections(d.port):
            if d.process.poll() is not None:
                raise AssertionError(
                    f"twistd exited {d.process.returncode}: {d.output()}"
                    f"{d.log.read_text(errors='replace') if d.log.exists() else ''}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"a node did not listen on {d.port} in time")
            time.sleep(0.05)


def start_nodes(
    count: int,
    uri: str,
    args: Sequence[str],
    directory: Path,
    pki: Served,
    started: list[Daemon],
) -> list[Daemon]:
    """``count`` nodes spawned at the same moment, returned once all listen."""
    nodes = [
        node(uri, args, directory / f"node{n}", pki, started) for n in range(count)
    ]
    for d in nodes:
        d.spawn()
    wait_listening(nodes)
    return nodes


# ------------------------------------------------------------ what is stored


def stored_names(uri: str) -> dict[int, str]:
    """Every stored incident's name, by id."""
    return dict(psql_rows(uri, "SELECT id, name FROM incidents ORDER BY id"))


def max_incident_id(uri: str) -> int:
    [(value,)] = psql_rows(uri, "SELECT coalesce(max(id), 0) FROM incidents")
    return int(value)


def listed(uri: str, *args: str) -> list[dict]:
    """What ``gwebhook list --db URI ARGS`` prints, one dict per incident."""
    result = run_cli("list", "--db", uri, *args)
    assert result.returncode == 0, result
    return [json.loads(line) for line in result.stdout.splitlines() if line]


def assert_whole_requests(uri: str) -> int:
    """
    Each stored request has exactly the incidents its stored body carried,
    in order (no request half stored); how many requests were checked.
    """
    bodies = dict(psql_rows(uri, "SELECT id, body FROM requests"))
    stored: dict[int, list[tuple[int, str]]] = {rid: [] for rid in bodies}
    for rid, position, name in psql_rows(
        uri, "SELECT request_id, position, name FROM incidents ORDER BY id"
    ):
        stored[rid].append((position, name))
    for rid, body in bodies.items():
        document = json.loads(bytes(body))
        objects = document if isinstance(document, list) else [document]
        expected = [(p, o.get("name")) for p, o in enumerate(objects)]
        assert stored[rid] == expected, f"request {rid} is stored in part"
    return len(bodies)


def assert_acknowledged_stored(acknowledged: Sequence[tuple[int, str]], uri: str):
    """Every (id, name) answered 200 is stored under that id; ids given once."""
    ids = [i for i, _ in acknowledged]
    assert len(set(ids)) == len(ids), "an id was answered twice"
    stored = stored_names(uri)
    lost = [(i, name) for i, name in acknowledged if stored.get(i) != name]
    assert not lost, f"{len(lost)} acknowledged incidents not stored: {lost[:5]}"
    return stored


# ---------------------------------------------------------------- the senders


@dataclass
class Target:
    """Where a poster connects: a port on 127.0.0.1 serving ``pki`` (a proxy)."""

    port: int
    pki: Served


@dataclass
class Attempt:
    """One request a poster sent: when, and what it was answered."""

    started: float
    ended: float
    names: list[str]
    status: int | None = None  # None: no answer (the connection failed)
    retry_after: str | None = None
    error: str | None = None


class Poster(threading.Thread):
    """
    Posts arrays of 1-3 uniquely named incidents to ``target`` until told
    to stop, each on a new connection (so a proxy spreads them), recording
    every attempt; a failed connection is recorded and the next request
    opens another.  ``acknowledged`` holds (id, name) of every incident
    answered 200.
    """

    def __init__(
        self,
        number: int,
        target: Daemon | Target,
        headers: dict[str, str],
        stop: threading.Event,
        path: str = "/",
        pause_after_failure: float = 0.05,
    ) -> None:
        super().__init__(name=f"poster-{number}", daemon=True)
        self.number = number
        self.target = target
        self.headers = headers
        self.stop = stop
        self.path = path
        self.pause_after_failure = pause_after_failure
        self.attempts: list[Attempt] = []
        self.acknowledged: list[tuple[int, str]] = []
        self.mismatches: list[tuple[list[str], bytes]] = []

    def run(self) -> None:
        sent = 0
        while not self.stop.is_set():
            names = [
                f"p{self.number}-r{sent}-e{i}-{os.urandom(3).hex()}"
                for i in range(1 + sent % 3)
            ]
            sent += 1
            body = json.dumps([{"name": n, "rawJson": {"marker": n}} for n in names])
            attempt = Attempt(time.monotonic(), 0.0, names)
            self.attempts.append(attempt)
            connection = https(self.target, timeout=20)
            try:
                connection.request("POST", self.path, body.encode(), self.headers)
                reply = connection.getresponse()
                answer = reply.read()
                attempt.status = reply.status
                attempt.retry_after = reply.getheader("Retry-After")
            except (OSError, http.client.HTTPException) as e:
                attempt.error = f"{type(e).__name__}: {e}"
            finally:
                connection.close()
                attempt.ended = time.monotonic()
            if attempt.status == 200:
                incidents = json.loads(answer)
                if [i["name"] for i in incidents] != names:
                    self.mismatches.append((names, answer))
                self.acknowledged.extend((int(i["id"]), i["name"]) for i in incidents)
            else:
                self.stop.wait(self.pause_after_failure)


class Posters:
    """
    ``count`` posters to each target, started on entering, stopped and
    joined on leaving (as a context manager).
    """

    def __init__(
        self,
        targets: Sequence[Daemon | Target],
        headers: dict[str, str],
        per_target: int = 2,
        path: str = "/",
    ) -> None:
        self.stop = threading.Event()
        self.posters = [
            Poster(n * len(targets) + t, target, headers, self.stop, path)
            for t, target in enumerate(targets)
            for n in range(per_target)
        ]

    def __enter__(self) -> Posters:
        for p in self.posters:
            p.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for p in self.posters:
            p.join(30)
        assert not any(p.is_alive() for p in self.posters), "a poster did not stop"

    @property
    def attempts(self) -> list[Attempt]:
        every = [a for p in self.posters for a in p.attempts]
        return sorted(every, key=lambda a: a.started)

    @property
    def acknowledged(self) -> list[tuple[int, str]]:
        return [a for p in self.posters for a in p.acknowledged]

    def answered_after(self, moment: float) -> list[Attempt]:
        """The attempts started after ``moment`` and finished."""
        return [a for a in self.attempts if a.started > moment and a.ended]

    def wait_for_answer(
        self, status: int, after: float, timeout: float, count: int = 1
    ) -> float:
        """
        Wait until ``count`` requests started after ``after`` were answered
        ``status``; the time the last of them ended.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = [a for a in self.answered_after(after) if a.status == status]
            if len(seen) >= count:
                return seen[count - 1].ended
            if time.monotonic() > deadline:
                statuses = [(a.status, a.error) for a in self.answered_after(after)]
                raise AssertionError(
                    f"no {count} x {status} within {timeout} s after the moment; "
                    f"answered meanwhile: {statuses[-10:]}"
                )
            time.sleep(0.02)


# -------------------------------------------------------------- the HAProxy


# The HAProxy configuration of a gwebhook deployment, as the README shows it
# (fields in braces filled in by ``haproxy_config``).  TCP mode: TLS passes
# through to the nodes untouched, so each node keeps its own certificate and
# its client-certificate checks; round-robin over the nodes; each node
# health-checked with GET /healthz over TLS every 500 ms (its certificate
# verified against the CA), down after 2 failures, up after 1 success; a
# connection a dead node refuses is retried on another node.
HAPROXY_CONFIG = """\
global
    maxconn 4096
    log stdout format raw local0 info
{admin}
defaults
    mode tcp
    log global
    option tcplog
    # A node that refuses the connection: try again, on another node.
    option redispatch
    retries 2
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend gwebhook
    bind {bind}
    default_backend gwebhook_nodes

backend gwebhook_nodes
    balance roundrobin
    # Only the health check speaks TLS (and HTTP) to the nodes.
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {name}
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 1
    default-server check-ssl verify required ca-file {ca_file}
    default-server check-sni {name} verifyhost {name}
{servers}"""


def haproxy_config(
    bind: str,
    nodes: Sequence[tuple[str, str]],
    ca_file: str,
    *,
    name: str = "localhost",
    admin_socket: str | None = None,
) -> str:
    """
    ``HAPROXY_CONFIG`` for ``nodes`` ((name, "HOST:PORT") each) behind
    ``bind`` ("ADDRESS:PORT"), the nodes' certificates issued by the CA in
    ``ca_file`` for ``name``; with an admin socket (the tests ask it whether
    a node is up) when ``admin_socket`` is given.
    """
    admin = (
        f"    stats socket {admin_socket} mode 600 level admin\n"
        if admin_socket
        else ""
    )
    return HAPROXY_CONFIG.format(
        admin=admin,
        bind=bind,
        name=name,
        ca_file=ca_file,
        servers="".join(f"    server {n} {address}\n" for n, address in nodes),
    )


class GwebhookHaproxy(Haproxy):
    """
    ``support.haproxy.Haproxy`` running ``haproxy_config``: the README's
    configuration, with nodes named node1, node2... in the order of
    ``backends`` and an admin socket for the tests.
    """

    def __init__(self, backends: Sequence[int], directory: Path, ca_file: Path) -> None:
        super().__init__(backends, directory)
        self.ca_file = ca_file

    def server_name(self, backend: int) -> str:
        return f"node{self.backends.index(backend) + 1}"

    def config_text(self) -> str:
        return haproxy_config(
            f"127.0.0.1:{self.port}",
            [(self.server_name(p), f"127.0.0.1:{p}") for p in self.backends],
            str(self.ca_file),
            admin_socket=str(self.admin_socket),
        )

    def _stats(self, column: str) -> dict[int, str]:
        text = self.command("show stat").lstrip("# ")
        names = {self.server_name(p): p for p in self.backends}
        return {
            names[row["svname"]]: row[column]
            for row in csv.DictReader(text.splitlines())
            if row["pxname"] == "gwebhook_nodes" and row["svname"] in names
        }

    def server_states(self) -> dict[int, str]:
        return {p: s.split()[0] for p, s in self._stats("status").items()}

    def check_statuses(self) -> dict[int, str]:
        """Each node's last health check: ``L7OK`` when /healthz answered 200."""
        return self._stats("check_status")
