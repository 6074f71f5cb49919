"""Binance spot: REST ``/api/v3`` market data and websocket streams, as ccxt.pro uses them.

REST (all GET): ``/api/v3/exchangeInfo``, ``/api/v3/ping``, ``/api/v3/time``,
``/api/v3/ticker/24hr``, ``/api/v3/ticker/bookTicker``, ``/api/v3/ticker/price`` (each
with ``symbol=``, ``symbols=["A","B"]`` or nothing for all), and empty-market
``/fapi/v1/exchangeInfo`` and ``/dapi/v1/exchangeInfo`` so that a ccxt left with its
default ``fetchMarkets`` types still loads.

Websockets: raw streams on ``/ws`` and ``/ws/<stream>[/<stream>...]`` (ccxt connects to
``/ws/<n>`` and subscribes with messages), combined streams on ``/stream?streams=a/b``
(frames wrapped as ``{"stream":...,"data":...}``). Control messages:
``{"method":"SUBSCRIBE"|"UNSUBSCRIBE","params":[...],"id":N}`` answered with
``{"result":null,"id":N}``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``, ``GET_PROPERTY``.
Limits as documented by Binance: 5 incoming messages (text, ping or pong frames) per
second per connection, beyond which the connection is closed; 1024 streams per connection.
The server sends a ping frame every ``ping_interval`` seconds.

Synthetic channels: ``bookTicker`` (no event time, like the real one), ``ticker``
(``24hrTicker``), ``miniTicker`` (``24hrMiniTicker``), ``trade``, ``aggTrade`` and the
diff depth stream ``depth@100ms`` (``depth`` and ``depth@1000ms`` are the same stream
here, paced by the emulator's rate, not by the name's interval).

Trades are at the touch: a buy at the ask, a sell at the bid (``m`` true), of the walk's
trade size. Each rendered trade frame is a new trade with the next id of its market
(``t``; ``aggTrade`` has ``a == f == l``, one trade each), so a stream sees consecutive
ids; a market streaming both ``trade`` and ``aggTrade`` splits its trades between the two.
The book has :data:`BOOK_LEVELS` levels a side: the top is the ticker's best bid and ask
(with their sizes), deeper levels one tick further each. ``depthUpdate`` events carry every
level of the new book plus zero-quantity removals of every price published since the
previous event (on the stream or in a REST snapshot), with ``U`` = the previous event's
``u`` + 1 and ``u`` = the walk's update id, so ccxt's sequence check
(``U == previous u + 1``, and ``U <= lastUpdateId + 1 <= u`` against the snapshot) holds.
REST ``/api/v3/depth`` (the snapshot ccxt fetches after subscribing; ``lastUpdateId`` is
the walk's update id) answers the same book; ``/api/v3/trades``, ``/api/v3/historicalTrades``
(``fromId``) and ``/api/v3/aggTrades`` (``fromId``, ``startTime``, ``endTime``; what ccxt's
``fetch_trades(since=...)`` calls) answer the last :data:`TRADE_HISTORY` trades streamed.

Replay: frames are sent verbatim. The recorded ``depth@100ms`` stream is served to a
subscription of any ``depth`` speed: a replay serves the depth the recording holds
(Binance's diff stream has no depth; the REST snapshot is the recorded one, at its recorded
``limit``, whatever ``limit`` is asked). ``/api/v3/depth`` answers the latest recorded
snapshot of the market whose ``lastUpdateId`` the replay has reached (the first one before
that). Recorded ``aggTrade`` frames are served verbatim to ``aggTrade`` subscribers (ccxt's
``watchTrades.name`` option) and, transcoded to ``trade`` events (``t`` = the recorded
``f``; an aggregate of several trades (``f < l``) is sent as one trade ``t = f``), to
``trade`` subscribers (ccxt's default). The REST trade endpoints answer the trades replayed
so far.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from aiohttp import web

from flight_md.emulator.dialect import ConnectionInfo, Control, Dialect, RestHandler, Subscription, now_ms
from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, MarketKind, StreamKey
from flight_md.emulator.recording import RecordedMessage, Recording
from flight_md.emulator.synthetic import PriceWalk, Quote

__all__ = ["BOOK_LEVELS", "MAX_STREAMS", "TRADE_HISTORY", "BinanceDialect"]

MAX_STREAMS = 1024
_CONTROL_RATE_LIMIT = 5
_ENVELOPE = re.compile(r'\{"stream":"([^"]+)","data":')
_STREAM_NAME = re.compile(r"^(?:[a-z0-9]+@[A-Za-z0-9_@]+|![A-Za-z0-9_@]+)$")
_DEPTH = "depth@100ms"  # the channel of every diff depth stream: what ccxt subscribes and Binance records
_SYNTHETIC_CHANNELS = frozenset({"bookTicker", "ticker", "miniTicker", "trade", "aggTrade", _DEPTH})
_DEPTH_CHANNELS = frozenset({"depth", "depth@100ms", "depth@1000ms"})  # one stream, whatever the speed
BOOK_LEVELS: Final = 20
"""Levels a side of a synthetic book."""
TRADE_HISTORY: Final = 1000
"""Trades per market the REST trade endpoints remember (Binance's largest ``limit``)."""
_DEFAULT_TRADES_LIMIT = 500
_JSON = "application/json;charset=UTF-8"
_RAW_EVENTS = {"24hrTicker": "ticker", "24hrMiniTicker": "miniTicker", "trade": "trade",
               "aggTrade": "aggTrade", "depthUpdate": _DEPTH}  # event type of a raw-stream frame -> its channel


class _Trade(NamedTuple):
    """A trade as the REST trade endpoints answer it (prices and sizes as sent)."""

    id: int
    price: str
    qty: str
    time: int
    buyer_maker: bool
    agg_id: int  # the aggregate trade id (a synthetic aggregate is one trade: the same id)


def _f8(value: float) -> str:
    return f"{value:.8f}"


class BinanceDialect(Dialect):
    """Binance spot public market data."""

    name = "binance"
    control_rate_limit = _CONTROL_RATE_LIMIT
    server_pings = True
    synthetic_channels = _SYNTHETIC_CHANNELS

    def __init__(self, markets: tuple[Market, ...], walks: Mapping[str, PriceWalk], recording: Recording | None) -> None:
        for market in markets:
            if market.kind is not MarketKind.SPOT:
                raise ValueError(f"binance emulator lists spot markets only; got {market.symbol!r}")
        super().__init__(markets, walks, recording)
        self._by_id = {market.id: market for market in self.markets}
        self._by_lower_id = {market.id.lower(): market for market in self.markets}
        self._replayed_books: dict[str, dict[str, Any]] = {}
        self._replayed_tickers: dict[str, dict[str, Any]] = {}
        # Synthetic depth: the last u sent (or lastUpdateId served) per market, and the prices
        # published since the last event, which the next event removes unless still quoted.
        self._depth_u: dict[str, int] = {}
        self._published: dict[str, tuple[set[str], set[str]]] = {}
        self._next_trade: dict[str, int] = {}
        self._trades: dict[str, deque[_Trade]] = {}  # by market id, synthetic or replayed
        self._replayed_u: dict[str, int] = {}  # by market id: the last depth u replayed
        self._snapshots: dict[str, list[tuple[int, str]]] = {}
        self._agg_of: dict[tuple[str, int], int] = {}  # (market id, trade id) -> recorded aggregate id
        if recording is not None:
            for message in recording.messages:
                if '"e":"aggTrade"' in message.text:
                    mapped = self.recorded_frame(message)
                    try:
                        data = json.loads(mapped[2]) if mapped is not None else {}
                        self._agg_of[(data["s"], int(data["f"]))] = int(data["a"])
                    except (ValueError, KeyError, TypeError):
                        continue
            for response in recording.http:
                market_id = dict(response.query).get("symbol")
                if response.path == "/api/v3/depth" and market_id:
                    try:
                        last_update_id = int(json.loads(response.body)["lastUpdateId"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    self._snapshots.setdefault(market_id, []).append((last_update_id, response.body))

    # -- markets and REST -------------------------------------------------------------

    def recorded_markets(self, recording: Recording) -> tuple[Market, ...]:
        body = recording.body("/api/v3/exchangeInfo")
        if body is None:
            raise ValueError(f"{recording.source}: no /api/v3/exchangeInfo response recorded")
        markets = []
        for entry in json.loads(body)["symbols"]:
            try:
                market = Market.from_symbol(f"{entry['baseAsset']}/{entry['quoteAsset']}")
            except ValueError:
                continue  # an asset name the emulator cannot key; its streams are still replayed by id
            markets.append(market)
        return tuple(markets)

    def rest_routes(self) -> list[tuple[str, RestHandler]]:
        return [
            ("/api/v3/exchangeInfo", self._exchange_info),
            ("/api/v3/ping", self._ping),
            ("/api/v3/time", self._time),
            ("/api/v3/ticker/24hr", self._ticker_24hr),
            ("/api/v3/ticker/bookTicker", self._book_ticker),
            ("/api/v3/ticker/price", self._ticker_price),
            ("/api/v3/depth", self._depth),
            ("/api/v3/trades", self._recent_trades),
            ("/api/v3/historicalTrades", self._historical_trades),
            ("/api/v3/aggTrades", self._agg_trades),
            ("/fapi/v1/exchangeInfo", self._empty_exchange_info),
            ("/dapi/v1/exchangeInfo", self._empty_exchange_info),
        ]

    def rest_error(self, status: int) -> str:
        if status == 429:
            return ('{"code":-1003,"msg":"Too many requests; current limit of IP is 6000 requests per minute. '
                    'Please use WebSocket Streams for live updates to avoid polling the API."}')
        if status == 404:
            return '{"code":-1000,"msg":"Unknown path."}'
        return '{"code":-1001,"msg":"Internal error; unable to process your request. Please try again."}'

    async def _exchange_info(self, request: web.Request) -> web.StreamResponse:
        if self.recording is not None and not ({"symbol", "symbols"} & request.query.keys()):
            body = self.recording.body("/api/v3/exchangeInfo")
            assert body is not None  # checked when the markets were read
            return web.Response(text=body, content_type="application/json")
        selected = self._select(request)
        if isinstance(selected, web.Response):
            return selected
        if self.recording is not None:
            body = self.recording.body("/api/v3/exchangeInfo")
            assert body is not None
            info = json.loads(body)
            wanted = {market.id for market in selected}
            info["symbols"] = [entry for entry in info["symbols"] if entry["symbol"] in wanted]
            return _json(info)
        return _json({
            "timezone": "UTC",
            "serverTime": now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(market) for market in selected],
        })

    async def _empty_exchange_info(self, request: web.Request) -> web.StreamResponse:
        return _json({"timezone": "UTC", "serverTime": now_ms(), "rateLimits": [], "exchangeFilters": [],
                      "assets": [], "symbols": []})

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return _json({})

    async def _time(self, request: web.Request) -> web.StreamResponse:
        return _json({"serverTime": now_ms()})

    async def _ticker_24hr(self, request: web.Request) -> web.StreamResponse:
        return self._tickers(request, self._ticker_row)

    async def _book_ticker(self, request: web.Request) -> web.StreamResponse:
        return self._tickers(request, self._book_row)

    async def _ticker_price(self, request: web.Request) -> web.StreamResponse:
        return self._tickers(request, self._price_row)

    def _tickers(self, request: web.Request, row: Any) -> web.Response:
        selected = self._select(request)
        if isinstance(selected, web.Response):
            return selected
        rows = [row(market) for market in selected]
        return _json(rows[0] if "symbol" in request.query else rows)

    def _one(self, request: web.Request) -> Market | web.Response:
        """The market named by the mandatory ``symbol=``; an error response otherwise."""
        market_id = request.query.get("symbol")
        if not market_id:
            return _json({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, "
                                                "or malformed."}, 400)
        market = self._by_id.get(market_id)
        if market is None:
            return _json({"code": -1121, "msg": "Invalid symbol."}, 400)
        return market

    async def _depth(self, request: web.Request) -> web.StreamResponse:
        market = self._one(request)
        if isinstance(market, web.Response):
            return market
        limit = _int_param(request, "limit", 100)
        if limit is None or not 1 <= limit <= 5000:
            return _json({"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}, 400)
        if self.recording is not None:
            snapshots = self._snapshots.get(market.id)
            if not snapshots:
                return _json({"lastUpdateId": self._replayed_u.get(market.id, 0), "bids": [], "asks": []})
            reached = self._replayed_u.get(market.id, -1)
            body = max((snapshot for snapshot in snapshots if snapshot[0] <= reached), default=snapshots[0])[1]
            return web.Response(text=body, content_type="application/json")
        quote = self.walks[market.symbol].quote
        bids, asks = _book_levels(market, quote, min(limit, BOOK_LEVELS))
        published = self._published.setdefault(market.symbol, (set(), set()))
        published[0].update(price for price, _ in bids)
        published[1].update(price for price, _ in asks)
        # The next event must start at lastUpdateId + 1 at the latest.
        self._depth_u.setdefault(market.symbol, quote.update_id)
        return _json({"lastUpdateId": quote.update_id, "bids": [list(level) for level in bids],
                      "asks": [list(level) for level in asks]})

    def _market_trades(self, request: web.Request) -> tuple[list[_Trade], int] | web.Response:
        market = self._one(request)
        if isinstance(market, web.Response):
            return market
        limit = _int_param(request, "limit", _DEFAULT_TRADES_LIMIT)
        if limit is None or not 1 <= limit <= 1000:
            return _json({"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}, 400)
        return list(self._trades.get(market.id, ())), limit

    async def _recent_trades(self, request: web.Request) -> web.StreamResponse:
        found = self._market_trades(request)
        if isinstance(found, web.Response):
            return found
        trades, limit = found
        return _json([_trade_row(trade) for trade in trades[-limit:]])

    async def _historical_trades(self, request: web.Request) -> web.StreamResponse:
        found = self._market_trades(request)
        if isinstance(found, web.Response):
            return found
        trades, limit = found
        from_id = _int_param(request, "fromId", None)
        if from_id is None:
            return _json([_trade_row(trade) for trade in trades[-limit:]])
        return _json([_trade_row(trade) for trade in trades if trade.id >= from_id][:limit])

    async def _agg_trades(self, request: web.Request) -> web.StreamResponse:
        found = self._market_trades(request)
        if isinstance(found, web.Response):
            return found
        trades, limit = found
        from_id = _int_param(request, "fromId", None)
        start = _int_param(request, "startTime", None)
        end = _int_param(request, "endTime", None)
        if from_id is not None:
            trades = [trade for trade in trades if trade.agg_id >= from_id][:limit]
        elif start is not None or end is not None:
            low, high = start if start is not None else -1, end if end is not None else 2**63
            trades = [trade for trade in trades if low <= trade.time <= high][:limit]
        else:
            trades = trades[-limit:]
        return _json([{"a": trade.agg_id, "p": trade.price, "q": trade.qty, "f": trade.id, "l": trade.id,
                       "T": trade.time, "m": trade.buyer_maker, "M": True} for trade in trades])

    def _select(self, request: web.Request) -> list[Market] | web.Response:
        """Markets named by ``symbol=`` or ``symbols=[...]``, all if neither; an error response otherwise."""
        if "symbol" in request.query:
            names = [request.query["symbol"]]
        elif "symbols" in request.query:
            try:
                names = json.loads(request.query["symbols"])
                if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                    raise ValueError(names)
            except ValueError:
                return _json({"code": -1100, "msg": "Illegal characters found in parameter 'symbols'."}, 400)
        else:
            return list(self.markets)
        selected = [self._by_id.get(name) for name in names]
        if not all(selected):
            return _json({"code": -1121, "msg": "Invalid symbol."}, 400)
        return [market for market in selected if market is not None]

    def _ticker_row(self, market: Market) -> dict[str, Any]:
        if self.recording is not None:
            return self._replayed_row(market)
        quote = self.walks[market.symbol].quote
        time = now_ms()
        change = quote.last - quote.open
        return {
            "symbol": market.id,
            "priceChange": _f8(change),
            "priceChangePercent": f"{100.0 * change / quote.open:.3f}",
            "weightedAvgPrice": _f8(quote.quote_volume / quote.volume if quote.volume else quote.last),
            "prevClosePrice": _f8(quote.open),
            "lastPrice": _f8(quote.last),
            "lastQty": _f8(quote.last_size),
            "bidPrice": _f8(quote.bid),
            "bidQty": _f8(quote.bid_size),
            "askPrice": _f8(quote.ask),
            "askQty": _f8(quote.ask_size),
            "openPrice": _f8(quote.open),
            "highPrice": _f8(quote.high),
            "lowPrice": _f8(quote.low),
            "volume": _f8(quote.volume),
            "quoteVolume": _f8(quote.quote_volume),
            "openTime": time - 86_400_000,
            "closeTime": time,
            "firstId": quote.trade_id - 1000,
            "lastId": quote.trade_id,
            "count": 1001,
        }

    def _replayed_row(self, market: Market) -> dict[str, Any]:
        row: dict[str, Any] = {"symbol": market.id}
        ticker = self._replayed_tickers.get(market.id)
        if ticker is not None:
            for wire, rest in (("p", "priceChange"), ("P", "priceChangePercent"), ("w", "weightedAvgPrice"),
                               ("x", "prevClosePrice"), ("c", "lastPrice"), ("Q", "lastQty"), ("b", "bidPrice"),
                               ("B", "bidQty"), ("a", "askPrice"), ("A", "askQty"), ("o", "openPrice"),
                               ("h", "highPrice"), ("l", "lowPrice"), ("v", "volume"), ("q", "quoteVolume"),
                               ("O", "openTime"), ("C", "closeTime"), ("F", "firstId"), ("L", "lastId"),
                               ("n", "count")):
                if wire in ticker:
                    row[rest] = ticker[wire]
        book = self._replayed_books.get(market.id)
        if book is not None:
            row.update(bidPrice=book.get("b"), bidQty=book.get("B"), askPrice=book.get("a"), askQty=book.get("A"))
        return row

    def _book_row(self, market: Market) -> dict[str, Any]:
        if self.recording is not None:
            row = self._replayed_row(market)
            return {key: row.get(key) for key in ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")}
        quote = self.walks[market.symbol].quote
        return {"symbol": market.id, "bidPrice": _f8(quote.bid), "bidQty": _f8(quote.bid_size),
                "askPrice": _f8(quote.ask), "askQty": _f8(quote.ask_size)}

    def _price_row(self, market: Market) -> dict[str, Any]:
        if self.recording is not None:
            return {"symbol": market.id, "price": self._replayed_row(market).get("lastPrice")}
        return {"symbol": market.id, "price": _f8(self.walks[market.symbol].quote.last)}

    # -- websockets -------------------------------------------------------------------

    def ws_paths(self) -> tuple[str, ...]:
        return ("/ws", "/ws/{streams:.*}", "/stream")

    def on_open(self, path: str, query: Mapping[str, str]) -> tuple[tuple[Subscription, ...], bool]:
        if path == "/stream":
            names = query.get("streams", "").split("/")
            return tuple(self._subscription(name) for name in names if _STREAM_NAME.match(name)), True
        tail = path.removeprefix("/ws").strip("/")
        # ccxt connects to /ws/<n>: a path segment that is not a stream name is ignored.
        return tuple(self._subscription(name) for name in tail.split("/") if _STREAM_NAME.match(name)), False

    def wrap(self, wire: str, text: str) -> str:
        return f'{{"stream":"{wire}","data":{text}}}'

    def control(self, connection: ConnectionInfo, text: str) -> Control:
        try:
            message = json.loads(text)
        except ValueError as error:
            return _error(3, f"Invalid JSON: {error}", None)
        if not isinstance(message, dict):
            return _error(3, "Invalid JSON: expected an object", None)
        request_id = message.get("id")
        if request_id is not None and not isinstance(request_id, (int, str)):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        method = message.get("method")
        params = message.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(name, str) for name in params):
                return _error(1, "Invalid value type: expected array of strings", request_id)
            bad = [name for name in params if not _STREAM_NAME.match(name)]
            if bad:
                return _error(2, f"Invalid request: invalid stream name {bad[0]!r}", request_id)
            reply = (json.dumps({"result": None, "id": request_id}, separators=(",", ":")),)
            subscriptions = tuple(self._subscription(name) for name in params)
            if method == "UNSUBSCRIBE":
                return Control(reply, unsubscribe=tuple(sub.key for sub in subscriptions))
            added = {sub.key for sub in subscriptions} - connection.subscribed.keys()
            if len(connection.subscribed) + len(added) > MAX_STREAMS:
                return _error(2, f"Invalid request: too many streams; at most {MAX_STREAMS} per connection",
                              request_id)
            return Control(reply, subscribe=subscriptions)
        if method == "LIST_SUBSCRIPTIONS":
            result = sorted(connection.subscribed.values())
            return Control((json.dumps({"result": result, "id": request_id}, separators=(",", ":")),))
        if method == "SET_PROPERTY":
            return Control((json.dumps({"result": None, "id": request_id}, separators=(",", ":")),))
        if method == "GET_PROPERTY":
            return Control((json.dumps({"result": False, "id": request_id}, separators=(",", ":")),))
        return _error(2, f"Invalid request: unknown variant {method!r}, expected one of SUBSCRIBE, UNSUBSCRIBE, "
                         "LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY", request_id)

    def _subscription(self, name: str) -> Subscription:
        if name.startswith("!"):
            return Subscription(StreamKey(name[1:], "*"), name)
        market_id, _, channel = name.partition("@")
        if channel in _DEPTH_CHANNELS:
            channel = _DEPTH
        market = self._by_lower_id.get(market_id)
        return Subscription(StreamKey(channel, market.symbol if market else market_id.upper()), name)

    # -- data -------------------------------------------------------------------------

    def renders(self, channel: str) -> bool:
        return channel in _SYNTHETIC_CHANNELS

    def render(self, key: StreamKey, market: Market, quote: Quote, *, snapshot: bool) -> str:
        channel = key.channel
        if channel == "bookTicker":
            return (f'{{"u":{quote.update_id},"s":"{market.id}","b":"{quote.bid:.8f}","B":"{quote.bid_size:.8f}",'
                    f'"a":"{quote.ask:.8f}","A":"{quote.ask_size:.8f}"}}')
        if channel == "ticker":
            change = quote.last - quote.open
            vwap = quote.quote_volume / quote.volume if quote.volume else quote.last
            return (f'{{"e":"24hrTicker","E":{quote.time_ms},"s":"{market.id}","p":"{change:.8f}",'
                    f'"P":"{100.0 * change / quote.open:.3f}","w":"{vwap:.8f}","x":"{quote.open:.8f}",'
                    f'"c":"{quote.last:.8f}","Q":"{quote.last_size:.8f}","b":"{quote.bid:.8f}",'
                    f'"B":"{quote.bid_size:.8f}","a":"{quote.ask:.8f}","A":"{quote.ask_size:.8f}",'
                    f'"o":"{quote.open:.8f}","h":"{quote.high:.8f}","l":"{quote.low:.8f}",'
                    f'"v":"{quote.volume:.8f}","q":"{quote.quote_volume:.8f}","O":{quote.time_ms - 86_400_000},'
                    f'"C":{quote.time_ms},"F":{quote.trade_id - 1000},"L":{quote.trade_id},"n":1001}}')
        if channel == "miniTicker":
            return (f'{{"e":"24hrMiniTicker","E":{quote.time_ms},"s":"{market.id}","c":"{quote.last:.8f}",'
                    f'"o":"{quote.open:.8f}","h":"{quote.high:.8f}","l":"{quote.low:.8f}",'
                    f'"v":"{quote.volume:.8f}","q":"{quote.quote_volume:.8f}"}}')
        if channel == _DEPTH:
            return self._depth_update(market, quote)
        trade_id = self._next_trade.get(market.symbol, quote.trade_id)
        self._next_trade[market.symbol] = trade_id + 1
        price, qty = f"{quote.last:.8f}", f"{quote.last_size:.8f}"
        self._remember(market.id, _Trade(trade_id, price, qty, quote.time_ms, quote.buyer_maker, trade_id))
        maker = "true" if quote.buyer_maker else "false"
        if channel == "trade":
            return (f'{{"e":"trade","E":{quote.time_ms},"s":"{market.id}","t":{trade_id},'
                    f'"p":"{price}","q":"{qty}","T":{quote.time_ms},"m":{maker},"M":true}}')
        return (f'{{"e":"aggTrade","E":{quote.time_ms},"s":"{market.id}","a":{trade_id},'
                f'"p":"{price}","q":"{qty}","f":{trade_id},"l":{trade_id},'
                f'"T":{quote.time_ms},"m":{maker},"M":true}}')

    def _depth_update(self, market: Market, quote: Quote) -> str:
        bids, asks = _book_levels(market, quote, BOOK_LEVELS)
        published_bids, published_asks = self._published.get(market.symbol, (set(), set()))
        bid_prices = {price for price, _ in bids}
        ask_prices = {price for price, _ in asks}
        removed_bids = [(price, "0.00000000") for price in sorted(published_bids - bid_prices, key=float)]
        removed_asks = [(price, "0.00000000") for price in sorted(published_asks - ask_prices, key=float)]
        self._published[market.symbol] = (bid_prices, ask_prices)
        first = self._depth_u.get(market.symbol, quote.update_id - 1) + 1
        self._depth_u[market.symbol] = quote.update_id
        return (f'{{"e":"depthUpdate","E":{quote.time_ms},"s":"{market.id}","U":{first},"u":{quote.update_id},'
                f'"b":{_levels_json(bids + removed_bids)},"a":{_levels_json(asks + removed_asks)}}}')

    def _remember(self, market_id: str, trade: _Trade) -> None:
        trades = self._trades.get(market_id)
        if trades is None:
            trades = self._trades[market_id] = deque(maxlen=TRADE_HISTORY)
        if not trades or trade.id > trades[-1].id:
            trades.append(trade)

    def recorded_frames(self, message: RecordedMessage) -> tuple[tuple[StreamKey, str, str], ...]:
        mapped = self.recorded_frame(message)
        if mapped is None:
            return ()
        key, wire, text = mapped
        if key.channel != "aggTrade":
            return (mapped,)
        # The recording holds aggregate trades only; ccxt's default trade stream gets them as trades.
        try:
            data = json.loads(text)
            trade = (f'{{"e":"trade","E":{data["E"]},"s":"{data["s"]}","t":{data["f"]},'
                     f'"p":{json.dumps(data["p"])},"q":{json.dumps(data["q"])},"T":{data["T"]},'
                     f'"m":{json.dumps(data["m"])},"M":{json.dumps(data.get("M", True))}}}')
        except (ValueError, KeyError, TypeError):
            return (mapped,)
        return mapped, (StreamKey("trade", key.symbol), wire.replace("@aggTrade", "@trade"), trade)

    def recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        match = _ENVELOPE.match(message.text)
        if match is None:
            return self._raw_recorded_frame(message)
        if not message.text.endswith("}"):
            return None
        # The envelope is {"stream":...,"data":<payload>}: the payload is the text up to
        # the envelope's closing brace, kept byte for byte.
        payload = message.text[match.end():-1]
        subscription = self._subscription(match.group(1))
        return subscription.key, subscription.wire, payload

    def _raw_recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        """A frame recorded on a raw ``/ws`` connection (``flight-md record`` through ccxt):
        no envelope, so its stream is read from the payload (``e`` and ``s``; bookTicker has no
        ``e`` but ``u``, ``b`` and ``a``)."""
        try:
            data = json.loads(message.text)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("s"), str):
            return None  # a control reply such as {"result":null,"id":1}
        event = data.get("e")
        if event is None and {"u", "b", "a"} <= data.keys():
            channel = "bookTicker"
        elif isinstance(event, str) and event in _RAW_EVENTS:
            channel = _RAW_EVENTS[event]
        else:
            return None
        subscription = self._subscription(f"{data['s'].lower()}@{channel}")
        return subscription.key, subscription.wire, message.text

    def observe(self, key: StreamKey, text: str) -> None:
        if key.channel not in ("bookTicker", "ticker", "miniTicker", _DEPTH, "trade", "aggTrade"):
            return
        try:
            data = json.loads(text)
            market_id = data["s"]
        except (ValueError, KeyError, TypeError):
            return
        if key.channel == _DEPTH:
            if isinstance(data.get("u"), int):
                self._replayed_u[market_id] = max(data["u"], self._replayed_u.get(market_id, 0))
        elif key.channel in ("trade", "aggTrade"):
            try:
                trade_id = int(data["t"] if key.channel == "trade" else data["f"])
                agg_id = self._agg_of.get((market_id, trade_id), trade_id)
                self._remember(market_id, _Trade(trade_id, str(data["p"]), str(data["q"]), int(data["T"]),
                                                 bool(data["m"]), agg_id))
            except (KeyError, TypeError, ValueError):
                return
        elif key.channel == "bookTicker":
            self._replayed_books[market_id] = data
        else:
            self._replayed_tickers.setdefault(market_id, {}).update(data)

    def corrupt(self, fault: Fault, text: str) -> str:
        if fault is Fault.TRUNCATED:
            return text[: max(1, len(text) // 2)]
        if fault is Fault.MALFORMED:
            return text.replace('":', '"=', 1)
        data = json.loads(text)
        if fault is Fault.MISSING_FIELDS:
            data.pop("s", None)
        elif data.get("e") == "depthUpdate":
            side = next((data[name] for name in ("b", "a") if data.get(name)), None)
            if side is not None:
                side[0][0] = "abc"
            else:
                data["b"] = [["abc", "1"]]
        else:
            field = next((name for name in ("b", "p", "c") if name in data), "b")
            data[field] = "abc"
        return json.dumps(data, separators=(",", ":"))

    def shutdown_event(self) -> str | None:
        return f'{{"e":"serverShutdown","E":{now_ms()}}}'


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, separators=(",", ":")), status=status, content_type="application/json")


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    """An integer query parameter, ``default`` when absent; ``None`` when not an integer."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        return None


def _trade_row(trade: _Trade) -> dict[str, Any]:
    quote_qty = float(trade.price) * float(trade.qty)
    return {"id": trade.id, "price": trade.price, "qty": trade.qty, "quoteQty": _f8(quote_qty), "time": trade.time,
            "isBuyerMaker": trade.buyer_maker, "isBestMatch": True}


def _book_levels(market: Market, quote: Quote, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``depth`` levels a side around the quote, best first, as ``(price, quantity)`` strings.

    The top is the quote's best bid and ask with their sizes; level ``i`` is ``i`` ticks
    further, its size a deterministic multiple of the top's (no random draw, so the walk's
    sequence stays what it is without books).
    """
    tick = 10.0 ** -market.price_decimals
    unit = 10.0 ** -market.size_decimals
    bid_ticks = round(quote.bid / tick)
    ask_ticks = round(quote.ask / tick)
    bids = [(f"{quote.bid:.8f}", f"{quote.bid_size:.8f}")]
    asks = [(f"{quote.ask:.8f}", f"{quote.ask_size:.8f}")]
    for level in range(1, depth):
        factor = 1.0 + ((quote.update_id * 7 + level * 13) % 23) / 4.0
        if bid_ticks - level > 0:
            bids.append((f"{(bid_ticks - level) * tick:.8f}", f"{(round(quote.bid_size * factor / unit) or 1) * unit:.8f}"))
        asks.append((f"{(ask_ticks + level) * tick:.8f}", f"{(round(quote.ask_size * factor / unit) or 1) * unit:.8f}"))
    return bids, asks


def _levels_json(levels: list[tuple[str, str]]) -> str:
    return "[" + ",".join(f'["{price}","{qty}"]' for price, qty in levels) + "]"


def _error(code: int, msg: str, request_id: object) -> Control:
    body = {"error": {"code": code, "msg": msg}, "id": request_id}
    return Control((json.dumps(body, separators=(",", ":")),))


def _symbol_info(market: Market) -> dict[str, Any]:
    tick = f"{10.0 ** -market.price_decimals:.8f}"
    step = f"{10.0 ** -market.size_decimals:.8f}"
    return {
        "symbol": market.id,
        "status": "TRADING",
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                       "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000.00000000", "stepSize": step},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "1000000.00000000",
             "stepSize": "0.00000000"},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
             "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
             "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }
