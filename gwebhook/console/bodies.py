"""
The few paths of the console and its read API whose POST carries a body,
and the most each may be (docs/reference.md 11): a login form holds one
token, a logout form one CSRF token; a preview's expressions and a
redeliver's ids are small.  The daemon gives them to its site
(``WebhookSite.body_limits``); every other body but a webhook's is refused
before it is read.
"""

from __future__ import annotations

BODY_LIMITS: dict[bytes, int] = {
    b"/console/login": 4 * 1024,
    b"/console/logout": 4 * 1024,
    b"/api/v1/mapping/preview": 64 * 1024,
    b"/api/v1/deliveries/redeliver": 64 * 1024,
}
