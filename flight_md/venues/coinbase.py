"""Coinbase Advanced Trade: one public websocket and REST ``/api/v3/brokerage`` (spot).

Channels: ``ticker`` is Coinbase's ``ticker`` channel through ccxt ``watch_ticker``, called
once per symbol (``per_symbol``): it carries every update, where ccxt's ``watch_tickers``
subscribes ``ticker_batch``, which Coinbase batches about every 5 s. Each push is the full
ticker (no deltas): last price, best bid/ask with sizes, 24 h high/low/volume/change and
52-week high/low, stamped with the message's ``timestamp``; it has **no open** (ccxt
derives one from the last price and the 24 h change) and no quote volume. ``bidask`` is the same channel and cache: ccxt has no bid/ask stream for
Coinbase, so the normaliser builds the bid/ask row from the ticker's best bid and ask. ccxt
writes every parsed ticker into ``exchange.tickers``.

Unsubscribing: ccxt's ``un_watch_ticker`` resolves only when Coinbase's ``subscriptions``
answer lists no subscription left on the connection, and it refuses a second unsubscribe
while one is pending. Dropping one of several symbols therefore never completes in ccxt
4.5.90 (and would leave ccxt refusing every later unsubscribe), so ``unwatch`` is ``None``:
dropping a symbol restarts the session, which subscribes only what is still wanted.

REST: ccxt's ``fetch_bids_asks`` is a private call (``/brokerage/best_bid_ask``), and
``fetch_tickers`` (``GET /api/v3/brokerage/market/products``) returns no best bid/ask, so
both channels poll ``fetch_ticker`` (``GET /api/v3/brokerage/market/products/{id}/ticker``:
the last trade and the best bid/ask, one request per symbol).

Unified symbols: ``BASE/QUOTE`` of the product id ``BASE-QUOTE`` (``BTC/USD``: ``BTC-USD``).
Coinbase lists ``BTC-USDC`` as an alias of ``BTC-USD``: subscribed, it streams ``BTC-USD``
data, which ccxt files under ``BTC/USD``, so stream the ``USD`` symbol.

URLs (``urls.api``): ``rest`` -> the base (ccxt appends ``/api/v3/<path>`` for the Advanced
Trade API and ``/v2/<path>`` for the v2 API: currencies, exchange rates, time); ``ws`` -> the
websocket base, path ``/`` (``wss://advanced-trade-ws.coinbase.com`` has no path; ccxt.pro
uses that one websocket for every channel). ``load_markets`` calls ``GET
/api/v3/brokerage/market/products`` twice, the second time with ``product_type=FUTURE``
(no option restricts it; the emulator lists no futures), and, where ``fetchCurrencies`` is
on (ingestion turns it off), ``GET /v2/currencies``, ``/v2/currencies/crypto`` and
``/v2/exchange-rates``. No option is needed.

Limits: Coinbase allows 8 unauthenticated websocket messages a second (per IP); ccxt paces
its websocket sends with its REST rate limiter (one token per ``rateLimit`` = 34 ms), so
``options.ws.cost = 5`` makes a subscribe cost 170 ms: at most 6 a second. ``watch_ticker``
sends one product a subscribe message (``symbols_per_message = 1``): subscribing 60 symbols
takes about 10 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flight_md.normalize import Channel
from flight_md.venues.base import BOOKS_CACHE, TRADES_CACHE, ChannelMethods, Venue

# Both channels are the per-symbol ticker: see the module docstring.
_TICKER = ChannelMethods("watch_ticker", None, "tickers", per_symbol=True, rest=("fetch_ticker",))
# ccxt's un_watch_trades / un_watch_order_book wait for a subscriptions answer listing nothing
# left on the connection, like un_watch_ticker (see the module docstring): no unwatch.
_TRADES = ChannelMethods("watch_trades_for_symbols", None, TRADES_CACHE, rest=("fetch_trades",))
_BOOK = ChannelMethods("watch_order_book_for_symbols", None, BOOKS_CACHE, rest=())


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    return {"urls": {"api": {"rest": rest, "ws": ws}}, "options": {}}


def _alias_of(market: Mapping[str, Any]) -> str | None:
    # A product's own "alias" names the product whose updates it streams (BTC-USDC: BTC-USD).
    info = market.get("info")
    alias = info.get("alias") if isinstance(info, Mapping) else None
    return alias if isinstance(alias, str) and alias else None


VENUE = Venue(
    id="coinbase",
    title="Coinbase Advanced Trade (spot)",
    channels={Channel.TICKER: _TICKER, Channel.BIDASK: _TICKER, Channel.TRADES: _TRADES,
              Channel.BOOK: _BOOK},
    sequential_trade_ids=True,  # market_trades trade_id counts up by one per product
    # market_trades' side is the maker's (a taker buy at the ask is SELL), as ccxt passes it on.
    maker_side_trades=True,
    symbols_per_message=1,
    control_per_second=8,
    # 5 tokens of ccxt's 34 ms bucket per websocket message: under Coinbase's 8 a second.
    ccxt_config={"options": {"ws": {"cost": 5}}},
    url_overrides=_overrides,
    # ticker websocket events, /market/products rows and the trades of /products/{id}/ticker.
    raw_numeric_fields=frozenset({
        "price", "volume_24_h", "low_24_h", "high_24_h", "low_52_w", "high_52_w",
        "price_percent_chg_24_h", "best_bid", "best_ask", "best_bid_quantity", "best_ask_quantity",
        "volume_24h", "price_percentage_change_24h", "approximate_quote_24h_volume", "size",
    }),
    dialect="flight_md.emulator.dialects.coinbase:CoinbaseDialect",
    demo_symbols=("BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "ETH/BTC"),
    test_symbols=("BTC/USD", "ETH/USD"),
    recording="coinbase.jsonl.gz",
    quirks=(
        ("the ticker carries last, best bid/ask with sizes, 24h high/low/volume/change and the "
         "message timestamp; no open (ccxt derives it from last and the 24h change) and no quote volume"),
        "bidask is the ticker channel: the row is the ticker's best bid and ask",
        ("ccxt cannot unsubscribe one Coinbase ticker of several: dropping a symbol restarts the "
         "session"),
        ("REST polls fetch_ticker, one request per symbol (last trade, best bid/ask; no 24h "
         "figures); ccxt's fetch_bids_asks is private"),
        ("BTC/USDC and other USDC aliases stream as BTC/USD: subscribing one is refused with "
         "the USD symbol to use"),
    ),
    live_hosts={
        "/api/v3": "https://api.coinbase.com",
        "/v2": "https://api.coinbase.com",
        "/": "wss://advanced-trade-ws.coinbase.com",
    },
    alias_of=_alias_of,
)
