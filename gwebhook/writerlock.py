"""
The lock gwebhook's own writers of one store take in turn (the processes of
``--workers N``), so that a writer waiting for another wakes the moment the
other commits.

SQLite alone would serialise them too, but its busy handler does not wait
for the lock: it sleeps and tries again, sleeping longer each time (1, 2, 5,
10, ... 100 ms).  A writer that finds the store taken, under steady load
from another process, sleeps through commits it could have made: latency
goes to seconds and two processes take fewer incidents than one.  ``flock``
queues the waiter in the kernel, which wakes it when the holder lets go.

The lock is a file of its own beside the store, never the store file: closing
any descriptor of the store file would drop the POSIX locks SQLite holds on
it in this process.  Holders keep it for one write transaction, commit
included, and no longer.  Other writers (``gwebhook prune``, an ``sqlite3``
shell) do not take it; SQLite's busy timeout still bounds waits on them.
"""

from __future__ import annotations

import fcntl
import os

SUFFIX = "-writer.lock"


class WriterLock:
    """
    An exclusive lock shared by every process that writes the same store,
    taken and let go in the thread that writes.

    The file is created on first use, by the daemon's own user and readable
    by it only, like the store: anyone who may open it may hold the lock.  A
    holder that stops while holding it (SIGSTOP, a debugger) stalls the other
    writers until it runs again: a kernel lock has no timeout.
    """

    def __init__(self, store_path: str) -> None:
        self.path = store_path + SUFFIX
        self._fd: int | None = None

    def acquire(self) -> None:
        """Wait for the lock; OSError when its file cannot be opened."""
        while True:
            if self._fd is None:
                # Not inherited by children (os.open's default): a child
                # holding the same open file would hold the lock with us.
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            if self._is_current():
                return
            # Removed or replaced while we waited: a process started since
            # locks the new file, so this one no longer excludes it.
            self.close()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _is_current(self) -> bool:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
