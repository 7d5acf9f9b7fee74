"""
Transitional: the daemon's assembly (``gwebhook.tap``) still sets this as
its site's protocol when it serves the console.  The body limits are the
site's now (``WebhookSite.body_limits``, ``gwebhook.console.bodies``); once
``tap`` sets ``site.body_limits = BODY_LIMITS`` instead, this module goes.
"""

from __future__ import annotations

from gwebhook.channel import LimitedChannel
from gwebhook.console.bodies import BODY_LIMITS


class ConsoleChannel(LimitedChannel):
    """A LimitedChannel whose site takes the console's POST bodies."""

    def bodyLimitFor(self, method: bytes, path: bytes) -> int | None:
        if method != b"POST":
            return None
        return self.site.body_limits.get(path, BODY_LIMITS.get(path))
