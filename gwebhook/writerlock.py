"""
The lock gwebhook's own writers of one store take in turn (the processes of
``--workers N``), so that a writer waiting for another wakes the moment the
other commits.

SQLite alone would serialise them too, but its busy handler does not wait
for the lock: it sleeps and tries again, sleeping longer each time (1, 2, 5,
10, ... 100 ms).  A writer that finds the store taken, under steady load
from another process, sleeps through commits it could have made: latency
goes to seconds and two processes take fewer incidents than one.  Here a
waiter tries ``flock`` again every millisecond at most (0.1 ms, doubling),
so it takes the lock within a millisecond of the holder letting go; and it
gives up after the store's busy timeout, as SQLite would, so a holder that
is stuck (stopped, or itself waiting on another program's SQLite lock)
costs the others a 503, not a hang.

The lock is a file of its own beside the store, never the store file: closing
any descriptor of the store file would drop the POSIX locks SQLite holds on
it in this process.  Holders keep it for one write transaction, commit
included, and no longer.  Other writers (``gwebhook prune``, an ``sqlite3``
shell) do not take it; SQLite's busy timeout still bounds waits on them.
"""

from __future__ import annotations

import fcntl
import os
import time

SUFFIX = "-writer.lock"
# Between two tries for a lock another process holds, in seconds.
FIRST_PAUSE = 0.0001
LAST_PAUSE = 0.001


class WriterLock:
    """
    An exclusive lock shared by every process that writes the same store,
    taken and let go in the thread that writes.

    The file is created on first use, by the daemon's own user and readable
    by it only, like the store: anyone who may open it may hold the lock.
    """

    def __init__(self, store_path: str) -> None:
        self.path = store_path + SUFFIX
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        """
        Wait at most ``timeout`` seconds for the lock: TimeoutError then;
        OSError when its file cannot be opened.
        """
        deadline = time.monotonic() + timeout
        pause = FIRST_PAUSE
        while True:
            if self._fd is None:
                # Not inherited by children (os.open's default): a child
                # holding the same open file would hold the lock with us.
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the writer lock {self.path} was held for over "
                        f"{timeout:g} s by another gwebhook process (one that "
                        "is stopped, or waiting on another program's write)"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, LAST_PAUSE)
                continue
            try:
                current = self._is_current()
            except BaseException:
                self.release()
                raise
            if current:
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
        # Removed, or replaced by a rename: the file held has no name left.
        # (One system call: each is the GIL let go and taken back.)
        assert self._fd is not None  # called only while the file is open
        return os.fstat(self._fd).st_nlink > 0
