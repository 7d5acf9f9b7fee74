"""The read API's tokens and the console's login, for tests of real daemons."""

from __future__ import annotations

from pathlib import Path

from support.daemon import Daemon

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def token_file(directory: Path, *tokens: str, name: str = "api-tokens") -> Path:
    """A tokens file holding ``tokens``, one per line; its path."""
    path = directory / name
    path.write_text("".join(f"{t}\n" for t in tokens), "utf-8")
    return path


def login(d: Daemon, token: str) -> tuple[str, str]:
    """Log in to ``d``'s console: (the Cookie header's value, the CSRF token)."""
    reply = d.request("POST", "/console/login", b"token=" + token.encode(), FORM)
    assert reply.status == 303, reply
    cookie = reply.headers["set-cookie"].split(";", 1)[0]
    session = d.request("GET", "/console/session", None, {"Cookie": cookie})
    assert session.status == 200, session
    return cookie, session.json()["csrf"]
