"""The reconnect policy of a stream, with no I/O: backoff, give-up, staleness, REST fallback.

python-websockets keeps its protocol free of I/O (``protocol.py``) under a thin asyncio layer;
this module does the same for the decisions a :class:`~flight_md.ingest.stream.MarketDataStream`
takes when its connection misbehaves. Nothing here sleeps, reads a clock or touches a socket:
the caller says what happened (a failure, a good message, how long the stream has been silent)
and asks what to do (how long to wait, whether to give up, whether to poll instead). Tests drive
it with plain numbers and a seeded random source.

The rules (the README's "Bounded retries"):

* A failed attempt counts; the wait before the next one is ``reconnect_delay * 2**(n-1)`` for
  the n-th failure in a row, capped at ``max_reconnect_delay``, times a random factor in
  [0.5, 1) (jitter, so that many clients do not reconnect in step).
* The first good message resets the count: the next failure waits ``reconnect_delay`` again.
* A 429's ``Retry-After`` is honoured: the wait is at least that, but never more than
  ``max_reconnect_delay``.
* After ``max_reconnect_attempts`` failures in a row (``None``: never) the stream gives up.
* ``rest_fallback_after`` websocket failures in a row make auto mode poll over REST.
* A stream silent for longer than ``heartbeat_interval`` is stale; the watchdog looks every
  ``min(1 s, heartbeat_interval / 4)``, so staleness is noticed within
  ``heartbeat_interval + min(1 s, heartbeat_interval / 4)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "GiveUp",
    "PolicySettings",
    "ReconnectPolicy",
    "backoff_delay",
    "retry_after_seconds",
    "watchdog_interval",
]

MAX_EXPONENT: Final = 32
"""Doubling stops here (the cap applies long before; this only keeps the float finite)."""
WATCHDOG_MAX_INTERVAL_S: Final = 1.0


class GiveUp(Exception):
    """``max_reconnect_attempts`` failures in a row: the stream stops retrying."""


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The numbers the policy works with (validated by the stream's constructor)."""

    reconnect_delay: float = 5.0
    max_reconnect_delay: float = 300.0
    max_reconnect_attempts: int | None = None
    rest_fallback_after: int = 3
    heartbeat_interval: float = 30.0


def backoff_delay(failures: int, reconnect_delay: float, max_reconnect_delay: float,
                  jitter: float) -> float:
    """The wait after the ``failures``-th failure in a row.

    ``jitter`` is a number in [0, 1) (``random.random()``); it maps to a factor in [0.5, 1).
    """
    exponent = min(max(failures - 1, 0), MAX_EXPONENT)
    delay = min(max_reconnect_delay, reconnect_delay * 2.0 ** exponent)
    return delay * (0.5 + 0.5 * jitter)


def retry_after_seconds(headers: Mapping[str, Any] | None, cap: float) -> float:
    """Seconds an HTTP ``Retry-After`` header (any case) asks for, within [0, cap]; 0 if none.

    Only the delta-seconds form is understood; an HTTP date or garbage counts as absent.
    """
    for name, value in (headers or {}).items():
        if str(name).lower() == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return 0.0
            if math.isnan(seconds):
                return 0.0
            return min(max(seconds, 0.0), cap)
    return 0.0


def watchdog_interval(heartbeat_interval: float) -> float:
    """How often the silence watchdog looks: ``min(1 s, heartbeat_interval / 4)``."""
    return min(WATCHDOG_MAX_INTERVAL_S, heartbeat_interval / 4)


class ReconnectPolicy:
    """The counters and decisions of one stream's reconnect loop (no I/O, no clock).

    Args:
        settings: Delays, limits and thresholds.
        can_fall_back: Whether the stream may poll over REST when its websocket keeps failing
            (auto mode, and the exchange can be polled).
        jitter: Source of numbers in [0, 1) for the backoff jitter (``random.random``).
    """

    def __init__(self, settings: PolicySettings, *, can_fall_back: bool = False,
                 jitter: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.can_fall_back = can_fall_back
        self._jitter = jitter
        self.failures = 0
        """Failed attempts (sessions or polls) since the last good message."""
        self.ws_failures = 0
        """Websocket sessions in a row that failed (the auto-mode fallback counts these)."""

    def reset(self) -> None:
        """A fresh start (``connect()``): nothing has failed yet."""
        self.failures = 0
        self.ws_failures = 0

    def failed(self, *, websocket: bool) -> None:
        """Account one failed attempt.

        Raises:
            GiveUp: ``max_reconnect_attempts`` is exhausted.
        """
        self.failures += 1
        if websocket:
            self.ws_failures += 1
        limit = self.settings.max_reconnect_attempts
        if limit is not None and self.failures > limit:
            raise GiveUp(f"gave up after {limit} reconnect attempts")

    def good(self, *, websocket: bool) -> None:
        """A good message arrived: the backoff starts over (and so does the fallback count)."""
        self.failures = 0
        if websocket:
            self.ws_failures = 0

    def mode_switched(self) -> None:
        """The stream switched between websocket and REST: the fallback count starts over."""
        self.ws_failures = 0

    def next_delay(self, retry_after: float = 0.0) -> float:
        """Seconds to wait before the next attempt, after :meth:`failed`.

        ``retry_after`` (already capped by :func:`retry_after_seconds`) is a floor.
        """
        delay = backoff_delay(self.failures, self.settings.reconnect_delay,
                              self.settings.max_reconnect_delay, self._jitter())
        return max(delay, min(retry_after, self.settings.max_reconnect_delay))

    def should_fall_back(self) -> bool:
        """Whether auto mode should stop retrying the websocket and poll over REST."""
        return self.can_fall_back and self.ws_failures >= self.settings.rest_fallback_after

    def is_stale(self, silent_seconds: float) -> bool:
        """Whether a subscribed stream silent this long is stale."""
        return silent_seconds > self.settings.heartbeat_interval

    @property
    def watchdog_interval(self) -> float:
        return watchdog_interval(self.settings.heartbeat_interval)
