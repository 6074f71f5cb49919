"""Kraken spot: REST ``/0/public`` and the public websocket v2, as ccxt.pro uses them.

REST (all GET, answered ``{"error":[...],"result":...}``): ``/0/public/AssetPairs`` (optional
``pair=A,B``), ``/0/public/Assets`` (optional ``asset=A,B``; synthesised from the pairs:
every base and quote asset, ``altname`` as the pair's ``wsname`` spells it),
``/0/public/Ticker`` (``pair=`` ids or altnames, comma-separated; missing or empty: every
pair; rows keyed by the pair id, Kraken's REST format: ``a``/``b`` ``[price, whole lot
volume, lot volume]``, ``c`` ``[price, lot volume]``, ``v``/``p``/``t``/``l``/``h`` ``[today,
last 24 hours]``, ``o`` today's opening price), ``/0/public/Depth`` (``pair=`` one pair,
``count`` levels per side, default and most 100: ``{"asks":[[price, volume, time]...],
"bids":...}``; ccxt ``fetch_order_book``), ``/0/public/Trades`` (``pair=`` one pair, ``since``
in seconds, what ccxt sends, or nanoseconds, the ``last`` it returns; ``count`` at most
1000; rows ``[price, volume, time, b|s, m|l, misc, trade_id]`` oldest first and ``last``; ccxt
``fetch_trades(since=...)``), ``/0/public/Time``, ``/0/public/SystemStatus``.
An unknown pair is ``EQuery:Unknown asset pair``; 429 is ``EAPI:Rate limit exceeded``;
unknown paths are ``EGeneral:Unknown method``.

Websocket ``/v2`` (requests and replies as JSON objects; replies carry ``time_in`` and
``time_out``, and ``req_id`` when the request had one):

* ``{"method":"ping"}`` -> ``{"method":"pong",...}``: ccxt's keep-alive (every 6 s; it drops a
  connection two intervals without a pong). The server sends no ping frames.
* ``{"method":"subscribe","params":{"channel":"ticker"|"trade"|"book","symbol":[...],
  "event_trigger":"trades"|"bbo","depth":10|25|100|500|1000,"snapshot":true}}`` -> one ack per
  symbol ``{"method":"subscribe","result":{"channel":...,"symbol":...,...},"success":true}``,
  or per symbol ``{"error":"Currency pair not supported X/Y","method":"subscribe","success":
  false,"symbol":"X/Y",...}`` (``not in ISO 4217-A3 format`` without a slash), ``Already
  subscribed``; ``Subscription depth not supported``; private channels (``executions``,
  ``balances``, ``level3``) and trading methods get Kraken's "unavailable on this endpoint".
  The wording for an unknown channel, event trigger or method is the emulator's own.
* ``{"method":"unsubscribe",...}`` the same way; a stream not subscribed is ``Subscription
  Not Found``.
* Data: ``{"channel":"ticker","type":"snapshot"|"update","data":[{...}]}``. A ticker
  subscription gets a snapshot right after its ack unless it asked ``snapshot: false``
  (synthetic mode; a replay serves the recorded frames). Both event triggers are one stream per symbol
  (``ticker``): subscribing to both on one connection is ``Already subscribed``.
* On connect: ``{"channel":"status","type":"update","data":[{"api_version":"v2",
  "connection_id":...,"system":"online","version":"2.0.10"}]}``, before any reply (one
  ``connection_id`` per connection).
* ``{"channel":"heartbeat"}`` about once a second on a connection subscribed to anything (not
  while the emulator is stalled: a stalled venue is silent). Kraken sends it only in the
  absence of other updates; the emulator sends it regardless (the server does not tell a
  dialect when data went out). ccxt ignores both this and the status banner (its
  ``handle_message`` has no handler for either).
* Server going away: ``{"channel":"status","type":"update","data":[{"system":"maintenance",
  ...}]}`` (Kraken announces maintenance on the status channel), then a close.

Synthetic channels: ``ticker`` (the full v2 ticker with ``trades`` and ``timestamp``),
``trade`` and ``book``, all from one walk per market:

* ``trade``: one trade per update at the touch (a buy at the ask, a sell at the bid, the
  walk's size), ``ord_type`` ``market``, ``trade_id`` one after the other per pair on this
  channel (other channels stepping the walk take no ids from it), the ``timestamp`` the
  update's. ``/0/public/Trades`` serves the last 1,000 trades sent.
* ``book``: 10 levels a side, one tick apart from the touch, whatever ``depth`` is
  subscribed (Kraken's thin-market case: fewer levels than the depth; 10 is also what the
  checksum covers). The best bid and ask and their sizes are the walk's quote; a deeper
  quantity stays while its level does and is drawn when it enters, and each update redraws
  one. A subscription gets a ``snapshot`` of the book as every subscriber has it, then
  ``update`` frames with the changed levels (``qty`` 0 deletes; both sides best first), a
  ``timestamp`` and the ``checksum`` of the book after it (:func:`book_checksum`, over the
  pair's ``pair_decimals``/``lot_decimals`` formatting). ``/0/public/Depth`` serves the
  streamed book, or (nobody streams it) the book the current quote stands for.

Replay: a recording is websocket **v2** or **v1**, told apart by where its websockets were
opened: on ``/v2`` (``wss://ws.kraken.com/v2``, what ``flight-md record`` captures from ccxt)
every one, or on none (the shared ``kraken.jsonl.gz`` of 2021, opened on
``wss://ws.kraken.com``); a recording with both is refused.

A **v2** recording is served as recorded: every ``ticker``, ``trade`` and ``book`` frame
(``{"channel":...,"type":"snapshot"|"update","data":[{"symbol":...}]}``) byte for byte, on
the stream of its ``channel`` and ``symbol``; replies, ``status`` and ``heartbeat`` frames are
not replayed (the emulator makes its own). REST tickers answer from the v2 ticker last
replayed, in Kraken's REST shape with the recorded digits: ``a``/``b`` ``[price, whole lot
volume, qty]`` (the whole lot volume, which v2 lacks, is the qty rounded up to an integer, as
Kraken defines it); ``c`` ``[last]`` (v2 has no last trade volume); ``v``/``p``/``t``/``l``/``h``
``[24 h, 24 h]`` (v2 has no "today" value: the 24 h one stands in); ``o`` ``last - change``
in exact decimal arithmetic (the 24 h open, the open ccxt derives from the websocket ticker).

A **v1** recording (``[channelID, payload, channelName, "XBT/USD"]`` arrays) is transcoded to
v2 frames once, when the emulator starts; numbers keep the recorded digits (a v1 string ``"13.253900"`` becomes the JSON number ``13.253900``). A value a v1
frame lacks is left out, never made up.

==============  =========================================================================
v2 ticker       from the v1 ticker payload
==============  =========================================================================
``symbol``      the pair's v2 name (``XBT`` is ``BTC``, ``XDG`` is ``DOGE``)
``bid``         ``b[0]``;  ``bid_qty`` ``b[2]`` (lot volume; the whole lot volume ``b[1]``
                has no v2 field)
``ask``         ``a[0]``;  ``ask_qty`` ``a[2]``
``last``        ``c[0]`` (the last trade's volume ``c[1]`` has no v2 field)
``volume``      ``v[1]`` (24 hours);  ``vwap`` ``p[1]``;  ``low`` ``l[1]``;  ``high`` ``h[1]``;
                ``trades`` ``t[1]``
``change``      ``c[0] - o[1]`` in exact decimal arithmetic (v2 sends the 24 h change, not
                the open; ccxt computes the open back as ``last - change``, which gives
                ``o[1]`` exactly)
``change_pct``  ``100 * change / o[1]``, rounded to 2 decimals as Kraken does
``timestamp``   left out: v1 tickers carry none
``type``        ``snapshot`` for a symbol's first recorded ticker, ``update`` after
==============  =========================================================================

A v1 ``trade`` frame (rows ``[price, volume, time, side b|s, type l|m, misc]``) becomes one
v2 ``trade`` update: ``price``, ``qty``, ``side`` ``buy``/``sell``, ``ord_type``
``limit``/``market``, ``timestamp`` (the epoch seconds as RFC 3339, digit for digit; no
``trade_id``: v1 has none, so ccxt's trade ``id`` is ``None``). A v1 ``book-<depth>`` frame
becomes a v2 ``book`` frame: a snapshot (``as``/``bs``) or an update (``a``/``b``; the
republish flag has no v2 field; ``timestamp`` the latest level time of the frame). The
``checksum`` is recomputed, never copied: v1's is over the strings as sent (``354.80000000``),
v2's over the pair's precision (``354.80``), so the emulator rebuilds the book (truncated to
the recorded depth, as Kraken's subscribers do) and computes the v2 one over its top 10.

Depths of a v1 replay: the recording holds one depth (``book-1000`` in the shared file). A
subscription at that depth or deeper gets the recorded frames (stream ``book``); a narrower
one (10, 25, 100, 500) gets the book re-windowed to its depth (stream ``book-<depth>``):
the top ``depth`` levels of the snapshot, then per update the changes within the window and
each level that enters it when one inside is deleted; a level pushed out by a better one
gets no delete (the subscriber truncates, as Kraken says; ccxt does); an update that
changes nothing in the window is not sent. (Only when the server asks
:meth:`KrakenDialect.recorded_frames`; otherwise every depth gets the recorded one.) A **v2**
recording is served verbatim at the depth it holds, whatever depth is subscribed.

``spread``, ``ohlc`` and event frames are not replayed. REST tickers in a v1
replay answer from the v1 ticker last replayed, in Kraken's REST format (``o`` is ``o[0]``,
today's open); ``/0/public/Trades`` from the trades replayed so far (a frame replayed to a
second connection or on a second lap is not counted again), ``/0/public/Depth`` from the
book replayed so far (the recorded depth's stream, else the widest window replayed).
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import random
import re
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final

from aiohttp import web

# The checksum is the venue's, not the emulator's: one implementation, in the pure core.
from flight_md.core.books import KRAKEN_CHECKSUM_LEVELS as BOOK_CHECKSUM_LEVELS
from flight_md.core.books import kraken_checksum as book_checksum
from flight_md.emulator.dialect import ConnectionInfo, Control, Dialect, RestHandler, Subscription, now_ms
from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, MarketKind, StreamKey
from flight_md.emulator.recording import RecordedMessage, Recording
from flight_md.emulator.synthetic import PriceWalk, Quote

__all__ = ["BOOK_CHECKSUM_LEVELS", "KrakenDialect", "WireVersion", "book_checksum", "wire_version"]

# Kraken's legacy X/Z-prefixed asset ids, by unified code; newer assets use the code itself.
_LEGACY_IDS: Final = {
    "BTC": "XXBT", "DOGE": "XXDG", "ETH": "XETH", "ETC": "XETC", "LTC": "XLTC", "MLN": "XMLN",
    "REP": "XREP", "XLM": "XXLM", "XMR": "XXMR", "XRP": "XXRP", "ZEC": "XZEC",
    "USD": "ZUSD", "EUR": "ZEUR", "GBP": "ZGBP", "JPY": "ZJPY", "CAD": "ZCAD", "AUD": "ZAUD",
}
_ALTNAMES: Final = {"BTC": "XBT", "DOGE": "XDG"}  # what AssetPairs' altname and wsname still say
_V2_NAMES: Final = {legacy: code for code, legacy in _ALTNAMES.items()}
_CHANNELS: Final = frozenset({"ticker", "trade", "book"})
_SYNTHETIC_CHANNELS: Final = frozenset({"ticker", "trade", "book"})
_PRIVATE_CHANNELS: Final = frozenset({"executions", "balances", "level3"})
_TRADING_METHODS: Final = frozenset({"add_order", "amend_order", "edit_order", "cancel_order", "cancel_all",
                                     "cancel_all_orders_after", "batch_add", "batch_cancel"})
_PRIVATE_ERROR: Final = "Private data and trading are unavailable on this endpoint. Try ws-auth.kraken.com"
_TRIGGERS: Final = ("trades", "bbo")
_BOOK_DEPTHS: Final = frozenset({10, 25, 100, 500, 1000})
_NUMBER: Final = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_FEES: Final = [[0, 0.26], [50000, 0.24], [100000, 0.22], [250000, 0.2], [500000, 0.18], [1000000, 0.16],
                [2500000, 0.14], [5000000, 0.12], [10000000, 0.1]]
_FEES_MAKER: Final = [[0, 0.16], [50000, 0.14], [100000, 0.12], [250000, 0.1], [500000, 0.08],
                      [1000000, 0.06], [2500000, 0.04], [5000000, 0.02], [10000000, 0]]
_VERSION: Final = "2.0.10"
_HEARTBEAT: Final = '{"channel":"heartbeat"}'
_HEARTBEAT_INTERVAL: Final = 1.0
"""Levels per side Kraken's book ``checksum`` covers (asks, then bids)."""
_SYNTHETIC_LEVELS: Final = 10  # per side, whatever depth is subscribed (see the docstring)
_REST_TRADES: Final = 1000  # recent trades kept for /0/public/Trades, Kraken's maximum count
_REST_DEPTH: Final = 100  # /0/public/Depth levels per side without ``count``, as Kraken
_SIDES: Final = {"b": "buy", "s": "sell"}


