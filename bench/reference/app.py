"""
The reference for gwebhook's benchmark: gwebhook's ingest path (``POST /``
with Basic authentication, one incident per JSON object, the same answer) on
the stack the XSOAR Generic Webhook integration runs on, FastAPI on uvicorn
(httptools, uvloop), written the way a competent FastAPI developer would
write it.  See README.md beside this file.

    REFERENCE_DB=/tmp/ref.sqlite REFERENCE_USERNAME=u REFERENCE_PASSWORD=p \
        uvicorn app:app --app-dir bench/reference --http httptools --loop uvloop \
        --ssl-certfile server.crt --ssl-keyfile server.key --port 9443

Environment:
  REFERENCE_DB        the SQLite store (created if missing)
  REFERENCE_USERNAME  Basic-auth user name
  REFERENCE_PASSWORD  Basic-auth password
  REFERENCE_MODE      where the blocking SQLite transaction runs: "offload"
                      (default): an ``async def`` endpoint that hands only the
                      transaction to Starlette's thread pool; "loop": in the
                      event loop, as the XSOAR integration calls
                      createIncidents; "threadpool": a ``def`` endpoint, all
                      of it in the thread pool.  One connection, behind a lock
  REFERENCE_DISCARD   "1": store nothing, answer as if committed (the bench's
                      "store disabled" scenario)
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.concurrency import run_in_threadpool

DB_PATH = os.environ.get("REFERENCE_DB", "reference.sqlite")
USERNAME = os.environ.get("REFERENCE_USERNAME", "").encode("utf-8")
PASSWORD = os.environ.get("REFERENCE_PASSWORD", "").encode("utf-8")
MODE = os.environ.get("REFERENCE_MODE", "offload")
DISCARD = os.environ.get("REFERENCE_DISCARD") == "1"

DEFAULT_NAME = "Generic webhook triggered incident"
DEFAULT_TYPE = "Unclassified"

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received TEXT NOT NULL,
    client TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id INTEGER NOT NULL REFERENCES requests (id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred TEXT NOT NULL,
    created TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_request ON incidents (request_id);
"""


