"""
The console's sessions (docs/reference.md 11): who logged in with an API
token, by a random id the browser holds in a cookie, never the token.  Kept
in this process's memory, each for at most SESSION_SECONDS from its login;
pure and clocked, so the tests drive the time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

# A session ends on the server this long after its login, whatever it did.
SESSION_SECONDS = 12 * 3600
# Logins beyond this many live sessions forget the oldest first: memory is
# bounded whatever a holder of a token does.
MAX_SESSIONS = 10_000
COOKIE_NAME = b"__Host-gwebhook-session"


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


class Sessions:
    """The live sessions, by id; and how many wrong API tokens were tried."""

    def __init__(
        self,
        now: Callable[[], float],
        lifetime: float = SESSION_SECONDS,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.now = now
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._live: dict[str, Session] = {}
        # Wrong tokens, at the console's login and on /api/ (the health page).
        self.refused = 0

    def start(self) -> Session:
        """A new session: 256 random bits for its id and for its CSRF token."""
        self._forget_expired()
        session = Session(
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            self.now() + self.lifetime,
        )
        self._live[session.id] = session
        if len(self._live) > self.max_sessions:
            # Dicts keep insertion order: the first is the oldest login.
            del self._live[next(iter(self._live))]
        return session

    def get(self, cookie: bytes | None) -> Session | None:
        """The live session a cookie's value names, or None."""
        if not cookie:
            return None
        try:
            key = cookie.decode("ascii")
        except UnicodeDecodeError:
            return None
        session = self._live.get(key)
        if session is None:
            return None
        if session.expires <= self.now():
            del self._live[key]
            return None
        return session

    def end(self, session: Session) -> None:
        """Log out: the id is worth nothing from now on."""
        self._live.pop(session.id, None)

    def _forget_expired(self) -> None:
        now = self.now()
        # Oldest first: stop at the first that still lives.
        for key, session in list(self._live.items()):
            if session.expires > now:
                break
            del self._live[key]

    def __len__(self) -> int:
        return len(self._live)


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
