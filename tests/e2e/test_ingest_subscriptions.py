"""Subscriptions changed at run time survive a reconnect, in websocket and in REST mode.

README, Guarantees: "**The subscribed set.** Every new session resubscribes every symbol,
including changes made with ``subscribe``/``unsubscribe``, in websocket and REST mode." The
changes go through the ``subscribe``/``unsubscribe`` DoActions of a real server; the fault is
a TCP reset (websocket mode) or two 503 answers to the poll (``--mode rest``).
"""

from __future__ import annotations

from typing import Any

import pytest

from flight_md.emulator import Fault
from flight_md.schema import now_ms
from tests.support import MS, until

pytestmark = pytest.mark.timeout(90 * MS)

KEPT, REMOVED, ADDED = "BTC/USDT", "ETH/USDT", "SOL/USDT"
LISTED = (KEPT, REMOVED, ADDED)
FAST = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.4, "heartbeat_interval": 30.0}
FRESH_TICKS = {"websocket": 20, "rest": 3}
"""Ticks of the added symbol to see after the reconnect (REST stores about one a second:
ccxt's rate limiter spaces Binance's ``fetch_tickers``)."""


def _symbol(status: dict[str, Any], symbol: str) -> dict[str, Any]:
    return next(s for s in status["symbols"] if s["symbol"] == symbol)


@pytest.mark.parametrize("mode", ["websocket", "rest"])
def test_runtime_subscription_changes_survive_a_reconnect(ingest_rig: Any, mode: str) -> None:
    rig = ingest_rig((KEPT, REMOVED), listed=LISTED, mode=mode, rate=150.0, mover=mode == "rest",
                     poll_interval=0.2, **FAST)
    until(lambda: rig.flowing((KEPT, REMOVED), 0), 30, "ticks of the symbols subscribed at start")

    assert rig.action("subscribe", {"symbols": [ADDED]}) == {
        "exchange": "binance", "subscribed": [ADDED]}
    assert rig.action("unsubscribe", {"symbols": [REMOVED]}) == {
        "exchange": "binance", "unsubscribed": [REMOVED]}
    until(lambda: rig.stored().get(ADDED, 0) >= 1, 15, "the added symbol's first tick")
    if mode == "websocket":  # the exchange itself was asked to drop the removed symbol
        until(lambda: rig.emulator.stats.subscriptions == 2, 10, "the emulator to drop it")
    removed_sent = rig.sent(REMOVED)
    before = rig.status()
    removed_before = _symbol(before, REMOVED)
    assert removed_before["subscribed"] is False

    injected_ms = now_ms()
    if mode == "websocket":
        rig.emulator.inject(Fault.RESET)
    else:
        rig.emulator.inject(Fault.REST_5XX, count=2)
    until(lambda: "reconnect" in rig.kinds(injected_ms), 20, "a reconnect")
    gap = rig.events(injected_ms)
    reconnect = next(e for e in gap if e["kind"] == "reconnect")
    # The new session (or the next good poll) carries the changed set, and only that.
    assert sorted(reconnect["symbols"]) == [KEPT, ADDED], reconnect
    failures = gap[:gap.index(reconnect)]
    assert {e["kind"] for e in failures} == ({"disconnect"} if mode == "websocket" else {"error"})
    assert all(sorted(e["symbols"]) == [KEPT, ADDED] for e in failures), failures

    added_at_reconnect = rig.stored()[ADDED]
    until(lambda: rig.flowing((KEPT, ADDED), reconnect["timestamp"])
          and rig.stored()[ADDED] >= added_at_reconnect + FRESH_TICKS[mode], 20,
          "the added symbol to keep receiving ticks after the reconnect")

    after = rig.status()
    exchange = after["exchanges"]["binance"]
    assert exchange["state"] == "connected" and exchange["mode"] == mode
    assert sorted(exchange["symbols"]) == [KEPT, ADDED]
    removed_after = _symbol(after, REMOVED)
    # The removed symbol received nothing: not a tick stored, not an update counted...
    assert removed_after["subscribed"] is False
    assert removed_after["ticks_stored"] == removed_before["ticks_stored"]
    assert removed_after["ticks_received"] == removed_before["ticks_received"]
    assert rig.rows(REMOVED).num_rows == removed_before["ticks_stored"]
    if mode == "websocket":
        # ...and the exchange was not asked for it again: it sent none after the reconnect.
        assert rig.emulator.stats.subscriptions == 2
        assert rig.sent(REMOVED) == removed_sent
