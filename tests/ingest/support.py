"""Helpers shared by the ingestion tests (real ccxt.pro against the local emulator)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from flight_md.errors import NotFound

MS = float(os.environ.get("FLIGHT_MD_TIME_SCALE", "1"))
"""Time-scale factor: every wait in these tests is multiplied by it."""

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


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
                     interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true, for at most ``timeout * MS`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * MS
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout * MS:g} s waiting for {what}")
        await asyncio.sleep(interval)


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
