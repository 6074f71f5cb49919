"""OKX v5: REST ``/api/v5`` market data and the public websocket, as ccxt.pro uses them.

REST (all GET; every body is ``{"code":"0","data":[...],"msg":""}``, errors carry their
OKX code in ``code`` with an empty ``data``, still with HTTP 200, as OKX does):
``/api/v5/public/instruments`` (``instType`` SPOT, SWAP, FUTURES or OPTION, which also
needs ``uly`` or ``instFamily``; optional ``instId``), ``/api/v5/market/tickers``
(``instType``; OPTION also ``uly``/``instFamily``), ``/api/v5/market/ticker`` (``instId``)
and ``/api/v5/public/time``. A missing parameter is code 50014, a bad ``instType`` 51000,
an unknown ``instId`` 51001 (ccxt: ``BadSymbol``); a 429 body is code 50011 (ccxt:
``RateLimitExceeded``).

Websocket ``/ws/v5/public``: ``{"op":"subscribe"|"unsubscribe","args":[{"channel":...,
"instId":...}, ...]}``, answered per argument with ``{"event":"subscribe","arg":{...},
"connId":...}`` (likewise ``unsubscribe``); an unknown channel or instrument gets
``{"event":"error","code":"60018","msg":"Wrong URL or channel:...,instId:... doesn't
exist. ...","connId":...}`` and the request's other arguments are still served; a frame
that is not a JSON request gets code 60012 (``Illegal request: ...``). A second subscribe
to the same stream is acknowledged again and changes nothing. Keep-alive is the text
``ping``, answered with the text ``pong`` (ccxt sends it every 18 s); the server sends no
pings. Before a service upgrade OKX sends ``{"event":"notice","code":"64008",...}`` and
then closes: :meth:`OkxDialect.shutdown_event` (ccxt turns it into a ``NetworkError``).

Synthetic channels: ``tickers`` (the full ticker, pushed on subscribe and on every
update), ``bbo-tbt`` (the best bid and ask, also pushed on subscribe), ``trades`` and
``books``. Other public channels (``books5``, ``mark-price``, ...) are acknowledged
without data.

* ``trades``: every trade of the walk, at the touch (a ``buy``, the taker's side, at the
  ask, a ``sell`` at the bid), with consecutive ``tradeId`` values: a frame carries every trade
  the market made since the previous ``trades`` frame (several steps of one market can
  go to other channels in between), oldest first. No snapshot on subscribe, as OKX.
* ``books``: a snapshot of :data:`BOOK_DEPTH` levels a side on subscribe (``"action":
  "snapshot"``), then one ``update`` of the changed levels per step (size ``"0"``
  deletes). The best level is the walk's bid and ask of the same step (with their
  sizes), deeper levels one to three ticks apart; levels the touch crosses are deleted,
  and the side is refilled and trimmed to :data:`BOOK_DEPTH` in the same update. Every
  frame carries ``seqId`` (the walk's book ``update_id``), ``prevSeqId`` (the ``seqId``
  of the stream's previous frame; ``-1`` in a snapshot, as OKX) and ``checksum``
  (:func:`book_checksum`). A snapshot sent to a late subscriber carries the stream's
  last ``seqId``, so the next update chains for every subscriber. ccxt checks
  ``prevSeqId`` (an ``InvalidNonce``, then it resubscribes) but not the checksum.

REST for these channels: ``/api/v5/market/books`` and ``/api/v5/market/books-full``
(``instId``, ``sz`` levels, default 1; the synthetic book of the walk's current step,
or in a replay the book rebuilt from the replayed ``books`` frames),
``/api/v5/market/trades`` (``instId``, ``limit`` default 100, at most 500: the latest
trades, newest first) and ``/api/v5/market/history-trades`` (also ``after``/``before``, a
``tradeId`` to page older/newer than; ``type`` 1 only); a synthetic market keeps its
last 1,000 trades, a replay every replayed one. Listed markets come from the symbols asked for: ``BTC/USDT`` is spot
``BTC-USDT``; ``BTC/USDT:USDT`` a linear swap ``BTC-USDT-SWAP`` (settled in the quote),
``UNI/USD:UNI`` an inverse one (settled in the base); ``BTC/USD:BTC-220527`` a dated future
``BTC-USD-220527`` expiring at 08:00 UTC that day. Options are not synthesized.

Replay serves the recorded instrument lists byte for byte (all four types), maps each
recorded data frame to its stream by ``arg.channel`` and ``arg.instId`` (``trades`` and
``books`` frames byte for byte, with their recorded ``tradeId``, ``checksum`` and, where
the recording has them, ``seqId``/``prevSeqId``; the 2022 recording has none), and answers
REST tickers from the last replayed ``tickers`` frame of each market, books and trades from
the replayed ``books`` and ``trades`` frames. A replay serves the depth the recording holds
(``books``: 400 levels for BTC-USDT, fewer for thin markets), whatever depth ccxt asks for;
``books5`` is not recorded and stays silent. ``Market.kind`` only
tells spot from contract; the OKX instrument type is kept by the dialect.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from flight_md.core.books import okx_checksum as book_checksum
from flight_md.emulator.book import SyntheticBook
from flight_md.emulator.dialect import ConnectionInfo, Control, Dialect, RestHandler, Subscription, now_ms
from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, MarketKind, StreamKey
from flight_md.emulator.recording import RecordedMessage, Recording
from flight_md.emulator.synthetic import PriceWalk, Quote

__all__ = ["BOOK_DEPTH", "OkxDialect", "book_checksum"]

_INST_TYPES: Final = ("SPOT", "SWAP", "FUTURES", "OPTION")
_INSTRUMENTS: Final = "/api/v5/public/instruments"
_SYNTHETIC_CHANNELS: Final = frozenset({"tickers", "bbo-tbt", "trades", "books"})
# Public channels OKX accepts on /ws/v5/public with an instId; those the emulator does not
# synthesize are acknowledged and stay silent.
_PUBLIC_CHANNELS: Final = _SYNTHETIC_CHANNELS | {
    "books5", "mark-price", "funding-rate", "open-interest", "price-limit", "estimated-price",
}
# ccxt's okx commonCurrencies: how it renames OKX currency codes in unified symbols.
_COMMON_CURRENCIES: Final = {"XBT": "BTC", "BCHSV": "BSV", "AE": "AET"}
_NOT_FOUND: Final = ("Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. Please use the correct URL, "
                     "channel and parameters referring to API document.")
_SHUTDOWN: Final = ('{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service '
                    'upgrade. Please reconnect."}')
_EXPIRY_HOUR_UTC: Final = 8
BOOK_DEPTH: Final = 25
"""Levels a side of a synthetic ``books`` stream: the 25 OKX's checksum covers."""
_TRADES_KEPT: Final = 1000  # recent trades a synthetic market keeps for REST and the next frame
_REST_TRADES_MAX: Final = 500


