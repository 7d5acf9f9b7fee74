"""The JSON log's time stamps: formatted once per second, exact to the microsecond."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import formatTime

from gwebhook.logs import timestamp

FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"


@given(
    st.lists(
        st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False)
        | st.integers(min_value=0, max_value=4_000_000_000),
        min_size=1,
        max_size=5,
    )
)
def test_time_is_what_formatTime_writes(moments):
    """Within one second or across seconds, the cache writes formatTime's text."""
    for when in moments:
        ours, theirs = timestamp(when), formatTime(when, FORMAT)
        gap = datetime.strptime(ours, FORMAT) - datetime.strptime(theirs, FORMAT)
        # formatTime rounds to the microsecond, the cache truncates.
        assert abs(gap.total_seconds()) <= 1e-6
        assert ours[-5:] == theirs[-5:]


def test_the_same_second_twice_is_cached():
    first, second = timestamp(1_700_000_000.25), timestamp(1_700_000_000.5)
    assert first[:19] == second[:19]
    assert (first[20:26], second[20:26]) == ("250000", "500000")
    assert timestamp(None) == "-"