def connect(path: str) -> sqlite3.Connection:
    """One connection with gwebhook's settings: WAL, synchronous=FULL."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.executescript(SCHEMA)
    return connection


db = None if DISCARD else connect(DB_PATH)
# SQLite has one writer; in the thread pool the lock makes the threads queue
# for it instead of polling SQLite's busy handler (which sleeps milliseconds).
db_lock = threading.Lock()
fake_ids = itertools.count(1)

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
basic = HTTPBasic(realm="reference")


async def check_credentials(
    credentials: HTTPBasicCredentials = Depends(basic),
) -> None:
    """
    FastAPI's documented pattern, both halves compared in constant time;
    ``async def`` because it never blocks (a plain ``def`` dependency would
    cost every request a trip through the thread pool).
    """
    user_ok = secrets.compare_digest(credentials.username.encode("utf-8"), USERNAME)
    password_ok = secrets.compare_digest(credentials.password.encode("utf-8"), PASSWORD)
    if not (user_ok and password_ok):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong credentials",
            headers={"WWW-Authenticate": "Basic"},
        )


class BadPayload(ValueError):
    pass


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def parse_occurred(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a date")
    if isinstance(value, (int, float)):
        seconds = value / 1000 if abs(value) >= 100_000_000_000 else value
        moment = datetime.fromtimestamp(seconds, UTC)
    elif isinstance(value, str) and len(value) >= 10 and value[4] == "-":
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        raise ValueError("not an ISO-8601 date-time or epoch")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def drafts_from(document: Any, headers: dict[str, str], received: str) -> list:
    """An object is one incident, an array of objects one per element."""
    if isinstance(document, dict):
        items = [("body", document)]
    elif isinstance(document, list):
        items = [(f"element {i}", element) for i, element in enumerate(document)]
    else:
        raise BadPayload("body must be a JSON object or an array of objects")
    drafts = []
    for where, obj in items:
        if not isinstance(obj, dict):
            raise BadPayload(f"{where} is not a JSON object")
        name = obj.get("name", DEFAULT_NAME)
        kind = obj.get("type", DEFAULT_TYPE)
        if not isinstance(name, str) or not isinstance(kind, str):
            raise BadPayload(f"{where}: 'name' and 'type' must be strings")
        occurred = received
        if "occurred" in obj:
            try:
                occurred = parse_occurred(obj["occurred"])
            except (ValueError, OverflowError, OSError) as e:
                raise BadPayload(f"{where}: 'occurred': {e}") from e
        raw = obj.get("rawJson", obj.get("raw_json", obj))
        if not isinstance(raw, dict):
            raise BadPayload(f"{where}: 'rawJson' must be a JSON object")
        details = dict(raw)
        details["headers"] = headers
        drafts.append((name, kind, occurred, details))
    return drafts


def store(
    client: str, method: str, path: str, headers: dict, body: bytes, drafts: list
) -> list[dict]:
    """One transaction per request: the request row and its incidents."""
    created = utc_now()
    if DISCARD:
        return [
            {
                "id": str(next(fake_ids)),
                "name": n,
                "type": t,
                "occurred": o,
                "created": created,
            }
            for n, t, o, _ in drafts
        ]
    with db_lock:
        cursor = db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            cursor.execute(
                "INSERT INTO requests (received, client, method, path, headers, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (created, client, method, path, json.dumps(headers), body),
            )
            request_id = cursor.lastrowid
            answer = []
            for position, (name, kind, occurred, details) in enumerate(drafts):
                cursor.execute(
                    "INSERT INTO incidents (request_id, position, name, type,"
                    " occurred, created, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        request_id,
                        position,
                        name,
                        kind,
                        occurred,
                        created,
                        json.dumps(details, ensure_ascii=False),
                    ),
                )
                answer.append(
                    {
                        "id": str(cursor.lastrowid),
                        "name": name,
                        "type": kind,
                        "occurred": occurred,
                        "created": created,
                    }
                )
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
    return answer


def parse(request: Request, body: bytes) -> tuple[tuple, JSONResponse | None]:
    """The arguments of ``store``, or the error to answer instead."""
    received = utc_now()
    headers = {k: v for k, v in request.headers.items() if k != "authorization"}
    try:
        drafts = drafts_from(json.loads(body), headers, received)
    except (BadPayload, ValueError, RecursionError) as e:
        return (), JSONResponse({"error": f"bad payload: {e}"}, status_code=400)
    client = request.client.host if request.client else ""
    return (client, request.method, request.url.path, headers, body, drafts), None


UNAVAILABLE = {"error": "incident store unavailable; retry later"}


def ingest(request: Request, body: bytes) -> JSONResponse:
    arguments, refusal = parse(request, body)
    if refusal is not None:
        return refusal
    try:
        answer = store(*arguments)
    except sqlite3.OperationalError:
        return JSONResponse(UNAVAILABLE, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(answer)


if MODE == "threadpool":

    async def raw_body(request: Request) -> bytes:
        return await request.body()

    @app.post("/", dependencies=[Depends(check_credentials)])
    def webhook(request: Request, body: bytes = Depends(raw_body)) -> JSONResponse:
        return ingest(request, body)

elif MODE == "loop":

    @app.post("/", dependencies=[Depends(check_credentials)])
    async def webhook(request: Request) -> JSONResponse:
        return ingest(request, await request.body())

elif MODE == "offload":

    @app.post("/", dependencies=[Depends(check_credentials)])
    async def webhook(request: Request) -> JSONResponse:
        arguments, refusal = parse(request, await request.body())
        if refusal is not None:
            return refusal
        try:
            answer = await run_in_threadpool(store, *arguments)
        except sqlite3.OperationalError:
            return JSONResponse(
                UNAVAILABLE, status_code=503, headers={"Retry-After": "5"}
            )
        return JSONResponse(answer)

else:
    raise SystemExit(f"REFERENCE_MODE={MODE!r}: use 'loop' or 'threadpool'")
