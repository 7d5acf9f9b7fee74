"""
The console's sessions (docs/reference.md 11): who logged in with an API
token, by a random id the browser holds in a cookie, never the token.  Kept
in the store (``gwebhook.store.sessions``), by the SHA-256 of the id, so
that every process of the daemon and every node of a PostgreSQL database
knows them, a logout anywhere ends them everywhere and a restart keeps
them; each ends SESSION_SECONDS after its login, or as soon as the API
token that made it is no longer one of the daemon's (the store keeps its
SHA-256, never the token).  Every lookup asks the
store (through its readers' thread): nothing here remembers a session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gwebhook.store import StoreUnavailable
from gwebhook.store import sessions as rows

# A session ends on the server this long after its login, whatever it did.
SESSION_SECONDS = 12 * 3600
COOKIE_NAME = b"__Host-gwebhook-session"
# An id is 43 URL-safe characters (256 bits); anything much longer is no id.
_MAX_COOKIE = 128


@dataclass(frozen=True)
class Session:
    """One login: its id (the cookie), its CSRF token, when it ends."""

    id: str
    csrf: str
    expires: float

    def csrf_matches(self, given: bytes | None) -> bool:
        """Whether ``given`` is this session's CSRF token (constant time)."""
        if not given:
            return False
        return hmac.compare_digest(self.csrf.encode("ascii"), given)


def id_hash(session_id: str) -> str:
    """What the store keeps of a session's id: its SHA-256, in hex."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def token_hash(token: bytes) -> str:
    """What the store keeps of the API token that made a session: its SHA-256."""
    return hashlib.sha256(token).hexdigest()


class Sessions:
    """
    The sessions, in ``store`` (an IncidentStore; set by the console's
    endpoints when not given), of the API ``tokens`` configured now (set by
    the console and the read API when not given: a session made with any
    other is refused); and how many wrong API tokens this process was given.
    """

    def __init__(
        self,
        now: Callable[[], float],
        lifetime: float = SESSION_SECONDS,
        store=None,
        tokens: tuple[bytes, ...] = (),
    ) -> None:
        self.now = now
        self.lifetime = lifetime
        self.store = store
        self.use_tokens(tokens)
        # Wrong tokens, at the console's login and on /api/ (the health page).
        self.refused = 0

    def use_tokens(self, tokens: tuple[bytes, ...]) -> None:
        """The API tokens whose sessions are accepted from now on."""
        self._token_hashes = frozenset(token_hash(t) for t in tokens)

    async def start(self, token: bytes) -> Session:
        """
        A new session of ``token`` (an API token, already checked): 256
        random bits for its id and for its CSRF token.
        """
        created = self.now()
        session = Session(
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            created + self.lifetime,
        )
        await self._write(
            rows.insert,
            id_hash(session.id),
            session.csrf,
            created,
            session.expires,
            token_hash(token),
        )
        return session

    async def find(self, cookie: bytes | None) -> Session | None:
        """
        The live session a cookie's value names, or None.  A session that
        ended, or whose token is not one of ``tokens`` now (or is unknown:
        made before the store kept it), is deleted.
        """
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        try:
            key = cookie.decode("ascii")
        except UnicodeDecodeError:
            return None
        hashed = id_hash(key)
        found = await self.store.read(rows.find, hashed)
        if found is None:
            return None
        csrf, _, expires, made_by = found
        if expires <= self.now() or made_by not in self._token_hashes:
            await self._write(rows.delete, hashed)
            return None
        session = Session(key, csrf, expires)
        return session

    async def end(self, session: Session) -> None:
        """Log out: the id is worth nothing from now on, in every process."""
        await self._write(rows.delete, id_hash(session.id))

    async def live(self) -> int:
        """How many sessions are live now (every process's)."""
        return await self.store.read(rows.live, self.now())

    async def _write(self, work, *args):
        """``store.write``, a database error said as StoreUnavailable (a 503)."""
        try:
            return await self.store.write(work, *args)
        except self.store.pool.dbapi.Error as e:
            raise StoreUnavailable(str(e)) from e


def session_cookie(request) -> bytes | None:
    """The session cookie's value a request carries, or None."""
    return request.getCookie(COOKIE_NAME)


def set_cookie_header(session: Session, lifetime: float) -> bytes:
    """The Set-Cookie value for a new session: browser-session long, at most 12 h."""
    return (
        COOKIE_NAME
        + b"="
        + session.id.encode("ascii")
        + b"; Path=/; Max-Age=%d; Secure; HttpOnly; SameSite=Strict" % int(lifetime)
    )


CLEAR_COOKIE = COOKIE_NAME + b"=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
