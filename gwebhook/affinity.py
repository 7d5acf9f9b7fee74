"""
``--pin-cpus``: each serving process on a CPU of its own, the main one on
the first the daemon may use, worker N on the next, and so on around.

A process's two busy threads (the reactor, the store's) take turns holding
Python's GIL; on two CPUs every turn is a hand-over between caches and a
wake-up on the other CPU, and the scheduler also moves processes between
CPUs.  Pinned, each process's threads share one CPU and the processes do
not meet.  Meant for hosts that run little besides gwebhook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# How the main process tells a worker its CPU.
WORKER_CPU_ENVIRONMENT = "GWEBHOOK_WORKER_CPU"


def supported() -> bool:
    return hasattr(os, "sched_setaffinity")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity, cgroup limits included)."""
    return sorted(os.sched_getaffinity(0))


def cpu_for(index: int, cpus: Sequence[int]) -> int:
    """The CPU of serving process ``index`` (0: the main one)."""
    return cpus[index % len(cpus)]


def pin(cpu: int) -> None:
    """
    Keep this thread, and the threads it starts from now on, on ``cpu``: call
    it before any other thread is started.
    """
    os.sched_setaffinity(0, {cpu})
