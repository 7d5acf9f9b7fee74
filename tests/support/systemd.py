"""The systemd side of a ``Type=notify`` service, played by the test."""

from __future__ import annotations

import socket
from pathlib import Path


def _fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines() if line)


class NotifySocket:
    """A ``$NOTIFY_SOCKET`` (a path): what a service tells systemd arrives here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))

    def receive(self, timeout: float = 10) -> dict[str, str]:
        """The next message, as its KEY=VALUE lines; fails after ``timeout``."""
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            raise AssertionError(f"nothing on $NOTIFY_SOCKET in {timeout} s") from None
        return _fields(data)

    def pending(self) -> list[dict[str, str]]:
        """Every message already waiting, without blocking."""
        messages = []
        self.socket.setblocking(False)
        try:
            while True:
                messages.append(_fields(self.socket.recv(4096)))
        except BlockingIOError:
            return messages
        finally:
            self.socket.setblocking(True)

    def close(self) -> None:
        self.socket.close()
