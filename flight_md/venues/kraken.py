"""Kraken spot: websocket v2 (``wss://ws.kraken.com/v2``) and REST ``/0/public``.

Channels: ``ticker`` is the v2 ``ticker`` channel (ccxt ``watch_tickers``: published on every
trade); ``bidask`` is the same channel with ``event_trigger: "bbo"`` (ccxt ``watch_bids_asks``:
published on every change of the best bid or offer). ccxt parses both with ``handle_ticker``,
which writes every update into ``exchange.tickers``, so that is the cache of both channels.
A v2 ticker is a full ticker (no deltas). ccxt gives it **no timestamp** (the receive time
stands in) and no ``open``: ccxt derives the open from ``last - change``. ccxt has no
``un_watch_tickers`` for Kraken: dropping a symbol restarts the session. REST tickers
(``GET /0/public/Ticker``) carry no timestamp either. ccxt's ``set_sandbox_mode`` is
unsupported on Kraken (no ``--testnet``).

Symbols: v2 names are ccxt's unified symbols (``BTC/USD``, ``DOGE/USD``); the REST market
list (``AssetPairs``) still publishes the legacy ``wsname`` (``XBT/USD``) and ids
(``XXBTZUSD``), which ccxt maps through its common currencies (``XXBT``, ``XBT`` -> ``BTC``).

URLs (``urls.api``): ``public`` and ``private`` -> the base (ccxt appends ``/0/public/<method>``
and ``/0/private/<method>``); ``zendesk`` -> ``/api/v2/help_center/en-us/articles`` (help
articles ccxt reads for withdrawal fees, never for market data); ``urls.api.ws``:
``publicV2`` -> ``/v2`` (the only websocket ccxt's market data uses), ``public`` (v1) -> ``/``,
``private`` -> ``/auth``, ``privateV2`` -> ``/auth/v2``, ``beta`` -> ``/beta``, ``beta-private``
-> ``/beta-auth``. The real hosts differ only by name (``ws.kraken.com``,
``ws-auth.kraken.com``, ``beta-ws.kraken.com``): one local host needs a path per host, and
redirecting the ones nobody emulates still keeps every connection local. Kraken's
``fetch_markets`` makes one call (``GET /0/public/AssetPairs``), and ``load_markets`` a second
(``GET /0/public/Assets``) only where ``fetchCurrencies`` is on (ingestion turns it off), so
no option restricts market types.

Limits: Kraken documents no per-message symbol limit or control-message rate for public
subscriptions; 100 symbols a subscribe message keeps a request small.
"""

from __future__ import annotations

from typing import Any

from flight_md.normalize import Channel
from flight_md.venues.base import BOOKS_CACHE, TRADES_CACHE, ChannelMethods, Venue

_WS = {
    "publicV2": "/v2", "public": "/", "private": "/auth", "privateV2": "/auth/v2",
    "beta": "/beta", "beta-private": "/beta-auth",
}
_ZENDESK = "/api/v2/help_center/en-us/articles"


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    api: dict[str, Any] = {"public": rest, "private": rest, "zendesk": rest + _ZENDESK}
    api["ws"] = {key: ws + path for key, path in _WS.items()}
    return {"urls": {"api": api}, "options": {}}


_REST = ("fetch_tickers", "fetch_ticker")

VENUE = Venue(
    id="kraken",
    title="Kraken spot (websocket v2)",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", None, "tickers", rest=_REST),
        # ccxt's handle_ticker serves both: a bbo-triggered ticker lands in `tickers` too.
        Channel.BIDASK: ChannelMethods("watch_bids_asks", None, "tickers", rest=_REST),
        # ccxt has no un_watch_trades / un_watch_order_book for Kraken.
        Channel.TRADES: ChannelMethods("watch_trades_for_symbols", None, TRADES_CACHE,
                                       rest=("fetch_trades",)),
        Channel.BOOK: ChannelMethods("watch_order_book_for_symbols", None, BOOKS_CACHE, rest=()),
    },
    symbols_per_message=100,
    book_depths=(10, 25, 100, 500, 1000),
    url_overrides=_overrides,
    # v2 ticker data (numbers on the wire) and the REST ticker's "o" (a string; its other
    # fields are arrays, which ccxt parses itself).
    raw_numeric_fields=frozenset({
        "bid", "bid_qty", "ask", "ask_qty", "last", "volume", "vwap", "low", "high", "change",
        "change_pct", "o",
    }),
    dialect="flight_md.emulator.dialects.kraken:KrakenDialect",
    demo_symbols=("BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "ETH/BTC"),
    test_symbols=("BTC/USD", "ETH/USD"),
    recording="kraken.jsonl.gz",
    quirks=(
        "tickers carry no exchange timestamp (websocket and REST): the receive time stands in",
        "the websocket ticker has no open: ccxt derives it from last - change (the 24h change)",
        "bidask is the ticker channel triggered by best bid/offer changes (event_trigger bbo)",
        "ccxt cannot unsubscribe Kraken tickers: dropping a symbol restarts the session",
        "no sandbox in ccxt: --testnet is refused",
    ),
    live_hosts={
        "/api/v2/help_center": "https://kraken.zendesk.com",
        "/v2": "wss://ws.kraken.com",
        "/0": "https://api.kraken.com",
    },
)
