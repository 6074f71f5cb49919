"""``--demo VENUE,...``: one emulated exchange per venue, each streaming its demo symbols.

One real server (``MarketDataApp`` on 127.0.0.1:0) with every emulated venue at once, read with
the real client: each venue's demo symbols are listed, connected over websocket, and tick.
"""

from __future__ import annotations

import pytest
from flight_md_client import MarketDataClient

from flight_md.app import MarketDataApp, _demo_symbols
from flight_md.config import DEMO_SYMBOLS, ConfigError, ServerConfig
from flight_md.venues import emulated
from tests.support import until


def test_every_emulated_venue_demos_at_once() -> None:
    venues = emulated()
    with MarketDataApp(ServerConfig(demo=venues, port=0)) as app, \
            MarketDataClient(app.location) as md:
        wanted = {(v, s) for v in venues for s in _demo_symbols(v)}
        until(lambda: {(s.exchange, s.symbol) for s in md.symbols() if s.records >= 2} >= wanted,
              60, f"two ticks of every demo symbol of {', '.join(venues)}")
        exchanges = md.status()["exchanges"]
        for venue_id in venues:
            assert (exchanges[venue_id]["state"], exchanges[venue_id]["mode"]) == (
                "connected", "websocket"), venue_id
        for venue_id in venues:
            symbol = _demo_symbols(venue_id)[0]
            latest = md.latest(symbol, 2, exchange=venue_id)
            assert latest.num_rows == 2
            assert set(latest.column("exchange").to_pylist()) == {venue_id}
            assert all(p > 0 for p in latest.column("price").to_pylist())


def test_plain_demo_is_binance() -> None:
    assert ServerConfig(demo=True).demo == ("binance",)
    assert _demo_symbols("binance") == DEMO_SYMBOLS
    assert ServerConfig(demo="bybit, binance").demo == ("bybit", "binance")


@pytest.mark.parametrize(("demo", "message"), [
    (("nope",), "unknown venue 'nope'; the emulator speaks: binance"),
    (("binance", "binance"), "names a venue twice"),
    (3, "demo"),
])
def test_bad_demo_venues_are_refused(demo: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(demo=demo)  # type: ignore[arg-type]
