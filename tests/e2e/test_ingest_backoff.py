"""Reconnect backoff, timed on real reconnects as the exchange sees them.

README, Guarantees: "**Bounded retries.** The first retry comes after ``--reconnect-delay``,
doubling per failed attempt up to ``--max-reconnect-delay``, each delay multiplied by a random
factor between 0.5 and 1, reset after the first good message".

A real server streams from the emulator through real ccxt.pro; the emulator cuts the
connection (TCP reset) and refuses every new websocket handshake (HTTP 503) until told
otherwise. It records when each handshake request arrives (``stats.handshakes``, on the
monotonic clock this process shares with it), so the gaps between attempts are measured where
the exchange would see them, with no hook into the stream.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from flight_md.emulator import Fault
from flight_md.schema import now_ms
from tests.support import MS, until

pytestmark = pytest.mark.timeout(90 * MS)

SYMBOLS = ("BTC/USDT",)
DELAY_S = 0.25
MAX_DELAY_S = 2.0
SLACK_S = 0.2 * MS
"""What a measured gap may exceed its delay by: closing the failed session, starting the next
and ccxt's handshake request reaching the emulator (a few ms when idle, up to ~0.1 s measured
on two loaded cores), plus the test's own call into the emulator for the first gap. It is
below the smallest step the promise distinguishes (a delay left doubled instead of reset adds
at least one ``DELAY_S``)."""


def _expected(attempts: int) -> list[float]:
    """The delay before each of the first ``attempts`` retries after a good session."""
    return [min(MAX_DELAY_S, DELAY_S * 2.0 ** n) for n in range(attempts)]


def _retries(rig: Any, since: float, count: int) -> list[float]:
    """Wait for ``count`` handshake requests after ``since``; their gaps, starting at ``since``."""
    def arrived() -> list[float] | None:
        times = [t for t in rig.emulator.stats.handshakes if t > since]
        return times[:count] if len(times) >= count else None

    budget = sum(_expected(count)) + count * SLACK_S + 5.0
    times = until(arrived, budget, f"{count} reconnect attempts")
    return [b - a for a, b in itertools.pairwise([since, *times])]


def _check(gaps: list[float], expected: list[float]) -> None:
    for n, (gap, delay) in enumerate(zip(gaps, expected, strict=True), 1):
        assert 0.5 * delay <= gap <= delay + SLACK_S, (
            f"retry {n} came {gap:.3f} s after the previous attempt; expected "
            f"{0.5 * delay:.3f}-{delay:.3f} s (+{SLACK_S:.2f} s slack); all gaps "
            f"{[round(g, 3) for g in gaps]} for delays {expected}")


def _recover(rig: Any, since_ms: int) -> None:
    rig.emulator.clear_faults()
    until(lambda: "reconnect" in rig.kinds(since_ms), MAX_DELAY_S + 10, "the reconnect")
    reconnect_ms = max(e["timestamp"] for e in rig.events(since_ms) if e["kind"] == "reconnect")
    until(lambda: rig.flowing(SYMBOLS, reconnect_ms), 10, "a good message after the reconnect")


def test_backoff_doubles_to_the_cap_with_jitter_and_resets_after_a_good_message(
        ingest_rig: Any) -> None:
    rig = ingest_rig(SYMBOLS, rate=50.0, heartbeat_interval=30.0, reconnect_delay=DELAY_S,
                     max_reconnect_delay=MAX_DELAY_S)
    until(lambda: rig.flowing(SYMBOLS, 0), 30, "ticks")

    # Refused until cleared: 0.25, 0.5, 1, 2, then 2 s (the cap) between attempts.
    expected = _expected(5)
    assert expected == [0.25, 0.5, 1.0, 2.0, 2.0]
    cut_ms, cut = now_ms(), time.monotonic()
    rig.emulator.inject(Fault.REFUSE)
    rig.emulator.inject(Fault.RESET)
    gaps = _retries(rig, cut, len(expected))
    print("first outage, gaps", [round(g, 3) for g in gaps])
    _check(gaps, expected)
    _recover(rig, cut_ms)

    # After a good message the delay starts again at reconnect_delay (not at the cap).
    second_ms, second = now_ms(), time.monotonic()
    rig.emulator.inject(Fault.REFUSE)
    rig.emulator.inject(Fault.RESET)
    gaps = _retries(rig, second, 3)
    print("second outage, gaps", [round(g, 3) for g in gaps])
    _check(gaps, _expected(3))
    _recover(rig, second_ms)

    kinds = rig.kinds(cut_ms)
    failures = kinds.count("disconnect")
    assert kinds.count("reconnect") == 2 and failures >= 1 + len(expected) + 1 + 3, kinds
    assert rig.exchange_status()["reconnects"] == failures
