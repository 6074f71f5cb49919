"""Coinbase Advanced Trade: REST ``/api/v3/brokerage`` and ``/v2``, and the public websocket.

REST (all GET):

* ``/api/v3/brokerage/market/products``: the spot products, ``{"products":[...],
  "num_products":N,"pagination":{...}}``; ``product_type`` ``SPOT`` or ``FUTURE`` (no
  futures are listed: ``FUTURE`` is an empty list), repeated ``product_ids`` filter,
  ``limit`` and ``offset`` page. A replay serves the recorded list byte for byte when nothing
  filters it; a filtered list (ccxt's ``fetch_tickers``) carries each product's price, 24 h
  volume, change, high and low from the last replayed ticker.
* ``/api/v3/brokerage/market/products/{product_id}``: one product.
* ``/api/v3/brokerage/market/products/{product_id}/ticker`` (ccxt's ``fetch_ticker`` and
  ``fetch_trades``): ``{"trades":[...],"best_bid":...,"best_ask":...}``, the latest trades
  newest first, at most ``limit`` (default 1, at most 1,000), those between ``start`` and
  ``end`` (epoch seconds) when given. Synthetic: the walk's trades (the last 1,000 kept). In a
  replay: the replayed ``market_trades`` trades; before any, the last replayed ticker's price
  at that frame's time (side ``UNKNOWN_ORDER_SIDE``, no size); before the first ticker, no
  trade and empty bid/ask.
* ``/api/v3/brokerage/market/product_book`` (``product_id``, ``limit`` levels, default all;
  ccxt's ``fetch_order_book``): ``{"pricebook":{"product_id":...,"bids":[{"price":...,
  "size":...}],"asks":[...],"time":...},"last":...,"mid_market":...,"spread_bps":...,
  "spread_absolute":...}``: the synthetic book at the walk's current step, or in a replay
  the book rebuilt from the replayed ``l2_data`` frames.
* ``/api/v3/brokerage/time``, ``/v2/time``.
* ``/v2/currencies`` (fiat), ``/v2/currencies/crypto`` and ``/v2/exchange-rates`` (rates to
  USD through the listed products' prices): what ccxt's ``fetch_currencies`` reads, made up
  from the listed markets (the recording holds none of them).

An unknown product is 404 ``{"error":"NOT_FOUND",...}`` and a bad ``product_type`` 400
``{"error":"INVALID_ARGUMENT",...}`` (ccxt: ``ExchangeError``, ``BadRequest``); a 429 body is
``{"errors":[{"id":"rate_limit_exceeded",...}]}`` (ccxt: ``RateLimitExceeded``).

Websocket ``/`` (``wss://advanced-trade-ws.coinbase.com``): ``{"type":"subscribe"|
"unsubscribe","product_ids":[...],"channel":...}`` (a ``jwt`` is accepted and ignored),
answered with ``{"channel":"subscriptions",...,"events":[{"subscriptions":{channel:
[product ids]}}]}`` listing every subscription the connection has afterwards, channels in
alphabetical order, heartbeats as ``"heartbeats":["heartbeats"]`` (as the recording shows).
A request naming an unknown product or channel, a private channel (``user``,
``futures_balance_summary``) or no product for a product channel is refused whole with
``{"type":"error","message":"Failed to subscribe","reason":...}`` (the wording is the
emulator's; ccxt raises the ``message`` as ``ExchangeError``). Subscribing an alias
(``BTC-USDC``) streams its product (``BTC-USD``), as Coinbase does. Public channels the
emulator has no data for (``status``, ``ticker_batch``, ``candles`` in synthetic mode) are
acknowledged and stay silent.

Keep-alive: the ``heartbeats`` channel, one ``{"channel":"heartbeats",...,"events":
[{"current_time":...,"heartbeat_counter":N}]}`` a second on a connection that subscribed it
(the counter is the server's uptime in seconds, as Coinbase's is); websocket pings are
answered. The server sends no pings.

Synthetic channels (markets come from the symbols asked for: spot only, ``BTC/USD`` is
product ``BTC-USD``):

* ``ticker``: the full ticker; a ``snapshot`` event on subscribing, then an ``update`` per step.
* ``market_trades``: every trade of the walk at the touch, with consecutive ``trade_id``
  values. On subscribing, a ``snapshot`` event of the market's recent trades (up to 100,
  newest first, as Coinbase sends them; a reconnecting client sees some of them again and
  ccxt's trade cache, keyed by id, keeps one of each); then an ``update`` per step with every
  trade since the previous one, newest first. ``side`` is the MAKER's side, as Coinbase
  sends it (a trade at the ask, a taker buy, is ``SELL``) and ccxt passes it on unchanged.
* ``level2`` (frames on channel ``l2_data``): a ``snapshot`` event of :data:`BOOK_DEPTH`
  levels a side on subscribing, then an ``update`` event of the changed levels per step
  (``new_quantity`` ``"0"`` deletes; ``side`` ``bid`` or ``offer``). The best level is the
  walk's bid and ask of the same step, with their sizes; deeper levels one to three ticks
  apart; levels the touch crosses are deleted and each side is refilled and trimmed to
  :data:`BOOK_DEPTH` in the same update. Coinbase has no book checksum or book sequence;
  ccxt checks nothing (a lost update goes unnoticed until the next snapshot).

``sequence_num`` numbers every message of a connection from 0, data and control alike, as
Coinbase does (:meth:`CoinbaseDialect.renumber`, as each frame is written: a replayed frame's
recorded number is replaced too); ccxt reads none of it, flight_md's book verifier all of it.

Replay maps each recorded data frame to its stream by its channel (``l2_data`` frames are the
``level2`` subscription's) and its first product, served byte for byte but for its
``sequence_num``, which is the connection's (``market_trades``
snapshot and updates with their recorded ``trade_id``; ``l2_data`` snapshot and updates);
``subscriptions`` and ``heartbeats`` frames are the emulator's own, live. A replay serves the
depth the recording holds (Coinbase's whole book), whatever depth ccxt asks for, and only
from the start: a client that resubscribes gets the rest of the recording, not a new
snapshot.

Not emulated: the 5 s deadline to subscribe after connecting, the closing of channels idle
for 60-90 s without heartbeats, the per-IP message rate (the emulator closes a connection
that sends more than 8 messages in a second), authenticated channels, and the
``ticker_batch`` 5 s batching. Coinbase has no "server going away" message.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from flight_md.emulator.book import SyntheticBook
from flight_md.emulator.dialect import ConnectionInfo, Control, Dialect, RestHandler, Subscription, now_ms
from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, MarketKind, StreamKey
from flight_md.emulator.recording import RecordedMessage, Recording
from flight_md.emulator.synthetic import PriceWalk, Quote

__all__ = ["BOOK_DEPTH", "CoinbaseDialect"]

_PRODUCTS: Final = "/api/v3/brokerage/market/products"
_SYNTHETIC_CHANNELS: Final = frozenset({"ticker", "market_trades", "level2"})
BOOK_DEPTH: Final = 25
_SEQUENCE_KEY: Final = '"sequence_num":'
"""Levels a side of a synthetic ``level2`` stream."""
_TRADES_KEPT: Final = 1000  # recent trades a synthetic market keeps for REST and the next frame
_SNAPSHOT_TRADES: Final = 100
_REST_TRADES_MAX: Final = 1000
_PRODUCT_CHANNELS: Final = frozenset({"ticker", "ticker_batch", "level2", "market_trades", "candles"})
_PUBLIC_CHANNELS: Final = _PRODUCT_CHANNELS | {"heartbeats", "status"}
_PRIVATE_CHANNELS: Final = frozenset({"user", "futures_balance_summary"})
# The channel a data frame names -> the channel subscribed for it.
_SUBSCRIBED_AS: Final = {"ticker": "ticker", "ticker_batch": "ticker_batch", "l2_data": "level2",
                         "market_trades": "market_trades", "candles": "candles"}
_HEARTBEATS: Final = "heartbeats"
_HEARTBEAT_INTERVAL: Final = 1.0
# ccxt's coinbase commonCurrencies (with the base class's): how it renames currency ids.
_COMMON_CURRENCIES: Final = {"XBT": "BTC", "BCHSV": "BSV", "CGLD": "CELO"}
_FIAT: Final = {"USD": "US Dollar", "EUR": "Euro", "GBP": "British Pound", "AUD": "Australian Dollar",
                "CAD": "Canadian Dollar", "SGD": "Singapore Dollar", "INR": "Indian Rupee", "JPY": "Japanese Yen",
                "CHF": "Swiss Franc"}
_NAMES: Final = {"BTC": "Bitcoin", "ETH": "Ethereum", "SOL": "Solana", "USDC": "USDC", "USDT": "Tether",
                 "XRP": "XRP", "DOGE": "Dogecoin", "ADA": "Cardano", "LTC": "Litecoin", "DOT": "Polkadot",
                 "LINK": "Chainlink", "AVAX": "Avalanche"}
_ASSET_NAMESPACE: Final = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # uuid.NAMESPACE_URL
_PAGINATION: Final = {"prev_cursor": "", "next_cursor": "", "has_next": False, "has_prev": False}
_TICKER_PRICES: Final = ("price", "best_bid", "best_ask")


class CoinbaseDialect(Dialect):
    """Coinbase Advanced Trade public market data: spot products and the ticker channel."""

    name = "coinbase"
    synthetic_channels = _SYNTHETIC_CHANNELS
    # Coinbase allows 8 unauthenticated messages a second (per IP; here per connection).
    control_rate_limit = 8
    keepalive_interval = _HEARTBEAT_INTERVAL
    renumbers = True

    def __init__(self, markets: tuple[Market, ...], walks: Mapping[str, PriceWalk], recording: Recording | None) -> None:
        super().__init__(markets, walks, recording)
        self._rows: dict[str, dict[str, Any]] = {}  # product id -> its /market/products row
        if recording is not None:
            for row in _recorded_rows(recording):
                self._rows.setdefault(row["product_id"], row)
        else:
            listed = []
            for market in self.markets:
                if market.kind is not MarketKind.SPOT:
                    raise ValueError(f"coinbase lists spot markets only; got {market.symbol!r} "
                                     "(use BASE/QUOTE, e.g. 'BTC/USD')")
                product = _product_row(market.base, market.quote, market.tick, market.step)
                self._rows[product["product_id"]] = product
                listed.append(replace(market, id=product["product_id"]))
            self.markets = tuple(listed)
        self._by_id: dict[str, Market] = {market.id: market for market in self.markets}
        # The walks hold the markets as parsed from the symbols; the listed ones carry product ids.
        self._id_by_symbol: dict[str, str] = {market.symbol: market.id for market in self.markets}
        # An alias (BTC-USDC) streams the product it names (BTC-USD).
        self._alias: dict[str, str] = {pid: row["alias"] for pid, row in self._rows.items()
                                       if row.get("alias") and row["alias"] in self._by_id}
        self._replayed: dict[str, tuple[dict[str, Any], str]] = {}  # symbol -> (ticker, frame time)
        self._heartbeats: set[str] = set()  # connections subscribed to heartbeats
        # Synthetic trades by symbol: the latest ones (snapshots, REST), and those no frame carried yet.
        self._trades: dict[str, deque[dict[str, str]]] = {}
        self._unsent: dict[str, list[dict[str, str]]] = {}
        self._last_trade: dict[str, int] = {}
        self._books: dict[str, SyntheticBook] = {}  # synthetic book by symbol
        # Replay: the book rebuilt from the replayed l2_data (price text -> quantity text, by
        # side) with the frame time, and the replayed trades by id.
        self._replayed_books: dict[str, tuple[dict[str, str], dict[str, str], str]] = {}
        self._replayed_trades: dict[str, dict[str, dict[str, Any]]] = {}
        self._sequence = 0
        self._numbers: dict[str, int] = {}  # connection -> its next sequence_num
        self._started = time.monotonic()
        self._second = -1
        self._second_text = ""

    # -- markets and REST -------------------------------------------------------------

    def recorded_markets(self, recording: Recording) -> tuple[Market, ...]:
        markets = [market for market in (_recorded_market(row) for row in _recorded_rows(recording))
                   if market is not None]
        if not markets:
            raise ValueError(f"{recording.source}: no {_PRODUCTS} response recorded")
        return tuple(markets)

    def rest_routes(self) -> list[tuple[str, RestHandler]]:
        return [
            (_PRODUCTS, self._products),
            (_PRODUCTS + "/{product_id}", self._product),
            (_PRODUCTS + "/{product_id}/ticker", self._ticker),
            ("/api/v3/brokerage/market/product_book", self._product_book),
            ("/api/v3/brokerage/time", self._v3_time),
            ("/v2/time", self._v2_time),
            ("/v2/currencies", self._fiat_currencies),
            ("/v2/currencies/crypto", self._crypto_currencies),
            ("/v2/exchange-rates", self._exchange_rates),
        ]

    def rest_error(self, status: int) -> str:
        if status == 429:
            return '{"errors":[{"id":"rate_limit_exceeded","message":"Too many requests"}]}'
        if status == 404:
            return '{"error":"NOT_FOUND","error_details":"Not Found","message":"Not Found"}'
        return '{"error":"INVALID_ARGUMENT","error_details":"Bad Request","message":"Bad Request"}'

    async def _products(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        product_type = query.get("product_type", "").upper()
        if product_type not in ("", "SPOT", "FUTURE", "UNKNOWN_PRODUCT_TYPE"):
            return _error(400, "INVALID_ARGUMENT", f"invalid value for enum type: {query['product_type']!r}")
        wanted = query.getall("product_ids", [])
        filtered = bool(wanted) or "limit" in query or "offset" in query
        if self.recording is not None and product_type != "FUTURE" and not filtered:
            body = self.recording.body(_PRODUCTS)
            if body is not None:
                return web.Response(text=body, content_type="application/json")
        rows = [] if product_type == "FUTURE" else [
            self._current_row(pid) for pid in (wanted or list(self._rows)) if pid in self._rows]
        try:
            offset = max(0, int(query.get("offset", 0)))
            limit = int(query["limit"]) if query.get("limit") else len(rows)
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "limit and offset must be integers")
        page = rows[offset:offset + max(0, limit)]
        return _json({"products": page, "num_products": len(page), "pagination": _PAGINATION})

    async def _product(self, request: web.Request) -> web.StreamResponse:
        product_id = request.match_info["product_id"]
        if product_id not in self._rows:
            return _not_found(product_id)
        return _json(self._current_row(product_id))

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        product_id = request.match_info["product_id"]
        if product_id not in self._rows:
            return _not_found(product_id)
        market = self._by_id.get(self._alias.get(product_id, product_id))
        if market is None:  # a recorded product without a unified symbol
            return _json({"trades": [], "best_bid": "", "best_ask": ""})
        query = request.query
        try:
            limit = min(_REST_TRADES_MAX, max(1, int(query.get("limit") or 1)))
            start = float(query["start"]) if query.get("start") else None
            end = float(query["end"]) if query.get("end") else None
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "limit, start and end must be numbers")
        if self.recording is not None:
            replayed = self._replayed.get(market.symbol)
            ticker, stamp = replayed if replayed is not None else ({}, "")
            recorded = self._replayed_trades.get(market.symbol)
            if recorded:
                trades = _window(recorded.values(), start, end, limit)
            elif replayed is not None:
                trades = [{"trade_id": "", "product_id": product_id, "price": ticker.get("price", ""), "size": "",
                           "time": stamp, "side": "UNKNOWN_ORDER_SIDE", "bid": "", "ask": "", "exchange": ""}]
            else:
                trades = []
            return _json({"trades": trades, "best_bid": ticker.get("best_bid", ""),
                          "best_ask": ticker.get("best_ask", "")})
        quote = self.walks[market.symbol].quote
        self._saw(market, quote)
        p = market.price_decimals
        trades = _window(self._trades.get(market.symbol, ()), start, end, limit)
        return _json({"trades": trades, "best_bid": f"{quote.bid:.{p}f}", "best_ask": f"{quote.ask:.{p}f}"})

    async def _product_book(self, request: web.Request) -> web.StreamResponse:
        product_id = request.query.get("product_id", "")
        if not product_id:
            return _error(400, "INVALID_ARGUMENT", "product_id is required")
        if product_id not in self._rows:
            return _not_found(product_id)
        try:
            limit = int(request.query["limit"]) if request.query.get("limit") else None
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "limit must be an integer")
        market = self._by_id.get(self._alias.get(product_id, product_id))
        bids: list[tuple[str, str]] = []
        asks: list[tuple[str, str]] = []
        stamp = _iso(now_ms())
        if market is not None and self.recording is not None:
            replayed = self._replayed_books.get(market.symbol)
            if replayed is not None:
                bid_side, ask_side, stamp = replayed
                bids = sorted(bid_side.items(), key=lambda level: float(level[0]), reverse=True)
                asks = sorted(ask_side.items(), key=lambda level: float(level[0]))
        elif market is not None:
            quote = self.walks[market.symbol].quote
            self._saw(market, quote)
            book = self._book_of(market, quote)
            book.apply(quote)  # the subscribers get these changes with the next update
            bids, asks, stamp = book.levels(True), book.levels(False), _iso(quote.time_ms or now_ms())
        if limit is not None:
            bids, asks = bids[:limit], asks[:limit]
        body: dict[str, Any] = {"pricebook": {"product_id": product_id,
                                              "bids": [{"price": px, "size": sz} for px, sz in bids],
                                              "asks": [{"price": px, "size": sz} for px, sz in asks],
                                              "time": stamp}}
        if bids and asks:
            best_bid, best_ask = float(bids[0][0]), float(asks[0][0])
            mid = (best_bid + best_ask) / 2.0
            body.update(mid_market=f"{mid:.12g}", spread_absolute=f"{best_ask - best_bid:.12g}",
                        spread_bps=f"{(best_ask - best_bid) / mid * 10_000:.12g}")
        return _json(body)

    async def _v3_time(self, request: web.Request) -> web.StreamResponse:
        ms = now_ms()
        return _json({"iso": _iso(ms), "epochSeconds": str(ms // 1000), "epochMillis": str(ms)})

    async def _v2_time(self, request: web.Request) -> web.StreamResponse:
        ms = now_ms()
        return _json({"data": {"iso": _iso(ms, digits=0), "epoch": ms // 1000}})

    async def _fiat_currencies(self, request: web.Request) -> web.StreamResponse:
        data = [{"id": code, "name": name, "min_size": "0.01"} for code, name in self._currencies().items()
                if code in _FIAT]
        return _json({"data": data})

    async def _crypto_currencies(self, request: web.Request) -> web.StreamResponse:
        data = [{"asset_id": str(uuid.uuid5(_ASSET_NAMESPACE, f"coinbase:{code}")), "code": code, "name": name,
                 "color": "#0052FF", "sort_index": number, "exponent": 8, "type": "crypto", "address_regex": ""}
                for number, (code, name) in enumerate(self._currencies().items()) if code not in _FIAT]
        return _json({"data": data})

    async def _exchange_rates(self, request: web.Request) -> web.StreamResponse:
        currency = request.query.get("currency", "USD").upper()
        rates = self._rates(currency)
        return _json({"data": {"currency": currency, "rates": {code: f"{rate:.12g}" for code, rate in rates.items()}}})

    def _currencies(self) -> dict[str, str]:
        """Currency id -> name, of every listed product's base and quote."""
        names: dict[str, str] = {}
        for row in self._rows.values():
            for code, name in ((row["base_currency_id"], row.get("base_name")),
                               (row["quote_currency_id"], row.get("quote_name"))):
                names.setdefault(code, name or _FIAT.get(code) or _NAMES.get(code, code))
        return names

    def _rates(self, currency: str) -> dict[str, float]:
        """Units of each reachable currency per unit of ``currency``, through product prices."""
        edges: dict[str, list[tuple[str, float]]] = {}
        for pid, row in self._rows.items():
            price = _float(self._current_row(pid).get("price"))
            if price is None or price <= 0:
                continue
            base, quote = row["base_currency_id"], row["quote_currency_id"]
            edges.setdefault(quote, []).append((base, 1.0 / price))  # base units per quote unit
            edges.setdefault(base, []).append((quote, price))
        rates = {currency: 1.0}
        pending = deque([currency])
        while pending:
            code = pending.popleft()
            for other, factor in edges.get(code, ()):
                if other not in rates:
                    rates[other] = rates[code] * factor
                    pending.append(other)
        return rates

    def _current_row(self, product_id: str) -> dict[str, Any]:
        """A product's /market/products row with its current price and 24 h figures."""
        row = dict(self._rows[product_id])
        market = self._by_id.get(self._alias.get(product_id, product_id))
        if market is None:
            return row
        if self.recording is not None:
            replayed = self._replayed.get(market.symbol)
            if replayed is not None:
                ticker = replayed[0]
                for field, source in (("price", "price"), ("volume_24h", "volume_24_h"),
                                      ("price_percentage_change_24h", "price_percent_chg_24_h"),
                                      ("high_24h", "high_24_h"), ("low_24h", "low_24_h")):
                    if source in ticker:
                        row[field] = ticker[source]
            return row
        quote = self.walks[market.symbol].quote
        p, s = market.price_decimals, market.size_decimals
        row.update(price=f"{quote.last:.{p}f}", volume_24h=f"{quote.volume:.{s}f}",
                   price_percentage_change_24h=_percent(quote), high_24h=f"{quote.high:.{p}f}",
                   low_24h=f"{quote.low:.{p}f}", approximate_quote_24h_volume=f"{quote.quote_volume:.2f}")
        return row

    # -- websockets -------------------------------------------------------------------

    def ws_paths(self) -> tuple[str, ...]:
        return ("/",)

    def control(self, connection: ConnectionInfo, text: str) -> Control:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return Control((_refusal("Failed to parse", "malformed JSON request"),))
        kind = message.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            return Control((_refusal("Failed to parse", f"unknown message type {kind!r}; expected "
                                                        "'subscribe' or 'unsubscribe'"),))
        channel = message.get("channel")
        product_ids = message.get("product_ids", [])
        if not isinstance(channel, str) or not channel:
            return Control((_refusal(f"Failed to {kind}", "channel is required"),))
        if channel in _PRIVATE_CHANNELS:
            return Control((_refusal(f"Failed to {kind}", f"channel {channel} requires authentication"),),
                           unknown=(channel,) if kind == "subscribe" else ())
        if channel not in _PUBLIC_CHANNELS:
            return Control((_refusal(f"Failed to {kind}", f"channel {channel} is not a valid channel"),),
                           unknown=(channel,) if kind == "subscribe" else ())
        if not isinstance(product_ids, list) or not all(isinstance(pid, str) for pid in product_ids):
            return Control((_refusal(f"Failed to {kind}", "product_ids must be a list of product ids"),))
        if channel not in _PRODUCT_CHANNELS:  # heartbeats, status: the products are not needed
            current = dict(connection.subscribed)
            if channel == _HEARTBEATS:
                if kind == "subscribe":
                    self._heartbeats.add(connection.conn_id)
                else:
                    self._heartbeats.discard(connection.conn_id)
            return Control((self._subscriptions(connection.conn_id, current),))
        if not product_ids:
            return Control((_refusal(f"Failed to {kind}", f"channel {channel} needs product_ids"),))
        subscriptions: list[Subscription] = []
        for product_id in product_ids:
            key = self._key(channel, product_id)
            if key is None:
                return Control((_refusal(f"Failed to {kind}", f"{product_id} is not a valid product"),),
                               unknown=(product_id,) if kind == "subscribe" else ())
            subscriptions.append(Subscription(key, product_id))
        current = dict(connection.subscribed)
        if kind == "subscribe":
            for sub in subscriptions:
                current.setdefault(sub.key, sub.wire)
            return Control((self._subscriptions(connection.conn_id, current),), subscribe=tuple(subscriptions))
        dropped = tuple(sub.key for sub in subscriptions if sub.key in current)
        for key in dropped:
            del current[key]
        return Control((self._subscriptions(connection.conn_id, current),), unsubscribe=dropped)

    def _key(self, channel: str, product_id: str) -> StreamKey | None:
        market = self._by_id.get(self._alias.get(product_id, product_id))
        return None if market is None else StreamKey(channel, market.symbol)

    def _subscriptions(self, conn_id: str, current: Mapping[StreamKey, str]) -> str:
        """The ``subscriptions`` message: everything the connection is subscribed to."""
        listed: dict[str, list[str]] = {}
        for key, wire in current.items():
            listed.setdefault(key.channel, []).append(wire)
        if conn_id in self._heartbeats:
            listed[_HEARTBEATS] = [_HEARTBEATS]
        body = {channel: listed[channel] for channel in sorted(listed)}
        return _dumps({"channel": "subscriptions", "timestamp": _iso_ns(time.time_ns()),
                       "sequence_num": self._next_sequence(), "events": [{"subscriptions": body}]})

    def keepalive(self, connection: ConnectionInfo) -> str | None:
        if connection.conn_id not in self._heartbeats:
            return None
        wall = time.time_ns()
        uptime = time.monotonic() - self._started
        stamp = datetime.fromtimestamp(wall // 1_000_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        current = f"{stamp}.{wall % 1_000_000_000:09d} +0000 UTC m=+{uptime:.9f}"
        return _dumps({"channel": _HEARTBEATS, "timestamp": _iso_ns(wall), "sequence_num": self._next_sequence(),
                       "events": [{"current_time": current, "heartbeat_counter": int(uptime)}]})

    def closed(self, connection: ConnectionInfo) -> None:
        self._heartbeats.discard(connection.conn_id)
        self._numbers.pop(connection.conn_id, None)

    def renumber(self, conn_id: str, text: str) -> str:
        # Frames are rendered once for every subscriber: the connection's own number goes in
        # as it is written. sequence_num is near the start of every frame (after channel,
        # client_id and timestamp), so a 5 MB replayed snapshot is not searched through.
        at = text.find(_SEQUENCE_KEY, 0, 256)
        if at < 0:
            return text
        start = at + len(_SEQUENCE_KEY)
        end = start
        while end < len(text) and text[end].isdigit():
            end += 1
        number = self._numbers.get(conn_id, 0)
        self._numbers[conn_id] = number + 1
        return f"{text[:start]}{number}{text[end:]}"

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    # -- data -------------------------------------------------------------------------

    def renders(self, channel: str) -> bool:
        return channel in _SYNTHETIC_CHANNELS

    def snapshot_on_subscribe(self, key: StreamKey) -> bool:
        return key.channel in _SYNTHETIC_CHANNELS

    def render(self, key: StreamKey, market: Market, quote: Quote, *, snapshot: bool) -> str:
        ms = quote.time_ms or now_ms()
        p, s = market.price_decimals, market.size_decimals
        second = ms // 1000
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        self._sequence += 1
        self._saw(market, quote)
        if key.channel == "market_trades":
            return self._render_trades(market, snapshot=snapshot, ms=ms)
        if key.channel == "level2":
            return self._render_book(market, quote, snapshot=snapshot, ms=ms)
        # An f-string: this runs for every synthetic update (json.dumps is three times slower).
        return (f'{{"channel":"ticker","timestamp":"{self._second_text}.{ms % 1000:03d}000000Z",'
                f'"sequence_num":{self._sequence},"events":[{{"type":"{"snapshot" if snapshot else "update"}",'
                f'"tickers":[{{"type":"ticker","product_id":"{self._id_by_symbol[market.symbol]}",'
                f'"price":"{quote.last:.{p}f}","volume_24_h":"{quote.volume:.{s}f}",'
                f'"low_24_h":"{quote.low:.{p}f}","high_24_h":"{quote.high:.{p}f}",'
                f'"low_52_w":"{quote.low:.{p}f}","high_52_w":"{quote.high:.{p}f}",'
                f'"price_percent_chg_24_h":"{_percent(quote)}","best_bid":"{quote.bid:.{p}f}",'
                f'"best_ask":"{quote.ask:.{p}f}","best_bid_quantity":"{quote.bid_size:.{s}f}",'
                f'"best_ask_quantity":"{quote.ask_size:.{s}f}"}}]}}]}}')

    def _stamp(self, ms: int) -> str:
        return f"{self._second_text}.{ms % 1000:03d}000000Z"

    def _saw(self, market: Market, quote: Quote) -> None:
        """Note the walk's trade of a step, whichever channel the step was rendered for."""
        symbol = market.symbol
        if quote.trade_id <= self._last_trade.get(symbol, quote.trade_id - 1):
            return
        self._last_trade[symbol] = quote.trade_id
        p, s = market.price_decimals, market.size_decimals
        # Coinbase's side is the maker's: a trade at the bid (the buyer was the maker) is BUY.
        row = {"product_id": self._id_by_symbol.get(symbol, market.id), "trade_id": str(quote.trade_id),
               "price": f"{quote.last:.{p}f}", "size": f"{quote.last_size:.{s}f}",
               "time": _iso_us(quote.time_ms or now_ms()), "side": "BUY" if quote.buyer_maker else "SELL"}
        self._trades.setdefault(symbol, deque(maxlen=_TRADES_KEPT)).append(row)
        unsent = self._unsent.setdefault(symbol, [])
        unsent.append(row)
        if len(unsent) > _TRADES_KEPT:
            del unsent[0]

    def _render_trades(self, market: Market, *, snapshot: bool, ms: int) -> str:
        if snapshot:
            # The trades already sent to the other subscribers; the unsent ones follow in the next
            # update (all of them when nothing was sent yet: a snapshot is never empty).
            recent = list(self._trades.get(market.symbol, ()))
            sent = recent[:max(0, len(recent) - len(self._unsent.get(market.symbol, ())))]
            if not sent:
                sent = recent
                self._unsent.pop(market.symbol, None)
            rows = sent[-_SNAPSHOT_TRADES:]
        else:
            rows = self._unsent.pop(market.symbol, [])
        trades = ",".join(_dumps(row) for row in reversed(rows))
        return (f'{{"channel":"market_trades","client_id":"","timestamp":"{self._stamp(ms)}",'
                f'"sequence_num":{self._sequence},"events":[{{"type":"{"snapshot" if snapshot else "update"}",'
                f'"trades":[{trades}]}}]}}')

    def _book_of(self, market: Market, quote: Quote) -> SyntheticBook:
        book = self._books.get(market.symbol)
        if book is None:
            book = self._books[market.symbol] = SyntheticBook(market, quote, BOOK_DEPTH)
        return book

    def _render_book(self, market: Market, quote: Quote, *, snapshot: bool, ms: int) -> str:
        book = self._book_of(market, quote)
        book.apply(quote)
        if snapshot:
            # Changes not yet sent to the other subscribers stay pending for the next update.
            bids, asks = book.levels(True), book.levels(False)
        else:
            bids, asks = book.take()
        event_time = _iso_us(ms)
        updates = ",".join(
            f'{{"side":"{side}","event_time":"{event_time}","price_level":"{px}","new_quantity":"{sz}"}}'
            for side, levels in (("bid", bids), ("offer", asks)) for px, sz in levels)
        return (f'{{"channel":"l2_data","client_id":"","timestamp":"{self._stamp(ms)}",'
                f'"sequence_num":{self._sequence},"events":[{{"type":"{"snapshot" if snapshot else "update"}",'
                f'"product_id":"{self._id_by_symbol.get(market.symbol, market.id)}","updates":[{updates}]}}]}}')

    def recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        try:
            frame = json.loads(message.text)
        except ValueError:
            return None
        if not isinstance(frame, dict):
            return None
        channel = _SUBSCRIBED_AS.get(str(frame.get("channel")))
        product_id = _first_product(frame.get("events"))
        if channel is None or product_id is None:
            return None  # subscriptions and heartbeats: the emulator sends its own
        key = self._key(channel, product_id)
        return None if key is None else (key, product_id, message.text)

    def observe(self, key: StreamKey, text: str) -> None:
        if key.channel in ("market_trades", "level2"):
            self._observe_trades_or_book(key, text)
            return
        if key.channel not in ("ticker", "ticker_batch"):
            return
        try:
            frame = json.loads(text)
            stamp = str(frame.get("timestamp", ""))
            tickers = [ticker for event in frame["events"] for ticker in event.get("tickers", ())]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        for ticker in tickers:
            if isinstance(ticker, dict):
                market = self._by_id.get(str(ticker.get("product_id")))
                if market is not None:
                    self._replayed[market.symbol] = (ticker, stamp)

    def _observe_trades_or_book(self, key: StreamKey, text: str) -> None:
        try:
            frame = json.loads(text)
            events = [event for event in frame["events"] if isinstance(event, dict)]
        except (ValueError, KeyError, TypeError):
            return
        stamp = str(frame.get("timestamp", ""))
        for event in events:
            if key.channel == "market_trades":
                trades = self._replayed_trades.setdefault(key.symbol, {})
                for row in event.get("trades") or ():
                    if isinstance(row, dict):
                        trades.setdefault(str(row.get("trade_id")), row)
                continue
            market = self._by_id.get(self._alias.get(str(event.get("product_id")), str(event.get("product_id"))))
            if market is None:
                continue
            if event.get("type") == "snapshot" or market.symbol not in self._replayed_books:
                self._replayed_books[market.symbol] = ({}, {}, stamp)
            bids, asks, _ = self._replayed_books[market.symbol]
            for update in event.get("updates") or ():
                if not isinstance(update, dict):
                    continue
                side = bids if update.get("side") == "bid" else asks
                price, quantity = str(update.get("price_level")), str(update.get("new_quantity"))
                if _float(quantity) == 0.0:
                    side.pop(price, None)
                else:
                    side[price] = quantity
            self._replayed_books[market.symbol] = (bids, asks, stamp)

    def corrupt(self, fault: Fault, text: str) -> str:
        if fault is Fault.TRUNCATED:
            return text[: max(1, len(text) // 2)]
        if fault is Fault.MALFORMED:
            return text.replace('":', '"=', 1)
        frame = json.loads(text)
        events = frame.get("events")
        event = events[0] if isinstance(events, list) and events and isinstance(events[0], dict) else None
        if event is None:
            frame.pop("channel", None)
            return _dumps(frame)
        rows = next((event[name] for name in ("tickers", "trades", "updates", "candles")
                     if isinstance(event.get(name), list) and event[name]), None)
        row = rows[0] if rows is not None and isinstance(rows[0], dict) else event
        if fault is Fault.MISSING_FIELDS:
            if "best_bid" in row or "price" in row:
                # Without its product ccxt would skip the ticker unseen: drop its prices instead,
                # which the normaliser reports as missing.
                for name in _TICKER_PRICES:
                    row.pop(name, None)
            else:
                row.pop("product_id", None)
                event.pop("product_id", None)
        else:
            field = next((name for name in ("best_bid", "price", "price_level", "close") if name in row), None)
            if field is not None:
                row[field] = "abc"
        return _dumps(frame)


def _dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def _json(body: object) -> web.Response:
    return web.Response(text=_dumps(body), content_type="application/json")


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.Response(text=_dumps({"error": code, "error_details": detail, "message": detail}),
                        status=status, content_type="application/json")


def _not_found(product_id: str) -> web.Response:
    return _error(404, "NOT_FOUND", f"ProductID {product_id} could not be found")


def _refusal(message: str, reason: str) -> str:
    return _dumps({"type": "error", "message": message, "reason": reason})


def _iso(ms: int, digits: int = 3) -> str:
    """``2026-08-09T21:05:48.123Z`` (``digits`` of fraction; 0: none)."""
    base = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}Z" if digits == 0 else f"{base}.{ms % 1000:03d}Z"


def _iso_ns(ns: int) -> str:
    """``2026-08-09T21:05:48.228846629Z``, as Coinbase stamps its websocket messages."""
    base = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % 1_000_000_000:09d}Z"


def _iso_us(ms: int) -> str:
    """``2026-08-09T21:05:48.167000Z``, as Coinbase stamps trades and book events."""
    base = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ms % 1000:03d}000Z"


