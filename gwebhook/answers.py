"""
The shapes of gwebhook's answers: every error is JSON ``{"error": ...}``,
whether the channel writes it raw or a route returns it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from json.encoder import encode_basestring_ascii as _quote

from gwebhook.model import StoredIncident
from gwebhook.store.base import StoreUnavailable

RETRY_AFTER_SECONDS = 5
# What every answer a browser may read carries (docs/reference.md 11.4): the
# console's and the read API's, and the channel's refusals, which are written
# before anyone knows whose path it was.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
)
_SECURITY_LINES = b"".join(b"%s: %s\r\n" % pair for pair in SECURITY_HEADERS)
# One incident as json.dumps writes StoredIncident.summary(), fields quoted.
_INCIDENT = '{"id": %s, "name": %s, "type": %s, "occurred": %s, "created": %s}'
_DUPLICATE = _INCIDENT[:-1] + ', "duplicate": true}'


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase (Twisted's table lacks some, such as 429)."""
    return HTTPStatus(status).phrase.encode("ascii")


def raw_response(
    status: int,
    message: str,
    request_id: str,
    retry_after: int | None = None,
    challenge: bytes | None = None,
    allow: str | None = None,
) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = json.dumps({"error": message}).encode("utf-8")
    extra = b""
    if retry_after is not None:
        extra += b"Retry-After: %d\r\n" % retry_after
    if challenge is not None:
        extra += b"WWW-Authenticate: %s\r\n" % challenge
    if allow is not None:
        extra += b"Allow: %s\r\n" % allow.encode("ascii")
    head = (
        b"HTTP/1.1 %d %s\r\nServer: gwebhook\r\nContent-Type: application/json\r\n"
        b"%s%sX-Request-Id: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (
            status,
            reason_phrase(status),
            _SECURITY_LINES,
            extra,
            request_id.encode("ascii"),
            len(body),
        )
    )
    return head + body


def json_answer(request, status: int, value: object) -> bytes:
    """Set ``request``'s status and JSON headers; the body to write."""
    return encoded_answer(request, status, json.dumps(value).encode("utf-8"))


def incidents_json(stored: Iterable[StoredIncident]) -> bytes:
    """
    ``json.dumps([s.summary() for s in stored])``, byte for byte, without
    the dicts and the generic encoder: an answer lists every incident of its
    request, a hundred for an array of a hundred.
    """
    items = ", ".join(
        (_DUPLICATE if s.duplicate else _INCIDENT) % tuple(map(_quote, s[:5]))
        for s in stored
    )
    return f"[{items}]".encode("ascii")


def encoded_answer(request, status: int, body: bytes) -> bytes:
    """Set ``request``'s status and JSON headers for ``body``, JSON already."""
    request.setResponseCode(status, reason_phrase(status))
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def error_answer(request, status: int, message: str) -> bytes:
    """
    An error answer: ``{"error": message}``.  The message is kept on the
    request too, so its access line says why.
    """
    request.error = message
    return json_answer(request, status, {"error": message})


def write_later(body: bytes, request, gone: list) -> None:
    """
    Write an answer made after ``render`` returned NOT_DONE_YET, and finish
    the request; nothing if the client went away (``gone`` holds why).
    """
    if gone:
        return
    request.write(body)
    request.finish()


def write_failure(failure, request, gone: list, log, where: str) -> None:
    """
    Answer a request whose work failed: 503 with Retry-After when the store
    cannot answer now, else 500 ``internal error`` (the traceback goes to
    ``log``, naming ``where``, never to the client).
    """
    if gone:
        return
    if failure.check(StoreUnavailable):
        request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode("ascii"))
        body = error_answer(request, 503, "incident store unavailable; retry later")
    else:
        log.failure("{where} error on {path}", failure, where=where, path=request.path)
        body = error_answer(request, 500, "internal error")
    write_later(body, request, gone)


NOT_FOUND_MESSAGE = (
    "no such path; send webhooks to /, /instance/execute/<name> "
    "or /xsoar/instance/execute/<name>"
)