class WireVersion(StrEnum):
    """The websocket API a recording speaks."""

    V1 = "v1"
    V2 = "v2"


def wire_version(recording: Recording) -> WireVersion:
    """Which websocket API a recording's frames are in, from the paths its websockets opened.

    Raises:
        ValueError: If it holds frames of both (some websockets on ``/v2``, some not).
    """
    paths = {message.path.rstrip("/") for message in recording.messages}
    v2 = {path for path in paths if path.endswith("/v2")}
    if v2 and v2 != paths:
        shown = ", ".join(repr(path or "/") for path in sorted(paths))
        raise ValueError(f"{recording.source}: websockets of both kraken v1 and v2 recorded ({shown}); "
                         "expected one api version")
    return WireVersion.V2 if v2 else WireVersion.V1


class KrakenDialect(Dialect):
    """Kraken spot public market data over websocket v2 and REST."""

    name = "kraken"
    synthetic_channels = _SYNTHETIC_CHANNELS
    keepalive_interval = _HEARTBEAT_INTERVAL

    def __init__(self, markets: tuple[Market, ...], walks: Mapping[str, PriceWalk], recording: Recording | None) -> None:
        for market in markets:
            if market.kind is not MarketKind.SPOT:
                raise ValueError(f"kraken emulator lists spot markets only; got {market.symbol!r}")
        self._pairs: dict[str, dict[str, Any]] = {}
        #: The websocket API of the recording replayed (``None`` in synthetic mode).
        self.wire = wire_version(recording) if recording is not None else None
        super().__init__(tuple(_kraken_market(market) for market in markets), walks, recording)
        if recording is None:
            self._pairs = {market.id: _asset_pair(market) for market in self.markets}
        self._by_symbol = {market.symbol: market for market in self.markets}
        self._by_id = {market.id: market for market in self.markets}
        self._by_wsname = {entry["wsname"]: self._by_symbol[_v2_symbol(entry["wsname"])]
                           for entry in self._pairs.values() if "wsname" in entry}
        self._pair_names = {name: pair_id for pair_id, entry in self._pairs.items()
                            for name in (pair_id, entry.get("altname", pair_id))}
        self._assets = _assets(self._pairs.values())
        self._transcoded: set[StreamKey] = set()
        self._no_snapshot: frozenset[StreamKey] = frozenset()
        self._rest_rows: dict[str, dict[str, Any]] = {}
        self._replayed: dict[str, dict[str, Any]] = {}
        self._connection_id = 14_545_728_493_745_856_413
        self._v1_books: dict[str, _RecordedBook] = {}  # v1 transcoding, by symbol
        self._windowed = False  # whether the replay serves a v1 book's narrower windows too
        # Synthetic: books by symbol, the next trade id and the recent trades by symbol.
        self._books: dict[str, _SyntheticBook] = {}
        self._trade_ids: dict[str, int] = {}
        self._trades: dict[str, deque[list[Any]]] = {}
        self._ticker_templates: dict[str, str] = {}  # by symbol: see _ticker_template
        # Replay: what REST serves, as of the frames replayed (observe).
        self._rest_books: dict[StreamKey, _RecordedBook] = {}
        self._observed_trades: set[str] = set()

    # -- markets and REST -------------------------------------------------------------

    def recorded_markets(self, recording: Recording) -> tuple[Market, ...]:
        body = recording.body("/0/public/AssetPairs")
        if body is None:
            raise ValueError(f"{recording.source}: no /0/public/AssetPairs response recorded")
        self._pairs = dict(json.loads(body)["result"])
        markets = []
        for pair_id, entry in self._pairs.items():
            wsname = entry.get("wsname")
            if not isinstance(wsname, str) or "/" not in wsname:
                continue  # dark pool pairs (".d") have no websocket name
            symbol = _v2_symbol(wsname)
            base, quote = symbol.split("/")
            markets.append(Market(symbol, pair_id, base, quote, MarketKind.SPOT, int(entry["pair_decimals"]),
                                  int(entry["lot_decimals"]), 1.0))
        return tuple(markets)

    def rest_routes(self) -> list[tuple[str, RestHandler]]:
        return [
            ("/0/public/AssetPairs", self._asset_pairs),
            ("/0/public/Assets", self._assets_info),
            ("/0/public/Ticker", self._ticker),
            ("/0/public/Depth", self._depth),
            ("/0/public/Trades", self._recent_trades),
            ("/0/public/Time", self._time),
            ("/0/public/SystemStatus", self._system_status),
        ]

    def rest_error(self, status: int) -> str:
        if status == 429:
            return '{"error":["EAPI:Rate limit exceeded"]}'
        if status == 404:
            return '{"error":["EGeneral:Unknown method"]}'
        return '{"error":["EGeneral:Internal error"]}'

    async def _asset_pairs(self, request: web.Request) -> web.StreamResponse:
        names = _names(request.query.get("pair"))
        if not names and self.recording is not None:
            body = self.recording.body("/0/public/AssetPairs")
            assert body is not None  # checked when the markets were read
            return web.Response(text=body, content_type="application/json")
        selected = self._select(names)
        if selected is None:
            return _fail("EQuery:Unknown asset pair")
        return _ok({pair_id: self._pairs[pair_id] for pair_id in selected})

    async def _assets_info(self, request: web.Request) -> web.StreamResponse:
        names = _names(request.query.get("asset"))
        if not names:
            return _ok(self._assets)
        by_name = {name: asset_id for asset_id, entry in self._assets.items()
                   for name in (asset_id, entry["altname"])}
        if not all(name in by_name for name in names):
            return _fail("EQuery:Unknown asset")
        return _ok({by_name[name]: self._assets[by_name[name]] for name in names})

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        selected = self._select(_names(request.query.get("pair")))
        if selected is None:
            return _fail("EQuery:Unknown asset pair")
        rows = {pair_id: row for pair_id in selected if (row := self._ticker_row(pair_id)) is not None}
        return _ok(rows)

    def _one_pair(self, request: web.Request) -> Market | web.Response:
        """The market a ``pair=`` parameter names (Kraken's Depth and Trades take exactly one)."""
        names = _names(request.query.get("pair"))
        if len(names) != 1:
            return _fail("EGeneral:Invalid arguments")
        pair_id = self._pair_names.get(names[0])
        market = self._by_id.get(pair_id) if pair_id is not None else None
        return market if market is not None else _fail("EQuery:Unknown asset pair")

    async def _depth(self, request: web.Request) -> web.StreamResponse:
        market = self._one_pair(request)
        if isinstance(market, web.Response):
            return market
        count = _count(request.query.get("count"), _REST_DEPTH)
        if count is None:
            return _fail("EGeneral:Invalid arguments:count")
        stamp = now_ms() // 1000
        if self.recording is not None:
            # The recorded depth's book, else the widest window replayed.
            held = sorted((key for key in self._rest_books if key.symbol == market.symbol),
                          key=lambda key: (key.channel != "book", -int(key.channel.partition("-")[2] or 0)))
            recorded = self._rest_books[held[0]] if held else None
            bids = recorded.bids.top(count) if recorded is not None else []
            asks = recorded.asks.top(count) if recorded is not None else []
        else:
            # The streamed book, or (nobody streams it) the book the current quote stands for.
            book = self._books.get(market.symbol) or _SyntheticBook(market, self.walks[market.symbol].quote)
            p, s = market.price_decimals, market.size_decimals
            levels = book.levels()
            bids = [(_fixed(price, p), _fixed(qty, s)) for price, qty in levels[0][:count]]
            asks = [(_fixed(price, p), _fixed(qty, s)) for price, qty in levels[1][:count]]
        return _ok({market.id: {"asks": [[price, qty, stamp] for price, qty in asks],
                                "bids": [[price, qty, stamp] for price, qty in bids]}})

    async def _recent_trades(self, request: web.Request) -> web.StreamResponse:
        market = self._one_pair(request)
        if isinstance(market, web.Response):
            return market
        count = _count(request.query.get("count"), _REST_TRADES)
        since_text = request.query.get("since", "0")
        if count is None or not since_text.isdigit():
            return _fail("EGeneral:Invalid arguments")
        # Kraken takes seconds (what ccxt sends) or nanoseconds (the "last" it returns).
        since = int(since_text) / (1e9 if int(since_text) > 10**12 else 1)
        rows = [row for row in self._trades.get(market.symbol, ()) if row[2] >= since][:count]
        last = str(int(rows[-1][2] * 1e9)) if rows else since_text
        return _ok({market.id: rows, "last": last})

    async def _time(self, request: web.Request) -> web.StreamResponse:
        seconds = now_ms() // 1000
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%a, %d %b %y %H:%M:%S +0000")
        return _ok({"unixtime": seconds, "rfc1123": stamp})

    async def _system_status(self, request: web.Request) -> web.StreamResponse:
        return _ok({"status": "online", "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})

    def _select(self, names: list[str]) -> list[str] | None:
        """Pair ids named by ids or altnames, every pair if none; ``None`` if one is unknown."""
        if not names:
            return list(self._pairs) if self.recording is not None else [m.id for m in self.markets]
        selected = [self._pair_names.get(name) for name in names]
        if not all(selected):
            return None
        return [pair_id for pair_id in selected if pair_id is not None]

    def _ticker_row(self, pair_id: str) -> dict[str, Any] | None:
        if self.recording is not None:
            return self._replayed.get(pair_id)
        market = self._by_id[pair_id]
        quote = self.walks[market.symbol].quote
        p, s = market.price_decimals, market.size_decimals
        vwap = quote.quote_volume / quote.volume if quote.volume else quote.last
        return {
            "a": [f"{quote.ask:.{p}f}", str(max(1, round(quote.ask_size))), f"{quote.ask_size:.{s}f}"],
            "b": [f"{quote.bid:.{p}f}", str(max(1, round(quote.bid_size))), f"{quote.bid_size:.{s}f}"],
            "c": [f"{quote.last:.{p}f}", f"{quote.last_size:.{s}f}"],
            "v": [f"{quote.volume:.8f}"] * 2,
            "p": [f"{vwap:.{p}f}"] * 2,
            "t": [quote.trade_id] * 2,
            "l": [f"{quote.low:.{p}f}"] * 2,
            "h": [f"{quote.high:.{p}f}"] * 2,
            "o": f"{quote.open:.{p}f}",
        }

    # -- websockets -------------------------------------------------------------------

    def ws_paths(self) -> tuple[str, ...]:
        return ("/v2",)

    def on_connect_frames(self, connection: ConnectionInfo) -> tuple[str, ...]:
        return (self._status("online", connection),)

    def keepalive(self, connection: ConnectionInfo) -> str | None:
        return _HEARTBEAT if connection.subscribed else None

    def _status(self, system: str, connection: ConnectionInfo | None = None) -> str:
        connection_id = self._connection_id
        if connection is not None:
            try:  # one id per connection, as Kraken gives (the server's ids are hex)
                connection_id = int(connection.conn_id[:16], 16)
            except ValueError:
                pass
        return json.dumps({"channel": "status", "type": "update", "data": [{
            "api_version": "v2", "connection_id": connection_id, "system": system, "version": _VERSION}]},
            separators=(",", ":"))

    def control(self, connection: ConnectionInfo, text: str) -> Control:
        time_in = _now_rfc3339()
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            return Control((_reply({"error": "Malformed request", "success": False}, time_in),))
        head: dict[str, Any] = {"method": message.get("method")}
        if "req_id" in message:
            head["req_id"] = message["req_id"]
        method = head["method"]
        if method == "ping":
            return Control((_reply({**head, "method": "pong"}, time_in),))
        if method in _TRADING_METHODS:
            return Control((_reply({**head, "error": _PRIVATE_ERROR, "success": False}, time_in),))
        if method not in ("subscribe", "unsubscribe"):
            return Control((_reply({**head, "error": f"Unsupported method: {method}", "success": False}, time_in),))
        params = message.get("params")
        if not isinstance(params, dict):
            return Control((_reply({**head, "error": "params field must be an object", "success": False},
                                   time_in),))
        failure, result = self._request(params)
        if failure is not None:
            return Control((_reply({**head, "error": failure, "success": False}, time_in),))
        channel = result["channel"]
        if method == "subscribe":
            # The server asks snapshot_on_subscribe right after this message, before the next.
            self._no_snapshot = frozenset() if result["snapshot"] else frozenset(
                StreamKey(channel, symbol) for symbol in params["symbol"])
        replies: list[str] = []
        subscribe: list[Subscription] = []
        unsubscribe: list[StreamKey] = []
        unknown: list[str] = []
        for symbol in params["symbol"]:
            market = self._by_symbol.get(symbol)
            if market is None:
                error = (f"Currency pair not supported {symbol}" if "/" in symbol
                         else f"Currency pair not in ISO 4217-A3 format {symbol}")
                replies.append(_reply({**head, "error": error, "success": False, "symbol": symbol}, time_in))
                if method == "subscribe":
                    unknown.append(f"{channel}:{symbol}")
                continue
            key = self._stream(channel, market.symbol, result.get("depth"))
            if channel == "book":  # one book per symbol and connection, whatever its depth
                key = next((held for held in connection.subscribed if _same_book(held, key)), key)
            if method == "subscribe":
                if key in connection.subscribed or any(sub.key == key for sub in subscribe):
                    replies.append(_reply({**head, "error": "Already subscribed", "success": False,
                                           "symbol": symbol}, time_in))
                    continue
                subscribe.append(Subscription(key, f"{channel}:{symbol}"))
            else:
                if key not in connection.subscribed:
                    replies.append(_reply({**head, "error": "Subscription Not Found", "success": False,
                                           "symbol": symbol}, time_in))
                    continue
                unsubscribe.append(key)
            replies.append(_reply({**head, "result": {**result, "symbol": symbol}, "success": True}, time_in))
        return Control(tuple(replies), subscribe=tuple(subscribe), unsubscribe=tuple(unsubscribe),
                       unknown=tuple(unknown))

    def _stream(self, channel: str, symbol: str, depth: int | None) -> StreamKey:
        """The stream a subscription feeds: a v1 replay's book narrower than recorded has its own."""
        recorded = self._v1_books.get(symbol) if channel == "book" and self._windowed else None
        if recorded is not None and depth is not None and depth < recorded.depth:
            return _book_key(symbol, depth)
        return StreamKey(channel, symbol)

    @staticmethod
    def _request(params: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """Validate subscription params: ``(error, None-ish)`` or ``(None, the ack's result)``."""
        channel = params.get("channel")
        if channel in _PRIVATE_CHANNELS:
            return _PRIVATE_ERROR, {}
        if channel not in _CHANNELS:
            return f"Channel not supported: {channel}", {}
        symbols = params.get("symbol")
        if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
            return "symbol field must be a non-empty array of strings", {}
        snapshot = params.get("snapshot", channel != "trade")
        if not isinstance(snapshot, bool):
            return "snapshot field must be a boolean", {}
        result: dict[str, Any] = {"channel": channel, "snapshot": snapshot}
        if channel == "ticker":
            trigger = params.get("event_trigger", "trades")
            if trigger not in _TRIGGERS:
                return f"Unsupported event_trigger: {trigger}", {}
            result["event_trigger"] = trigger
        elif channel == "book":
            depth = params.get("depth", 10)
            if isinstance(depth, bool) or depth not in _BOOK_DEPTHS:
                return "Subscription depth not supported", {}
            result["depth"] = depth
        return None, result

    # -- data -------------------------------------------------------------------------

    def renders(self, channel: str) -> bool:
        return channel in _SYNTHETIC_CHANNELS

    def snapshot_on_subscribe(self, key: StreamKey) -> bool:
        return key.channel in ("ticker", "book") and key not in self._no_snapshot

    def render(self, key: StreamKey, market: Market, quote: Quote, *, snapshot: bool) -> str:
        market = self._by_symbol.get(key.symbol, market)
        p, s = market.price_decimals, market.size_decimals
        stamp = _ms_rfc3339(quote.time_ms or now_ms())
        if key.channel == "ticker":
            change = quote.last - quote.open
            vwap = quote.quote_volume / quote.volume if quote.volume else quote.last
            template = self._ticker_templates.get(market.symbol)
            if template is None:
                template = self._ticker_templates[market.symbol] = _ticker_template(market)
            return template % ("snapshot" if snapshot else "update", quote.bid, quote.bid_size, quote.ask,
                               quote.ask_size, quote.last, quote.volume, vwap, quote.low, quote.high, change,
                               100.0 * change / quote.open, quote.trade_id, stamp)
        if key.channel == "book":
            return self._render_book(market, quote, stamp, snapshot=snapshot)
        # One id after the other on the trade channel, whatever else steps the walk.
        trade_id = self._trade_ids.get(market.symbol, quote.trade_id)
        self._trade_ids[market.symbol] = trade_id + 1
        side = "sell" if quote.buyer_maker else "buy"
        price, qty = f"{quote.last:.{p}f}", f"{quote.last_size:.{s}f}"
        time_ms = quote.time_ms or now_ms()
        recent = self._trades.setdefault(market.symbol, deque(maxlen=_REST_TRADES))
        recent.append([price, qty, time_ms / 1000, side[0], "m", "", trade_id])
        return (f'{{"channel":"trade","type":"update","data":[{{"symbol":"{market.symbol}","side":"{side}",'
                f'"price":{price},"qty":{qty},"ord_type":"market","trade_id":{trade_id},"timestamp":"{stamp}"}}]}}')

    def _render_book(self, market: Market, quote: Quote, stamp: str, *, snapshot: bool) -> str:
        book = self._books.get(market.symbol)
        if book is None:
            # The book starts at this quote: every level is new (an update carrying them all
            # when the subscriber asked no snapshot).
            book = self._books[market.symbol] = _SyntheticBook(market, quote)
            bids, asks = book.levels()
        elif snapshot:
            bids, asks = book.levels()  # the state the other subscribers have: a snapshot never moves it
        else:
            bids, asks = book.move(market, quote)
        p, s = market.price_decimals, market.size_decimals
        sides = [",".join(f'{{"price":{_fixed(price, p)},"qty":{_fixed(qty, s)}}}' for price, qty in levels)
                 for levels in (bids, asks)]
        body = (f'"symbol":"{market.symbol}","bids":[{sides[0]}],"asks":[{sides[1]}],'
                f'"checksum":{book.checksum(market)}')
        if snapshot:
            return f'{{"channel":"book","type":"snapshot","data":[{{{body}}}]}}'
        return f'{{"channel":"book","type":"update","data":[{{{body},"timestamp":"{stamp}"}}]}}'

    def recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        mapped = self._recorded(message)
        return mapped[0] if mapped else None

    def recorded_frames(self, message: RecordedMessage) -> tuple[tuple[StreamKey, str, str], ...]:
        """A recorded frame on its stream; a v1 book frame also on each narrower depth's stream."""
        self._windowed = True  # the server takes the windows: narrower subscriptions get them
        return self._recorded(message)

    def _recorded(self, message: RecordedMessage) -> tuple[tuple[StreamKey, str, str], ...]:
        if self.wire is WireVersion.V2:
            mapped = self._recorded_v2(message)
            return () if mapped is None else (mapped,)
        if not message.text.startswith("["):
            return ()  # v1 events (heartbeat, systemStatus, subscriptionStatus)
        try:
            frame = json.loads(message.text)
        except ValueError:
            return ()
        if not isinstance(frame, list) or len(frame) < 4 or not isinstance(frame[-2], str):
            return ()
        market = self._by_wsname.get(frame[-1]) if isinstance(frame[-1], str) else None
        if market is None:
            return ()
        name, payloads = frame[-2], frame[1:-2]
        channel = "book" if name.startswith("book-") else name
        key = StreamKey(channel, market.symbol)
        first = key not in self._transcoded
        text: str | None = None
        if channel == "ticker" and isinstance(payloads[0], dict):
            text = _v2_ticker(market.symbol, payloads[0], "snapshot" if first else "update")
            self._rest_rows[text] = _rest_row(payloads[0])
        elif channel == "trade" and isinstance(payloads[0], list):
            text = _v2_trades(market.symbol, payloads[0])
        elif channel == "book" and all(isinstance(payload, dict) for payload in payloads):
            depth = name.removeprefix("book-")
            return self._v2_books(market, payloads, int(depth) if depth.isdigit() else max(_BOOK_DEPTHS))
        if text is None:
            return ()
        self._transcoded.add(key)
        return ((key, f"{channel}:{market.symbol}", text),)

    def _v2_books(self, market: Market, payloads: list[Any], depth: int) -> tuple[tuple[StreamKey, str, str], ...]:
        """A v1 book frame as v2 frames: the recorded depth's, and each narrower window's that changed."""
        merged: dict[str, Any] = {}
        for payload in payloads:
            merged.update(payload)
        snapshot = "as" in merged or "bs" in merged
        bids = _v1_levels(merged.get("bs" if snapshot else "b", []))
        asks = _v1_levels(merged.get("as" if snapshot else "a", []))
        if bids is None or asks is None:
            return ()
        book = self._v1_books.get(market.symbol)
        if book is None or snapshot:
            if not snapshot:
                return ()  # an update before any snapshot has nothing to apply to
            book = self._v1_books[market.symbol] = _RecordedBook(depth)
        windows = tuple(sorted(size for size in _BOOK_DEPTHS if size < book.depth))
        changed = book.apply([(price, qty) for price, qty, _ in bids], [(price, qty) for price, qty, _ in asks],
                             snapshot=snapshot, windows=windows)
        checksum = book.checksum(market)
        kind = "snapshot" if snapshot else "update"
        tail = f',"checksum":{checksum}'
        if not snapshot:
            latest = max((stamp for _, _, stamp in bids + asks), key=float, default=None)
            stamp = _seconds_rfc3339(latest) if latest is not None else None
            if stamp is not None:
                tail += f',"timestamp":"{stamp}"'
        wire = f"book:{market.symbol}"
        recorded = ([(price, qty) for price, qty, _ in bids], [(price, qty) for price, qty, _ in asks])
        mapped = [(StreamKey("book", market.symbol), wire, _book_frame(kind, market.symbol, *recorded, tail))]
        for size in windows:
            window = changed[size] if not snapshot else (book.bids.top(size), book.asks.top(size))
            if window[0] or window[1]:
                mapped.append((_book_key(market.symbol, size), wire, _book_frame(kind, market.symbol, *window, tail)))
        return tuple(mapped)

    def _recorded_v2(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        """A recorded v2 data frame on its stream, verbatim; replies, status and heartbeats are skipped."""
        if not message.text.startswith("{"):
            return None
        try:
            # Strings for numbers: the REST row keeps the recorded digits.
            frame = json.loads(message.text, parse_float=str, parse_int=str)
        except ValueError:
            return None
        if not isinstance(frame, dict):
            return None
        channel, data = frame.get("channel"), frame.get("data")
        if channel not in _CHANNELS or frame.get("type") not in ("snapshot", "update"):
            return None
        if not isinstance(data, list) or not data or not all(isinstance(row, dict) for row in data):
            return None
        symbols = {row.get("symbol") for row in data}
        symbol = symbols.pop() if len(symbols) == 1 else None
        market = self._by_symbol.get(symbol) if isinstance(symbol, str) else None
        if market is None:
            return None
        if channel == "ticker":
            self._rest_rows[message.text] = _rest_row_v2(data[0])
        return StreamKey(channel, market.symbol), f"{channel}:{market.symbol}", message.text

    def observe(self, key: StreamKey, text: str) -> None:
        if key.channel == "trade":
            self._observe_trades(key.symbol, text)
            return
        if _same_book(key, StreamKey("book", key.symbol)):
            self._observe_book(key, text)
            return
        if key.channel != "ticker":
            return
        row = self._rest_rows.get(text)
        market = self._by_symbol.get(key.symbol)
        if row is not None and market is not None:
            self._replayed[market.id] = row

    def _observe_trades(self, symbol: str, text: str) -> None:
        if text in self._observed_trades:
            return  # a frame replayed on a second connection (or a second lap) is the same trades
        self._observed_trades.add(text)
        recent = self._trades.setdefault(symbol, deque(maxlen=_REST_TRADES))
        for row in json.loads(text, parse_float=str)["data"]:
            stamp = row.get("timestamp")
            seconds = _rfc3339_seconds(stamp) if isinstance(stamp, str) else None
            side, ord_type = row.get("side"), row.get("ord_type")
            entry = [row.get("price"), row.get("qty"), seconds if seconds is not None else 0.0,
                     side[0] if isinstance(side, str) else "", ord_type[0] if isinstance(ord_type, str) else "", ""]
            if "trade_id" in row:
                entry.append(row["trade_id"])
            recent.append(entry)

    def _observe_book(self, key: StreamKey, text: str) -> None:
        frame = json.loads(text, parse_float=str, parse_int=str)
        data = frame["data"][0]
        book = self._rest_books.setdefault(key, _RecordedBook(max(_BOOK_DEPTHS)))
        book.apply([(level["price"], level["qty"]) for level in data.get("bids", ())],
                   [(level["price"], level["qty"]) for level in data.get("asks", ())],
                   snapshot=frame.get("type") == "snapshot")

    def corrupt(self, fault: Fault, text: str) -> str:
        if fault is Fault.TRUNCATED:
            return text[: max(1, len(text) // 2)]
        if fault is Fault.MALFORMED:
            return text.replace('":', '"=', 1)
        frame = json.loads(text)
        data = frame.get("data")
        row = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if row is None:
            frame.pop("channel", None)
        elif fault is Fault.MISSING_FIELDS:
            row.pop("symbol", None)
        else:
            field = next((name for name in ("bid", "last", "price") if name in row), None)
            if field is not None:
                row[field] = "abc"
            else:
                side = next((row[name] for name in ("bids", "asks") if row.get(name)), None)
                if side is not None:
                    side[0]["price"] = "abc"
                else:  # a book update with no level in it: its checksum is the number left
                    row["checksum"] = "abc"
        return json.dumps(frame, separators=(",", ":"))

    def shutdown_event(self) -> str | None:
        return self._status("maintenance")


# -- names ---------------------------------------------------------------------------


def _v2_symbol(wsname: str) -> str:
    """A pair's v2 name from its legacy ``wsname`` (``XBT/USD`` -> ``BTC/USD``)."""
    return "/".join(_V2_NAMES.get(part, part) for part in wsname.split("/"))


def _kraken_market(market: Market) -> Market:
    """A synthetic market under Kraken's pair id (``XXBTZUSD``, ``SOLUSD``, ``XBTUSDT``)."""
    base, quote = market.base, market.quote
    if base in _LEGACY_IDS and quote in _LEGACY_IDS:
        pair_id = _LEGACY_IDS[base] + _LEGACY_IDS[quote]
    else:
        pair_id = _ALTNAMES.get(base, base) + _ALTNAMES.get(quote, quote)
    return Market(market.symbol, pair_id, base, quote, market.kind, market.price_decimals, market.size_decimals,
                  market.reference_price)


def _asset_pair(market: Market) -> dict[str, Any]:
    base, quote = _ALTNAMES.get(market.base, market.base), _ALTNAMES.get(market.quote, market.quote)
    return {
        "altname": base + quote,
        "wsname": f"{base}/{quote}",
        "aclass_base": "currency",
        "base": _LEGACY_IDS.get(market.base, market.base),
        "aclass_quote": "currency",
        "quote": _LEGACY_IDS.get(market.quote, market.quote),
        "lot": "unit",
        "cost_decimals": 5,
        "pair_decimals": market.price_decimals,
        "lot_decimals": market.size_decimals,
        "lot_multiplier": 1,
        "leverage_buy": [],
        "leverage_sell": [],
        "fees": _FEES,
        "fees_maker": _FEES_MAKER,
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": market.step,
        "costmin": "0.5",
        "tick_size": market.tick,
        "status": "online",
    }


def _assets(pairs: Any) -> dict[str, dict[str, Any]]:
    """``/0/public/Assets`` entries for every asset the pairs name, consistent with them."""
    assets: dict[str, dict[str, Any]] = {}
    for entry in pairs:
        wsname = entry.get("wsname")
        if not isinstance(wsname, str) or "/" not in wsname:
            continue
        for asset_id, altname in zip((entry["base"], entry["quote"]), wsname.split("/"), strict=True):
            fiat = asset_id.startswith("Z") and len(asset_id) == 4
            assets.setdefault(asset_id, {"aclass": "currency", "altname": altname, "decimals": 4 if fiat else 10,
                                         "display_decimals": 2 if fiat else 5, "collateral_value": 1.0,
                                         "status": "enabled"})
    return assets


def _names(value: str | None) -> list[str]:
    return [name for name in (value or "").split(",") if name]


def _count(value: str | None, default: int) -> int | None:
    """A REST ``count`` parameter: at most ``default``; ``None`` if it is not a positive integer."""
    if value is None:
        return default
    return min(int(value), default) if value.isdigit() and int(value) > 0 else None


# -- REST and reply bodies -------------------------------------------------------------


def _ok(result: object) -> web.Response:
    return web.Response(text=json.dumps({"error": [], "result": result}, separators=(",", ":")),
                        content_type="application/json")


def _fail(error: str) -> web.Response:
    return web.Response(text=json.dumps({"error": [error]}, separators=(",", ":")), content_type="application/json")


def _reply(body: Mapping[str, Any], time_in: str) -> str:
    # Kraken's replies list their keys alphabetically.
    return json.dumps({**body, "time_in": time_in, "time_out": _now_rfc3339()}, separators=(",", ":"), sort_keys=True)


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ms_rfc3339(ms: int) -> str:
    return _second_rfc3339(ms // 1000) + f"{ms % 1000:03d}000Z"


@functools.lru_cache(maxsize=8)  # every frame of a second shares it; strftime costs more than a whole render
def _second_rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def _rfc3339_seconds(stamp: str) -> float | None:
    """``2021-04-17T16:49:02.557535Z`` as epoch seconds (Kraken REST trade times)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        seconds = int(datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None
    return float(f"{seconds}.{fraction or '0'}") if fraction.isdigit() or not fraction else None


def _seconds_rfc3339(seconds: str) -> str | None:
    """v1's ``"1618678142.557535"`` as ``2021-04-17T16:49:02.557535Z``, digit for digit."""
    whole, _, fraction = seconds.partition(".")
    if not whole.isdigit() or not (fraction.isdigit() or not fraction):
        return None
    return datetime.fromtimestamp(int(whole), UTC).strftime("%Y-%m-%dT%H:%M:%S.") + fraction.ljust(6, "0")[:9] + "Z"


# -- v1 -> v2 transcoding --------------------------------------------------------------


def _number(value: object) -> str | None:
    """A recorded value as a JSON number with its recorded digits; ``None`` if it is none."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    return None


def _at(payload: Mapping[str, Any], name: str, index: int) -> object:
    values = payload.get(name)
    return values[index] if isinstance(values, list) and len(values) > index else None


def _v2_ticker(symbol: str, payload: Mapping[str, Any], kind: str) -> str:
    fields = [("symbol", json.dumps(symbol))]
    for name, (v1, index) in (("bid", ("b", 0)), ("bid_qty", ("b", 2)), ("ask", ("a", 0)), ("ask_qty", ("a", 2)),
                              ("last", ("c", 0)), ("volume", ("v", 1)), ("vwap", ("p", 1)), ("low", ("l", 1)),
                              ("high", ("h", 1))):
        number = _number(_at(payload, v1, index))
        if number is not None:
            fields.append((name, number))
    last, open_ = _at(payload, "c", 0), _at(payload, "o", 1)
    if isinstance(last, str) and isinstance(open_, str):
        try:
            change = Decimal(last) - Decimal(open_)
            fields.append(("change", format(change, "f")))
            if Decimal(open_) != 0:
                percent = (change * 100 / Decimal(open_)).quantize(Decimal("0.01"), ROUND_HALF_UP)
                fields.append(("change_pct", format(percent, "f")))
        except InvalidOperation:
            pass
    trades = _number(_at(payload, "t", 1))
    if trades is not None:
        fields.append(("trades", trades))
    body = ",".join(f'"{name}":{value}' for name, value in fields)
    return f'{{"channel":"ticker","type":"{kind}","data":[{{{body}}}]}}'


def _rest_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The REST ticker row a v1 ticker payload stands for (its ``o`` is today's open)."""
    row = {name: payload[name] for name in ("a", "b", "c", "v", "p", "t", "l", "h") if name in payload}
    opening = _at(payload, "o", 0)
    if opening is not None:
        row["o"] = opening
    return row


def _rest_row_v2(data: Mapping[str, Any]) -> dict[str, Any]:
    """The REST ticker row a v2 ticker stands for (numbers as the recorded digits, see the docstring)."""
    row: dict[str, Any] = {}
    for name, price, qty in (("a", "ask", "ask_qty"), ("b", "bid", "bid_qty")):
        if isinstance(data.get(price), str) and isinstance(data.get(qty), str):
            try:
                whole = str(max(1, math.ceil(Decimal(data[qty]))))
            except InvalidOperation:
                continue
            row[name] = [data[price], whole, data[qty]]
    if isinstance(data.get("last"), str):
        row["c"] = [data["last"]]
    for name, field in (("v", "volume"), ("p", "vwap"), ("l", "low"), ("h", "high")):
        if isinstance(data.get(field), str):
            row[name] = [data[field]] * 2
    if isinstance(data.get("trades"), str) and data["trades"].isdigit():
        row["t"] = [int(data["trades"])] * 2
    if isinstance(data.get("last"), str) and isinstance(data.get("change"), str):
        try:
            row["o"] = format(Decimal(data["last"]) - Decimal(data["change"]), "f")
        except InvalidOperation:
            pass
    return row


def _v2_trades(symbol: str, rows: list[Any]) -> str | None:
    trades = []
    for row in rows:
        if not isinstance(row, list) or len(row) < 5:
            return None
        price, qty = _number(row[0]), _number(row[1])
        stamp = _seconds_rfc3339(row[2]) if isinstance(row[2], str) else None
        if price is None or qty is None:
            return None
        side = {"b": "buy", "s": "sell"}.get(row[3])
        ord_type = {"l": "limit", "m": "market"}.get(row[4])
        parts = [f'"symbol":{json.dumps(symbol)}']
        if side is not None:
            parts.append(f'"side":"{side}"')
        parts += [f'"price":{price}', f'"qty":{qty}']
        if ord_type is not None:
            parts.append(f'"ord_type":"{ord_type}"')
        if stamp is not None:
            parts.append(f'"timestamp":"{stamp}"')
        trades.append("{" + ",".join(parts) + "}")
    return f'{{"channel":"trade","type":"update","data":[{",".join(trades)}]}}'


def _v1_levels(levels: object) -> list[tuple[str, str, str]] | None:
    """v1 ``[price, volume, time(, "r")]`` rows as ``(price, qty, time)`` numbers with the recorded digits."""
    if not isinstance(levels, list):
        return None
    out = []
    for level in levels:
        if not isinstance(level, list) or len(level) < 3:
            return None
        price, qty, stamp = _number(level[0]), _number(level[1]), level[2]
        if price is None or qty is None or not isinstance(stamp, str):
            return None
        out.append((price, qty, stamp))
    return out


def _book_frame(kind: str, symbol: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], tail: str) -> str:
    """A v2 book frame; levels are JSON number texts, ``tail`` the fields after ``asks``."""
    sides = [",".join(f'{{"price":{price},"qty":{qty}}}' for price, qty in levels) for levels in (bids, asks)]
    return (f'{{"channel":"book","type":"{kind}","data":[{{"symbol":{json.dumps(symbol)},"bids":[{sides[0]}],'
            f'"asks":[{sides[1]}]{tail}}}]}}')


def _same_book(held: StreamKey, key: StreamKey) -> bool:
    """Whether two streams are one symbol's book (at any depth)."""
    return held.symbol == key.symbol and all(k.channel == "book" or k.channel.startswith("book-") for k in (held, key))


def _book_key(symbol: str, depth: int) -> StreamKey:
    """The stream of a v1 replay's book windowed to a depth narrower than the recorded one."""
    return StreamKey(f"book-{depth}", symbol)


def _ticker_template(market: Market) -> str:
    """A market's v2 ticker frame as a ``%`` template, its precisions built in once (a frame is
    rendered thousands of times a second). Fields: type, bid, bid_qty, ask, ask_qty, last,
    volume, vwap, low, high, change, change_pct, trades, timestamp."""
    price, qty = f"%.{market.price_decimals}f", f"%.{market.size_decimals}f"
    symbol = json.dumps(market.symbol).replace("%", "%%")
    return ('{"channel":"ticker","type":"%s","data":[{"symbol":' + symbol + ',"bid":' + price + ',"bid_qty":' + qty
            + ',"ask":' + price + ',"ask_qty":' + qty + ',"last":' + price + ',"volume":%.8f,"vwap":' + price
            + ',"low":' + price + ',"high":' + price + ',"change":' + price
            + ',"change_pct":%.2f,"trades":%s,"timestamp":"%s"}]}')


# -- books -----------------------------------------------------------------------------


def _fixed(units: int, decimals: int) -> str:
    """An integer count of ``10**-decimals`` as a fixed-point string (``6500012, 2`` -> ``65000.12``)."""
    if decimals == 0:
        return str(units)
    whole, fraction = divmod(units, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}"


@functools.lru_cache(maxsize=1 << 16)  # the top levels of a replayed book repeat frame after frame
def _precise(value: str, decimals: int) -> str:
    """A recorded number formatted to a precision (``"354.80000000", 2`` -> ``354.80``)."""
    return format(Decimal(value).quantize(Decimal(1).scaleb(-decimals)), "f")






class _SyntheticBook:
    """One market's synthetic book: ``_SYNTHETIC_LEVELS`` one-tick-apart levels from each touch.

    The touch (price and quantity) is the walk's quote; deeper quantities are kept while a
    level stays in the book and drawn (log-uniform, like the walk's sizes) when a level
    enters; every move redraws one deeper level, so a still quote still changes the book.
    Prices and quantities are integers on the market's grid.
    """

    __slots__ = ("_rng", "_scale", "asks", "bids")

    def __init__(self, market: Market, quote: Quote) -> None:
        self._rng = random.Random(f"kraken-book:{market.symbol}")
        self._scale = 1.0 / (market.reference_price * 10.0 ** -market.size_decimals)
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.move(market, quote)

    def _draw(self) -> int:
        return int(10.0 ** (2.0 + 3.0 * self._rng.random()) * self._scale) or 1

    def move(self, market: Market, quote: Quote) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Move to a new quote; the changed bids and asks (quantity 0: removed), best first."""
        tick, unit = 10.0 ** -market.price_decimals, 10.0 ** -market.size_decimals
        best_bid, best_ask = round(quote.bid / tick), round(quote.ask / tick)
        redraw = 1 + int(self._rng.random() * (2 * _SYNTHETIC_LEVELS - 2))
        changes: list[list[tuple[int, int]]] = []
        for number, (old, best, size, step) in enumerate(((self.bids, best_bid, quote.bid_size, -1),
                                                          (self.asks, best_ask, quote.ask_size, 1))):
            new = {best: max(1, round(size / unit))}
            for level in range(1, _SYNTHETIC_LEVELS):
                price = best + step * level
                fresh = level + number * (_SYNTHETIC_LEVELS - 1) == redraw or price not in old
                new[price] = self._draw() if fresh else old[price]
            changed = [(price, qty) for price, qty in new.items() if old.get(price) != qty]
            changed += [(price, 0) for price in old if price not in new]
            changed.sort(reverse=step < 0)
            changes.append(changed)
            old.clear()
            old.update(new)
        return changes[0], changes[1]

    def levels(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Every bid and ask, best first."""
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())

    def checksum(self, market: Market) -> int:
        bids, asks = self.levels()
        p, s = market.price_decimals, market.size_decimals
        return book_checksum([(_fixed(pr, p), _fixed(q, s)) for pr, q in asks],
                             [(_fixed(pr, p), _fixed(q, s)) for pr, q in bids])


class _BookSide:
    """One side of a recorded book: levels by price with their recorded digits, kept sorted."""

    __slots__ = ("_keys", "_levels", "_sign")

    def __init__(self, bids: bool) -> None:
        self._sign = -1.0 if bids else 1.0
        self._keys: list[float] = []  # sign * price, ascending: best first
        self._levels: dict[float, tuple[str, str]] = {}

    def clear(self) -> None:
        self._keys.clear()
        self._levels.clear()

    def set(self, price: str, qty: str) -> int | None:
        """Set a level (quantity 0 removes it); its index, best first, before (removed) or after."""
        key = self._sign * float(price)
        index = bisect.bisect_left(self._keys, key)
        present = key in self._levels
        if float(qty) == 0:
            if present:
                del self._keys[index]
                del self._levels[key]
                return index
            return None
        if not present:
            self._keys.insert(index, key)
        self._levels[key] = (price, qty)
        return index

    def truncate(self, depth: int) -> None:
        for key in self._keys[depth:]:
            del self._levels[key]
        del self._keys[depth:]

    def at(self, index: int) -> tuple[str, str]:
        return self._levels[self._keys[index]]

    def top(self, count: int) -> list[tuple[str, str]]:
        return [self._levels[key] for key in self._keys[:count]]

    def __len__(self) -> int:
        return len(self._keys)


class _RecordedBook:
    """A book rebuilt from recorded frames (a v1 transcoding's, or what REST serves in a replay)."""

    __slots__ = ("asks", "bids", "depth")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids = _BookSide(bids=True)
        self.asks = _BookSide(bids=False)

    def apply(self, bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]], *, snapshot: bool,
              windows: tuple[int, ...] = ()) -> dict[int, tuple[list[tuple[str, str]], list[tuple[str, str]]]]:
        """Apply levels; per window depth, the bid and ask deltas a subscriber of that depth needs.

        Kraken's rule, per depth: a change within the window is sent; a level leaving it
        because a better one came in is not (the subscriber truncates to its depth); a level
        entering it because one inside was removed is sent.
        """
        if snapshot:
            self.bids.clear()
            self.asks.clear()
        deltas: dict[int, tuple[dict[str, str], dict[str, str]]] = {size: ({}, {}) for size in windows}
        for number, (side, levels) in enumerate(((self.bids, bids), (self.asks, asks))):
            for price, qty in levels:
                index = side.set(price, qty)
                if index is None or snapshot:
                    continue
                for size in windows:
                    if index < size:
                        sent = deltas[size][number]
                        sent[price] = qty
                        if float(qty) == 0 and len(side) >= size:
                            entering, entering_qty = side.at(size - 1)
                            sent[entering] = entering_qty
            # A level pushed beyond the depth gets no delete: the subscriber truncates, as Kraken says.
            side.truncate(self.depth)
        return {size: (list(sent_bids.items()), list(sent_asks.items()))
                for size, (sent_bids, sent_asks) in deltas.items()}

    def checksum(self, market: Market) -> int:
        p, s = market.price_decimals, market.size_decimals
        return book_checksum([(_precise(pr, p), _precise(q, s)) for pr, q in self.asks.top(BOOK_CHECKSUM_LEVELS)],
                             [(_precise(pr, p), _precise(q, s)) for pr, q in self.bids.top(BOOK_CHECKSUM_LEVELS)])
