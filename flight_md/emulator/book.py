"""A synthetic order book that follows a price walk's touch, for dialects that stream books.

Shared by the dialects whose books are level lists with deletions as size zero (Coinbase
``level2``, OKX ``books``); each prints the levels in its own frames.
"""

from __future__ import annotations

import random

from flight_md.emulator.market import Market
from flight_md.emulator.synthetic import Quote

__all__ = ["SyntheticBook"]


class SyntheticBook:
    """One market's synthetic order book: ``depth`` levels a side around the walk's touch.

    Prices and sizes are kept in ticks and lots (integers), so a level prints exactly as the
    ticker prints the same price; each level keeps its texts, printed once when it changes
    (printing is most of the cost of a frame). :meth:`apply` moves the book to a step of the
    walk and collects the changed levels until :meth:`take` hands them to an update.
    """

    __slots__ = ("_asks", "_bids", "_changed", "_depth", "_p", "_rng", "_s", "_tick", "_unit", "seq")

    def __init__(self, market: Market, quote: Quote, depth: int) -> None:
        self._depth = depth
        self._tick = 10.0 ** -market.price_decimals
        self._unit = 10.0 ** -market.size_decimals
        self._p, self._s = market.price_decimals, market.size_decimals
        self._rng = random.Random(f"book:{market.symbol}:{quote.update_id}")
        # ticks -> (lots, price text, size text)
        self._bids: dict[int, tuple[int, str, str]] = {}
        self._asks: dict[int, tuple[int, str, str]] = {}
        self._changed: dict[tuple[bool, int], tuple[str, str]] = {}  # (is bid, ticks) -> texts; size 0: deleted
        self.seq: int | None = None

    def _set(self, bid: bool, ticks: int, lots: int) -> None:
        side = self._bids if bid else self._asks
        price = f"{ticks * self._tick:.{self._p}f}"
        size = f"{lots * self._unit:.{self._s}f}" if lots else "0"  # a deletion, as the venues print it
        if lots:
            side[ticks] = (lots, price, size)
        else:
            side.pop(ticks, None)
        self._changed[(bid, ticks)] = (price, size)

    def _lots(self, mid: float) -> int:
        # Depth worth roughly 100 to 100,000 quote units a level, log-uniform, as the walk's touch.
        return int(10.0 ** (2.0 + 3.0 * self._rng.random()) / (mid * self._unit)) or 1

    def apply(self, quote: Quote) -> None:
        """Move the book to a step: its touch becomes the quote's bid and ask, with their sizes."""
        top_bid, top_ask = round(quote.bid / self._tick), round(quote.ask / self._tick)
        mid = (quote.bid + quote.ask) / 2.0
        for ticks in [t for t in self._bids if t > top_bid]:
            self._set(True, ticks, 0)
        for ticks in [t for t in self._asks if t < top_ask]:
            self._set(False, ticks, 0)
        for bid, top, size in ((True, top_bid, quote.bid_size), (False, top_ask, quote.ask_size)):
            side = self._bids if bid else self._asks
            lots = max(1, round(size / self._unit))
            if side.get(top, (0,))[0] != lots:
                self._set(bid, top, lots)
            if len(side) > 1 and self._rng.random() < 0.5:  # some depth away from the touch changes too
                deeper = [t for t in side if t != top]
                self._set(bid, self._rng.choice(deeper), self._lots(mid))
            worst = (min(side) if bid else max(side)) if len(side) < self._depth else 0
            while len(side) < self._depth:
                gap = 1 + int(self._rng.random() * 3)
                worst = worst - gap if bid else worst + gap
                if worst <= 0:
                    break
                self._set(bid, worst, self._lots(mid))
            while len(side) > self._depth:
                self._set(bid, min(side) if bid else max(side), 0)

    def take(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The levels changed since the last call, bids and asks best first (size zero: deleted)."""
        changed, self._changed = self._changed, {}
        bids = [changed[key] for key in sorted((key for key in changed if key[0]), reverse=True)]
        asks = [changed[key] for key in sorted(key for key in changed if not key[0])]
        return bids, asks

    def levels(self, bids: bool) -> list[tuple[str, str]]:
        """The current levels of one side, best first."""
        side = self._bids if bids else self._asks
        return [side[t][1:] for t in sorted(side, reverse=bids)]
