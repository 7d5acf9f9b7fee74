"""
``/console/`` (docs/reference.md 11): the login, the session and the static
files of the console.  The pages themselves are one HTML document and its
JavaScript modules, which read everything through ``/api/v1/`` with the
session; nothing here puts a stored value into HTML.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from importlib import resources
from urllib.parse import parse_qs

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gwebhook.addresses import display_host
from gwebhook.answers import error_answer, json_answer, write_failure, write_later
from gwebhook.console.guard import cross_site_refusal, foreign_origin, secure_headers
from gwebhook.console.sessions import (
    CLEAR_COOKIE,
    Session,
    Sessions,
    session_cookie,
    set_cookie_header,
)
from gwebhook.throttle import AuthThrottle
from gwebhook.timestamps import from_epoch

log = Logger()

PREFIX = b"/console/"
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
_ERROR_MARK = b"<!--error-->"
_NOT_FOUND = "no such console page; the console is at /console/"


def load_static() -> dict[bytes, tuple[bytes, bytes, bytes]]:
    """
    Every file under ``static/``, by its URL path: (content type, bytes,
    entity tag).  The tag is of the content, so a browser keeps its copy
    across restarts until the file changes.
    """
    files: dict[bytes, tuple[bytes, bytes, bytes]] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if suffix in _TYPES:
                path = f"/console/static/{prefix}{entry.name}".encode()
                content = entry.read_bytes()
                files[path] = (_TYPES[suffix], content, entity_tag(content))

    walk(resources.files("gwebhook.console") / "static", "")
    return files


def entity_tag(content: bytes) -> bytes:
    """A strong entity tag of ``content``: its SHA-256, shortened, quoted."""
    return b'"' + hashlib.sha256(content).hexdigest()[:32].encode("ascii") + b'"'


def not_modified(if_none_match: bytes | None, tag: bytes) -> bool:
    """
    Whether an ``If-None-Match`` header names ``tag`` (or is ``*``): its
    tags separated by commas, each compared weakly (``W/`` ignored), as
    RFC 9110 asks of that header.
    """
    if not if_none_match:
        return False
    for given in if_none_match.split(b","):
        given = given.strip()
        if given == b"*" or given.removeprefix(b"W/") == tag:
            return True
    return False


class Console(Resource):
    """The console's own paths; its data is the read API's."""

    isLeaf = True

    def __init__(
        self,
        tokens: tuple[bytes, ...],
        sessions: Sessions,
        throttle: AuthThrottle | None,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.sessions = sessions
        # A session is accepted only while its token is one of these.
        sessions.use_tokens(tokens)
        self.throttle = throttle
        self.files = load_static()

    def render(self, request) -> bytes | int:
        request.route = "console"
        secure_headers(request)
        request.setHeader(b"Cache-Control", b"no-store")
        path = request.path.split(b"?", 1)[0]
        method = request.method
        if path == b"/console":
            request.setResponseCode(301)
            request.setHeader(b"Location", PREFIX)
            request.setHeader(b"Content-Length", b"0")
            return b""
        if path == PREFIX:
            if not self._allow(request, b"GET, HEAD"):
                return _method_not_allowed(request, b"GET, HEAD")
            return self._later(request, self._front(request))
        if path == b"/console/login":
            if method != b"POST":
                return _method_not_allowed(request, b"POST")
            return self._later(request, self._login(request))
        if path == b"/console/logout":
            if method != b"POST":
                return _method_not_allowed(request, b"POST")
            return self._later(request, self._logout(request))
        if path == b"/console/session":
            if not self._allow(request, b"GET, HEAD"):
                return _method_not_allowed(request, b"GET, HEAD")
            return self._later(request, self._session(request))
        found = self.files.get(path)
        if found is not None:
            if not self._allow(request, b"GET, HEAD"):
                return _method_not_allowed(request, b"GET, HEAD")
            kind, content, tag = found
            # Code and style may be cached, but asked again every time: a
            # copy still current is answered 304, without its bytes.
            request.setHeader(b"Cache-Control", b"no-cache")
            request.setHeader(b"ETag", tag)
            if not_modified(request.getHeader(b"if-none-match"), tag):
                # Finished here: a body returned, even empty, would have
                # Twisted send Content-Length: 0, which a 304 must not
                # carry (it is the length of the file the browser holds).
                request.setResponseCode(304)
                request.finish()
                return NOT_DONE_YET
            request.setHeader(b"Content-Type", kind)
            request.setHeader(b"Content-Length", b"%d" % len(content))
            return content
        return error_answer(request, 404, _NOT_FOUND)

    @staticmethod
    def _allow(request, methods: bytes) -> bool:
        return request.method in methods.split(b", ")

    def _page(self, request, status: int, name: str, error: str = "") -> bytes:
        kind, content, _ = self.files[b"/console/static/" + name.encode()]
        if error:
            content = content.replace(
                _ERROR_MARK, html.escape(error).encode("utf-8"), 1
            )
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", kind)
        request.setHeader(b"Content-Length", b"%d" % len(content))
        return content

    def _later(self, request, answer) -> int:
        """Answer with what the coroutine ``answer`` gives, once it has it."""
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        done = ensureDeferred(answer)
        done.addCallbacks(
            write_later,
            _failed,
            callbackArgs=(request, gone),
            errbackArgs=(request, gone),
        )
        return NOT_DONE_YET

    def _wait(self, request) -> int:
        """
        How long the client must wait before a cookie of its is looked up
        (0: not throttled, or no cookie); the answer's Retry-After is set.
        """
        if self.throttle is None or session_cookie(request) is None:
            return 0
        wait = self.throttle.retry_after(_client(request))
        if wait:
            request.setHeader(b"Retry-After", str(wait).encode("ascii"))
            request.error = "too many failed authentications"
        return wait

    async def _find(self, request) -> Session | None:
        """
        The session the request's cookie names, or None.  A cookie that
        names none (ended, or made up) cost a store read: it counts as a
        failed authentication, and the browser is told to drop it.
        """
        cookie = session_cookie(request)
        if cookie is None:
            return None
        session = await self.sessions.find(cookie)
        if session is None:
            if self.throttle is not None:
                self.throttle.failed(_client(request))
            request.setHeader(b"Set-Cookie", CLEAR_COOKIE)
        return session

    async def _front(self, request) -> bytes:
        if wait := self._wait(request):
            return self._page(request, 429, "login.html", _too_many(wait))
        if await self._find(request) is None:
            return self._page(request, 200, "login.html")
        return self._page(request, 200, "index.html")

    async def _session(self, request) -> bytes:
        if wait := self._wait(request):
            return error_answer(
                request, 429, f"too many failed authentications; retry in {wait} s"
            )
        session = await self._find(request)
        if session is None:
            return error_answer(request, 401, "no session; log in at /console/")
        return json_answer(
            request,
            200,
            {"csrf": session.csrf, "expires": from_epoch(session.expires)},
        )

    async def _login(self, request) -> bytes:
        client = _client(request)
        if foreign_origin(request):
            return self._page(
                request, 403, "login.html", "log in from the console's own page"
            )
        if self.throttle is not None and (wait := self.throttle.retry_after(client)):
            request.setHeader(b"Retry-After", str(wait).encode("ascii"))
            request.error = "too many failed authentications"
            return self._page(request, 429, "login.html", _too_many(wait))
        form = parse_qs(request.content.read().decode("utf-8", "replace"))
        given = form.get("token", [""])
        token = given[0].strip().encode("utf-8") if len(given) == 1 else b""
        if not _known(token, self.tokens):
            if self.throttle is not None:
                self.throttle.failed(client)
            self.sessions.refused += 1
            request.error = "wrong API token"
            return self._page(
                request, 401, "login.html", "That is not an API token of this gwebhook."
            )
        session = await self.sessions.start(token)
        request.setHeader(
            b"Set-Cookie", set_cookie_header(session, self.sessions.lifetime)
        )
        return _see_other(request)

    async def _logout(self, request) -> bytes:
        if wait := self._wait(request):
            return error_answer(
                request, 429, f"too many failed authentications; retry in {wait} s"
            )
        session = await self._find(request)
        if session is not None:
            # The CSRF token comes as the header (fetch) or a form field.
            if request.getHeader(b"x-csrf-token") is None:
                form = parse_qs(request.content.read().decode("utf-8", "replace"))
                csrf = form.get("csrf", [""])[0].encode("utf-8")
                request.requestHeaders.setRawHeaders(b"x-csrf-token", [csrf])
            refusal = cross_site_refusal(request, session)
            if refusal is not None:
                return error_answer(request, 403, refusal)
            await self.sessions.end(session)
        request.setHeader(b"Set-Cookie", CLEAR_COOKIE)
        return _see_other(request)


def _client(request) -> str:
    return display_host(request.getClientAddress().host or "")


def _too_many(wait: int) -> str:
    return f"Too many failed attempts from your address; try again in {wait} s."


def _known(given: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Whether ``given`` is one of ``tokens``, compared in constant time with each."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(token, given)
    return found and bool(given)


def _failed(failure: Failure, request, gone: list[Failure]) -> None:
    write_failure(failure, request, gone, log, "console")


def _see_other(request) -> bytes:
    request.setResponseCode(303)
    request.setHeader(b"Location", PREFIX)
    request.setHeader(b"Content-Length", b"0")
    return b""


def _method_not_allowed(request, methods: bytes) -> bytes:
    request.setHeader(b"Allow", methods)
    allowed = methods.decode("ascii").replace(", ", " or ")
    return error_answer(request, 405, f"method not allowed; use {allowed}")
