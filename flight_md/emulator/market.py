"""Markets the emulator lists: unified symbols, exchange ids and price grids.

A synthetic emulator lists exactly the symbols it was given. ``BTC/USDT`` is a spot
market with id ``BTCUSDT``; ``BTC/USDT:USDT`` is a linear perpetual (Bybit only);
``BTC/USD:BTC-220527`` is a contract expiring on 2022-05-27 (a dialect that lists dated
futures says what its ids are).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Market", "MarketKind", "StreamKey", "parse_symbols"]

_USD_QUOTES = frozenset({"USDT", "USDC", "USD", "FDUSD", "BUSD", "TUSD", "DAI", "EUR"})
_REFERENCE_USD_PRICES = {
    "BTC": 65000.0,
    "ETH": 3000.0,
    "BNB": 600.0,
    "SOL": 150.0,
    "XRP": 0.6,
    "DOGE": 0.15,
    "ADA": 0.45,
    "LTC": 80.0,
    "DOT": 6.5,
    "LINK": 14.0,
    "AVAX": 30.0,
    "TRX": 0.12,
}


class MarketKind(StrEnum):
    """Kinds of market the emulator can list."""

    SPOT = "spot"
    LINEAR = "linear"


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One data stream: an exchange-native channel name and a unified symbol.

    Channels keep the exchange's own names: ``bookTicker``, ``ticker``,
    ``miniTicker``, ``trade`` on Binance; ``tickers``, ``orderbook.1``,
    ``publicTrade`` on Bybit.
    """

    channel: str
    symbol: str


@dataclass(frozen=True, slots=True)
class Market:
    """A market listed by the emulator.

    Attributes:
        symbol: Unified ccxt symbol, e.g. ``BTC/USDT`` or ``BTC/USDT:USDT``.
        id: Exchange market id, e.g. ``BTCUSDT``.
        base: Base asset.
        quote: Quote asset.
        kind: Spot or linear perpetual.
        price_decimals: Decimals of the price grid (tick size ``10**-price_decimals``).
        size_decimals: Decimals of the quantity grid.
        reference_price: Deterministic starting price for synthetic data.
    """

    symbol: str
    id: str
    base: str
    quote: str
    kind: MarketKind
    price_decimals: int
    size_decimals: int
    reference_price: float

    @property
    def tick(self) -> str:
        """Tick size as the exchanges print it."""
        return f"{10.0 ** -self.price_decimals:.{self.price_decimals}f}"

    @property
    def step(self) -> str:
        """Quantity step as the exchanges print it."""
        return f"{10.0 ** -self.size_decimals:.{self.size_decimals}f}"

    @classmethod
    def from_symbol(cls, symbol: str) -> Market:
        """Parse a unified symbol into a market with a deterministic price grid.

        Args:
            symbol: ``BASE/QUOTE`` (spot), ``BASE/QUOTE:SETTLE`` (linear) or
                ``BASE/QUOTE:SETTLE-YYMMDD`` (a dated future).

        Returns:
            The market.

        Raises:
            ValueError: If the symbol is not of that form.
        """
        pair, _, settle = symbol.partition(":")
        base, slash, quote = pair.partition("/")
        code, dash, expiry = settle.partition("-")
        if (not slash or not base.isalnum() or not quote.isalnum() or (settle and not code.isalnum())
                or (dash and not (len(expiry) == 6 and expiry.isdigit()))):
            raise ValueError(f"bad symbol {symbol!r}; expected BASE/QUOTE or BASE/QUOTE:SETTLE, e.g. 'BTC/USDT'")
        base, quote = base.upper(), quote.upper()
        kind = MarketKind.LINEAR if settle else MarketKind.SPOT
        price = _reference_price(base, quote)
        price_decimals = min(8, max(0, 6 - math.floor(math.log10(price))))
        size_decimals = min(8, max(0, math.floor(math.log10(price)) + 2))
        unified = f"{base}/{quote}:{code.upper()}{dash}{expiry}" if settle else f"{base}/{quote}"
        return cls(unified, base + quote, base, quote, kind, price_decimals, size_decimals, price)


def parse_symbols(symbols: str | tuple[str, ...] | list[str]) -> tuple[Market, ...]:
    """Parse symbols given as a tuple or as one comma-separated string.

    Args:
        symbols: Unified symbols.

    Returns:
        The markets, in order, without duplicates.

    Raises:
        ValueError: If a symbol is malformed or none is given.
    """
    names = symbols.split(",") if isinstance(symbols, str) else list(symbols)
    markets: dict[str, Market] = {}
    for name in names:
        if name.strip():
            market = Market.from_symbol(name.strip())
            markets.setdefault(market.symbol, market)
    if not markets:
        raise ValueError("no symbols given; pass at least one, e.g. 'BTC/USDT'")
    return tuple(markets.values())


def _usd_price(asset: str) -> float:
    if asset in _USD_QUOTES:
        return 1.0
    known = _REFERENCE_USD_PRICES.get(asset)
    if known is not None:
        return known
    # An unknown asset still gets a stable price: between 0.01 and 1000 USD.
    return float(10.0 ** (zlib.crc32(asset.encode()) % 5000 / 1000.0 - 2.0))


def _reference_price(base: str, quote: str) -> float:
    return _usd_price(base) / _usd_price(quote)
