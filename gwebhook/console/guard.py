"""
What keeps the console's pages safe in a browser (docs/reference.md 11):
the headers on every answer, and the checks a POST made with a session
must pass (its CSRF token, and an Origin of this site when the browser
sends one).  Pure.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gwebhook.answers import SECURITY_HEADERS
from gwebhook.console.sessions import Session

CSRF_HEADER = b"x-csrf-token"


def secure_headers(request) -> None:
    """Set the headers every console and API answer carries."""
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def foreign_origin(request) -> bool:
    """
    Whether the browser says the request comes from a page of another
    origin: ``Sec-Fetch-Site`` other than same-origin or none, or an
    ``Origin`` whose host is not this request's ``Host``.  ``Origin: null``
    is what a browser sends for its own page's POST under
    ``Referrer-Policy: no-referrer``; no such header at all is a client
    other than a browser.
    """
    site = request.getHeader(b"sec-fetch-site")
    if site is not None and site.lower() not in (b"same-origin", b"none"):
        return True
    origin = request.getHeader(b"origin")
    if origin is None or origin == b"null":
        return False
    host = request.getHeader(b"host")
    try:
        netloc = urlsplit(origin.decode("ascii")).netloc
    except (UnicodeDecodeError, ValueError):
        return True
    return host is None or netloc.encode("ascii").lower() != host.lower()


def cross_site_refusal(request, session: Session) -> str | None:
    """Why a POST made with ``session`` is refused (403), or None."""
    if foreign_origin(request):
        return "request from another origin; use the console's own pages"
    if not session.csrf_matches(request.getHeader(CSRF_HEADER)):
        return (
            "missing or wrong CSRF token; the console sends it as X-CSRF-Token "
            "(GET /console/session gives it)"
        )
    return None
