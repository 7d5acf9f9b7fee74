"""The credentials every test configures, and what carries them."""

from __future__ import annotations

import base64

from gwebhook.credentials import Credentials

USERNAME = "admin"
PASSWORD = "pw"  # noqa: S105 (a test's password, on 127.0.0.1 only)

# The command-line options that configure them.
AUTH = ["--username", USERNAME, "--password", PASSWORD]


def basic(username: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic for these credentials."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


# The header a sender with the right credentials sends.
HEADERS = basic(USERNAME, PASSWORD)
BASIC_HEADER = HEADERS["Authorization"]

# As the daemon holds them when given AUTH.
BASIC = Credentials.from_options(USERNAME, PASSWORD)
