"""
A worker process of ``--workers N`` (see gwebhook.workerpool): the same daemon,
serving on the listening socket inherited from the main process as fd 3,
logging JSON lines to stdout for the main process to relay.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

# Serving systemd's socket, passed on as fd 3?  Say so before anything imports
# Twisted's endpoints, which read it as from systemd (which sets all three;
# Twisted ignores the count without names).
if os.environ.pop("GWEBHOOK_WORKER_INHERITS", None) == "1":
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_FDNAMES"] = "gwebhook"

from gwebhook import affinity  # noqa: E402  (after the environment above)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A worker whose main process is gone (even by SIGKILL) stops too."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        sys.exit(0)


def main() -> None:
    _die_with_parent()
    cpu = os.environ.pop(affinity.WORKER_CPU_ENVIRONMENT, None)
    if cpu is not None:
        # --pin-cpus: before any thread starts.
        affinity.pin(int(cpu))
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from gwebhook.logs import json_observer
    from gwebhook.tap import Options, makeService
    from gwebhook.workerpool import ARGV_ENVIRONMENT

    globalLogBeginner.beginLoggingTo(
        [json_observer(sys.stdout)], redirectStandardIO=False
    )
    config = Options(worker=True)
    config.parseOptions(json.loads(os.environ.pop(ARGV_ENVIRONMENT)))
    daemon = makeService(config, reactor)
    daemon.privilegedStartService()
    daemon.startService()
    # Blocked since the main process spawned this one (see WorkerPool):
    # a SIGHUP passed on while it started has waited, and is a reload now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
