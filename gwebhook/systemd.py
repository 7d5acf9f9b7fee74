"""
The two things gwebhook asks of systemd, without a library: telling it the
daemon's state (``Type=notify``) and taking a listening socket it passed
(socket activation).  Both do nothing outside systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# The first file descriptor systemd passes (sd_listen_fds(3)).
LISTEN_FDS_START = 3


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False if none."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(state.encode("utf-8"))
    return True


def inherited_socket(environ: Mapping[str, str] | None = None) -> int | None:
    """The first listening socket systemd passed to this process, if any."""
    # Importing twisted.internet.endpoints (twistd does, loading its plugins)
    # parses LISTEN_PID/LISTEN_FDS and removes them from the environment, so
    # ask what Twisted found first; the environment is the fallback.
    from twisted.internet import endpoints

    found = getattr(getattr(endpoints, "_SystemdParser", None), "_sddaemon", None)
    if environ is None and found is not None and found.inheritedDescriptors():
        return found.inheritedDescriptors()[0]
    environ = os.environ if environ is None else environ
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(environ.get("LISTEN_FDS", "0") or 0)
    return LISTEN_FDS_START if count >= 1 else None
