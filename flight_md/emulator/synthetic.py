"""Synthetic market data: one deterministic random walk per market.

Each market owns its own generator seeded from ``(seed, symbol)``, so the sequence of
quotes of one market does not depend on how updates of other markets interleave.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Mapping
from typing import Final, NamedTuple

from flight_md.emulator.market import Market

__all__ = ["IDLE_STEPS_PER_SECOND", "PriceWalk", "Quote", "RestWalks"]

_STEP_SIGMA = 2e-4  # log-price standard deviation per update
_SPREAD_TICKS_MAX = 3
IDLE_STEPS_PER_SECOND: Final = 10.0
"""Updates per second of a market no websocket streams (at most the emulator's rate per market)."""
_CATCH_UP_MAX: Final = 1000  # steps one read may catch up; a longer idle spell just moves less


class Quote(NamedTuple):
    """The state of one market after an update. Prices are on the market's grid.

    A ``NamedTuple`` rather than a frozen dataclass: it is built 50,000+ times a second
    and a tuple is three times cheaper to build; it is just as immutable.

    Attributes:
        bid: Best bid price.
        ask: Best ask price, always above ``bid``.
        bid_size: Quantity at the best bid.
        ask_size: Quantity at the best ask.
        last: Last trade price.
        last_size: Last trade quantity.
        open: Price 24 hours ago (the walk's starting price).
        high: Highest last price so far.
        low: Lowest last price so far.
        volume: Traded base volume so far.
        quote_volume: Traded quote volume so far.
        update_id: Order book update id, strictly increasing.
        trade_id: Last trade id, strictly increasing.
        time_ms: Event time in epoch milliseconds.
        buyer_maker: Whether the last trade hit the bid.
    """

    bid: float
    ask: float
    bid_size: float
    ask_size: float
    last: float
    last_size: float
    open: float
    high: float
    low: float
    volume: float
    quote_volume: float
    update_id: int
    trade_id: int
    time_ms: int
    buyer_maker: bool


class PriceWalk:
    """A geometric random walk of one market's mid price with a quoted spread.

    Args:
        market: The market; its grid and reference price shape the walk.
        seed: Emulator seed; the walk is deterministic given it and the symbol.
    """

    __slots__ = (
        "_high",
        "_low",
        "_market",
        "_mid",
        "_open",
        "_quote",
        "_quote_volume",
        "_rng",
        "_tick",
        "_trade_id",
        "_unit",
        "_update_id",
        "_volume",
    )

    def __init__(self, market: Market, seed: int) -> None:
        self._market = market
        self._rng = random.Random(f"{seed}:{market.symbol}")
        self._tick = 10.0 ** -market.price_decimals
        self._unit = 10.0 ** -market.size_decimals
        self._mid = market.reference_price
        self._open = market.reference_price
        self._high = self._low = market.reference_price
        self._update_id = 1_000_000 + self._rng.randrange(1_000_000)
        self._trade_id = 100_000 + self._rng.randrange(100_000)
        self._volume = 0.0
        self._quote_volume = 0.0
        self._quote = self._next(0)

    @property
    def market(self) -> Market:
        """The market this walk prices."""
        return self._market

    @property
    def quote(self) -> Quote:
        """The latest quote."""
        return self._quote

    def step(self, time_ms: int) -> Quote:
        """Advance the walk by one update.

        Args:
            time_ms: Event time to stamp on the quote.

        Returns:
            The new quote.
        """
        self._quote = self._next(time_ms)
        return self._quote

    def _next(self, time_ms: int) -> Quote:
        # random() and inline arithmetic rather than randrange(), uniform(), max() and
        # round(): this runs 50,000+ times a second.
        random = self._rng.random
        tick, unit = self._tick, self._unit
        mid = self._mid * math.exp(self._rng.gauss(0.0, _STEP_SIGMA))
        self._mid = mid
        bid_ticks = int(mid / tick - 0.5) or 1
        bid = bid_ticks * tick
        ask = (bid_ticks + 1 + int(random() * _SPREAD_TICKS_MAX)) * tick
        # Sizes worth roughly 100 to 100,000 quote units, log-uniform, at least one step.
        scale = 1.0 / (mid * unit)
        bid_size = (int(10.0 ** (2.0 + 3.0 * random()) * scale) or 1) * unit
        ask_size = (int(10.0 ** (2.0 + 3.0 * random()) * scale) or 1) * unit
        buyer_maker = random() < 0.5
        last = bid if buyer_maker else ask
        last_size = (int(10.0 ** (1.0 + 3.0 * random()) * scale) or 1) * unit
        if last > self._high:
            self._high = last
        elif last < self._low:
            self._low = last
        self._volume += last_size
        self._quote_volume += last_size * last
        self._update_id += 1 + int(random() * 3)
        self._trade_id += 1
        return Quote(bid, ask, bid_size, ask_size, last, last_size, self._open, self._high, self._low,
                     self._volume, self._quote_volume, self._update_id, self._trade_id, time_ms, buyer_maker)


class RestWalks(Mapping[str, PriceWalk]):
    """The walks as REST handlers read them: a market moves whether or not anyone streams it.

    The producer steps a walk only for its websocket subscribers. A market that no websocket
    streams moves in time all the same: when REST reads it, it first takes the steps it would
    have taken since it last moved, at ``steps_per_second``. A REST poll therefore sees what a
    market moving all along would show, and a websocket session sees the walk step by step
    from where REST left it (without REST reads, exactly as deterministic as before).

    Args:
        walks: The walks by unified symbol (the producer's own dict).
        steps_per_second: Pace of an idle market; 0 keeps idle markets still.
    """

    __slots__ = ("_idle_since", "_rate", "_streamed", "_walks")

    def __init__(self, walks: Mapping[str, PriceWalk], steps_per_second: float) -> None:
        self._walks = walks
        self._rate = steps_per_second
        now = time.monotonic()
        self._idle_since = dict.fromkeys(walks, now)
        self._streamed: frozenset[str] = frozenset()

    def streamed(self, symbols: frozenset[str]) -> None:
        """Say which markets the producer moves now; a market leaving that set idles from now."""
        now = time.monotonic()
        for symbol in self._streamed - symbols:
            self._idle_since[symbol] = now
        self._streamed = symbols

    def __getitem__(self, symbol: str) -> PriceWalk:
        walk = self._walks[symbol]
        if self._rate > 0 and symbol not in self._streamed:
            now = time.monotonic()
            steps = int((now - self._idle_since[symbol]) * self._rate)
            if steps > 0:
                time_ms = time.time_ns() // 1_000_000
                for _ in range(min(steps, _CATCH_UP_MAX)):
                    walk.step(time_ms)
                self._idle_since[symbol] = (now if steps > _CATCH_UP_MAX
                                            else self._idle_since[symbol] + steps / self._rate)
        return walk

    def __iter__(self) -> Iterator[str]:
        return iter(self._walks)

    def __len__(self) -> int:
        return len(self._walks)
