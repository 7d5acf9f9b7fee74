"""
Progress of the console's long work (``gwebhook export``, ``gwebhook
prune``) on standard error, drawn by tqdm only when standard error is a
terminal: piped or redirected, nothing extra is written anywhere, and
standard output is never touched.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Protocol

# Export counts incidents one by one; the bar is told in chunks of this many,
# so a large export pays one call per chunk, not one per incident.
CHUNK = 1000


class Progress(Protocol):
    """What the long work reports to: how much there is, how much got done."""

    # Whether anything is shown: worth counting the work up front.
    showing: bool

    def total(self, count: int | None) -> None: ...

    def advance(self, count: int) -> None: ...

    def close(self) -> None: ...


class Silent:
    """Progress that shows nothing: standard error is not a terminal."""

    showing = False

    def total(self, count: int | None) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


class Bar:
    """
    A tqdm bar on ``stream`` (standard error), in ``unit``s, drawn from the
    moment the work says how much there is: an error before that draws
    nothing, and neither does work with nothing to do.
    """

    showing = True

    def __init__(self, description: str, unit: str, stream: IO[str]) -> None:
        self._description = description
        self._unit = unit
        self._stream = stream
        self._bar: Any = None

    def total(self, count: int | None) -> None:
        # None: an indeterminate counter (how many and how fast, no bar).
        if count == 0:
            return
        from tqdm import tqdm  # only where a terminal shows it

        self._bar = tqdm(
            desc=self._description,
            total=count,
            unit=f" {self._unit}",
            file=self._stream,
            dynamic_ncols=True,
            # At most ten redraws a second, however often the work advances.
            mininterval=0.1,
        )

    def advance(self, count: int) -> None:
        if self._bar is not None and count:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def on_terminal(description: str, unit: str, stream: IO[str] | None = None) -> Progress:
    """A ``Bar`` when ``stream`` (standard error) is a terminal, else ``Silent``."""
    stream = sys.stderr if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        terminal = False
    return Bar(description, unit, stream) if terminal else Silent()
