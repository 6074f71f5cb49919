"""``--mode auto`` with its default thresholds: REST after 3 websocket failures in a row, back
to the websocket when a probe (every 60 s) succeeds.

README, Guarantees: "In ``--mode auto`` it polls REST after 3 websocket failures in a row and
returns when a websocket probe (every 60 s) succeeds." Neither threshold is set here (the
server's configuration has no option for them): the defaults are what is tested.

This is the suite's one long test (about 70 s): the return can only be observed after the
default probe interval. The websockets fail by going silent (an emulator stall) while REST
still answers; the stall is lifted at once after the fall back, so a probe sooner than 60 s
would return early, and the emulator's record of websocket handshakes shows when it probed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from flight_md.emulator import Fault
from flight_md.schema import now_ms
from tests.support import MS, until

pytestmark = pytest.mark.timeout(180 * MS)

SYMBOLS = ("BTC/USDT", "ETH/USDT")
HEARTBEAT_S = 1.0
PROBE_S = 60.0
"""The documented default probe interval."""
LATE_S = 5.0 * MS
"""How much later than 60 s the return may come: the probe runs after the poll that finds it
due (polls are about 1.1 s apart: ccxt's rate limiter spaces Binance's ``fetch_tickers``),
then takes a handshake and a first message."""


def _mode_events(rig: Any, since_ms: int) -> list[dict[str, Any]]:
    return [e for e in rig.events(since_ms) if e["kind"] == "mode"]


@pytest.mark.soak  # a minute of waiting at the defaults; tests/venues runs fallback and return fast
def test_auto_mode_falls_back_after_3_failures_and_probes_back_after_60_s(
        ingest_rig: Any) -> None:
    rig = ingest_rig(SYMBOLS, mode="auto", rate=100.0, heartbeat_interval=HEARTBEAT_S,
                     reconnect_delay=0.05, max_reconnect_delay=0.2, poll_interval=0.2)
    until(lambda: rig.flowing(SYMBOLS, 0), 30, "websocket ticks")
    assert rig.exchange_status()["mode"] == "websocket"

    stalled_ms = now_ms()
    rig.emulator.inject(Fault.STALL)
    until(lambda: _mode_events(rig, stalled_ms), 30, "the fall back to REST")
    fallback = _mode_events(rig, stalled_ms)[0]
    left = time.monotonic()
    rig.emulator.clear_faults()  # the websocket would work again from now on

    # Exactly three failed websocket sessions, then polling.
    events = rig.events(stalled_ms)
    kinds = [e["kind"] for e in events[:events.index(fallback)]]
    assert kinds == ["stale", "disconnect"] * 3, kinds
    assert fallback["detail"].startswith("rest: websocket failed 3 times in a row"), fallback
    polled = rig.stored()
    until(lambda: rig.exchange_status()["state"] == "connected"
          and all(rig.stored()[s] > polled[s] for s in SYMBOLS), 15, "REST polls to store ticks")
    assert rig.exchange_status()["mode"] == "rest"

    # Back to the websocket after the probe interval, not before.
    until(lambda: len(_mode_events(rig, stalled_ms)) >= 2, PROBE_S + 20, "the return to websocket")
    back = _mode_events(rig, stalled_ms)[1]
    assert back["detail"].startswith("websocket"), back
    returned_after = (back["timestamp"] - fallback["timestamp"]) / 1000
    probes = [t - left for t in rig.emulator.stats.handshakes if t > left]
    assert probes and probes[0] >= PROBE_S - 0.5, f"a websocket probe {probes[:1]} s after falling back"
    assert PROBE_S - 0.5 <= returned_after <= PROBE_S + LATE_S, returned_after
    until(lambda: rig.emulator.stats.subscriptions == len(SYMBOLS), 10, "websocket subscriptions")
    back_ms = back["timestamp"]
    until(lambda: rig.flowing(SYMBOLS, back_ms), 10, "websocket ticks again")
    streamed = rig.stored()
    until(lambda: all(rig.stored()[s] >= streamed[s] + 20 for s in SYMBOLS), 10,
          "the websocket rate of ticks")
    assert rig.exchange_status()["mode"] == "websocket"
