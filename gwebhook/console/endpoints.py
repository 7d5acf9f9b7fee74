"""
The read API's paths the console is built on, beyond those of section 9
(docs/reference.md 11): the newest incidents a page at a time, a request's
exact body, the instances, the forwards' queues and redeliver, the store's
health, and the mapping preview.  They answer bearers of an API token and
console sessions alike; :class:`gwebhook.api.ReadAPI` authenticates and
routes, these read the parameters and the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from gwebhook.answers import json_answer
from gwebhook.console import preview, queries
from gwebhook.console.sessions import Sessions
from gwebhook.metrics import Metrics
from gwebhook.parameters import (
    MAX_LIMIT,
    ApiError,
    check_known,
    make_cursor,
    parse_cursor,
    single,
)
from gwebhook.payload import DEFAULT_TYPE
from gwebhook.store import IncidentStore, StoreUnavailable
from gwebhook.store.deliveries import STATES, listing, redeliver

RECENT_LIMIT = 50


def _limit(args: Mapping[bytes, list[bytes]], default: int) -> int:
    text = single(args, "limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit: {text!r} is not a whole number from 1 to 1000")
    return int(text)


def _name(args: Mapping[bytes, list[bytes]], key: str) -> str | None:
    value = single(args, key)
    if value == "":
        raise ApiError(400, f"{key}: empty; give a name or leave it out")
    return value


def _json_body(request) -> dict[str, Any]:
    try:
        document = json.loads(request.content.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "body: not JSON; send a JSON object") from None
    if not isinstance(document, dict):
        raise ApiError(400, "body: not a JSON object")
    return document


class ConsoleEndpoints:
    """The console's paths of the read API, over the daemon's store."""

    def __init__(
        self,
        store: IncidentStore,
        clock: IReactorTime,
        sessions: Sessions,
        metrics: Metrics,
        forwards: tuple[str, ...],
        database: str,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sessions = sessions
        if sessions.store is None:
            # The daemon makes its sessions before it has these endpoints.
            sessions.store = store
        self.metrics = metrics
        self.forwards = forwards
        self.database = database

    def route(self, request, path: bytes, args) -> Any:
        """The answer (bytes or a coroutine) for ``path``; None if not ours."""
        if path == b"/api/v1/recent":
            check_known(args, ("before", "limit", "instance"))
            before = single(args, "before")
            return self._recent(
                request,
                None if before in (None, "") else parse_cursor(before),
                _limit(args, RECENT_LIMIT),
                _name(args, "instance"),
            )
        if path == b"/api/v1/instances":
            check_known(args, ())
            return self._instances(request)
        if path == b"/api/v1/deliveries":
            check_known(args, ("forward", "state", "limit"))
            state = single(args, "state")
            if state is not None and state not in STATES:
                raise ApiError(400, f"state: {state[:32]!r} is not one of {STATES}")
            return self._deliveries(
                request, _name(args, "forward"), state, _limit(args, 100)
            )
        if path == b"/api/v1/health":
            check_known(args, ())
            return self._health(request)
        if path == b"/api/v1/mapping/preview":
            check_known(args, ())
            return self._preview(request)
        if path == b"/api/v1/deliveries/redeliver":
            check_known(args, ())
            return self._redeliver(request)
        return None

    def body(self, request, incident: int) -> Any:
        """``GET /api/v1/incidents/<id>/body``: the exact body, as a download."""
        return self._body(request, incident)

    async def _recent(
        self, request, before: int | None, limit: int, instance: str | None
    ) -> bytes:
        page, newest = await self.store.read(queries.recent, before, limit, instance)
        older = make_cursor(int(page[-1]["id"])) if len(page) == limit else None
        return json_answer(
            request,
            200,
            {"incidents": page, "next": make_cursor(newest), "older": older},
        )

    async def _body(self, request, incident: int) -> bytes:
        found = await self.store.read(queries.body, incident)
        if found is None:
            raise ApiError(404, f"no incident with id '{incident}'")
        raw, headers = found
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(
            b"Content-Disposition",
            b'attachment; filename="incident-%d-body.bin"' % incident,
        )
        encoding = json.loads(headers).get("content-encoding")
        if encoding:
            # Kept as received: the download is the gzip itself, say so.
            request.setHeader(b"X-Gwebhook-Content-Encoding", encoding.encode())
        request.setHeader(b"Content-Length", b"%d" % len(raw))
        return raw

    def _instances(self, request) -> bytes:
        instances = request.channel.site.instances
        return json_answer(
            request,
            200,
            {
                "instances": [
                    {
                        "name": i.name,
                        "incident_type": i.incident_type,
                        "store_samples": i.store_samples,
                        "map": dict(i.mapping.map) if i.mapping else {},
                        "fields": dict(i.mapping.fields) if i.mapping else {},
                    }
                    for i in sorted(instances.all, key=lambda i: i.name)
                ]
            },
        )

    async def _deliveries(
        self, request, forward: str | None, state: str | None, limit: int
    ) -> bytes:
        forwards = await self.store.read(queries.queues, self.forwards)
        rows = await self.store.read(listing, forward, state, limit)
        return json_answer(request, 200, {"forwards": forwards, "deliveries": rows})

    async def _redeliver(self, request) -> bytes:
        document = _json_body(request)
        for key in document:
            if key not in ("forward", "incidents", "dead"):
                raise ApiError(
                    400,
                    f"{str(key)[:64]!r}: unknown key; give forward, and incidents "
                    "or dead",
                )
        forward = document.get("forward")
        if not isinstance(forward, str) or forward not in self.forwards:
            raise ApiError(404, "forward: no forward of that name is configured")
        ids = document.get("incidents")
        dead = document.get("dead", False)
        if (ids is None) == (dead is not True):
            raise ApiError(
                400,
                'give "incidents": [ids] or "dead": true, one of the two',
            )
        if ids is not None:
            if (
                not isinstance(ids, list)
                or not 1 <= len(ids) <= 1000
                or not all(
                    isinstance(i, str) and i.isascii() and i.isdigit() and len(i) < 19
                    for i in ids
                )
            ):
                raise ApiError(
                    400,
                    "incidents: give 1 to 1000 incident ids, each a string of digits",
                )
            ids = [int(i) for i in ids]
        count = await self.store.write(redeliver, forward, ids, self.clock.seconds())
        return json_answer(request, 200, {"queued": count})

    async def _health(self, request) -> bytes:
        try:
            await self.store.ping()
            status = "ok"
        except StoreUnavailable:
            status = "unavailable"
        since, series = None, None
        if status == "ok":
            try:
                since, series = await self.store.read(
                    queries.per_minute, self.clock.seconds()
                )
            except StoreUnavailable:
                status = "unavailable"
        sessions = 0
        if status == "ok":
            try:
                sessions = await self.sessions.live()
            except StoreUnavailable:
                status = "unavailable"
        failures = []
        for metric in self.metrics.auth_failures.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    failures.append(
                        {
                            "instance": sample.labels["instance"],
                            "reason": sample.labels["reason"],
                            "count": int(sample.value),
                        }
                    )
        return json_answer(
            request,
            200,
            {
                "store": {"status": status, "database": self.database},
                "incidents_per_minute": {"since": since, "counts": series},
                "auth_failures": failures,
                "api_auth_failures": self.sessions.refused,
                "sessions": sessions,
            },
        )

    async def _preview(self, request) -> bytes:
        try:
            asked = preview.read_request(request.content.read())
        except preview.PreviewError as e:
            raise ApiError(400, str(e)) from None
        instances = request.channel.site.instances
        instance = instances.by_name.get(asked.instance)
        if instance is None and (
            instances.default is not None and instances.default.name == asked.instance
        ):
            instance = instances.default
        if instance is None:
            raise ApiError(404, f"instance: no instance named {asked.instance[:64]!r}")
        elements = await self.store.read(queries.sample_elements, instance.name)
        results = preview.preview(
            elements,
            instance.name,
            instance.incident_type or DEFAULT_TYPE,
            asked.map,
            asked.fields,
        )
        return json_answer(request, 200, {"results": results})
