"""
How fast a forward's queue drains: gwebhook A stores N incidents while its
receiver B (another gwebhook, deduplicating on webhook-id) is down, then B
comes up and A delivers the queue with ``batch`` incidents per request.
Reports incidents/s from B's first answer to the last delivery, and checks
that B holds every incident exactly once.

    bench/.venv/bin/python bench/forward_drain.py [--incidents 20000] [--batch 100]

Runs on 127.0.0.1 with a fresh certificate and stores in a temporary
directory; both daemons are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port, wait_listening

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
GWEBHOOK = str(BIN / "gwebhook")


def daemon(directory: Path, port: int, config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            TWISTD, "-n", "--pidfile=", "--logger", "gwebhook.logs.text_observer",
            "gwebhook", "--port", str(port), "--interface", "127.0.0.1",
            "--cert", str(directory / "server.crt"), "--key", str(directory / "server.key"),
            "--config", str(config), "--db", str(config.with_suffix(".sqlite")),
        ],
        cwd=directory, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def states(directory: Path, config: Path) -> dict[str, int]:
    """The deliveries by state, read straight from A's store (read-only)."""
    uri = f"{config.with_suffix('.sqlite').as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--incidents", type=int, default=20000)
    options.add_argument("--batch", type=int, default=100)
    args = options.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="gwebhook-drain-"))
    processes: list[subprocess.Popen] = []
    try:
        subprocess.run([GWEBHOOK, "make-cert", str(directory)], check=True,
                       capture_output=True)  # fmt: skip
        a_port, b_port = free_port(), free_port()
        b_config = directory / "b.toml"
        b_config.write_text(
            '[[instance]]\nname = "edge"\nanonymous = true\n'
            '[instance.dedup]\nheader = "webhook-id"\n'
        )
        a_config = directory / "a.toml"
        a_config.write_text(
            '[[instance]]\nname = "src"\nanonymous = true\n\n'
            f'[[forward]]\nname = "b"\nurl = "https://127.0.0.1:{b_port}'
            f'/instance/execute/edge"\nca_file = "{directory}/server.crt"\n'
            f"batch = {args.batch}\n"
        )
        a = daemon(directory, a_port, a_config, directory / "a.log")
        processes.append(a)
        wait_listening(a_port)
        context = ssl.create_default_context(cafile=str(directory / "server.crt"))
        connection = http.client.HTTPSConnection("localhost", a_port, context=context)
        alert = {"name": "drain", "type": "Bench", "rawJson": {"host": "web-1",
                 "user": "alice", "tags": ["a", "b"], "severity": 3}}  # fmt: skip
        posted = 0
        while posted < args.incidents:
            body = json.dumps([{**alert, "n": posted + i} for i in range(100)])
            connection.request("POST", "/instance/execute/src", body,
                               {"Content-Type": "application/json"})  # fmt: skip
            reply = connection.getresponse()
            reply.read()
            if reply.status != 200:
                raise SystemExit(f"A answered {reply.status}")
            posted += 100
        print(f"queued {posted} incidents at A (B down): {states(directory, a_config)}")
        b = daemon(directory, b_port, b_config, directory / "b.log")
        processes.append(b)
        started = time.monotonic()
        wait_listening(b_port)
        while True:
            counts = states(directory, a_config)
            if counts.get("delivered", 0) >= posted:
                break
            if time.monotonic() - started > 300:
                raise SystemExit(f"not drained in 300 s: {counts}")
            time.sleep(0.5)
        seconds = time.monotonic() - started
        listed = subprocess.run(
            [GWEBHOOK, "list", "--db", str(b_config.with_suffix(".sqlite"))],
            cwd=directory, capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
        print(
            f"drained {posted} incidents in {seconds:.1f} s (B's start included): "
            f"{posted / seconds:,.0f} incidents/s with batch = {args.batch}; "
            f"B holds {len(listed)}"
        )
        return 0 if len(listed) == posted else 1
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
