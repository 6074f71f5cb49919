"""Bybit v5: public websockets per category and REST ``/v5/market``.

Channels: ``ticker`` is ``tickers.<symbol>`` (linear: a snapshot, then deltas of the changed
fields, merged by ccxt; spot tickers carry **no best bid/ask**); ``bidask`` is
``orderbook.1.<symbol>`` (ccxt ``watch_bids_asks``; ccxt cannot unsubscribe it, so dropping a
symbol restarts the session). REST tickers carry no timestamp (the receive time stands in).

URLs: ``urls.api`` ``spot``, ``futures``, ``v2``, ``public``, ``private`` -> the base
(``{hostname}`` templates replaced); ``urls.api.ws.public.{spot,linear,inverse,option}`` ->
``/v5/public/<category>``; private websockets keep their paths. Redirected,
``fetchMarkets.types = ["spot", "linear"]``, so ``load_markets`` calls only
``GET /v5/market/instruments-info`` for ``category=spot`` and ``category=linear``.

Limits: spot accepts at most 10 topics a subscribe request.
"""

from __future__ import annotations

from typing import Any

from flight_md.normalize import Channel
from flight_md.venues.base import BOOK_METHODS, TRADES_METHODS, ChannelMethods, Venue

_REST_KEYS = ("spot", "futures", "v2", "public", "private")
_CATEGORIES = ("spot", "linear", "inverse", "option")


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    api: dict[str, Any] = {key: rest for key in _REST_KEYS}
    api["ws"] = {
        "public": {category: f"{ws}/v5/public/{category}" for category in _CATEGORIES},
        "private": {
            "spot": {"unified": f"{ws}/v5/private", "nonUnified": f"{ws}/spot/private/v3"},
            "contract": f"{ws}/v5/private",
            "usdc": f"{ws}/trade/option/usdc/private/v1",
            "trade": f"{ws}/v5/trade",
        },
    }
    return {"urls": {"api": api}, "options": {"fetchMarkets": {"types": ["spot", "linear"]}}}


VENUE = Venue(
    id="bybit",
    title="Bybit v5 (spot and linear)",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
        Channel.BIDASK: ChannelMethods("watch_bids_asks", None, "bidsasks",
                                       rest=("fetch_bids_asks", "fetch_tickers", "fetch_ticker")),
        Channel.TRADES: TRADES_METHODS,  # publicTrade.<symbol>: ids are UUIDs, not sequential
        Channel.BOOK: BOOK_METHODS,  # orderbook.<depth>.<symbol>
    },
    symbols_per_message=10,
    book_depths=(1, 50, 200, 1000),
    url_overrides=_overrides,
    # tickers.<symbol> websocket data and /v5/market/tickers rows.
    raw_numeric_fields=frozenset({
        "lastPrice", "bid1Price", "bid1Size", "ask1Price", "ask1Size", "prevPrice24h",
        "highPrice24h", "lowPrice24h", "volume24h", "turnover24h", "markPrice", "indexPrice",
    }),
    dialect="flight_md.emulator.dialects.bybit:BybitDialect",
    demo_symbols=("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"),
    test_symbols=("BTC/USDT:USDT", "ETH/USDT:USDT"),
    recording="bybit.jsonl.gz",
    quirks=(
        "spot tickers carry no best bid/ask; linear tickers arrive as a snapshot then deltas",
        "REST tickers carry no exchange timestamp: the receive time stands in",
        "ccxt cannot unsubscribe orderbook.1 (bidask): dropping a symbol restarts the session",
    ),
    # ccxt's urls.api with {hostname} = bybit.com: REST on api., websockets on stream.
    live_hosts={
        "/v5": "https://api.bybit.com", "/v5/public": "wss://stream.bybit.com",
        "/v5/private": "wss://stream.bybit.com", "/v5/trade": "wss://stream.bybit.com",
        "/spot/private/v3": "wss://stream.bybit.com",
        "/trade/option/usdc/private/v1": "wss://stream.bybit.com",
    },
)
