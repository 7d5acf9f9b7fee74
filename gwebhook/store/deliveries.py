"""
The forwarding queue's SQL (docs/reference.md 10): what the forwarders and
``gwebhook deliveries`` / ``redeliver`` do to the ``deliveries`` table, for
either database (``?`` placeholders; each function runs inside the caller's
transaction, through ``IncidentStore.write`` or ``read``).

A delivery is one incident for one forward: ``pending`` until it is
``delivered`` or given up (``dead``).  A forward sends its pending
incidents in id order, a *batch* at a time; a batch is fixed when it is
formed (``batch`` = its first incident id, which names it in
``webhook-id``), so a retry, also after a restart, is the same request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gwebhook.payload import PayloadError, decode_body, parse_json
from gwebhook.readback import whole

# How long a node holds a forward once it took it; renewed at every batch.
LEASE_SECONDS = 30.0
STATES = ("pending", "delivered", "dead")

# A batch's rows are looked for from its first incident on ("incident_id >=
# batch" below): every incident of a batch has an id at least the batch's
# (its first), so the bound changes nothing found, but keeps the search to
# the batch and what came after it.  Without it SQLite searched the primary
# key by forward alone, through every incident the forward ever delivered
# (the table keeps them): each batch slower the longer the daemon had
# forwarded (4 such searches per batch, 0.7 ms each at 12,000 delivered).


@dataclass(frozen=True)
class Batch:
    """The next batch of a forward: its incidents and how it stands."""

    first: int
    ids: tuple[int, ...]
    attempts: int
    next_attempt: float
    queued: float


@dataclass(frozen=True)
class Taken:
    """
    What ``take`` found: the next batch (None: nothing is due, or another
    holder has the lease), the forward's pending incidents, and whether this
    holder has the lease.
    """

    batch: Batch | None
    pending: int
    held: bool


def _in(count: int) -> str:
    return "(" + ", ".join(["?"] * count) + ")"


def take(
    cursor,
    forward: str,
    holder: str,
    now: float,
    size: int,
    lease: float = LEASE_SECONDS,
    delivered_first: int | None = None,
) -> Taken:
    """
    Take (or renew, for ``lease`` seconds) the forward's lease for
    ``holder`` and give its next batch, formed now from the oldest pending
    incidents if none is.  With ``delivered_first``, the batch of that
    first incident is marked delivered first, in the same transaction.
    """
    if delivered_first is not None:
        delivered(cursor, forward, delivered_first)
    [pending] = cursor.execute(
        "SELECT count(*) FROM deliveries WHERE forward = ? AND state = 'pending'",
        (forward,),
    ).fetchone()
    row = cursor.execute(
        "SELECT holder, expires FROM forward_leases WHERE forward = ?", (forward,)
    ).fetchone()
    if row is None:
        cursor.execute(
            "INSERT INTO forward_leases (forward, holder, expires) VALUES (?, ?, ?)",
            (forward, holder, now + lease),
        )
    elif row[0] == holder or row[1] <= now:
        cursor.execute(
            "UPDATE forward_leases SET holder = ?, expires = ? WHERE forward = ?",
            (holder, now + lease, forward),
        )
    else:
        return Taken(None, pending, False)
    # The pending batch, searched for from the oldest pending incident on
    # (found in the index of pending ones), for the reason above.
    [first] = cursor.execute(
        "SELECT min(batch) FROM deliveries WHERE forward = ? AND state = 'pending'"
        " AND batch IS NOT NULL AND incident_id >= (SELECT min(incident_id)"
        " FROM deliveries WHERE forward = ? AND state = 'pending')",
        (forward, forward),
    ).fetchone()
    if first is None:
        ids = [
            i
            for (i,) in cursor.execute(
                "SELECT incident_id FROM deliveries WHERE forward = ?"
                " AND state = 'pending' ORDER BY incident_id LIMIT ?",
                (forward, size),
            )
        ]
        if not ids:
            return Taken(None, pending, True)
        first = ids[0]
        # No batch is formed: every pending one is unbatched, and these are
        # the oldest of them.
        cursor.execute(
            "UPDATE deliveries SET batch = ? WHERE forward = ? AND state = 'pending'"
            " AND incident_id <= ?",
            (first, forward, ids[-1]),
        )
    else:
        ids = [
            i
            for (i,) in cursor.execute(
                "SELECT incident_id FROM deliveries"
                " WHERE forward = ? AND batch = ? AND state = 'pending'"
                " AND incident_id >= ? ORDER BY incident_id",
                (forward, first, first),
            )
        ]
    attempts, next_attempt, queued = cursor.execute(
        "SELECT max(attempts), max(next_attempt), min(queued) FROM deliveries"
        " WHERE forward = ? AND batch = ? AND state = 'pending' AND incident_id >= ?",
        (forward, first, first),
    ).fetchone()
    return Taken(
        Batch(int(first), tuple(ids), attempts, next_attempt, queued), pending, True
    )


def release(cursor, forward: str, holder: str) -> None:
    """Give the lease back (the daemon stops): another node may take it now."""
    cursor.execute(
        "DELETE FROM forward_leases WHERE forward = ? AND holder = ?", (forward, holder)
    )


def delivered(cursor, forward: str, first: int) -> int:
    """The batch was delivered; how many incidents."""
    cursor.execute(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1,"
        " last_error = NULL"
        " WHERE forward = ? AND batch = ? AND state = 'pending' AND incident_id >= ?",
        (forward, first, first),
    )
    return cursor.rowcount


def retry(cursor, forward: str, first: int, error: str, next_attempt: float) -> None:
    """The batch failed; it is tried again, the same, at ``next_attempt``."""
    cursor.execute(
        "UPDATE deliveries SET attempts = attempts + 1, last_error = ?,"
        " next_attempt = ?"
        " WHERE forward = ? AND batch = ? AND state = 'pending' AND incident_id >= ?",
        (error, next_attempt, forward, first, first),
    )


def dead(cursor, forward: str, first: int, error: str, attempted: bool) -> int:
    """The batch is given up: kept, with why, until redelivered by hand."""
    cursor.execute(
        "UPDATE deliveries SET state = 'dead', attempts = attempts + ?,"
        " last_error = ?"
        " WHERE forward = ? AND batch = ? AND state = 'pending' AND incident_id >= ?",
        (int(attempted), error, forward, first, first),
    )
    return cursor.rowcount


def redeliver(cursor, forward: str, ids: list[int] | None, now: float) -> int:
    """
    Queue again (as new: no attempts, no batch) the forward's incidents
    ``ids``, or every dead one when ``ids`` is None; how many.
    """
    update = (
        "UPDATE deliveries SET state = 'pending', batch = NULL, attempts = 0,"
        " last_error = NULL, next_attempt = 0, queued = ? WHERE forward = ?"
    )
    if ids is None:
        cursor.execute(update + " AND state = 'dead'", (now, forward))
        return cursor.rowcount
    count = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        cursor.execute(
            update + " AND incident_id IN " + _in(len(chunk)), (now, forward, *chunk)
        )
        count += cursor.rowcount
    return count


def listing(
    db, forward: str | None, state: str | None, limit: int | None
) -> list[dict[str, Any]]:
    """What ``gwebhook deliveries`` prints, oldest incident first."""
    rows = db.execute(
        "SELECT forward, incident_id, state, attempts, last_error, next_attempt"
        " FROM deliveries WHERE forward = coalesce(?, forward)"
        " AND state = coalesce(?, state) ORDER BY forward, incident_id LIMIT ?",
        (forward, state, 2**62 if limit is None else limit),
    )
    return [
        {
            "forward": f,
            "incident": str(i),
            "state": s,
            "attempts": a,
            "last_error": e,
            "next_attempt": n if s == "pending" else None,
        }
        for f, i, s, a, e, n in rows
    ]


_ITEMS = (
    "SELECT i.id, i.name, i.type, i.occurred, i.created, i.instance, i.fields,"
    " i.details, r.received, r.client, r.method, r.path, r.headers, r.client_cert,"
    " r.x_request_id, i.position, r.body"
    " FROM incidents i JOIN requests r ON r.id = i.request_id WHERE i.id IN "
)


def items(
    db, ids: tuple[int, ...], raw: bool = False
) -> list[tuple[dict[str, Any], Any]]:
    """
    The batch's incidents in id order: each as ``show`` gives it, and with
    ``raw`` the element as the sender sent it (read again from the
    request's body, parsed once per request), else None.
    """
    rows = db.execute(_ITEMS + _in(len(ids)) + " ORDER BY i.id", ids).fetchall()
    found = []
    documents: dict[bytes, Any] = {}
    for row in rows:
        incident = whole(row[:15])
        element = None
        if raw:
            element = _element(row[12], row[15], bytes(row[16]), incident, documents)
        found.append((incident, element))
    return found


_XSOAR_ITEMS = "SELECT name, type, occurred, details FROM incidents WHERE id IN "


def xsoar_elements(db, ids: tuple[int, ...]) -> list[str]:
    """
    The batch's incidents in id order as the ``xsoar`` format sends each
    (``forward.element_body``), as JSON text: ``name``, ``type``,
    ``occurred`` and the details as ``rawJson``, the details the JSON text
    the store holds (which never has the request's headers), neither parsed
    nor written again, nor the request read.
    """
    rows = db.execute(_XSOAR_ITEMS + _in(len(ids)) + " ORDER BY id", ids)
    dumps = json.dumps
    return [
        f'{{"name":{dumps(name, ensure_ascii=False)},'
        f'"type":{dumps(kind, ensure_ascii=False)},'
        f'"occurred":{dumps(occurred, ensure_ascii=False)},"rawJson":{details}}}'
        for name, kind, occurred, details in rows
    ]


def _element(
    headers_json: str,
    position: int,
    body: bytes,
    incident: dict,
    documents: dict[bytes, Any],
) -> Any:
    """The element at ``position`` of the request's body, as sent."""
    try:
        document = documents.get(body)
        if document is None:
            headers = json.loads(headers_json)
            text = decode_body(body, headers.get("content-encoding"), 2**31)
            document = documents[body] = parse_json(text)
    except PayloadError:
        # Cannot happen for a body that was stored; the details are the
        # element's as near as the store has them.
        return {k: v for k, v in incident["rawJson"].items() if k != "headers"}
    if isinstance(document, list):
        return document[position]
    return document
