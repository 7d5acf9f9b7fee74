"""
The read API (docs/reference.md 9): ``/api/v1/`` on the main listener, for a
SOAR, a script or another gwebhook to take incidents without a shell.

A request reads top to bottom: the token (throttled as sender credentials
are), the path, its parameters (pure functions below), the store's read
connection, the answer.  A long poll (``wait``) holds no thread: it is a
Deferred in :class:`LongPolls`, fired by the next commit of this process, or
by a poll of the store for other processes' commits.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gwebhook import readback
from gwebhook.addresses import display_host
from gwebhook.answers import error_answer, json_answer, write_failure, write_later
from gwebhook.console.guard import cross_site_refusal, secure_headers
from gwebhook.console.sessions import (
    CLEAR_COOKIE,
    Session,
    Sessions,
    session_cookie,
)
from gwebhook.openapi import DOCUMENT
from gwebhook.parameters import (
    MAX_LIMIT,
    ApiError,
    check_known,
    make_cursor,
    parse_cursor,
    single,
)
from gwebhook.store import IncidentStore, StoreUnavailable
from gwebhook.throttle import AuthThrottle

if TYPE_CHECKING:
    from gwebhook.console.endpoints import ConsoleEndpoints

log = Logger()

# The paths that take a POST (with a session, and its CSRF token).
POST_PATHS = (b"/api/v1/mapping/preview", b"/api/v1/deliveries/redeliver")

PREFIX = b"/api/"
DEFAULT_LIMIT = 100
MAX_WAIT = 60.0
# How often a process with waiting consumers looks for other processes'
# commits (the promise is "within a second").
POLL_INTERVAL = 0.5

_SECONDS = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")
_NOT_FOUND = "no such API path; see /api/v1/openapi.json"


# -- tokens -------------------------------------------------------------------


def read_tokens(text: str) -> tuple[bytes, ...]:
    """
    The tokens of a tokens file (one per line) or of ``GWEBHOOK_API_TOKENS``
    (separated by whitespace): blank entries skipped.  Raises ValueError
    for a token no ``Authorization: Bearer`` header could carry.
    """
    tokens = []
    for number, token in enumerate(text.split(), start=1):
        if not token.isascii() or not token.isprintable():
            raise ValueError(
                f"token {number} is not printable ASCII; no Authorization header "
                "could carry it"
            )
        tokens.append(token.encode("ascii"))
    return tuple(tokens)


def token_matches(authorization: bytes | None, tokens: Iterable[bytes]) -> bool:
    """
    Whether ``Authorization: Bearer <token>`` names one of ``tokens``,
    compared in constant time against every one of them.
    """
    if authorization is None:
        return False
    scheme, _, given = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    given = given.strip()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(token, given)
    return found and bool(given)


# -- parameters (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class PageQuery:
    """``GET /api/v1/incidents``' parameters."""

    after: int = 0
    limit: int = DEFAULT_LIMIT
    instance: str | None = None
    wait: float = 0.0


def page_query(args: Mapping[bytes, list[bytes]]) -> PageQuery:
    """The parameters of a page request; ApiError 400 naming a bad one."""
    check_known(args, ("after", "limit", "instance", "wait"))
    after_text = single(args, "after")
    after = 0 if after_text in (None, "") else parse_cursor(after_text)
    limit = DEFAULT_LIMIT
    limit_text = single(args, "limit")
    if limit_text is not None:
        # isascii: "²" is a digit to str.isdigit, not to int().
        if (
            not (limit_text.isascii() and limit_text.isdigit())
            or not 1 <= int(limit_text) <= MAX_LIMIT
        ):
            raise ApiError(
                400,
                f"limit: {limit_text!r} is not a whole number from 1 to {MAX_LIMIT}",
            )
        limit = int(limit_text)
    instance = single(args, "instance")
    if instance == "":
        raise ApiError(400, "instance: empty; give an instance name or leave it out")
    wait = 0.0
    wait_text = single(args, "wait")
    if wait_text is not None:
        # Plain decimal seconds: float() would also take "1_0", "inf", "1e1".
        wait = float(wait_text) if _SECONDS.fullmatch(wait_text) else math.nan
        if not 0 <= wait <= MAX_WAIT:
            raise ApiError(
                400, f"wait: {wait_text!r} is not a number of seconds from 0 to 60"
            )
    return PageQuery(after, limit, instance, wait)


def samples_query(args: Mapping[bytes, list[bytes]]) -> str | None:
    """The instance of a samples request, or None for every instance's."""
    check_known(args, ("instance",))
    instance = single(args, "instance")
    if instance == "":
        raise ApiError(400, "instance: empty; give an instance name or leave it out")
    return instance


