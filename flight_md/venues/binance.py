"""Binance spot: combined websocket streams and REST v3.

Channels: ``ticker`` is ``<symbol>@ticker`` (ccxt ``watch_tickers`` with
``watchTickers.name = ticker``: the default ``miniTicker`` has no bid and ask); ``bidask`` is
``<symbol>@bookTicker``, which carries **no timestamp** (the receive time stands in);
``trades`` is ``<symbol>@trade`` (ccxt's default; the ccxt option
``watchTradesForSymbols.name = "aggTrade"`` selects aggregate trades, ids ``a``, which is what
the recording holds); ``book`` is the diff stream ``<symbol>@depth@100ms`` on a REST snapshot
(ccxt's ``watch_order_book_for_symbols``; the depth asked is the snapshot's).

URLs (``urls.api``): every REST key (``public``, ``private``, ``v1``, ``sapi*``, ``fapi*``,
``dapi*``, ``eapi*``, ``papi*``) keeps its path (``/api/v3``, ``/fapi/v1``, ...);
``urls.api.ws``: ``spot``, ``margin`` -> ``/ws``; ``linear`` -> ``/ws`` (ccxt rewrites it to
``/public/ws`` or ``/market/ws``); ``inverse`` -> ``/dws``; ``option*``, ``stock``, ``papi``,
``ws-api.*`` keep their paths. Redirected, ``fetchMarkets.types = ["spot"]``, so
``load_markets`` calls only ``GET /api/v3/exchangeInfo``; spot only also keeps market ids
unambiguous (ccxt tells a spot stream by ``/stream`` in the host name, which a local URL
lacks).

Limits: 100 symbols per subscribe message, each group on its own connection (at most 1,024
streams a connection); ccxt paces control messages to 4 a second, under Binance's 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flight_md.normalize import Channel
from flight_md.venues.base import BOOK_METHODS, TRADES_METHODS, ChannelMethods, Venue

_REST = {
    "public": "/api/v3", "private": "/api/v3", "v1": "/api/v1",
    "sapi": "/sapi/v1", "sapiV2": "/sapi/v2", "sapiV3": "/sapi/v3", "sapiV4": "/sapi/v4",
    "fapiPublic": "/fapi/v1", "fapiPublicV2": "/fapi/v2", "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1", "fapiPrivateV2": "/fapi/v2", "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
    "dapiPublic": "/dapi/v1", "dapiPrivate": "/dapi/v1", "dapiPrivateV2": "/dapi/v2",
    "dapiData": "/futures/data",
    "eapiPublic": "/eapi/v1", "eapiPrivate": "/eapi/v1",
    "papi": "/papi/v1", "papiV2": "/papi/v2",
}
_WS = {
    "spot": "/ws", "margin": "/ws", "linear": "/ws", "inverse": "/dws", "stock": "/equity/ws",
    "option": "/public/ws", "optionMarket": "/market/ws", "optionPrivate": "/private/ws",
    "papi": "/pm/ws",
}
_WS_API = {"spot": "/ws-api/v3", "linear": "/ws-fapi/v1", "inverse": "/ws-dapi/v1"}


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    api: dict[str, Any] = {key: rest + path for key, path in _REST.items()}
    api["ws"] = {key: ws + path for key, path in _WS.items()}
    api["ws"]["ws-api"] = {key: ws + path for key, path in _WS_API.items()}
    return {"urls": {"api": api}, "options": {"fetchMarkets": {"types": ["spot"]}}}


def _trade_backfill(options: Mapping[str, Any], first_id: int) -> dict[str, Any]:
    # ccxt's fetch_trades reads aggTrades (ids a, from any fromId) by default. A trade
    # stream's ids (t) are those of /api/v3/trades and /historicalTrades; ccxt refuses the
    # latter without an API key, so a trade stream backfills from the last 1,000 trades.
    watch = options.get("watchTradesForSymbols")
    name = watch.get("name") if isinstance(watch, Mapping) else None
    if name == "aggTrade":
        return {"fromId": first_id}
    return {"fetchTradesMethod": "publicGetTrades", "limit": 1000}


VENUE = Venue(
    id="binance",
    title="Binance spot",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
        Channel.BIDASK: ChannelMethods("watch_bids_asks", "un_watch_bids_asks", "bidsasks",
                                       rest=("fetch_bids_asks", "fetch_tickers", "fetch_ticker")),
        Channel.TRADES: TRADES_METHODS,
        Channel.BOOK: BOOK_METHODS,
    },
    symbols_per_message=100,
    # The diff stream (<symbol>@depth@100ms) updates the whole book; the depth is that of the
    # REST snapshot ccxt fetches to start it (GET /api/v3/depth). At least 1,000 levels, as
    # Binance advises: a level below a shallow snapshot is missing from ccxt's book until a diff
    # touches it, and surfaces as a wrong top N when the price moves there.
    book_depths=(1000, 5000),
    sequential_trade_ids=True,  # trade: t; aggTrade: a (both count up by one per market)
    trade_backfill=_trade_backfill,
    streams_per_connection=1024,
    control_per_second=5,
    connection_per_group=True,
    # watch_tickers defaults to miniTicker, which has no bid and ask. With API keys set,
    # load_markets would also call the private margin/allPairs to flag margin markets.
    ccxt_config={"options": {"watchTickers": {"name": "ticker"}, "fetchMargins": False}},
    url_overrides=_overrides,
    # 24hrTicker and bookTicker websocket events, /api/v3/ticker/24hr and /ticker/bookTicker rows.
    raw_numeric_fields=frozenset({
        "c", "o", "h", "l", "v", "q", "b", "B", "a", "A", "p", "P", "w", "x", "Q",
        "lastPrice", "openPrice", "highPrice", "lowPrice", "volume", "quoteVolume",
        "bidPrice", "bidQty", "askPrice", "askQty", "prevClosePrice", "weightedAvgPrice",
    }),
    dialect="flight_md.emulator.dialects.binance:BinanceDialect",
    demo_symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"),
    test_symbols=("BTC/USDT", "ETH/USDT"),
    recording="binance.jsonl.gz",
    quirks=(
        "bookTicker (the bidask channel) carries no exchange timestamp: the receive time stands in",
        "the ticker channel is the full 24hrTicker (ccxt's default miniTicker has no bid/ask)",
    ),
    # ccxt's urls.api hosts for the redirected paths that keep their path on the real host
    # (``/dws`` is dstream.binance.com's ``/ws``: not listed, spot never uses it).
    live_hosts={
        "/api": "https://api.binance.com", "/sapi": "https://api.binance.com",
        "/fapi": "https://fapi.binance.com", "/futures/data": "https://fapi.binance.com",
        "/dapi": "https://dapi.binance.com", "/eapi": "https://eapi.binance.com",
        "/papi": "https://papi.binance.com",
        "/ws": "wss://stream.binance.com:9443", "/ws-api/v3": "wss://ws-api.binance.com:443",
        "/ws-fapi/v1": "wss://ws-fapi.binance.com", "/ws-dapi/v1": "wss://ws-dapi.binance.com",
        "/public/ws": "wss://fstream.binance.com", "/market/ws": "wss://fstream.binance.com",
        "/private/ws": "wss://fstream.binance.com", "/pm/ws": "wss://fstream.binance.com",
        "/equity/ws": "wss://nbstream.binance.com",
    },
)
