"""End to end: the client against ``flight-md serve --demo`` (exchange emulator -> real ccxt ->
buffer -> Flight), started as a user starts it. A demo that does not start fails the test."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flight_md_client import MarketDataClient, NotFound, TailEnd, to_pandas

from flight_md.config import DEMO_SYMBOLS


def test_the_client_against_the_demo(demo_location: str) -> None:
    with MarketDataClient(demo_location) as md:
        # demo_location waited until every demo symbol had 10 ticks
        listed = {(s.exchange, s.symbol) for s in md.symbols()}
        assert listed == {("binance", s) for s in DEMO_SYMBOLS}

        status = md.status()
        binance = status["exchanges"]["binance"]
        assert (binance["state"], binance["mode"], binance["symbols"]) == (
            "connected", "websocket", list(DEMO_SYMBOLS))
        assert status["server"]["ingestion"] is True

        symbol = DEMO_SYMBOLS[0]
        latest = md.latest(symbol, 10)
        assert latest.num_rows == 10
        assert all(p > 0 for p in latest.column("price").to_pylist())
        frame = md.range_pandas(symbol, start=timedelta(minutes=5))
        assert str(frame.index.tz) == "UTC" and len(frame) >= latest.num_rows

        with md.tail(symbol, backlog=0) as live:
            rows = 0
            for batch in live:  # the demo ticks several times a second per symbol
                rows += batch.num_rows
                if rows >= 3:
                    break
        assert live.end_reason is TailEnd.CLOSED

        assert md.snapshot().num_rows == len(DEMO_SYMBOLS)
        kinds = to_pandas(md.events())["kind"].tolist()
        assert kinds[:2] == ["connect", "subscribe"]

        with pytest.raises(NotFound):
            md.latest("NOPE/USDT")
