"""
Senders that keep posting to a daemon from threads while something else
happens to it (a crash, a restart, an attack), recording what each request
was answered.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time

from support.daemon import Daemon
from support.http import CLOSED, https, send
from support.store import incidents_by_id


class Sender(threading.Thread):
    """
    Posts on one keep-alive connection until told to stop or the connection
    fails, alternating single objects and small arrays; every incident's name
    is unique.  ``acknowledged`` holds (id, name) of every incident answered
    200; ``unanswered`` the names of every request sent without a 200.
    """

    def __init__(
        self, number: int, d: Daemon, headers: dict[str, str], stop: threading.Event
    ) -> None:
        super().__init__(name=f"sender-{number}", daemon=True)
        self.number = number
        self.daemon_ = d
        self.headers = headers
        self.stop = stop
        self.acknowledged: list[tuple[int, str]] = []
        self.unanswered: list[list[str]] = []
        self.statuses: list[int] = []
        self.mismatches: list[tuple[list[str], bytes]] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        connection = https(self.daemon_)
        sent = 0
        try:
            while not self.stop.is_set():
                size = sent % 4  # 0: a single object; 1-3: an array of that many
                names = [
                    f"s{self.number}-r{sent}-e{i}-{os.urandom(3).hex()}"
                    for i in range(max(size, 1))
                ]
                objects = [{"name": n, "rawJson": {"marker": n}} for n in names]
                body = json.dumps(objects[0] if size == 0 else objects).encode()
                sent += 1
                self.unanswered.append(names)
                connection.request("POST", "/", body=body, headers=self.headers)
                reply = connection.getresponse()
                answer = reply.read()
                self.statuses.append(reply.status)
                if reply.status != 200:
                    continue
                self.unanswered.pop()
                incidents = json.loads(answer)
                if [i["name"] for i in incidents] != names:
                    self.mismatches.append((names, answer))
                self.acknowledged.extend((int(i["id"]), i["name"]) for i in incidents)
        except (OSError, http.client.HTTPException) as e:
            # The daemon went away: expected, and where this sender stops.
            self.failure = e
        finally:
            connection.close()


def run_senders(
    d: Daemon,
    headers: dict[str, str],
    count: int,
    then,
    after: float,
) -> list[Sender]:
    """
    Run ``count`` senders against ``d``; after ``after`` seconds call ``then()``
    (which should make the daemon go away), then stop and join every sender.
    """
    stop = threading.Event()
    senders = [Sender(n, d, headers, stop) for n in range(count)]
    for s in senders:
        s.start()
    try:
        time.sleep(after)
        then()
    finally:
        stop.set()
        for s in senders:
            s.join(15)
    assert not any(s.is_alive() for s in senders), "a sender did not stop"
    return senders


class Honest(threading.Thread):
    """
    Posts a uniquely named incident on a new connection every ``interval``
    seconds until stopped, recording each status and how long it took: the
    sender an attack must not keep from being served.  Use as a context
    manager around the attack.
    """

    def __init__(
        self,
        d: Daemon,
        headers: dict[str, str],
        source: str = "127.0.0.250",
        interval: float = 0.1,
    ) -> None:
        super().__init__(name="honest", daemon=True)
        self.d = d
        self.headers = headers
        self.source = source
        self.interval = interval
        self.stop = threading.Event()
        self.results: list[tuple[int, float]] = []
        self.acknowledged: dict[int, str] = {}
        self.failures: list[BaseException] = []

    def run(self) -> None:
        number = 0
        while not self.stop.is_set() and number < 1000:
            name = f"honest-{number}-{os.urandom(4).hex()}"
            number += 1
            started = time.monotonic()
            try:
                reply = send(
                    self.d,
                    json.dumps({"name": name}).encode(),
                    self.headers,
                    self.source,
                    timeout=5,
                )
            except CLOSED as e:
                self.failures.append(e)
                continue
            self.results.append((reply.status, time.monotonic() - started))
            if reply.status == 200:
                [incident] = reply.json()
                self.acknowledged[int(incident["id"])] = incident["name"]
            self.stop.wait(self.interval)

    def __enter__(self) -> Honest:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(15)
        assert not self.is_alive(), "the honest sender did not stop"

    def assert_served(self, at_least: int, within: float = 1.0) -> None:
        """Every request answered 200, quickly, and its incident stored."""
        assert not self.failures, self.failures
        assert len(self.results) >= at_least, self.results
        assert {status for status, _ in self.results} == {200}, self.results
        slowest = max(seconds for _, seconds in self.results)
        assert slowest < within, f"an honest request took {slowest:.2f} s"
        stored = incidents_by_id(self.d.db)
        assert {i: stored.get(i) for i in self.acknowledged} == self.acknowledged
