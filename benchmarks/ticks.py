"""Deterministic synthetic ticks, the same in every process that asks for them.

Every benchmark that needs stored data (buffer figures, memory, the Flight servers and their
bare baselines, the alternatives) builds it here, so two processes given the same arguments
hold equal tables. Ticks are full 24h tickers (no ``None`` fields), one millisecond apart
per symbol, interleaved round-robin across symbols as a live feed would be.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Final

from flight_md.buffer import MarketDataBuffer
from flight_md.schema import MarketTick

__all__ = ["EXCHANGE", "START_MS", "fill", "full_rows", "symbols", "tick_rows", "ticks",
           "venue_symbols"]

EXCHANGE: Final = "binance"
START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_BASES: Final = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE", "ADA", "LTC", "DOT", "LINK", "AVAX",
                 "TRX")


def symbols(count: int) -> list[str]:
    """``count`` distinct spot symbols: well-known ones first, then ``X0001/USDT``, ..."""
    known = [f"{base}/USDT" for base in _BASES]
    return (known + [f"X{i:04d}/USDT" for i in range(1, count - len(known) + 1)])[:count]


def venue_symbols(venue_id: str, count: int) -> list[str]:
    """``count`` distinct symbols a venue's emulator lists and streams in synthetic mode.

    The market type is the venue's own: the quote (and settle currency) of its first
    ``test_symbols`` entry, on the bases of :func:`symbols` (``BTC/USDT:USDT``,
    ``X0001/USDT:USDT``, ... on Bybit; ``BTC/USD``, ... where the venue quotes USD). For
    Binance it is :func:`symbols` itself.

    Raises:
        ValueError: If the venue is not emulated or has no test symbol to copy.
    """
    from flight_md.venues import VENUES, emulated

    found = VENUES.get(venue_id)
    if found is None or found.dialect is None:
        raise ValueError(f"unknown venue {venue_id!r}; the emulator speaks: "
                         f"{', '.join(emulated())}")
    if not found.test_symbols:
        raise ValueError(f"venue {venue_id!r} has no test_symbols to take its market type from")
    _, _, market = found.test_symbols[0].partition("/")
    return [f"{name.partition('/')[0]}/{market}" for name in symbols(count)]


def tick_rows(symbol_names: Sequence[str], per_symbol: int, seed: int = 0,
              start_ms: int = START_MS) -> Iterator[tuple[str, int, float, float, float, float]]:
    """``(symbol, timestamp, price, volume, bid, ask)`` round-robin, ``per_symbol`` each.

    Each value is a fresh Python object, as a parsed exchange frame would give.
    """
    rng = random.Random(seed)
    prices = [100.0 + 10 * rng.random() for _ in symbol_names]
    volume = 1000.0
    for i in range(per_symbol):
        ts = start_ms + i
        for k, symbol in enumerate(symbol_names):
            price = prices[k] = prices[k] * (1.0 + (rng.random() - 0.5) * 4e-4)
            volume += 0.5
            yield symbol, ts, price, volume, price - 0.01, price + 0.01


def full_rows(symbol_names: Sequence[str], per_symbol: int, seed: int = 0,
              start_ms: int = START_MS) -> Iterator[tuple[str, int, float, float, float, float,
                                                          float, float, float, float, str, int]]:
    """Every field of :func:`ticks` as a plain tuple, in :data:`~flight_md.schema.SCHEMA`
    order (what a baseline builds its table from without flight_md's types)."""
    for symbol, ts, price, volume, bid, ask in tick_rows(symbol_names, per_symbol, seed,
                                                           start_ms):
        yield (symbol, ts, price, volume, bid, ask, price * 1.01, price * 0.99, price * 1.001,
               price, EXCHANGE, ts + 3)


def ticks(symbol_names: Sequence[str], per_symbol: int, seed: int = 0,
          start_ms: int = START_MS) -> Iterator[MarketTick]:
    """Full :class:`MarketTick` objects for :func:`tick_rows`."""
    for row in full_rows(symbol_names, per_symbol, seed, start_ms):
        yield MarketTick(*row)


def fill(buffer: MarketDataBuffer, symbol_names: Sequence[str], per_symbol: int,
         seed: int = 0) -> None:
    """Append ``per_symbol`` ticks of each symbol to ``buffer`` (deterministic)."""
    for tick in ticks(symbol_names, per_symbol, seed):
        buffer.append(tick)
