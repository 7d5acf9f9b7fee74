"""What ``/proc`` says of a running process (Linux)."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def open_files(pid: int) -> dict[int, str]:
    """Every open file descriptor of process ``pid`` and what it points at."""
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            found[int(entry.name)] = os.readlink(entry)
    return found


def status_kib(pid: int, key: str = "VmRSS") -> int:
    """A ``/proc/PID/status`` figure in KiB (VmRSS by default)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    inodes = {
        target[len("socket:[") : -1]
        for target in open_files(pid).values()
        if target.startswith("socket:[")
    }
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            packed = bytes.fromhex(address)
            if family == socket.AF_INET:
                packed = packed[::-1]
            else:  # four host-order 32-bit words
                packed = b"".join(
                    packed[i : i + 4][::-1] for i in range(0, len(packed), 4)
                )
            found.add((socket.inet_ntop(family, packed), int(port, 16)))
    return found