# -- long polls -------------------------------------------------------------------


class LongPolls(service.Service):
    """
    Consumers waiting for incidents newer than what they have seen, each
    for every instance or one.  Each is a Deferred and a timer, no thread;
    a commit wakes only those it may have something for.  This process's
    commits say which instances they created incidents for; while anyone
    waits, the store is asked every POLL_INTERVAL seconds for the newest id
    of each instance past what the waiters have seen (other processes' and
    nodes' commits).  Stopping the service answers them all.
    """

    def __init__(self, store: IncidentStore, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        self._waiting: dict[Deferred[bool], tuple[int, str | None, IDelayedCall]] = {}
        # The same, by the instance each waits for (None: any): a commit
        # looks only at those it may wake.
        self._by_instance: dict[str | None, set[Deferred[bool]]] = {}
        self._poll: LoopingCall | None = None
        # What the poll has found so far: the newest id of each instance
        # committed past ``_since``, examined up to ``_checked``; each poll
        # reads only what is newer than ``_checked``.
        self._since: int | None = None
        self._checked = 0
        self._newest: dict[str, int] = {}
        # Bumped when the API tokens change: a long poll begun under other
        # tokens ends at its next step (see ReadAPI._incidents).
        self.tokens_epoch = 0
        store.on_commit.append(self.committed)

    def wait(
        self, seen: int, seconds: float, instance: str | None = None
    ) -> Deferred[bool]:
        """
        Fires True once an incident newer than ``seen`` (of ``instance``,
        or of any) may have been committed, False after ``seconds`` or when
        the daemon stops.
        """
        d: Deferred[bool] = Deferred(self._cancelled)
        if not self.running:
            d.callback(False)
            return d
        timer = self.clock.callLater(seconds, self._fire, d, False)
        self._waiting[d] = (seen, instance, timer)
        self._by_instance.setdefault(instance, set()).add(d)
        if self._poll is None:
            self._poll = LoopingCall(self._check)
            self._poll.clock = self.clock
            self._poll.start(POLL_INTERVAL, now=False).addErrback(
                lambda f: log.failure("the long-poll check stopped", f)
            )
        return d

    def committed(self, instances: set[str]) -> None:
        """This process committed incidents of ``instances``."""
        for wanted in (None, *instances):
            for d in list(self._by_instance.get(wanted, ())):
                self._fire(d, True)

    def wake(self, newest: dict[str, int]) -> None:
        """Fire the waiters that have seen less than ``newest`` (per instance)."""
        overall = max(newest.values(), default=0)
        for d, (seen, wanted, _) in list(self._waiting.items()):
            top = overall if wanted is None else newest.get(wanted, 0)
            if top > seen:
                self._fire(d, True)

    def _fire(self, d: Deferred[bool], woken: bool) -> None:
        if self._forget(d):
            d.callback(woken)

    def _cancelled(self, d: Deferred[bool]) -> None:
        # The consumer went away.
        self._forget(d)

    def _forget(self, d: Deferred[bool]) -> bool:
        entry = self._waiting.pop(d, None)
        if entry is None:
            return False
        _, wanted, timer = entry
        waiting = self._by_instance[wanted]
        waiting.discard(d)
        if not waiting:
            del self._by_instance[wanted]
        if timer.active():
            timer.cancel()
        if not self._waiting and self._poll is not None:
            poll, self._poll = self._poll, None
            if poll.running:
                poll.stop()
            self._since = None
        return True

    def _check(self) -> Deferred[None] | None:
        if not self._waiting:
            return None
        least = min(seen for seen, _, _ in self._waiting.values())
        if self._since is None or least < self._since:
            # A waiter has seen less than what was examined: start again
            # from what it has seen.
            self._since, self._checked, self._newest = least, least, {}
        d = self.store.read(readback.newest_by_instance, self._checked)
        d.addCallback(self._found)
        # A store that cannot answer now is asked again at the next tick;
        # the waiters' own timers still bound their wait.
        d.addErrback(lambda f: f.trap(StoreUnavailable) and None)
        return d

    def _found(self, newest: dict[str, int]) -> None:
        for instance, number in newest.items():
            if number > self._newest.get(instance, 0):
                self._newest[instance] = number
        self._checked = max(self._checked, *newest.values(), 0)
        self.wake(self._newest)

    def release(self) -> None:
        """Answer every waiter now, as a wait that timed out."""
        for d in list(self._waiting):
            self._fire(d, False)

    def tokens_changed(self) -> None:
        """
        The API tokens changed: every long poll ends now, empty, those
        waiting and those reading a page alike; their consumers ask again
        under the tokens now in service.
        """
        self.tokens_epoch += 1
        self.release()

    def stopService(self) -> None:
        super().stopService()
        self.release()

    @property
    def waiting(self) -> int:
        return len(self._waiting)


# -- the resource -------------------------------------------------------------------


class ReadAPI(Resource):
    """``/api/v1/``: for bearers of an API token only."""

    isLeaf = True

    def __init__(
        self,
        tokens: tuple[bytes, ...],
        store: IncidentStore,
        polls: LongPolls,
        throttle: AuthThrottle | None,
        clock: IReactorTime,
        sessions: Sessions | None = None,
        console: ConsoleEndpoints | None = None,
    ) -> None:
        """
        ``sessions``: the console's, accepted as a token is (a POST made
        with one also needs its CSRF token); ``console``: the paths the
        console is built on.
        """
        super().__init__()
        self.tokens = tokens
        self.store = store
        self.polls = polls
        self.throttle = throttle
        self.clock = clock
        self.sessions = sessions
        if sessions is not None:
            # A session is accepted only while its token is one of these.
            sessions.use_tokens(tokens)
        self.console = console
        # Pages being read, by (after, limit, instance): who waits for each.
        self._reading: dict[tuple, list[Deferred]] = {}

    def render(self, request) -> bytes | int:
        request.route = "api"
        request.setHeader(b"Cache-Control", b"no-store")
        secure_headers(request)
        client = display_host(request.getClientAddress().host or "")
        # The token first: without it the API says nothing, not even 404.
        if self.throttle is not None and (wait := self.throttle.retry_after(client)):
            request.setHeader(b"Retry-After", str(wait).encode("ascii"))
            return error_answer(
                request, 429, f"too many failed authentications; retry in {wait} s"
            )
        authorization = request.getHeader(b"authorization")
        cookie = None
        if authorization is None and self.sessions is not None:
            cookie = session_cookie(request)
        if cookie and self.sessions is not None:
            # The session is in the store: answer once it is looked up.
            gone: list[Failure] = []
            request.notifyFinish().addErrback(gone.append)
            looked_up = ensureDeferred(self.sessions.find(cookie))
            looked_up.addCallback(self._authorized, request, authorization, client)
            looked_up.addCallbacks(
                _write_unless_later,
                self._failed,
                callbackArgs=(request, gone),
                errbackArgs=(request, gone),
            )
            return NOT_DONE_YET
        return self._authorized(None, request, authorization, client)

    def _authorized(
        self, session: Session | None, request, authorization: bytes | None, client: str
    ) -> bytes | int:
        """The rest of ``render``, once the session (None: none) is known."""
        if session is None and not token_matches(authorization, self.tokens):
            # Every failure counts for the throttle: a cookie that names no
            # session cost a store read.  Such a cookie (the session ended,
            # or was made up) is no wrong API token for the health page, and
            # the browser is told to drop it.
            if self.throttle is not None:
                self.throttle.failed(client)
            if authorization is None and session_cookie(request) is not None:
                request.setHeader(b"Set-Cookie", CLEAR_COOKIE)
            elif self.sessions is not None:
                self.sessions.refused += 1
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="gwebhook"')
            return error_answer(
                request, 401, "missing or wrong API token; send Authorization: Bearer"
            )
        path = request.path.split(b"?", 1)[0]
        takes_post = path in POST_PATHS
        if takes_post and request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return error_answer(request, 405, "method not allowed; use POST")
        if not takes_post and request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return error_answer(request, 405, "method not allowed; use GET or HEAD")
        if takes_post and session is not None:
            refusal = cross_site_refusal(request, session)
            if refusal is not None:
                return error_answer(request, 403, refusal)
        try:
            answer = self._route(request)
        except ApiError as e:
            return error_answer(request, e.status, e.message)
        if isinstance(answer, bytes):
            return answer
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        done = ensureDeferred(answer)
        request.notifyFinish().addErrback(lambda _: done.cancel())
        both = (request, gone)
        done.addCallbacks(
            write_later, self._failed, callbackArgs=both, errbackArgs=both
        )
        return NOT_DONE_YET

    def _route(self, request):
        path = request.path.split(b"?", 1)[0]
        args = request.args
        if path == b"/api/v1/incidents":
            return self._incidents(request, page_query(args))
        if path.startswith(b"/api/v1/incidents/"):
            check_known(args, ())
            rest = path[len(b"/api/v1/incidents/") :]
            if self.console is not None and rest.endswith(b"/body"):
                number = rest[: -len(b"/body")]
                if number.isdigit() and len(number) <= 19:
                    return self.console.body(request, int(number))
            return self._incident(request, rest)
        if path == b"/api/v1/samples":
            return self._samples(request, samples_query(args))
        if path == b"/api/v1/openapi.json":
            check_known(args, ())
            return json_answer(request, 200, DOCUMENT)
        if self.console is not None:
            answer = self.console.route(request, path, args)
            if answer is not None:
                return answer
        raise ApiError(404, _NOT_FOUND)

    async def _incidents(self, request, query: PageQuery) -> bytes:
        ends = self.clock.seconds() + query.wait
        epoch = self.polls.tokens_epoch
        while True:
            page, newest = await self._page(query.after, query.limit, query.instance)
            if self.polls.tokens_epoch != epoch:
                # The token that let it in may be gone: nothing read since.
                page = []
                break
            left = ends - self.clock.seconds()
            if page or left <= 0:
                break
            seen = max(newest, query.after)
            if not await self.polls.wait(seen, left, query.instance):
                break
        last = int(page[-1]["id"]) if page else query.after
        return json_answer(request, 200, {"incidents": page, "next": make_cursor(last)})

    def _page(
        self, after: int, limit: int, instance: str | None
    ) -> Deferred[tuple[list[dict[str, Any]], int]]:
        """
        A page, read once for every consumer asking for the same one at the
        same moment (waiters woken together by one commit ask together).
        """
        key = (after, limit, instance)
        shared = self._reading.get(key)
        if shared is None:
            shared = self._reading[key] = []
            d = self.store.read(_page_and_newest, after, limit, instance)
            d.addBoth(self._read, key)
        waiter: Deferred[tuple[list[dict[str, Any]], int]] = Deferred()
        shared.append(waiter)
        return waiter

    def _read(self, result, key) -> None:
        for waiter in self._reading.pop(key):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _incident(self, request, text: bytes) -> bytes:
        if not text.isdigit() or len(text) > 19:
            shown = text.decode("utf-8", "replace")[:64]
            raise ApiError(404, f"no incident with id {shown!r}")
        try:
            incident = await self.store.read(readback.show_incident, text.decode())
        except readback.ReadError as e:
            raise ApiError(404, str(e)) from None
        return json_answer(request, 200, incident)

    async def _samples(self, request, instance: str | None) -> bytes:
        kept = await self.store.read(readback.samples, instance)
        return json_answer(request, 200, kept)

    @staticmethod
    def _failed(failure: Failure, request, gone: list[Failure]) -> None:
        if gone or not failure.check(ApiError):
            write_failure(failure, request, gone, log, "read API")
            return
        error = failure.value
        assert isinstance(error, ApiError)
        write_later(error_answer(request, error.status, error.message), request, gone)


def _page_and_newest(
    db, after: int, limit: int, instance: str | None
) -> tuple[list[dict[str, Any]], int]:
    """A page, and the newest id committed when it was read (what it has seen)."""
    newest = readback.newest_id(db)
    return readback.incidents_page(db, after, limit, instance), newest


def _write_unless_later(body: bytes | int, request, gone: list[Failure]) -> None:
    """Write an answer made at once; one that comes later writes itself."""
    if isinstance(body, bytes):
        write_later(body, request, gone)


def tokens_from(
    token_file: str | None, environ: Mapping[str, str], config_file: str | None
) -> tuple[bytes, ...]:
    """
    The API tokens: of ``--api-token-file``, else of ``GWEBHOOK_API_TOKENS``,
    else of the config file's ``[api] tokens_file``; ``()`` when none.
    Raises ValueError with a one-line message.
    """
    if token_file is not None:
        return _tokens_of_file("--api-token-file", token_file)
    text = environ.get("GWEBHOOK_API_TOKENS")
    if text is not None:
        tokens = read_tokens(text)
        if not tokens:
            raise ValueError(
                "GWEBHOOK_API_TOKENS holds no token; set it to tokens separated by "
                "spaces, or unset it"
            )
        return tokens
    if config_file is not None:
        return _tokens_of_file("[api] tokens_file", config_file)
    return ()


def _tokens_of_file(source: str, path: str) -> tuple[bytes, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8"
        raise ValueError(
            f"{source}: cannot read {path}: {why}; give a file the daemon can "
            "read, one token per line"
        ) from None
    try:
        tokens = read_tokens(text)
    except ValueError as e:
        raise ValueError(f"{source}: {path}: {e}") from None
    if not tokens:
        raise ValueError(f"{source}: {path} holds no token; write one per line")
    return tokens
