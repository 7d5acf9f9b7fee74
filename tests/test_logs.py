"""
gwebhook's log observers: time stamps formatted once per second, exact to
the microsecond; twistd's own text lines, plain ones written by a fast path
that writes what Twisted writes; one flush for the lines of FLUSH_SECONDS.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import (
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)

from gwebhook.logs import (
    FLUSH_CHARS,
    FLUSH_SECONDS,
    classic_time,
    json_observer,
    text_observer,
    timestamp,
    to_json,
    to_text,
)

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


class Stream(io.StringIO):
    """A text stream that counts its writes and flushes."""

    writes = flushes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)

    def flush(self):
        self.flushes += 1
        super().flush()


def access_event(n: int) -> dict:
    return {
        "log_format": "line {n}",
        "n": n,
        "log_time": 1_700_000_000.5 + n,
        "log_level": LogLevel.info,
        "log_namespace": "gwebhook.channel",
    }


def test_text_lines_are_twistds_own():
    for n in range(3):
        event = access_event(n)
        assert to_text(event) == formatEventAsClassicLogText(event)


def test_lines_are_written_together_after_flush_seconds():
    """Many lines, over several turns: one write, FLUSH_SECONDS after the first."""
    stream, clock = Stream(), Clock()
    observer = text_observer(stream, reactor=clock)
    for n in range(50):
        observer(access_event(n))
        clock.advance(FLUSH_SECONDS / 100)
    assert (stream.writes, stream.flushes, stream.getvalue()) == (0, 0, "")
    clock.advance(FLUSH_SECONDS / 2)
    assert (stream.writes, stream.flushes) == (1, 1)
    assert stream.getvalue().splitlines() == [
        to_text(access_event(n)).rstrip("\n") for n in range(50)
    ]
    assert clock.getDelayedCalls() == []
    observer(access_event(51))
    clock.advance(FLUSH_SECONDS - 0.001)
    assert stream.flushes == 1
    clock.advance(0.001)
    assert (stream.writes, stream.flushes) == (2, 2)


def test_lines_are_written_at_once_when_they_reach_flush_chars():
    stream, clock = Stream(), Clock()
    observer = text_observer(stream, reactor=clock)
    line = len(to_text(access_event(1)))
    for _ in range((FLUSH_CHARS - 1) // line):
        observer(access_event(1))
    assert stream.writes == 0
    observer(access_event(1))
    assert (stream.writes, stream.flushes) == (1, 1)
    assert clock.getDelayedCalls() == []


# Plain text (an access line, or any text a format leaves as it is), text
# with braces and newlines, for the slow path; every kind of system.
_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.sampled_from(
    [
        "127.0.0.1 POST / 200 incidents=1 bytes=648 1.5ms id=15f7b58e769c9dd2",
        "a {{brace}} path",
        "two\nlines",
        "",
    ]
)
_events = st.fixed_dictionaries(
    {"log_format": _texts},
    optional={
        "log_time": st.floats(min_value=0, max_value=4_000_000_000)
        | st.integers(min_value=0, max_value=4_000_000_000)
        | st.none(),
        "log_level": st.sampled_from(list(LogLevel.iterconstants())) | st.none(),
        "log_namespace": st.sampled_from(["gwebhook.accesslog", "x", "-"]),
        "log_system": st.sampled_from(["-", "WebhookSite,1,127.0.0.1"]) | st.none(),
    },
)


@given(_events)
def test_the_fast_path_writes_what_twisted_writes(event):
    """to_text and to_json's message against Twisted's formatting, for every event."""
    assert to_text(event) == formatEventAsClassicLogText(event, formatTime=classic_time)
    assert json.loads(to_json(event))["message"] == formatEvent(event)


def test_a_line_from_another_thread_is_flushed_at_once():
    stream, clock = Stream(), Clock()
    observer = json_observer(stream, reactor=clock)
    worker = threading.Thread(target=observer, args=(access_event(1),))
    worker.start()
    worker.join()
    assert stream.flushes == 1
    assert json.loads(stream.getvalue())["message"] == "line 1"
    assert clock.getDelayedCalls() == []


def test_a_line_from_another_thread_comes_after_the_lines_gathered_before_it():
    """The reactor's lines not yet written go first, in the same write."""
    stream, clock = Stream(), Clock()
    observer = text_observer(stream, reactor=clock)
    for n in range(3):
        observer(access_event(n))
    worker = threading.Thread(target=observer, args=(access_event(3),))
    worker.start()
    worker.join()
    observer(access_event(4))
    clock.advance(FLUSH_SECONDS)
    assert stream.writes == 2
    assert stream.getvalue().splitlines() == [
        to_text(access_event(n)).rstrip("\n") for n in range(5)
    ]


def test_a_closed_stream_does_not_raise_on_flush():
    stream, clock = Stream(), Clock()
    observer = text_observer(stream, reactor=clock)
    observer(access_event(1))
    stream.close()
    clock.advance(FLUSH_SECONDS)  # the flush: nothing to raise into
    assert clock.getDelayedCalls() == []


class Stopped(Clock):
    """A reactor that is not running (start-up, or after it stopped)."""

    running = False


def test_lines_are_written_at_once_when_the_reactor_is_not_running():
    stream, clock = Stream(), Stopped()
    observer = text_observer(stream, reactor=clock)
    observer(access_event(1))
    assert (stream.writes, stream.flushes) == (1, 1)
    assert stream.getvalue() == to_text(access_event(1))
    assert clock.getDelayedCalls() == []


def test_a_line_the_streams_encoding_cannot_hold_costs_only_its_characters():
    """An ASCII stdout: the batch is written, the one line escaped."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    clock = Clock()
    observer = text_observer(stream, reactor=clock)
    lines = [access_event(1), {**access_event(2), "log_format": "caf\u00e9"}]
    for event in [*lines, access_event(3)]:
        observer(event)
    clock.advance(FLUSH_SECONDS)
    written = raw.getvalue().decode("ascii").splitlines()
    assert len(written) == 3
    assert written[0].endswith("line 1") and written[2].endswith("line 3")
    assert written[1].endswith("caf\\xe9")
