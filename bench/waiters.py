"""
Long polls of gwebhook's read API, held open for bench.py's read-API
scenarios (b-api-waiting, b-api-following): COUNT TLS connections, spread
over the loopback source addresses SOURCES, each sending

    GET /api/v1/incidents?after=<next>&wait=60[&instance=NAME]
    Authorization: Bearer TOKEN

and, whenever answered, the same again with the answer's ``next`` (a
consumer that has seen everything and waits for more).  ``next`` starts as
the cursor after everything stored when it starts.  With ``--instance``
naming an instance nobody posts to, the polls stay waiting; without, each
is answered by the next commit and asks again.

Its counts go, as JSON, to the file ``--status`` every half second and at
once on SIGUSR1: connections open, requests waiting for an answer, answers,
incidents in them, errors, closed connections, its own CPU seconds.  It
runs until SIGTERM or SIGINT.  Run with bench/.venv's python (stdlib only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import quote

counts = {
    "connections": 0,
    "waiting": 0,
    "answered": 0,
    "incidents": 0,
    "errors": 0,
    "closed": 0,
}


def write_status(path: Path) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = {**counts, "cpu_seconds": usage.ru_utime + usage.ru_stime}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, path)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer: its status and body (gwebhook sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def ask(options, after: str) -> bytes:
    query = f"after={quote(after)}&wait=60"
    if options.instance:
        query += f"&instance={quote(options.instance)}"
    return (
        f"GET /api/v1/incidents?{query} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{options.port}\r\n"
        f"Authorization: Bearer {options.token}\r\n\r\n"
    ).encode("ascii")


async def connect(options, context, source: str):
    return await asyncio.open_connection(
        "127.0.0.1",
        options.port,
        ssl=context,
        server_hostname="localhost",
        local_addr=(source, 0),
    )


async def newest_cursor(options, context) -> str:
    """The next of the last page: where a consumer that has seen all waits."""
    reader, writer = await connect(options, context, "127.0.0.1")
    after = ""
    try:
        while True:
            query = f"limit=1000&after={quote(after)}"
            writer.write(
                f"GET /api/v1/incidents?{query} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {options.token}\r\n\r\n".encode()
            )
            status, body = await read_answer(reader)
            if status != 200:
                raise SystemExit(f"waiters: the API answered {status}: {body[:200]!r}")
            page = json.loads(body)
            after = page["next"]
            if not page["incidents"]:
                return after
    finally:
        writer.close()


async def consumer(options, context, source: str, after: str) -> None:
    try:
        reader, writer = await connect(options, context, source)
    except OSError:
        counts["errors"] += 1
        return
    counts["connections"] += 1
    try:
        while True:
            writer.write(ask(options, after))
            counts["waiting"] += 1
            try:
                status, body = await read_answer(reader)
            finally:
                counts["waiting"] -= 1
            counts["answered"] += 1
            if status != 200:
                counts["errors"] += 1
                await asyncio.sleep(1)
                continue
            page = json.loads(body)
            counts["incidents"] += len(page["incidents"])
            after = page["next"]
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["closed"] += 1
    finally:
        counts["connections"] -= 1
        writer.close()


async def main(options) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench's own certificate
    status = Path(options.status)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, write_status, status)
    after = await newest_cursor(options, context)
    sources = options.sources.split(",")
    tasks = []
    # Opened a few at a time, so that the handshakes do not all queue at once.
    for n in range(options.count):
        tasks.append(
            asyncio.create_task(
                consumer(options, context, sources[n % len(sources)], after)
            )
        )
        if n % 50 == 49:
            await asyncio.sleep(0.05)
    while not stop.is_set():
        write_status(status)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
    write_status(status)
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--sources", default="127.0.0.2,127.0.0.3")
    parser.add_argument("--token", required=True)
    parser.add_argument("--instance", default=None)
    parser.add_argument("--status", required=True)
    arguments = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    try:
        asyncio.run(main(arguments))
    except KeyboardInterrupt:
        pass
    sys.exit(0)
