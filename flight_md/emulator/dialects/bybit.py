"""Bybit v5: REST ``/v5/market`` data and public websockets, as ccxt.pro uses them.

REST (all GET): ``/v5/market/instruments-info`` (``category`` spot, linear, inverse,
option; linear, inverse and option paginate with ``limit`` (default 500, at most 1000)
and ``cursor``/``nextPageCursor`` as the real API does, spot returns everything in one
page), ``/v5/market/tickers`` (``category``, optional ``symbol``), ``/v5/market/time``.
Inverse and option categories list no instruments, so a ccxt left with its default
``fetchMarkets`` types (spot, linear, inverse, option) still loads.

Websockets ``/v5/public/spot``, ``/v5/public/linear`` (also ``inverse``, ``option``):
``{"op":"subscribe"|"unsubscribe","args":[topics],"req_id":...}`` answered with
``{"success":true,"ret_msg":...,"conn_id":...,"req_id":...,"op":...}``; ``{"op":"ping"}``
answered with ``{"success":true,"ret_msg":"pong",...,"op":"ping"}``. Spot takes at most
10 topics per request. The server does not ping.

Synthetic topics: ``tickers.<id>`` (linear: a snapshot on subscribe, then deltas with the
changed fields; spot: snapshots, without best bid/ask, as the real spot stream),
``orderbook.1.<id>`` (snapshots of the top level; ccxt's ``watch_bids_asks``),
``orderbook.<depth>.<id>`` for depths 50, 200 and 1000 (what ccxt's ``watch_order_book``
subscribes: 50 by default) and ``publicTrade.<id>``.

Trades are at the touch: ``S`` ``Buy`` at the ask, ``Sell`` at the bid, of the walk's trade
size; ``i`` is a UUID (as on Bybit's linear markets: no sequence to check), ``seq`` the
walk's update id. A book stream (``orderbook.<depth>``, depth > 1) starts with a
``snapshot`` on subscribe and goes on with ``delta`` messages; the book has
``min(depth, BOOK_LEVELS)`` levels a side, its top the ticker's best bid and ask (with
their sizes), deeper levels one tick further each. A delta carries every level of the new
book plus ``"0"``-size removals of every price published on the stream since the previous
delta. ``u`` counts the stream's messages (a new subscriber's snapshot carries the stream's
current ``u``; each delta the next one), ``seq`` is the walk's update id (cross sequence:
strictly increasing, not consecutive). Bybit sends no checksum, and ccxt checks neither
``u`` nor ``seq``. REST ``/v5/market/orderbook`` (``category``, ``symbol``, ``limit``)
answers the walk's current book, ``/v5/market/recent-trade`` the last
:data:`TRADE_HISTORY` trades streamed (Bybit's recent trades take no time range, so
ccxt's ``fetch_trades(since=...)`` filters what this returns).

Replay: frames are sent verbatim. A subscription to ``orderbook.<depth>.<id>`` of any depth
above 1 gets the recorded book of that market, whatever depth it was recorded at (the
recording holds ``orderbook.200``): a replay serves the depth the recording holds, so its
topics say ``orderbook.200`` whatever was asked. REST ``/v5/market/orderbook`` answers the
book rebuilt from the snapshot and deltas replayed so far (``limit`` levels), and
``/v5/market/recent-trade`` the trades replayed so far.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from flight_md.emulator.dialect import ConnectionInfo, Control, Dialect, RestHandler, Subscription, now_ms
from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, MarketKind, StreamKey
from flight_md.emulator.recording import RecordedMessage, Recording
from flight_md.emulator.synthetic import PriceWalk, Quote

__all__ = ["BOOK_LEVELS", "TRADE_HISTORY", "BybitDialect"]

_CATEGORIES = ("spot", "linear", "inverse", "option")
_PAGINATED = frozenset({"linear", "inverse", "option"})
_DEFAULT_PAGE = 500
_MAX_PAGE = 1000
_SPOT_MAX_ARGS = 10
_CURSOR = re.compile(r"last%3D(\d+)")
_BOOK_DEPTHS = ("50", "200", "1000")  # besides 1, which is the bid/ask stream here
_SYNTHETIC_CHANNELS = frozenset({"tickers", "orderbook.1", "publicTrade", *(f"orderbook.{d}" for d in _BOOK_DEPTHS)})
_REPLAYED_BOOK = "orderbook"  # the one channel of every orderbook.<depth> (depth > 1) in a replay
BOOK_LEVELS: Final = 20
"""Levels a side of a synthetic book (fewer when the subscribed depth is smaller)."""
TRADE_HISTORY: Final = 1000
"""Trades per market ``/v5/market/recent-trade`` remembers (Bybit's largest ``limit``)."""
_RECENT_TRADES_LIMITS = {"spot": (60, 60), "linear": (500, 1000)}  # (default, max)
_REST_BOOK_LIMITS = {"spot": (1, 200), "linear": (25, 500)}


def _book_channel(channel: str) -> bool:
    return channel.startswith("orderbook.") and channel != "orderbook.1"


class BybitDialect(Dialect):
    """Bybit v5 public market data for spot and linear perpetual markets."""

    synthetic_channels = _SYNTHETIC_CHANNELS

    name = "bybit"

    def __init__(self, markets: tuple[Market, ...], walks: Mapping[str, PriceWalk], recording: Recording | None) -> None:
        super().__init__(markets, walks, recording)
        self._by_category: dict[str, dict[str, Market]] = {category: {} for category in _CATEGORIES}
        for market in self.markets:
            self._by_category[str(market.kind)][market.id] = market
        self._replayed: dict[str, dict[str, Any]] = {}
        self._checksum = 0
        # Synthetic books, per stream: the last u, and the prices published since the last delta.
        self._book_u: dict[StreamKey, int] = {}
        self._published: dict[StreamKey, tuple[set[str], set[str]]] = {}
        self._trades: dict[str, deque[dict[str, Any]]] = {}  # REST rows by unified symbol
        self._replayed_books: dict[str, tuple[dict[str, str], dict[str, str], dict[str, Any]]] = {}

    # -- markets and REST -------------------------------------------------------------

    def recorded_markets(self, recording: Recording) -> tuple[Market, ...]:
        markets: list[Market] = []
        for category, kind in (("spot", MarketKind.SPOT), ("linear", MarketKind.LINEAR)):
            for entry in self._recorded_instruments(recording, category):
                if entry.get("contractType", "LinearPerpetual") != "LinearPerpetual":
                    continue  # dated futures: their unified symbols carry an expiry the emulator does not key
                base, quote = entry["baseCoin"], entry["quoteCoin"]
                symbol = f"{base}/{quote}" if kind is MarketKind.SPOT else f"{base}/{quote}:{entry['settleCoin']}"
                markets.append(Market(symbol, entry["symbol"], base, quote, kind, 2, 3, 1.0))
        if not markets:
            raise ValueError(f"{recording.source}: no /v5/market/instruments-info response recorded")
        return tuple(markets)

    @staticmethod
    def _recorded_instruments(recording: Recording, category: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for response in recording.http:
            if response.path == "/v5/market/instruments-info" and ("category", category) in response.query:
                entries.extend(json.loads(response.body)["result"]["list"])
        return entries

    def rest_routes(self) -> list[tuple[str, RestHandler]]:
        return [
            ("/v5/market/instruments-info", self._instruments_info),
            ("/v5/market/tickers", self._tickers),
            ("/v5/market/time", self._time),
            ("/v5/market/orderbook", self._orderbook),
            ("/v5/market/recent-trade", self._recent_trades),
        ]

    def rest_error(self, status: int) -> str:
        if status == 429:
            return '{"retCode":10006,"retMsg":"Too many visits. Exceeded the API Rate Limit.","result":{},"retExtInfo":{}}'
        if status == 404:
            return '{"retCode":10404,"retMsg":"Not found.","result":{},"retExtInfo":{}}'
        return '{"retCode":10016,"retMsg":"Internal server error.","result":{},"retExtInfo":{}}'

    async def _time(self, request: web.Request) -> web.StreamResponse:
        ms = now_ms()
        return _ok({"timeSecond": str(ms // 1000), "timeNano": str(ms * 1_000_000)})

    async def _instruments_info(self, request: web.Request) -> web.StreamResponse:
        category = request.query.get("category", "")
        if category not in _CATEGORIES:
            return _fail(10001, "params error: Category is invalid")
        if self.recording is not None:
            entries = self._recorded_instruments(self.recording, category)
        else:
            entries = [_instrument(market) for market in self._by_category[category].values()]
        symbol = request.query.get("symbol")
        if symbol:
            entries = [entry for entry in entries if entry["symbol"] == symbol]
        status = request.query.get("status")
        if status:
            entries = [entry for entry in entries if entry.get("status") == status]
        result: dict[str, Any] = {"category": category}
        if category in _PAGINATED:
            try:
                limit = min(_MAX_PAGE, max(1, int(request.query.get("limit", _DEFAULT_PAGE))))
            except ValueError:
                return _fail(10001, "params error: limit")
            match = _CURSOR.search(request.query.get("cursor", ""))
            start = int(match.group(1)) if match else 0
            page = entries[start : start + limit]
            end = start + len(page)
            result["list"] = page
            result["nextPageCursor"] = f"first%3D{start}%26last%3D{end}" if end < len(entries) else ""
        else:
            result["list"] = entries
        return _ok(result)

    async def _tickers(self, request: web.Request) -> web.StreamResponse:
        category = request.query.get("category", "")
        if category not in _CATEGORIES:
            return _fail(10001, "params error: Category is invalid")
        markets = self._by_category[category]
        symbol = request.query.get("symbol")
        if symbol:
            if symbol not in markets:
                return _fail(10001, "Not supported symbols")
            selected = [markets[symbol]]
        else:
            selected = list(markets.values())
        rows = [row for row in (self._ticker_row(market) for market in selected) if row is not None]
        return _ok({"category": category, "list": rows})

    def _market_and_limit(self, request: web.Request,
                          limits: Mapping[str, tuple[int, int]]) -> tuple[Market, int] | web.Response:
        category = request.query.get("category", "")
        if category not in _CATEGORIES:
            return _fail(10001, "params error: Category is invalid")
        market = self._by_category[category].get(request.query.get("symbol", ""))
        if market is None:
            return _fail(10001, "params error: symbol invalid")
        default, most = limits.get(category, (25, 500))
        try:
            limit = int(request.query.get("limit", default))
        except ValueError:
            return _fail(10001, "params error: limit")
        return market, max(1, min(most, limit))

    async def _orderbook(self, request: web.Request) -> web.StreamResponse:
        found = self._market_and_limit(request, _REST_BOOK_LIMITS)
        if isinstance(found, web.Response):
            return found
        market, limit = found
        ms = now_ms()
        if self.recording is not None:
            bids_by_price, asks_by_price, meta = self._replayed_books.get(market.symbol, ({}, {}, {}))
            bids = sorted(bids_by_price.items(), key=lambda level: -float(level[0]))[:limit]
            asks = sorted(asks_by_price.items(), key=lambda level: float(level[0]))[:limit]
            return _ok({"s": market.id, "b": [list(level) for level in bids], "a": [list(level) for level in asks],
                        "ts": meta.get("ts", ms), "u": meta.get("u", 0), "seq": meta.get("seq", 0),
                        "cts": meta.get("cts", ms)})
        quote = self.walks[market.symbol].quote
        bids, asks = _book_levels(market, quote, min(limit, BOOK_LEVELS))
        return _ok({"s": market.id, "b": [list(level) for level in bids], "a": [list(level) for level in asks],
                    "ts": ms, "u": quote.update_id, "seq": quote.update_id, "cts": ms})

    async def _recent_trades(self, request: web.Request) -> web.StreamResponse:
        found = self._market_and_limit(request, _RECENT_TRADES_LIMITS)
        if isinstance(found, web.Response):
            return found
        market, limit = found
        rows = list(self._trades.get(market.symbol, ()))[-limit:]
        rows.reverse()  # newest first, as Bybit lists them
        return _ok({"category": str(market.kind), "list": rows})

    def _remember(self, market: Market, row: dict[str, Any]) -> None:
        trades = self._trades.get(market.symbol)
        if trades is None:
            trades = self._trades[market.symbol] = deque(maxlen=TRADE_HISTORY)
        trades.append(row)

    def _ticker_row(self, market: Market) -> dict[str, Any] | None:
        if self.recording is not None:
            state = self._replayed.get(market.symbol)
            return dict(state) if state is not None else None
        data = _ticker_data(market, self.walks[market.symbol].quote)
        if market.kind is MarketKind.SPOT:
            # The REST spot ticker has the best bid and ask the spot stream lacks.
            quote = self.walks[market.symbol].quote
            p, s = market.price_decimals, market.size_decimals
            data.update(bid1Price=f"{quote.bid:.{p}f}", bid1Size=f"{quote.bid_size:.{s}f}",
                        ask1Price=f"{quote.ask:.{p}f}", ask1Size=f"{quote.ask_size:.{s}f}")
        return data

    # -- websockets -------------------------------------------------------------------

    def ws_paths(self) -> tuple[str, ...]:
        return tuple(f"/v5/public/{category}" for category in _CATEGORIES)

    def control(self, connection: ConnectionInfo, text: str) -> Control:
        category = connection.path.rsplit("/", 1)[-1]
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return Control((_dumps({"success": False, "ret_msg": "error:request not json",
                                    "conn_id": connection.conn_id, "op": ""}),))
        op = message.get("op")
        reply: dict[str, Any] = {"success": True, "ret_msg": "", "conn_id": connection.conn_id}
        if "req_id" in message:
            reply["req_id"] = str(message["req_id"])
        elif category != "spot":
            reply["req_id"] = ""
        if op == "ping":
            reply["ret_msg"] = "pong"
            reply["op"] = "ping"
            return Control((_dumps(reply),))
        if op not in ("subscribe", "unsubscribe"):
            reply.update(success=False, ret_msg=f"error:unknown op {op!r}", op=op)
            return Control((_dumps(reply),))
        reply["op"] = op
        if category == "spot":
            reply["ret_msg"] = op
        args = message.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(arg, str) for arg in args):
            reply.update(success=False, ret_msg="error:args must be a non-empty list of topics")
            return Control((_dumps(reply),))
        if category == "spot" and len(args) > _SPOT_MAX_ARGS:
            reply.update(success=False, ret_msg=f"args size >{_SPOT_MAX_ARGS}")
            return Control((_dumps(reply),))
        subscriptions = []
        for topic in args:
            key = self._key(category, topic)
            if key is None:
                reply.update(success=False, ret_msg=f"Invalid symbol :[{topic}]")
                return Control((_dumps(reply),), unknown=(topic,) if op == "subscribe" else ())
            if op == "subscribe" and key in connection.subscribed:
                reply.update(success=False, ret_msg=f"error:already subscribed,topic:{topic}")
                return Control((_dumps(reply),))
            subscriptions.append(Subscription(key, topic))
        if op == "unsubscribe":
            return Control((_dumps(reply),), unsubscribe=tuple(sub.key for sub in subscriptions))
        return Control((_dumps(reply),), subscribe=tuple(subscriptions))

    def _key(self, category: str, topic: str) -> StreamKey | None:
        channel, _, market_id = topic.rpartition(".")
        market = self._by_category.get(category, {}).get(market_id)
        if not channel or market is None:
            return None
        if self.recording is not None and _book_channel(channel):
            channel = _REPLAYED_BOOK
        return StreamKey(channel, market.symbol)

    # -- data -------------------------------------------------------------------------

    def renders(self, channel: str) -> bool:
        return channel in _SYNTHETIC_CHANNELS

    def snapshot_on_subscribe(self, key: StreamKey) -> bool:
        return key.channel == "tickers" or key.channel.startswith("orderbook.")

    def render(self, key: StreamKey, market: Market, quote: Quote, *, snapshot: bool) -> str:
        ms = quote.time_ms or now_ms()
        p, s = market.price_decimals, market.size_decimals
        if key.channel == "tickers":
            self._checksum += 1
            if market.kind is MarketKind.SPOT or snapshot:
                data = _ticker_data(market, quote)
                return _dumps({"topic": f"tickers.{market.id}", "ts": ms, "type": "snapshot", "cs": self._checksum,
                               "data": data})
            return (f'{{"topic":"tickers.{market.id}","type":"delta","data":{{"symbol":"{market.id}",'
                    f'"lastPrice":"{quote.last:.{p}f}","volume24h":"{quote.volume:.{s}f}",'
                    f'"turnover24h":"{quote.quote_volume:.4f}","bid1Price":"{quote.bid:.{p}f}",'
                    f'"bid1Size":"{quote.bid_size:.{s}f}","ask1Price":"{quote.ask:.{p}f}",'
                    f'"ask1Size":"{quote.ask_size:.{s}f}"}},"cs":{self._checksum},"ts":{ms}}}')
        if key.channel == "orderbook.1":
            return (f'{{"topic":"orderbook.1.{market.id}","type":"snapshot","ts":{ms},"data":{{"s":"{market.id}",'
                    f'"b":[["{quote.bid:.{p}f}","{quote.bid_size:.{s}f}"]],'
                    f'"a":[["{quote.ask:.{p}f}","{quote.ask_size:.{s}f}"]],"u":{quote.update_id},'
                    f'"seq":{quote.update_id}}},"cts":{ms}}}')
        if _book_channel(key.channel):
            return self._book_message(key, market, quote, ms, snapshot=snapshot)
        side = "Sell" if quote.buyer_maker else "Buy"
        trade_id = str(uuid.UUID(int=quote.trade_id))
        price, size = f"{quote.last:.{p}f}", f"{quote.last_size:.{s}f}"
        self._remember(market, {"execId": trade_id, "symbol": market.id, "price": price, "size": size,
                                "side": side, "time": str(ms), "isBlockTrade": False, "isRPITrade": False,
                                "seq": str(quote.update_id)})
        return (f'{{"topic":"publicTrade.{market.id}","type":"snapshot","ts":{ms},"data":[{{"T":{ms},'
                f'"s":"{market.id}","S":"{side}","v":"{size}","p":"{price}",'
                f'"L":"PlusTick","i":"{trade_id}","BT":false,"RPI":false,"seq":{quote.update_id}}}]}}')

    def _book_message(self, key: StreamKey, market: Market, quote: Quote, ms: int, *, snapshot: bool) -> str:
        depth = int(key.channel.rpartition(".")[2])
        bids, asks = _book_levels(market, quote, min(depth, BOOK_LEVELS))
        bid_prices = {price for price, _ in bids}
        ask_prices = {price for price, _ in asks}
        published_bids, published_asks = self._published.get(key, (set(), set()))
        if snapshot:
            # Subscribers still holding the previous delta's book need those prices removed too.
            self._published[key] = (published_bids | bid_prices, published_asks | ask_prices)
            update_id = self._book_u.setdefault(key, quote.update_id)
            kind = "snapshot"
        else:
            zero = "0"
            bids = bids + [(price, zero) for price in sorted(published_bids - bid_prices, key=float)]
            asks = asks + [(price, zero) for price in sorted(published_asks - ask_prices, key=float)]
            self._published[key] = (bid_prices, ask_prices)
            update_id = self._book_u.get(key, quote.update_id - 1) + 1
            self._book_u[key] = update_id
            kind = "delta"
        return (f'{{"topic":"{key.channel}.{market.id}","type":"{kind}","ts":{ms},"data":{{"s":"{market.id}",'
                f'"b":{_levels_json(bids)},"a":{_levels_json(asks)},"u":{update_id},"seq":{quote.update_id}}},'
                f'"cts":{ms}}}')

    def recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        try:
            topic = json.loads(message.text).get("topic")
        except (ValueError, AttributeError):
            return None
        if not isinstance(topic, str):
            return None
        key = self._key(message.path.rsplit("/", 1)[-1], topic)
        return None if key is None else (key, topic, message.text)

    def observe(self, key: StreamKey, text: str) -> None:
        if key.channel not in ("tickers", "publicTrade", _REPLAYED_BOOK):
            return
        try:
            frame = json.loads(text)
            data = frame["data"]
        except (ValueError, KeyError, TypeError):
            return
        if key.channel == "publicTrade":
            self._observe_trades(key, data)
        elif key.channel == _REPLAYED_BOOK:
            self._observe_book(key, frame)
        elif frame.get("type") == "snapshot":
            self._replayed[key.symbol] = dict(data)
        else:
            self._replayed.setdefault(key.symbol, {}).update(data)

    def _observe_trades(self, key: StreamKey, data: object) -> None:
        market = self.market_by_symbol().get(key.symbol)
        if market is None or not isinstance(data, list):
            return
        known = {row["execId"] for row in self._trades.get(key.symbol, ())}
        for trade in data:
            if isinstance(trade, dict) and trade.get("i") not in known:
                self._remember(market, {"execId": trade.get("i"), "symbol": trade.get("s"), "price": trade.get("p"),
                                        "size": trade.get("v"), "side": trade.get("S"), "time": str(trade.get("T")),
                                        "isBlockTrade": trade.get("BT", False), "isRPITrade": trade.get("RPI", False),
                                        "seq": str(trade.get("seq", ""))})

    def _observe_book(self, key: StreamKey, frame: dict[str, Any]) -> None:
        data = frame["data"]
        if not isinstance(data, dict):
            return
        bids, asks, meta = self._replayed_books.get(key.symbol, ({}, {}, {}))
        if frame.get("type") == "snapshot":
            bids, asks = {}, {}
        elif meta and isinstance(data.get("u"), int) and data["u"] <= meta.get("u", 0):
            return  # a second connection replaying the same message
        for side, levels in ((bids, data.get("b")), (asks, data.get("a"))):
            for price, size in levels if isinstance(levels, list) else ():
                if float(size):
                    side[price] = size
                else:
                    side.pop(price, None)
        meta = {"ts": frame.get("ts"), "cts": frame.get("cts"), "u": data.get("u"), "seq": data.get("seq")}
        self._replayed_books[key.symbol] = (bids, asks, meta)

    def corrupt(self, fault: Fault, text: str) -> str:
        if fault is Fault.TRUNCATED:
            return text[: max(1, len(text) // 2)]
        if fault is Fault.MALFORMED:
            return text.replace('":', '"=', 1)
        frame = json.loads(text)
        data = frame.get("data")
        row = data[0] if isinstance(data, list) and data else data
        if not isinstance(row, dict):
            frame.pop("topic", None)
        elif fault is Fault.MISSING_FIELDS:
            if "symbol" in row or "s" in row:
                row.pop("symbol", None)
                row.pop("s", None)
            else:
                frame.pop("topic", None)
        else:
            field = next((name for name in ("bid1Price", "lastPrice", "p") if name in row), None)
            if field is not None:
                row[field] = "abc"
            elif isinstance(row.get("b"), list) and row["b"]:
                row["b"][0][0] = "abc"
            elif isinstance(row.get("a"), list) and row["a"]:
                row["a"][0][0] = "abc"
            elif "b" in row:
                row["b"] = [["abc", "1"]]
        return _dumps(frame)


def _dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def _ok(result: object) -> web.Response:
    body = {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now_ms()}
    return web.Response(text=_dumps(body), content_type="application/json")


def _fail(code: int, message: str) -> web.Response:
    body = {"retCode": code, "retMsg": message, "result": {}, "retExtInfo": {}, "time": now_ms()}
    return web.Response(text=_dumps(body), content_type="application/json")


def _book_levels(market: Market, quote: Quote, depth: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``depth`` levels a side around the quote, best first, as ``(price, size)`` strings.

    The top is the quote's best bid and ask with their sizes; level ``i`` is ``i`` ticks
    further, its size a deterministic multiple of the top's (no random draw, so the walk's
    sequence stays what it is without books).
    """
    p, s = market.price_decimals, market.size_decimals
    tick, unit = 10.0 ** -p, 10.0 ** -s
    bid_ticks, ask_ticks = round(quote.bid / tick), round(quote.ask / tick)
    bids = [(f"{quote.bid:.{p}f}", f"{quote.bid_size:.{s}f}")]
    asks = [(f"{quote.ask:.{p}f}", f"{quote.ask_size:.{s}f}")]
    for level in range(1, depth):
        factor = 1.0 + ((quote.update_id * 7 + level * 13) % 23) / 4.0
        if bid_ticks - level > 0:
            bids.append((f"{(bid_ticks - level) * tick:.{p}f}",
                         f"{(round(quote.bid_size * factor / unit) or 1) * unit:.{s}f}"))
        asks.append((f"{(ask_ticks + level) * tick:.{p}f}", f"{(round(quote.ask_size * factor / unit) or 1) * unit:.{s}f}"))
    return bids, asks


def _levels_json(levels: list[tuple[str, str]]) -> str:
    return "[" + ",".join(f'["{price}","{size}"]' for price, size in levels) + "]"


def _ticker_data(market: Market, quote: Quote) -> dict[str, Any]:
    p, s = market.price_decimals, market.size_decimals
    pcnt = f"{(quote.last - quote.open) / quote.open:.6f}"
    common = {
        "symbol": market.id,
        "lastPrice": f"{quote.last:.{p}f}",
        "highPrice24h": f"{quote.high:.{p}f}",
        "lowPrice24h": f"{quote.low:.{p}f}",
        "prevPrice24h": f"{quote.open:.{p}f}",
        "volume24h": f"{quote.volume:.{s}f}",
        "turnover24h": f"{quote.quote_volume:.4f}",
        "price24hPcnt": pcnt,
    }
    if market.kind is MarketKind.SPOT:
        common["usdIndexPrice"] = f"{quote.last:.{p}f}"
        return common
    open_interest = 10.0 ** 6 / market.reference_price
    return {
        **common,
        "tickDirection": "PlusTick" if not quote.buyer_maker else "MinusTick",
        "prevPrice1h": f"{quote.open:.{p}f}",
        "markPrice": f"{quote.last:.{p}f}",
        "indexPrice": f"{quote.last:.{p}f}",
        "openInterest": f"{open_interest:.{s}f}",
        "openInterestValue": f"{open_interest * quote.last:.2f}",
        "nextFundingTime": str((quote.time_ms // 28_800_000 + 1) * 28_800_000),
        "fundingRate": "0.0001",
        "bid1Price": f"{quote.bid:.{p}f}",
        "bid1Size": f"{quote.bid_size:.{s}f}",
        "ask1Price": f"{quote.ask:.{p}f}",
        "ask1Size": f"{quote.ask_size:.{s}f}",
        "deliveryTime": "",
        "basisRate": "",
        "deliveryFeeRate": "",
        "predictedDeliveryPrice": "",
    }


def _instrument(market: Market) -> dict[str, Any]:
    tick, step = market.tick, market.step
    if market.kind is MarketKind.SPOT:
        return {
            "symbol": market.id,
            "baseCoin": market.base,
            "quoteCoin": market.quote,
            "innovation": "0",
            "status": "Trading",
            "marginTrading": "utaOnly",
            "stTag": "0",
            "lotSizeFilter": {"basePrecision": step, "quotePrecision": "0.0000001", "minOrderQty": step,
                              "maxOrderQty": "100000", "minOrderAmt": "5", "maxOrderAmt": "8000000"},
            "priceFilter": {"tickSize": tick},
            "riskParameters": {"priceLimitRatioX": "0.005", "priceLimitRatioY": "0.01"},
        }
    return {
        "symbol": market.id,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": market.base,
        "quoteCoin": market.quote,
        "launchTime": "1584230400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(market.price_decimals),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
        "lotSizeFilter": {"maxOrderQty": "1500", "minOrderQty": step, "qtyStep": step,
                          "postOnlyMaxOrderQty": "1500", "maxMktOrderQty": "150", "minNotionalValue": "5"},
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": market.quote,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
    }
