"""
The channel of a site that serves the console: the webhook channel, which
reads a body only on a webhook path, plus the few POSTs of the console and
the read API that carry one (a login form, a mapping to preview, what to
redeliver), each within a small limit of its own.  Everything else is the
webhook channel's, unchanged.
"""

from __future__ import annotations

from twisted.web import http

from gwebhook.channel import LimitedChannel

# The paths whose POST carries a body, and the most it may be: a login form
# holds one token; a preview's expressions and a redeliver's ids are small.
BODY_LIMITS = {
    b"/console/login": 8 * 1024,
    b"/console/logout": 8 * 1024,
    b"/api/v1/mapping/preview": 1024 * 1024,
    b"/api/v1/deliveries/redeliver": 1024 * 1024,
}


class ConsoleChannel(LimitedChannel):
    """A LimitedChannel that also reads the body of the console's POSTs."""

    def allHeadersReceived(self) -> None:
        path = self._path.split(b"?", 1)[0]
        limit = BODY_LIMITS.get(path)
        if self._command != b"POST" or limit is None or self.length == 0:
            super().allHeadersReceived()
            return
        limit = min(limit, self.limits.max_body_bytes)
        if self.length is not None and self.length > limit:
            self.refuse(413, f"body is over the limit of {limit} bytes for this path")
            return
        self._enter("body")
        http.HTTPChannel.allHeadersReceived(self)