class OkxDialect(Dialect):
    """OKX v5 public market data: spot, swaps and dated futures (and recorded options)."""

    name = "okx"
    synthetic_channels = _SYNTHETIC_CHANNELS

    def __init__(self, markets: tuple[Market, ...], walks: Mapping[str, PriceWalk], recording: Recording | None) -> None:
        super().__init__(markets, walks, recording)
        # instId -> instrument row as /public/instruments lists it (recorded or synthesized).
        self._instruments: dict[str, dict[str, Any]] = {}
        if recording is not None:
            for inst_type in _INST_TYPES:
                for row in _recorded_rows(recording, inst_type):
                    self._instruments.setdefault(row["instId"], row)
        else:
            listed = []
            for market in self.markets:
                row = _instrument(market)
                self._instruments[row["instId"]] = row
                listed.append(_with_id(market, row["instId"]))
            self.markets = tuple(listed)
        self._by_id: dict[str, Market] = {market.id: market for market in self.markets}
        # The walks hold the markets as parsed from the symbols; the listed ones carry OKX ids.
        self._id_by_symbol: dict[str, str] = {market.symbol: market.id for market in self.markets}
        self._replayed: dict[str, dict[str, Any]] = {}
        # Synthetic trades by symbol: the latest ones (REST), and those no trades frame carried yet.
        self._trades: dict[str, deque[dict[str, str]]] = {}
        self._unsent: dict[str, list[dict[str, str]]] = {}
        self._last_trade: dict[str, int] = {}
        self._books: dict[str, SyntheticBook] = {}  # synthetic book by symbol
        # Replay: the book rebuilt from the replayed frames (price text -> level) and the trades.
        self._replayed_books: dict[str, tuple[dict[str, list[str]], dict[str, list[str]], str]] = {}
        self._replayed_trades: dict[str, dict[str, dict[str, str]]] = {}

    # -- markets and REST -------------------------------------------------------------

    def recorded_markets(self, recording: Recording) -> tuple[Market, ...]:
        markets = [_recorded_market(row) for inst_type in _INST_TYPES for row in _recorded_rows(recording, inst_type)]
        if not markets:
            raise ValueError(f"{recording.source}: no {_INSTRUMENTS} response recorded")
        return tuple(markets)

    def rest_routes(self) -> list[tuple[str, RestHandler]]:
        return [
            (_INSTRUMENTS, self._instruments_handler),
            ("/api/v5/market/tickers", self._tickers),
            ("/api/v5/market/ticker", self._ticker),
            ("/api/v5/public/time", self._time),
            ("/api/v5/market/books", self._book),
            ("/api/v5/market/books-full", self._book),
            ("/api/v5/market/trades", self._recent_trades),
            ("/api/v5/market/history-trades", self._recent_trades),
        ]

    def rest_error(self, status: int) -> str:
        if status == 429:
            return '{"msg":"Too Many Requests","code":"50011"}'
        if status == 404:
            return '{"msg":"Not Found","code":"404"}'
        return '{"msg":"Bad Request","code":"400"}'

    async def _time(self, request: web.Request) -> web.StreamResponse:
        return _ok([{"ts": str(now_ms())}])

    async def _instruments_handler(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        inst_type, failure = _inst_type(query)
        if failure is not None:
            return failure
        family = query.get("instFamily") or query.get("uly")
        if inst_type == "OPTION" and not family:
            return _fail("50014", "Parameter instFamily can not be empty.")
        inst_id = query.get("instId")
        if self.recording is not None and not inst_id and (inst_type == "OPTION") == bool(family):
            # The recorded list, byte for byte (options: of the underlying asked for).
            body = self.recording.body(_INSTRUMENTS, instType=inst_type, **({"uly": family} if family else {}))
            if body is not None:
                return web.Response(text=body, content_type="application/json")
        rows = [row for row in self._instruments.values() if row["instType"] == inst_type
                and (not family or family in (row.get("uly"), row.get("instFamily")))
                and (not inst_id or row["instId"] == inst_id)]
        return _ok(rows)

    async def _tickers(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        inst_type, failure = _inst_type(query)
        if failure is not None:
            return failure
        family = query.get("instFamily") or query.get("uly")
        if inst_type == "OPTION" and not family:
            return _fail("50014", "Parameter instFamily can not be empty.")
        rows = []
        for inst_id, row in self._instruments.items():
            if row["instType"] != inst_type or (family and family not in (row.get("uly"), row.get("instFamily"))):
                continue
            ticker = self._ticker_row(inst_id)
            if ticker is not None:
                rows.append(ticker)
        return _ok(rows)

    async def _ticker(self, request: web.Request) -> web.StreamResponse:
        inst_id = request.query.get("instId")
        if not inst_id:
            return _fail("50014", "Parameter instId can not be empty.")
        if inst_id not in self._instruments:
            return _fail("51001", "Instrument ID does not exist")
        ticker = self._ticker_row(inst_id)
        return _ok([] if ticker is None else [ticker])

    def _rest_market(self, query: Mapping[str, str]) -> tuple[Market | None, web.Response | None]:
        inst_id = query.get("instId")
        if not inst_id:
            return None, _fail("50014", "Parameter instId can not be empty.")
        if inst_id not in self._instruments:
            return None, _fail("51001", "Instrument ID does not exist")
        return self._by_id.get(inst_id), None

    async def _book(self, request: web.Request) -> web.StreamResponse:
        market, failure = self._rest_market(request.query)
        if failure is not None:
            return failure
        try:
            size = int(request.query.get("sz", "1"))
        except ValueError:
            size = 0
        if not 1 <= size <= 5000:
            return _fail("51000", "Parameter sz error")
        if market is None:
            return _ok([])
        if self.recording is not None:
            replayed = self._replayed_books.get(market.symbol)
            if replayed is None:
                return _ok([])
            bids, asks, ts = replayed
            return _ok([{"asks": _sorted_levels(asks, False)[:size], "bids": _sorted_levels(bids, True)[:size],
                         "ts": ts}])
        walk = self.walks.get(market.symbol)
        if walk is None:
            return _ok([])
        quote = walk.quote
        self._saw(market, quote)
        book = self._book_of(market, quote)
        book.apply(quote)  # the subscribers get these changes with the next update
        return _ok([{"asks": [[px, sz, "0", "1"] for px, sz in book.levels(False)[:size]],
                     "bids": [[px, sz, "0", "1"] for px, sz in book.levels(True)[:size]],
                     "ts": str(quote.time_ms or now_ms())}])

    async def _recent_trades(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        market, failure = self._rest_market(query)
        if failure is not None:
            return failure
        try:
            limit = int(query.get("limit", "100"))
            after = int(query["after"]) if query.get("after") else None
            before = int(query["before"]) if query.get("before") else None
        except ValueError:
            return _fail("51000", "Parameter limit, after or before error")
        if market is None:
            return _ok([])
        if self.recording is not None:
            rows: Iterable[dict[str, str]] = self._replayed_trades.get(market.symbol, {}).values()
        else:
            walk = self.walks.get(market.symbol)
            if walk is not None:
                self._saw(market, walk.quote)
            rows = self._trades.get(market.symbol, ())
        picked = [row for row in rows if (after is None or int(row["tradeId"]) < after)
                  and (before is None or int(row["tradeId"]) > before)]
        picked.sort(key=lambda row: int(row["tradeId"]), reverse=True)
        if before is not None and after is None:
            picked = picked[-max(1, min(limit, _REST_TRADES_MAX)):]  # the oldest newer than `before`
        return _ok([dict(row) for row in picked[:max(1, min(limit, _REST_TRADES_MAX))]])

    def _ticker_row(self, inst_id: str) -> dict[str, Any] | None:
        market = self._by_id.get(inst_id)
        if market is None:
            return None
        if self.recording is not None:
            state = self._replayed.get(market.symbol)
            return dict(state) if state is not None else None
        walk = self.walks.get(market.symbol)
        return None if walk is None else _ticker_data(self._instruments[inst_id], market, walk.quote)

    # -- websockets -------------------------------------------------------------------

    def ws_paths(self) -> tuple[str, ...]:
        return ("/ws/v5/public",)

    def control(self, connection: ConnectionInfo, text: str) -> Control:
        if text == "ping":
            return Control(("pong",))
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            message = {}
        op, args = message.get("op"), message.get("args")
        # OKX echoes a request's "id" in its replies (ccxt then rejects only that request).
        echo = {"id": message["id"]} if isinstance(message.get("id"), str) else {}
        echo["connId"] = connection.conn_id[:8]
        if (op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args
                or not all(isinstance(arg, dict) for arg in args)):
            return Control((_error("60012", f"Illegal request: {text}", echo),))
        replies: list[str] = []
        keys: list[Subscription] = []
        unknown: list[str] = []
        for arg in args:
            channel, inst_id = arg.get("channel"), arg.get("instId")
            market = self._by_id.get(inst_id) if isinstance(inst_id, str) else None
            if not isinstance(channel, str) or channel not in _PUBLIC_CHANNELS or market is None:
                replies.append(_error("60018", _NOT_FOUND.format(channel=channel, inst_id=inst_id or ""), echo))
                if op == "subscribe":
                    unknown.append(f"{channel}:{inst_id}")
                continue
            replies.append(_dumps({"event": op, "arg": arg, **echo}))
            keys.append(Subscription(StreamKey(channel, market.symbol), f"{channel}:{inst_id}"))
        if op == "unsubscribe":
            return Control(tuple(replies), unsubscribe=tuple(sub.key for sub in keys), unknown=tuple(unknown))
        return Control(tuple(replies), subscribe=tuple(keys), unknown=tuple(unknown))

    # -- data -------------------------------------------------------------------------

    def renders(self, channel: str) -> bool:
        return channel in _SYNTHETIC_CHANNELS

    def snapshot_on_subscribe(self, key: StreamKey) -> bool:
        return key.channel in ("tickers", "bbo-tbt", "books")

    def render(self, key: StreamKey, market: Market, quote: Quote, *, snapshot: bool) -> str:
        ms = quote.time_ms or now_ms()
        inst_id = self._id_by_symbol.get(market.symbol, market.id)
        p, s = market.price_decimals, market.size_decimals
        self._saw(market, quote)
        if key.channel == "books":
            return self._render_book(inst_id, market, quote, snapshot=snapshot)
        if key.channel == "trades":
            rows = self._unsent.pop(market.symbol, [])
            return _dumps({"arg": {"channel": "trades", "instId": inst_id}, "data": rows})
        if key.channel == "tickers":
            data = _ticker_data(self._instruments[inst_id], market, quote)
            return _dumps({"arg": {"channel": "tickers", "instId": inst_id}, "data": [data]})
        if key.channel == "bbo-tbt":
            return (f'{{"arg":{{"channel":"bbo-tbt","instId":"{inst_id}"}},"data":[{{'
                    f'"asks":[["{quote.ask:.{p}f}","{quote.ask_size:.{s}f}","0","1"]],'
                    f'"bids":[["{quote.bid:.{p}f}","{quote.bid_size:.{s}f}","0","1"]],'
                    f'"ts":"{ms}","seqId":{quote.update_id}}}]}}')
        raise ValueError(f"okx synthesizes no channel {key.channel!r}; it renders {sorted(_SYNTHETIC_CHANNELS)}")

    def _saw(self, market: Market, quote: Quote) -> None:
        """Note the walk's trade of a step, whichever channel the step was rendered for."""
        symbol = market.symbol
        last = self._last_trade.get(symbol, quote.trade_id - 1)
        if quote.trade_id <= last:
            return
        self._last_trade[symbol] = quote.trade_id
        inst_id = self._id_by_symbol.get(symbol, market.id)
        p, s = market.price_decimals, market.size_decimals
        row = {"instId": inst_id, "tradeId": str(quote.trade_id), "px": f"{quote.last:.{p}f}",
               "sz": f"{quote.last_size:.{s}f}", "side": "sell" if quote.buyer_maker else "buy",
               "ts": str(quote.time_ms or now_ms()), "count": "1"}
        self._trades.setdefault(symbol, deque(maxlen=_TRADES_KEPT)).append(row)
        unsent = self._unsent.setdefault(symbol, [])
        unsent.append(row)
        if len(unsent) > _TRADES_KEPT:
            del unsent[0]

    def _book_of(self, market: Market, quote: Quote) -> SyntheticBook:
        book = self._books.get(market.symbol)
        if book is None:
            book = self._books[market.symbol] = SyntheticBook(market, quote, BOOK_DEPTH)
        return book

    def _render_book(self, inst_id: str, market: Market, quote: Quote, *, snapshot: bool) -> str:
        book = self._book_of(market, quote)
        book.apply(quote)
        bids, asks = book.levels(True), book.levels(False)
        checksum = book_checksum(bids, asks)
        ts = quote.time_ms or now_ms()
        arg = f'{{"channel":"books","instId":"{inst_id}"}}'
        if snapshot:
            # The stream's last seqId: the next update then chains for every subscriber, and
            # changes not yet sent to the others stay pending for that update.
            if book.seq is None:
                book.seq = quote.update_id
            return (f'{{"arg":{arg},"action":"snapshot","data":[{{"asks":{_levels_json(asks)},'
                    f'"bids":{_levels_json(bids)},"ts":"{ts}","checksum":{checksum},"prevSeqId":-1,'
                    f'"seqId":{book.seq}}}]}}')
        changed_bids, changed_asks = book.take()
        prev = book.seq if book.seq is not None else -1
        book.seq = max(quote.update_id, prev + 1)
        return (f'{{"arg":{arg},"action":"update","data":[{{"asks":{_levels_json(changed_asks)},'
                f'"bids":{_levels_json(changed_bids)},"ts":"{ts}","checksum":{checksum},"prevSeqId":{prev},'
                f'"seqId":{book.seq}}}]}}')

    def recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        try:
            frame = json.loads(message.text)
        except ValueError:
            return None  # the text "pong"
        if not isinstance(frame, dict) or "event" in frame or "data" not in frame:
            return None
        arg = frame.get("arg")
        if not isinstance(arg, dict):
            return None
        channel, inst_id = arg.get("channel"), arg.get("instId")
        market = self._by_id.get(inst_id) if isinstance(inst_id, str) else None
        if not isinstance(channel, str) or market is None:
            return None
        return StreamKey(channel, market.symbol), f"{channel}:{inst_id}", message.text

    def observe(self, key: StreamKey, text: str) -> None:
        if key.channel not in ("tickers", "trades", "books"):
            return
        try:
            frame = json.loads(text)
            rows = [row for row in frame["data"] if isinstance(row, dict)]
        except (ValueError, KeyError, TypeError):
            return
        if key.channel == "tickers":
            if rows:
                self._replayed[key.symbol] = rows[0]
        elif key.channel == "trades":
            trades = self._replayed_trades.setdefault(key.symbol, {})
            for row in rows:
                trades.setdefault(str(row.get("tradeId")), row)
        else:
            for row in rows:
                self._observe_book(key.symbol, frame.get("action"), row)

    def _observe_book(self, symbol: str, action: object, row: Mapping[str, Any]) -> None:
        if action == "snapshot" or symbol not in self._replayed_books:
            self._replayed_books[symbol] = ({}, {}, "")
        bids, asks, _ = self._replayed_books[symbol]
        for side, levels in ((bids, row.get("bids")), (asks, row.get("asks"))):
            for level in levels if isinstance(levels, list) else ():
                if isinstance(level, list) and len(level) >= 2:
                    if _float(level[1]) == 0.0:
                        side.pop(str(level[0]), None)
                    else:
                        side[str(level[0])] = [str(item) for item in level]
        self._replayed_books[symbol] = (bids, asks, str(row.get("ts", "")))

    def corrupt(self, fault: Fault, text: str) -> str:
        if fault is Fault.TRUNCATED:
            return text[: max(1, len(text) // 2)]
        if fault is Fault.MALFORMED:
            return text.replace('":', '"=', 1)
        frame = json.loads(text)
        data = frame.get("data")
        row = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if fault is Fault.MISSING_FIELDS:
            # tickers and trades rows name their market; bbo-tbt rows only in "arg".
            if row is not None and "instId" in row:
                del row["instId"]
            elif isinstance(frame.get("arg"), dict):
                frame["arg"].pop("instId", None)
        elif row is not None:
            field = next((name for name in ("bidPx", "px") if name in row), None)
            if field is not None:
                row[field] = "abc"
            else:
                side = next((row[name] for name in ("bids", "asks") if isinstance(row.get(name), list)
                             and row[name]), None)
                if side is not None:
                    side[0][0] = "abc"
        return _dumps(frame)

    def shutdown_event(self) -> str | None:
        return _SHUTDOWN


def _dumps(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def _ok(data: list[dict[str, Any]]) -> web.Response:
    return web.Response(text=_dumps({"code": "0", "data": data, "msg": ""}), content_type="application/json")


def _fail(code: str, message: str) -> web.Response:
    return web.Response(text=_dumps({"code": code, "data": [], "msg": message}), content_type="application/json")


def _error(code: str, message: str, echo: Mapping[str, str]) -> str:
    return _dumps({"event": "error", "code": code, "msg": message, **echo})


def _inst_type(query: Mapping[str, str]) -> tuple[str, web.Response | None]:
    inst_type = query.get("instType", "")
    if not inst_type:
        return "", _fail("50014", "Parameter instType can not be empty.")
    if inst_type not in _INST_TYPES:
        return "", _fail("51000", "Parameter instType error")
    return inst_type, None


def _recorded_rows(recording: Recording, inst_type: str) -> list[dict[str, Any]]:
    """Instrument rows of the first recorded response per ``(instType, uly)``, in order."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for response in recording.http:
        if response.path != _INSTRUMENTS or ("instType", inst_type) not in response.query:
            continue
        query = tuple(sorted(response.query))
        if query in seen:
            continue  # the recorder loaded the markets again on every reconnect
        seen.add(query)
        rows.extend(row for row in json.loads(response.body).get("data", []) if row.get("instId"))
    return rows


def _code(currency: str) -> str:
    upper = currency.upper()
    return _COMMON_CURRENCIES.get(upper, upper)


def _yymmdd(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%y%m%d")


def _decimals(step: str) -> int:
    return len(step.partition(".")[2].rstrip("0")) if "." in step else 0


def _recorded_market(row: dict[str, Any]) -> Market:
    """The market ccxt makes of an instrument row (its unified symbol, as ``parse_market``)."""
    inst_id, inst_type = row["instId"], row.get("instType", "")
    base_id, quote_id = row.get("baseCcy", ""), row.get("quoteCcy", "")
    if inst_type != "SPOT" and row.get("uly"):
        base_id, _, quote_id = row["uly"].partition("-")
    elif inst_type == "SPOT" and not (base_id and quote_id):
        base_id, _, quote_id = inst_id.partition("-")
    base, quote = _code(base_id), _code(quote_id)
    symbol = f"{base}/{quote}" if base and quote else inst_id
    if inst_type != "SPOT":
        if row.get("settleCcy"):
            symbol += f":{_code(row['settleCcy'])}"
        if row.get("expTime") and inst_type in ("FUTURES", "OPTION"):
            symbol += f"-{_yymmdd(int(row['expTime']))}"
            if inst_type == "OPTION":
                symbol += f"-{row.get('stk', '')}-{row.get('optType', '')}"
    kind = MarketKind.SPOT if inst_type == "SPOT" else MarketKind.LINEAR
    return Market(symbol, inst_id, base, quote, kind, _decimals(row.get("tickSz", "1")),
                  _decimals(row.get("lotSz", "1")), 1.0)


def _with_id(market: Market, inst_id: str) -> Market:
    return Market(market.symbol, inst_id, market.base, market.quote, market.kind, market.price_decimals,
                  market.size_decimals, market.reference_price)


def _instrument(market: Market) -> dict[str, Any]:
    """The instrument row OKX would list for a synthetic market.

    Raises:
        ValueError: If OKX has no such market (a swap or future settled in neither the
            base nor the quote currency).
    """
    base, quote = market.base, market.quote
    settle, _, expiry = market.symbol.partition(":")[2].partition("-")
    row: dict[str, Any] = {
        "alias": "", "baseCcy": "", "category": "1", "ctMult": "", "ctType": "", "ctVal": "", "ctValCcy": "",
        "expTime": "", "instFamily": "", "instId": f"{base}-{quote}", "instType": "SPOT", "lever": "10",
        "listTime": "1548133413000", "lotSz": market.step, "maxIcebergSz": "9999999999",
        "maxLmtSz": "9999999999", "maxMktSz": "1000000", "maxStopSz": "1000000", "maxTriggerSz": "9999999999",
        "maxTwapSz": "9999999999", "minSz": market.step, "optType": "", "quoteCcy": "", "settleCcy": "",
        "state": "live", "stk": "", "tickSz": market.tick, "uly": "",
    }
    if not settle:
        row.update(baseCcy=base, quoteCcy=quote)
        return row
    if settle not in (base, quote):
        raise ValueError(f"okx has no contract {market.symbol!r}: it settles in the quote (linear, "
                         f"e.g. '{base}/{quote}:{quote}') or the base (inverse, e.g. '{base}/{quote}:{base}')")
    linear = settle == quote
    row.update(ctMult="1", ctType="linear" if linear else "inverse", ctVal="1",
               ctValCcy=base if linear else quote, instFamily=f"{base}-{quote}", lever="100",
               settleCcy=settle, uly=f"{base}-{quote}")
    if not expiry:
        row.update(instId=f"{base}-{quote}-SWAP", instType="SWAP")
        return row
    try:
        expires = datetime.strptime(expiry, "%y%m%d").replace(hour=_EXPIRY_HOUR_UTC, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"bad expiry in {market.symbol!r}; expected a date YYMMDD, e.g. '{base}/{quote}:"
                         f"{settle}-250627'") from None
    row.update(alias="quarter", expTime=str(int(expires.timestamp()) * 1000), instId=f"{base}-{quote}-{expiry}",
               instType="FUTURES")
    return row


def _ticker_data(instrument: Mapping[str, Any], market: Market, quote: Quote) -> dict[str, Any]:
    """A ``tickers`` row (websocket data and REST) of a synthetic market."""
    p, s = market.price_decimals, market.size_decimals
    spot = instrument["instType"] == "SPOT"
    # Contracts are 1 base (linear) or 1 quote (inverse) each; spot counts in the base.
    contracts = quote.volume if spot or instrument["ctType"] == "linear" else quote.quote_volume
    return {
        "instType": instrument["instType"],
        "instId": instrument["instId"],
        "last": f"{quote.last:.{p}f}",
        "lastSz": f"{quote.last_size:.{s}f}",
        "askPx": f"{quote.ask:.{p}f}",
        "askSz": f"{quote.ask_size:.{s}f}",
        "bidPx": f"{quote.bid:.{p}f}",
        "bidSz": f"{quote.bid_size:.{s}f}",
        "open24h": f"{quote.open:.{p}f}",
        "high24h": f"{quote.high:.{p}f}",
        "low24h": f"{quote.low:.{p}f}",
        "volCcy24h": f"{quote.quote_volume:.4f}" if spot else f"{quote.volume:.{s}f}",
        "vol24h": f"{contracts:.{s}f}",
        "ts": str(quote.time_ms or now_ms()),
        "sodUtc0": f"{quote.open:.{p}f}",
        "sodUtc8": f"{quote.open:.{p}f}",
    }




def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _sorted_levels(side: Mapping[str, list[str]], descending: bool) -> list[list[str]]:
    return sorted(side.values(), key=lambda level: float(level[0]), reverse=descending)


def _levels_json(levels: Iterable[tuple[str, str]]) -> str:
    """OKX levels: price, size, ``"0"`` (liquidated orders, deprecated), orders at the level."""
    return "[" + ",".join(f'["{px}","{sz}","0","{0 if _float(sz) == 0.0 else 1}"]' for px, sz in levels) + "]"


