"""The daemon's garbage collector setting: fewer collections, cycles still freed."""

from __future__ import annotations

import gc
import weakref

import pytest

from gwebhook import collector


class Node:
    """An object that can be in a reference cycle and be weakly referred to."""


@pytest.fixture
def tuned():
    before = gc.get_threshold()
    gc.collect()
    collector.tune()
    yield
    gc.set_threshold(*before)


def test_young_threshold_raised_older_ones_kept(tuned):
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD
    assert gc.get_threshold()[1:] == (10, 10)


def test_parsed_documents_freed_by_counting_trigger_no_collection(tuned):
    """What a request allocates and frees moves the young count hardly at all."""
    collections = gc.get_stats()[0]["collections"]
    for _ in range(50):
        document = [{"alert": {"host": {"ip": "10.0.0.1"}}} for _ in range(1000)]
        del document
    assert gc.get_stats()[0]["collections"] == collections


def test_cycles_are_still_collected(tuned):
    node = Node()
    node.self = node
    gone = weakref.ref(node)
    del node
    garbage = []
    for _ in range(collector.YOUNG_THRESHOLD + 1):
        garbage.append([])
    del garbage
    for _ in range(collector.YOUNG_THRESHOLD + 1):
        cycle: list = []
        cycle.append(cycle)
    assert gone() is None
