"""The trade path of one stream: every trade ccxt parses, exactly once, into the buffer.

:class:`TradeFanout` is a trades stream's :class:`~flight_md.ingest.fanout.Fanout`: the
websocket tap (:class:`~flight_md.ingest.ccxt_compat.TradeTap`, which reports every trade ccxt
appends to its trade caches) and the REST poller call :meth:`TradeFanout.ingest` per trade.
It normalises the trade (:func:`flight_md.normalize.to_trade`), drops a duplicate, stores the
rest with :meth:`MarketDataBuffer.append_trade_row
<flight_md.buffer.MarketDataBuffer.append_trade_row>` (unchecked: ``to_trade`` checked it)
and hands a :class:`~flight_md.normalize.Trade` to every callback. ``side`` is the taker's:
where the venue sends the maker's (``Venue.maker_side_trades``: Coinbase), it is turned round.

Exactly once
    A trade is a duplicate when its id was stored before. Venues resend trades: Coinbase's
    ``market_trades`` starts every subscription with a snapshot of recent trades, a REST poll
    answers the last trades again, a backfill overlaps what the websocket delivered. Where a
    venue numbers its trades one by one (``Venue.sequential_trade_ids``: Binance, OKX,
    Coinbase), an id at or below the highest stored is a duplicate unless it is one of the
    missing ids of a known gap; that takes an integer and a few ranges a symbol. Elsewhere
    (Bybit UUIDs, Kraken) the last :data:`DEDUPE_WINDOW` ids of a symbol are remembered. A
    trade without an id is stored as it comes (nothing tells two such trades apart).
    Duplicates are counted (``duplicates``), never an event.

Gaps and backfill
    On a venue with sequential ids, an id more than one above the highest stored means trades
    were missed (a reconnect, a dropped frame): one ``gap`` event records the symbol, the count
    and the id range (``{"count": 5, "first_id": "101", "last_id": "105"}``; not after the
    symbol was unsubscribed and subscribed again: those trades were not wanted), and a backfill
    task fetches them with ccxt ``fetch_trades`` (``since`` the last stored trade's time, or
    the venue's ``trade_backfill`` parameters: Binance asks from the first missing id), page by
    page in id order, storing only the missing ones, until the gap is filled, a page brings
    nothing new, or :data:`BACKFILL_PAGES` pages. One ``backfill`` event says how many came
    back. Backfilled trades are stored after the newer ones the websocket already stored (the
    store keeps arrival order); their exchange timestamps put them in place.

Everything here runs on the stream's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from flight_md.buffer import MarketDataBuffer
from flight_md.core.channels import trade_row
from flight_md.errors import FlightMdError
from flight_md.events import EventKind, EventLog
from flight_md.ingest.fanout import Fanout, log_bad
from flight_md.ingest.state import SymbolState
from flight_md.normalize import Channel, DropReason, Side, Trade, TradeFields, to_trade
from flight_md.schema import now_ms
from flight_md.venues.base import Venue

__all__ = ["BACKFILL_PAGES", "DEDUPE_WINDOW", "MAX_HOLES", "TRADE_COUNTERS", "TradeFanout"]

logger = logging.getLogger("flight_md.ingest.stream")

DEDUPE_WINDOW: Final = 4096
"""Ids remembered per symbol where ids are not sequential (what a resend can repeat)."""
MAX_HOLES: Final = 64
"""Gaps (id ranges) remembered per symbol for backfill; the oldest is forgotten first."""
BACKFILL_PAGES: Final = 20
"""``fetch_trades`` calls one backfill makes at most."""
TRADE_COUNTERS: Final = ("stored", "duplicates", "gaps", "missing", "backfilled")
"""Names of :attr:`TradeFanout.counters`: trades stored (backfilled ones included), duplicates
dropped, gaps seen, trades those gaps missed, trades backfilled."""


class _Seen:
    """What one symbol's stored trades say about the next one (see the module docstring)."""

    __slots__ = ("holes", "last_id", "last_ms", "recent", "resumed", "window")

    def __init__(self) -> None:
        self.resumed = False  # unsubscribed since the last trade: a jump is no gap
        self.last_id: int | None = None
        self.last_ms: int | None = None
        self.holes: list[list[int]] = []  # [first, last, since_ms], ascending, disjoint
        self.recent: set[str] = set()
        self.window: deque[str] = deque()

    def remember(self, trade_id: str) -> None:
        self.recent.add(trade_id)
        self.window.append(trade_id)
        if len(self.window) > DEDUPE_WINDOW:
            self.recent.discard(self.window.popleft())

    def fill(self, number: int) -> bool:
        """Whether ``number`` is missing (it is then no longer)."""
        for index, hole in enumerate(self.holes):
            first, last, since = hole
            if number < first:
                return False
            if number > last:
                continue
            if first == last:
                del self.holes[index]
            elif number == first:
                hole[0] = first + 1
            elif number == last:
                hole[1] = last - 1
            else:
                hole[1] = number - 1
                self.holes.insert(index + 1, [number + 1, last, since])
            return True
        return False


