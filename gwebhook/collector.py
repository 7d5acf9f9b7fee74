"""
Python's cyclic garbage collector, set for a server whose requests free
what they allocate.

The collector runs a young-generation collection whenever the count of
container objects allocated and not yet freed grows by its first
threshold (700 by default).  Requests in flight hold their parsed JSON:
32 connections posting arrays of 100 alerts keep some 30,000 dicts and
lists alive between parse and commit, so at 700 the collector ran about
once per request and walked every one of them each time (about a fifth of
the CPU of such a load, measured).  Nearly all of it is freed by reference
counting when its request is answered; cycles are rare.  At 50,000 the
collector runs only when that many containers are really kept, or when
cycles pile up: they are still collected, later and together.

Once per process, at start-up, what the daemon holds by then (its modules,
Twisted's, the configuration: some 60,000 objects) is collected and then
frozen (``gc.freeze``): a full collection no longer walks it.  A full
collection of that heap took ~40 ms, a pause every request in flight
waited through; it now walks only what was made since.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000

_frozen = False


def tune() -> None:
    """
    Raise the young generation's threshold (the older ones' stay); the first
    time in the process, collect and freeze what it holds.
    """
    global _frozen
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
