"""
The read API's cursor over several nodes on one PostgreSQL database
(docs/reference.md 4.8, 9): a consumer following ``next`` from node to node
while both nodes write sees every committed incident exactly once, in id
order; and a node older than the database's schema refuses to start.
Real ``twistd`` processes on the machine's PostgreSQL (``pg_database``).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from support.credentials import AUTH, HEADERS
from support.daemon import Daemon, last_line, run_twistd
from support.nodes import listed, start_nodes
from support.postgres import psql_rows
from support.senders import Sender

from gwebhook.store.postgres_schema import SCHEMA_VERSION, connect_options
from gwebhook.store.postgres_schema import create_or_upgrade as create_schema

pytestmark = pytest.mark.process

TOKEN = "consumer-token-0123456789"
JSON = {"Content-Type": "application/json"}


def page(d: Daemon, after: str, wait: float) -> dict:
    reply = d.request(
        "GET",
        f"/api/v1/incidents?after={after}&limit=37&wait={wait:g}",
        None,
        {"Authorization": f"Bearer {TOKEN}"},
        timeout=wait + 15,
    )
    assert reply.status == 200, reply
    return json.loads(reply.body)


class Consumer(threading.Thread):
    """Follows ``next`` with long polls, asking each node in turn."""

    def __init__(self, nodes: list[Daemon], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.stop = stop
        self.seen: list[int] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        after = ""
        turn = 0
        try:
            while True:
                stopping = self.stop.is_set()
                answer = page(self.nodes[turn % 2], after, 0 if stopping else 1)
                turn += 1
                self.seen += [int(i["id"]) for i in answer["incidents"]]
                after = answer["next"]
                if stopping and not answer["incidents"]:
                    return
        except BaseException as e:  # reported by the test
            self.failure = e


def test_a_consumer_following_next_across_nodes_sees_every_incident_once(
    pg_database, pki, tmp_path, started
):
    """
    Two nodes on one database, four senders (two per node) posting single
    incidents and arrays, one consumer following ``next`` with long polls
    from one node to the other: the consumer's ids are exactly what ``list``
    holds, each once, in increasing (commit) order.
    """
    tokens = tmp_path / "api.tokens"
    tokens.write_text(TOKEN + "\n")
    args = [*AUTH, "--api-token-file", str(tokens)]
    nodes = start_nodes(2, pg_database, args, tmp_path, pki, started)
    stop = threading.Event()
    senders = [Sender(n, nodes[n % 2], {**HEADERS, **JSON}, stop) for n in range(4)]
    consumer = Consumer(nodes, threading.Event())
    consumer.start()
    for s in senders:
        s.start()
    time.sleep(3.0)
    stop.set()
    for s in senders:
        s.join(15)
    consumer.stop.set()
    consumer.join(60)
    assert not consumer.is_alive(), "the consumer did not finish"
    assert consumer.failure is None, consumer.failure
    assert not [s.failure for s in senders if s.failure]
    acknowledged = {i for s in senders for i, _ in s.acknowledged}
    assert len(acknowledged) > 50

    stored = [int(i["id"]) for i in listed(pg_database)]
    assert consumer.seen == stored, "the consumer missed, repeated or reordered"
    assert acknowledged <= set(stored)
    assert len(set(consumer.seen)) == len(consumer.seen)


def test_a_node_older_than_the_databases_schema_refuses_to_start(pg_database, tmp_path):
    """A database upgraded by a newer gwebhook: this one refuses, in one line."""
    create_schema(pg_database, connect_options())
    psql_rows(
        pg_database,
        "UPDATE gwebhook_schema SET version = %s RETURNING version",
        SCHEMA_VERSION + 1,
    )
    result = run_twistd(
        [*AUTH, "--no-tls", "--port", "0", "--db", pg_database], tmp_path
    )
    assert result.returncode != 0
    line = last_line(result)
    assert line.endswith(
        f"has gwebhook schema version {SCHEMA_VERSION + 1}, newer than this gwebhook "
        f"understands ({SCHEMA_VERSION}); upgrade gwebhook"
    ), line
    assert "Traceback" not in result.stderr + result.stdout
