"""
The one rule for a URL gwebhook sends to (``gwebhook send``, ``[[forward]]``):
absolute http(s) with a host and a valid port (pure, no I/O).
"""

from __future__ import annotations

import hyperlink


def check_url(url: str) -> str:
    """
    ``url`` if it is an absolute http(s) URL with a host and a valid port;
    else ValueError saying what is wrong with it.
    """
    try:
        parsed = hyperlink.URL.from_text(url)
        port = parsed.port
    except (hyperlink.URLParseError, ValueError) as e:
        raise ValueError(f"{url!r} is not a valid URL ({e})") from None
    if parsed.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not parsed.host:
        raise ValueError(f"{url!r} has no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range")
    return url