def _window(rows: Iterable[dict[str, Any]], start: float | None, end: float | None,
            limit: int) -> list[dict[str, Any]]:
    """Trades between ``start`` and ``end`` (epoch seconds), newest first, at most ``limit``."""
    picked = []
    for row in rows:
        seconds = _seconds(str(row.get("time", "")))
        if (start is None or (seconds is not None and seconds >= start)) and (
                end is None or (seconds is not None and seconds <= end)):
            picked.append(row)
    picked.sort(key=lambda row: int(row["trade_id"]) if str(row.get("trade_id", "")).isdigit() else 0,
                reverse=True)
    return [dict(row) for row in picked[:limit]]


def _seconds(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _percent(quote: Quote) -> str:
    return f"{(quote.last - quote.open) / quote.open * 100.0:.8f}"


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _decimals(increment: str) -> int:
    """Decimals of a price or size increment (``"0.01"`` -> 2, ``"1"`` -> 0)."""
    return len(increment.partition(".")[2].rstrip("0"))


def _first_product(events: Any) -> str | None:
    """The product of a frame's first event: its own ``product_id`` (``l2_data``) or its first
    ticker's, trade's or candle's."""
    if not isinstance(events, list) or not events or not isinstance(events[0], dict):
        return None
    event = events[0]
    if isinstance(event.get("product_id"), str):
        return str(event["product_id"])
    for name in ("tickers", "trades", "candles"):
        rows = event.get(name)
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            found = rows[0].get("product_id")
            return found if isinstance(found, str) and found else None
    return None


def _recorded_rows(recording: Recording) -> list[dict[str, Any]]:
    body = recording.body(_PRODUCTS)
    if body is None:
        return []
    rows = json.loads(body).get("products", [])
    return [row for row in rows if isinstance(row, dict) and row.get("product_id")]


def _code(currency_id: str) -> str:
    return _COMMON_CURRENCIES.get(currency_id, currency_id)


def _recorded_market(row: Mapping[str, Any]) -> Market | None:
    base_id, quote_id = row.get("base_currency_id"), row.get("quote_currency_id")
    if not base_id or not quote_id or str(row.get("product_type", "SPOT")).upper() != "SPOT":
        return None
    base, quote = _code(str(base_id)), _code(str(quote_id))
    price = _float(row.get("price")) or 1.0
    price_decimals = _decimals(str(row.get("price_increment") or row.get("quote_increment") or "0.01"))
    size_decimals = _decimals(str(row.get("base_increment") or "0.00000001"))
    return Market(f"{base}/{quote}", str(row["product_id"]), base, quote, MarketKind.SPOT, price_decimals,
                  size_decimals, price)


def _product_row(base: str, quote: str, tick: str, step: str) -> dict[str, Any]:
    """A synthetic /market/products row, with the recorded rows' fields (prices filled in later)."""
    product_id = f"{base}-{quote}"
    return {
        "product_id": product_id, "price": "", "price_percentage_change_24h": "", "volume_24h": "",
        "volume_percentage_change_24h": "0", "base_increment": step, "quote_increment": tick,
        "quote_min_size": "1", "quote_max_size": "150000000", "base_min_size": step, "base_max_size": "100000000",
        "base_name": _FIAT.get(base) or _NAMES.get(base, base), "quote_name": _FIAT.get(quote) or _NAMES.get(quote, quote),
        "watched": False, "is_disabled": False, "new": False, "status": "online", "cancel_only": False,
        "limit_only": False, "post_only": False, "trading_disabled": False, "auction_mode": False,
        "product_type": "SPOT", "quote_currency_id": quote, "base_currency_id": base,
        "fcm_trading_session_details": None, "mid_market_price": "", "alias": "", "alias_to": [],
        "base_display_symbol": base, "quote_display_symbol": quote, "view_only": False, "price_increment": tick,
        "display_name": product_id, "product_venue": "CBE", "approximate_quote_24h_volume": "",
        "new_at": "2023-01-01T00:00:00Z", "market_cap": "", "base_cbrn": "", "quote_cbrn": "", "product_cbrn": "",
        "icon_color": "", "icon_url": "", "display_name_overwrite": "", "is_alpha_testing": False,
        "about_description": "", "best_bid_price": "", "best_ask_price": "", "high_24h": "", "low_24h": "",
    }


