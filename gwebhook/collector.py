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
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Raise the young generation's threshold; the older ones' stay."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
