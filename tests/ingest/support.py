"""Helpers shared by the ingestion tests (real ccxt.pro against the local emulator).

``MS`` and ``wait_until`` (the asyncio condition wait) come from :mod:`tests.support`.
"""

from __future__ import annotations

from typing import Any

from flight_md.errors import NotFound
from tests.support import MS
from tests.support import async_until as wait_until

__all__ = ["FAST", "MS", "SYMBOLS", "WIRE", "kinds", "sent", "stored", "wait_until"]

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")

FAST = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.4, "heartbeat_interval": 2.0 * MS}
"""Stream options that keep recovery quick in tests."""

WIRE = {
    ("binance", "ticker"): "ticker",
    ("binance", "bidask"): "bookTicker",
    ("bybit", "ticker"): "tickers",
    ("bybit", "bidask"): "orderbook.1",
}
"""The emulator's channel name for each (exchange, stream channel)."""


def kinds(stream: Any) -> list[str]:
    """The kinds of the events recorded for the stream's exchange, in order."""
    return [e.kind.value for e in stream.events.events(stream.exchange_id)]


def stored(stream: Any, symbol: str) -> int:
    """Ticks the stream's buffer holds for ``symbol`` on its exchange."""
    try:
        return stream.buffer.count(symbol, stream.exchange_id)
    except NotFound:
        return 0


def sent(emulator: Any, stream: Any, symbol: str) -> int:
    """Intact frames the emulator wrote for the stream's channel and ``symbol``."""
    return int(emulator.sent(WIRE[(stream.exchange_id, stream.channel.value)], symbol))