def _number(trade_id: str) -> int | None:
    return int(trade_id) if trade_id.isdigit() else None


def _order(trade: Any) -> tuple[int, int]:
    """A REST page's sort key: numeric id, else time (ccxt sorts pages by time already)."""
    if not isinstance(trade, Mapping):
        return (0, 0)
    number = _number(str(trade.get("id") or ""))
    stamp = trade.get("timestamp")
    return (number if number is not None else 0, stamp if isinstance(stamp, int) else 0)


class TradeFanout(Fanout):
    """Stores each trade of one stream once, finds gaps, backfills them, calls callbacks.

    Args:
        exchange_id: The stream's exchange.
        venue: Its venue (``sequential_trade_ids``, ``trade_backfill``).
        buffer: The ``trades`` buffer.
        background: The stream's set of futures to cancel on disconnect (backfills run there).
        events: Where ``gap`` and ``backfill`` events go.
        exchange: The stream's ccxt exchange (``fetch_trades`` for backfills).
        subscribed: Unified symbol -> its state while subscribed, else ``None``.

    Attributes:
        counters: :data:`TRADE_COUNTERS` by name.
    """

    __slots__ = ("_backfills", "_events", "_exchange", "_flip", "_seen", "_sequential", "_span",
                 "_subscribed", "_venue", "counters")

    def __init__(self, exchange_id: str, venue: Venue, buffer: MarketDataBuffer,
                 background: set[asyncio.Future[Any]], events: EventLog, exchange: Any,
                 subscribed: Callable[[str], SymbolState | None]) -> None:
        super().__init__(exchange_id, Channel.TRADES, frozenset(), buffer, background)
        self._venue = venue
        self._sequential = venue.sequential_trade_ids
        self._flip = venue.maker_side_trades
        self._span = venue.trade_id_span if venue.sequential_trade_ids else None
        self._events = events
        self._exchange = exchange
        self._subscribed = subscribed
        self._seen: dict[str, _Seen] = {}
        self._backfills: dict[str, asyncio.Task[None]] = {}
        self.counters: dict[str, int] = dict.fromkeys(TRADE_COUNTERS, 0)

    # -- the trade path -------------------------------------------------------------------

    def ingest(self, symbol: str, state: SymbolState, ticker: Any, receive_ms: int) -> bool:
        """Count, normalise, de-duplicate, store and deliver one trade; whether it was stored
        or a duplicate (a good trade either way)."""
        mono = time.monotonic()
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        return self._take(symbol, state, ticker, receive_ms, backfill=False)

    def ingest_fields(self, symbol: str, state: SymbolState, made: TradeFields, receive_ms: int,
                      stamped: bool = True, span: int = 1) -> None:
        """:meth:`ingest` of a trade a fast decoder made (:mod:`flight_md.core.decode`): what
        :func:`~flight_md.normalize.to_trade` returned for it; ``span``: the ids it stands for
        (``Venue.trade_id_span`` of its payload)."""
        mono = time.monotonic()
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        self._store(symbol, made, receive_ms, stamped, span, backfill=False, resend=True)

    def drop(self, symbol: str, state: SymbolState, reason: DropReason, receive_ms: int) -> None:
        """Count a trade a fast decoder found bad, as :meth:`ingest` counts one."""
        mono = time.monotonic()
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        self._bad(symbol, state, reason)

    def _bad(self, symbol: str, state: SymbolState, reason: DropReason) -> None:
        state.dropped += 1
        count = self.bad_frames[reason] = self.bad_frames[reason] + 1
        log_bad(count, "%s %s: dropped a bad trade (%s; %d so far)",
                self._exchange_id, symbol, reason, count)

    def ingest_polled(self, symbol: str, state: SymbolState, trades: Any, receive_ms: int) -> None:
        """Store what one ``fetch_trades`` poll answered: its trades in id order, each once.

        Polls overlap (each answers the latest page), so a trade stored before is dropped
        without counting as a duplicate."""
        mono = time.monotonic()
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        if not isinstance(trades, list):
            self.frame_error(TypeError(f"fetch_trades answered {type(trades).__name__}"),
                             "fetch_trades did not answer a list")
            return
        for trade in sorted(trades, key=_order):
            state.received += 1
            self._take(symbol, state, trade, receive_ms, backfill=False, resend=False)

    def _take(self, symbol: str, state: SymbolState, trade: Any, receive_ms: int, *,
              backfill: bool, resend: bool = True) -> bool:
        made = to_trade(trade, receive_ms)
        if isinstance(made, DropReason):
            self._bad(symbol, state, made)
            return False
        span = 1
        if self._span is not None and made[2] is not None:
            info = trade.get("info")
            span = self._span(info) if isinstance(info, Mapping) else 1
        self._store(symbol, made, receive_ms, trade.get("timestamp") is not None, span,
                    backfill=backfill, resend=resend)
        return True

    def _store(self, symbol: str, made: TradeFields, receive_ms: int, stamped: bool, span: int,
               *, backfill: bool, resend: bool) -> None:
        """De-duplicate, store and deliver one good trade (both the tap's and a decoder's)."""
        _, timestamp, trade_id, price, amount, side = made
        if self._flip and side is not None:
            side = Side.SELL if side is Side.BUY else Side.BUY
        seen = self._seen.get(symbol)
        if seen is None:
            seen = self._seen[symbol] = self._seeded(symbol)
        if trade_id is not None:
            fresh = self._fresh(symbol, seen, trade_id, backfill, span)
            if not fresh:
                if fresh is False and resend and not backfill:  # overlapping pages are no resend
                    self.counters["duplicates"] += 1
                return
        # to_trade checked every value (and receive_ms is our clock's): the unchecked row path.
        self._buffer.append_trade_row(self._exchange_id, symbol,
                                      trade_row(timestamp, price, amount, side, receive_ms),
                                      trade_id)
        self.counters["stored"] += 1
        if not backfill:
            seen.last_ms = timestamp
            if stamped:
                self.skew.add(receive_ms, timestamp)
        if self.subscribers:
            self.dispatch(Trade(symbol, self._exchange_id, timestamp, trade_id, price, amount,
                                side, receive_ms))

    def _seeded(self, symbol: str) -> _Seen:
        """A symbol's first trade in this process: what the ring already holds (rows refilled
        from the history after a restart) says which ids were stored, so a venue resending
        recent trades on subscribe (Coinbase) is not stored twice across a restart, and a jump
        from the last stored id is a gap (the server was down) that is backfilled."""
        seen = _Seen()
        try:
            held = self._buffer.get_latest_sync(symbol, DEDUPE_WINDOW, exchange=self._exchange_id,
                                                columns=["trade_id", "timestamp"])
        except FlightMdError:  # no ring yet: nothing stored before
            return seen
        ids = [i for i in held.column("trade_id").to_pylist() if i is not None]
        if not ids:
            return seen
        numbers = [n for n in map(_number, ids) if n is not None] if self._sequential else []
        if numbers:
            seen.last_id = max(numbers)
            seen.last_ms = int(max(held.column("timestamp").to_pylist()))
        else:
            for trade_id in ids:
                seen.remember(trade_id)
        return seen

    def _fresh(self, symbol: str, seen: _Seen, trade_id: str, backfill: bool,
               span: int = 1) -> bool | None:
        """Whether a trade id was not stored before (``None``: a backfill reached past the
        gap, to trades the websocket delivers); notes it, and any gap it reveals."""
        number = int(trade_id) if self._sequential and trade_id.isdigit() else None
        if number is None:
            if trade_id in seen.recent:
                return False
            seen.remember(trade_id)
            return True
        last = seen.last_id
        first = number - span + 1  # an aggregate's id is its last fill's
        if last is None or first == last + 1:
            seen.last_id = number
            return True
        if number <= last:
            return seen.fill(number)
        if backfill:
            return None
        if seen.resumed:  # the trades while it was unsubscribed were not wanted
            seen.resumed = False
            seen.holes.clear()
            seen.last_id = number
            return True
        if first <= last:  # overlaps what was stored: no gap, nothing missing
            seen.last_id = number
            return True
        self._gap(symbol, seen, last + 1, first - 1)
        seen.last_id = number
        return True

    def _gap(self, symbol: str, seen: _Seen, first: int, last: int) -> None:
        missing = last - first + 1
        self.counters["gaps"] += 1
        self.counters["missing"] += missing
        seen.holes.append([first, last, seen.last_ms if seen.last_ms is not None else 0])
        if len(seen.holes) > MAX_HOLES:
            del seen.holes[0]
        detail = json.dumps({"count": missing, "first_id": str(first), "last_id": str(last)})
        self._events.record(self._exchange_id, EventKind.GAP, (symbol,), detail)
        logger.warning("%s %s: trade ids jumped: %d missing (%d..%d); backfilling",
                       self._exchange_id, symbol, missing, first, last)
        if symbol not in self._backfills:
            task = asyncio.get_running_loop().create_task(
                self._backfill(symbol, seen), name=f"flight-md-{self._exchange_id}-backfill")
            self._backfills[symbol] = task
            self._background.add(task)
            task.add_done_callback(lambda done: self._backfill_done(symbol, done))

    def _backfill_done(self, symbol: str, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if self._backfills.get(symbol) is task:
            del self._backfills[symbol]

    async def _backfill(self, symbol: str, seen: _Seen) -> None:
        """Fetch a symbol's missing trades over REST, in id order, until none is missing."""
        got, asked, pages = 0, 0, 0
        first_missing = seen.holes[0][0] if seen.holes else None
        error: str | None = None
        try:
            while seen.holes and pages < BACKFILL_PAGES:
                first, _last, since = seen.holes[0]
                asked = max(asked, sum(h[1] - h[0] + 1 for h in seen.holes))
                params = dict(self._venue.trade_backfill(self._exchange.options, first)) \
                    if self._venue.trade_backfill is not None else {}
                page = await self._exchange.fetch_trades(
                    symbol, since=None if params else max(since, 0) or None, params=params)
                pages += 1
                state = self._subscribed(symbol)
                if state is None:
                    break  # unsubscribed meanwhile: its gap no longer matters
                stored = 0
                ordered = sorted(page, key=_order)
                receive_ms = now_ms()
                for trade in ordered:
                    before = self.counters["stored"]
                    self._take(symbol, state, trade, receive_ms, backfill=True)
                    stored += self.counters["stored"] - before
                got += stored
                if seen.holes and seen.holes[0][0] == first and stored == 0:
                    newest = max((int(t.get("timestamp") or 0) for t in page), default=0)
                    if not page or newest <= since or params:
                        break  # the venue has nothing more for this gap
                    seen.holes[0][2] = newest  # a page of older trades: ask from its end
        except asyncio.CancelledError:
            raise
        except Exception as error_:  # noqa: BLE001 - a failed backfill leaves the gap recorded
            error = f"{type(error_).__name__}: {error_}"[:200]
        self.counters["backfilled"] += got
        detail = json.dumps({"count": got, "missing": asked, "first_id": str(first_missing),
                             "pages": pages, **({"error": error} if error else {})})
        self._events.record(self._exchange_id, EventKind.BACKFILL, (symbol,), detail)
        logger.info("%s %s: backfilled %d of %d missing trades (%d pages)%s", self._exchange_id,
                    symbol, got, asked, pages, f"; {error}" if error else "")

    def unsubscribed(self, symbols: Iterable[str]) -> None:
        """``symbols`` were unsubscribed: when they come back, their first id jump is no gap
        (what they remember of ids still drops a resent trade)."""
        for symbol in symbols:
            seen = self._seen.get(symbol)
            if seen is not None:
                seen.resumed = True
            task = self._backfills.get(symbol)
            if task is not None:
                task.cancel()

    # -- status ---------------------------------------------------------------------------

    def holes(self, symbol: str) -> list[tuple[int, int]]:
        """The id ranges of ``symbol`` still missing (first, last), oldest first."""
        seen = self._seen.get(symbol)
        return [] if seen is None else [(first, last) for first, last, _ in seen.holes]

    def snapshot(self) -> Mapping[str, int]:
        """A copy of :attr:`counters`."""
        return dict(self.counters)
