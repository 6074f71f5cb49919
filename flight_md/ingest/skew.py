"""Clock skew of one stream: receive time minus exchange time, over a bounded rolling window.

A drifting local clock, or an exchange that publishes late, shows as the difference between
when a tick arrived (``receive_timestamp``, local wall clock) and the time the exchange put on
it (``timestamp``). :class:`SkewWindow` keeps that difference for the newest ticks that carry
an exchange time, in two fixed ``array('q')`` rings (16 bytes a tick, allocated once), and
answers the median and p99 of those received within the last :data:`SKEW_WINDOW_MS`.

Bounded: at most :data:`SKEW_CAPACITY` ticks are kept, so above ~1,100 ticks/s per exchange
the figures cover the newest 65,536 ticks rather than the whole minute. Quantiles are
nearest-rank (``sorted[ceil(q * n) - 1]``): always a difference that some tick really had,
in whole milliseconds. Ticks without an exchange time (Binance ``bookTicker``) are not
added, so a channel without one reports ``None``, never 0.

Pure: no clock is read here; the caller passes the times.
"""

from __future__ import annotations

import math
from array import array
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from flight_md.control import ClockSkew

__all__ = ["SKEW_CAPACITY", "SKEW_WINDOW_MS", "ClockSkew", "SkewWindow", "nearest_rank"]

SKEW_WINDOW_MS: Final = 60_000
"""The window the figures cover: the last minute of receive time."""
SKEW_CAPACITY: Final = 1 << 16
"""Ticks kept at most (a power of two)."""


def nearest_rank(ordered: list[int], q: float) -> int:
    """The nearest-rank ``q``-quantile of a non-empty sorted list."""
    return ordered[_rank(q, len(ordered))]


class SkewWindow:
    """The newest ``capacity`` (receive ms, skew ms) pairs of one stream."""

    __slots__ = ("_at", "_count", "_mask", "_next", "_skew", "window_ms")

    def __init__(self, window_ms: int = SKEW_WINDOW_MS, capacity: int = SKEW_CAPACITY) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, got {capacity!r}")
        self.window_ms = window_ms
        self._at = array("q", bytes(8 * capacity))
        self._skew = array("q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._next = 0
        self._count = 0

    def add(self, receive_ms: int, exchange_ms: int) -> None:
        """Record one tick that carried an exchange time."""
        i = self._next
        self._at[i] = receive_ms
        self._skew[i] = receive_ms - exchange_ms
        self._next = (i + 1) & self._mask
        if self._count <= self._mask:
            self._count += 1

    def summary(self, now_ms: int) -> ClockSkew:
        """Median and p99 of the ticks received after ``now_ms - window_ms``.

        Runs in Arrow compute (zero-copy views of the rings): well under a millisecond for a
        full window, so ``status`` does not hold up ingestion's loop.
        """
        count = self._count
        if not count:
            return ClockSkew(None, None, 0, self.window_ms)
        at = _view(self._at, count)
        skew = _view(self._skew, count)
        values = pc.filter(skew, pc.greater(at, now_ms - self.window_ms))
        if not len(values):
            return ClockSkew(None, None, 0, self.window_ms)
        ordered = values.take(pc.array_sort_indices(values))
        n = len(ordered)
        return ClockSkew(ordered[_rank(0.5, n)].as_py(), ordered[_rank(0.99, n)].as_py(), n,
                         self.window_ms)


def _rank(q: float, n: int) -> int:
    return max(0, math.ceil(q * n) - 1)


def _view(values: array[int], count: int) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(values)])
