"""End to end: the client against ``flight-md serve --demo`` (exchange emulator -> real ccxt ->
buffer -> Flight), started as a user starts it. Skipped only while the demo does not exist."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from client_support import scaled
from flight_md_client import MarketDataClient, NotFound, TailEnd, to_pandas

from flight_md.config import DEMO_SYMBOLS


def test_the_client_against_the_demo(demo_location: str) -> None:
    with MarketDataClient(demo_location) as md:
        listed = {(s.exchange, s.symbol) for s in md.symbols()}
        assert {("binance", s) for s in DEMO_SYMBOLS} >= listed and listed

        status = md.status()
        assert status["exchanges"]["binance"]["state"] == "connected"
        assert status["server"]["ingestion"] is True

        symbol = min(s for _, s in listed)
        latest = md.latest(symbol, 10)
        assert 1 <= latest.num_rows <= 10
        prices = latest.column("price").to_pylist()
        assert all(p > 0 for p in prices)
        frame = md.range_pandas(symbol, start=timedelta(minutes=5))
        assert str(frame.index.tz) == "UTC" and len(frame) >= latest.num_rows

        with md.tail(symbol, backlog=0) as live:
            deadline = time.monotonic() + scaled(15)
            rows = 0
            for batch in live:  # the demo ticks several times a second per symbol
                rows += batch.num_rows
                if rows >= 3 or time.monotonic() > deadline:
                    break
        assert rows >= 3 and live.end_reason is TailEnd.CLOSED

        snapshot = md.snapshot()
        assert snapshot.num_rows == len(listed)
        kinds = set(to_pandas(md.events())["kind"])
        assert "connect" in kinds or "subscribe" in kinds

        with pytest.raises(NotFound):
            md.latest("NOPE/USDT")
