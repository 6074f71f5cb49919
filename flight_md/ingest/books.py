"""Order-book capture: the top N levels of ccxt's book after every frame, verified, never crossed or stale.

A book stream (``MarketDataStream(..., channel="book")``) installs one :class:`BookCapture`
into ccxt's frame handling: :meth:`BookCapture.before` sees every parsed frame of every
websocket of the exchange before ccxt handles it, :meth:`BookCapture.after` sees it again once
ccxt has (with the exception ccxt raised, if any), and :meth:`BookCapture.connection_lost`
is told when a websocket goes. All three run on the stream's loop, in frame order, never
concurrently (ccxt handles a frame synchronously between ``before`` and ``after``).

What is stored, and when
    ccxt keeps the books (snapshot + deltas); a ``watch_order_book`` loop wakes up for only
    some of their updates. The capture stores after *every* frame that touches a book, once
    per book per frame, so every update is a row. A book is stored only when its
    :class:`~flight_md.core.books.BookVerifier` (one per websocket connection:
    :func:`~flight_md.core.books.verifier_for`) says the frame kept it in sync, the book is
    still subscribed, and ccxt's book (``exchange.orderbooks[symbol]``) is not crossed. The
    row is ccxt's top ``depth`` levels a side, best first; ``timestamp`` is the book's exchange
    time as ccxt parsed it from the frame (Binance ``E``, Bybit ``ts``, Coinbase and Kraken the
    frame's ``timestamp``, OKX ``ts``) or, where a frame carries none (Kraken's snapshots, a
    Binance book straight after its REST snapshot), the local receive time of the frame;
    ``nonce`` is the venue's sequence number for the frame (Binance and Bybit ``u``, OKX
    ``seqId``, Coinbase's connection-wide ``sequence_num``), else ccxt's book nonce, else null
    (Kraken has none).

The fast path (``decoder="fast"``, venues with a ``Channel.BOOK`` decoder: all five)
    ccxt's book code costs more per frame than everything else together (a ``safe_number``
    chain and a bisect per level, on its Python book sides), and the verifier already reads
    every book frame. With ``keep=True`` the verifiers keep every book they check
    (:meth:`~flight_md.core.books.BookVerifier.kept`: levels as sent, and the ``timestamp``
    and nonce ccxt's book would carry after the same frame), and the rows are their top
    ``depth`` levels as floats, which are ccxt's floats (``float`` of each text). The venue's
    book decoder (:mod:`flight_md.core.decode`) hands each book frame, parsed once by orjson
    in the frame guard, to :meth:`BookCapture.claim`, which does what :meth:`before` and
    :meth:`after` do for a frame ccxt applied without an error; ccxt never sees it. A frame
    the decoder declines (anything the verifier would not find well formed, levels ccxt
    could read differently) goes through ccxt and :meth:`before`/:meth:`after` as without
    the fast path, ccxt's book of that market made the kept one first (none where there is
    none), so ccxt raises, checks OKX's sequence and stores as on its own path, and that
    frame's row is ccxt's book's. Every frame is verified once, in order, by the one
    verifier of its connection, so verdicts, resyncs, events and counters are the same on
    both paths. ccxt keeps connections, subscriptions, keep-alive, reconnects and every
    other frame; its books are otherwise left as the frames it saw made them (none, on the
    fast venues), and nothing reads them. Binance (its snapshot is REST, fetched and applied
    by ccxt): its depth frames go to ccxt, which buffers them, until ccxt applied its
    snapshot and the buffered deltas (noticed as below); the kept book is then seeded from
    ccxt's book (levels and nonce) and takes every later delta, which ccxt no longer sees;
    after a resync or a lost connection, ccxt again until its next snapshot. Known to
    differ: a declined frame for an OKX or Kraken book that failed and awaits its snapshot
    meets no ccxt book, where ccxt's path kept applying to its own (it may raise on one path
    only; Bybit's and Coinbase's kept books follow ccxt's through a failure); and on a new
    connection, a Kraken update before its snapshot, which Kraken never sends.
    ``decoder="ccxt"`` keeps ccxt's books and all of the above as before.

Resynchronisation
    A failed sequence or checksum, a crossed book, a malformed book frame or a frame ccxt
    raised on fails that book: ``resync(symbol)`` asks the stream to resubscribe it, one
    ``book_resync`` event says why (the verifier's detail), and nothing is stored for it until
    its next snapshot (the verifier refuses every delta until then, counted as ``refused``). A
    connection that goes takes its verifier with it; the next connection's books start again
    from their snapshots.

Symbols
    Frames name markets by the venue's id (``BTCUSDT``, ``BTC-USD``, ``BTC/USD``); the unified
    symbol is ccxt's ``markets_by_id`` entry. An id several markets share (Bybit and Binance
    spot and linear ``BTCUSDT``) is resolved as ccxt resolves it, by the connection's URL
    (ccxt's ``is_spot_url(client)`` where the exchange has one, else ``spot`` in the URL).

ccxt internals relied on (besides ``orderbooks``, ``markets_by_id`` and ``safe_symbol``)
    Venues whose snapshot is REST (Binance): ccxt applies it, then the deltas it buffered,
    in a task of its own, not in a frame. While a book waits for it, the capture looks every
    :data:`SNAPSHOT_POLL_S` (a timer on the stream's loop, only then) and before every frame:
    the snapshot is in once ccxt's book has a ``nonce`` again and the book's delta buffer
    (``book.cache``, a list ccxt replaces at every subscription and snapshot) is not the one
    the book had when it last failed. The book's ``nonce`` is then the last update id ccxt
    applied, the snapshot the verifier chains the next delta to, and that book is stored at
    once (its ``timestamp``: the last buffered delta's ``E``, else the time it was noticed),
    so a book whose deltas all came before its snapshot is stored too. On the fast path
    that book's levels (``bids``, ``asks``: ``[price, amount]`` floats) and ``nonce`` seed
    the kept book; ccxt's book then keeps its snapshot's nonce, since ccxt sees no later
    delta, which is why a failed book is told from a rebuilt one by its identity and delta
    buffer, not by its nonce (ccxt's unsubscribe drops it; the new subscription makes a new
    one). Where a declined frame's mirror (``ccxt_compat``'s ``book_mirror``) writes a Binance
    book, it resets ccxt's book in place, and it never drops one: ccxt may be building it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeGuard

from flight_md.core.books import (
    BinanceVerifier,
    BookVerifier,
    Precision,
    Status,
    Verdict,
    keeps_books,
    verifier_for,
)
from flight_md.events import EventKind, EventLog
from flight_md.ingest import ccxt_compat
from flight_md.venues.base import Venue

__all__ = ["COUNTERS", "BookCapture", "BookSink"]

logger = logging.getLogger(__name__)

COUNTERS: Final = ("stored", "unchecked", "resyncs", "refused", "crossed", "gap", "checksum", "malformed",
                   "ccxt_errors", "unsubscribed", "no_book")
"""The names of :attr:`BookCapture.counters`: books stored, and of those ``unchecked`` ones (a
Kraken pair whose precision ccxt's markets lack: its checksum cannot be computed); resyncs (all), and by reason
(``crossed``, ``gap``, ``checksum``, ``malformed``); ``refused`` updates of a book awaiting its
snapshot; ``ccxt_errors`` book frames ccxt raised on; ``unsubscribed`` books not stored because
no longer subscribed; ``no_book`` verified frames after which ccxt had no book to store."""

SNAPSHOT_POLL_S: Final = 0.05
"""How often a book waiting for its REST snapshot is looked at (besides before every frame)."""
_SEVERITY: Final = {Status.OK: 0, Status.UNCHECKED: 1, Status.AWAITING: 2, Status.RESYNC: 3}
_ERROR_TEXT: Final = 160


class BookSink(Protocol):
    """Where books are stored: :meth:`flight_md.buffer.MarketDataBuffer.append_book`."""

    def append_book(self, exchange: str, symbol: str, timestamp: int, bids: Any, asks: Any,
                    nonce: int | None, receive_timestamp: int) -> None: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ccxt_raised(error: BaseException) -> str:
    """The one phrasing of a frame ccxt could not apply."""
    return f"ccxt could not apply the frame: {type(error).__name__}: {str(error)[:_ERROR_TEXT]}"


class _Precisions(Mapping[str, Precision]):
    """Each pair's decimals by the id a frame names it with, from ccxt's markets, made on first use."""

    def __init__(self, resolve: Callable[[str], str | None], markets: Callable[[], Mapping[str, Any]]) -> None:
        self._resolve = resolve
        self._markets = markets
        self._known: dict[str, Precision] = {}

    def __getitem__(self, key: str) -> Precision:
        found = self._known.get(key)
        if found is not None:
            return found
        symbol = self._resolve(key)
        market = self._markets().get(symbol) if symbol is not None else None
        try:
            precision = market["precision"] if market is not None else None
            made = Precision.from_steps(precision["price"], precision["amount"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            raise KeyError(key) from None  # unchecked: the verifier says so for every frame
        self._known[key] = made
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


@dataclass(slots=True)
class _Connection:
    """What the capture keeps of one websocket: its verifier and its market ids' symbols."""

    verifier: BookVerifier
    symbols: dict[str, str | None] = field(default_factory=dict)  # market id -> unified symbol


class BookCapture:
    """Stores ccxt's verified top-``depth`` book after every frame of one exchange instance.

    Args:
        venue: The venue (``flight_md.venues``); its ``id`` names the verifier and the rows.
        exchange: The ccxt.pro exchange instance whose frames are observed.
        buffer: The ``book`` buffer (``append_book``).
        events: Where ``book_resync`` events go.
        depth: Levels a side stored (the buffer's ``book_depth``).
        subscribed: Whether a unified symbol is still subscribed (books of others are not stored).
        resync: Asks the stream to resubscribe / re-snapshot one unified symbol.
        keep: The fast path (see the module docstring): the verifiers keep the books and the
            rows are made of their levels, not of ccxt's book; :meth:`claim` takes the book
            frames ccxt never sees. Only for a venue whose verifier keeps books
            (:func:`~flight_md.core.books.keeps_books`).

    Raises:
        ValueError: A depth below 1, or ``keep`` for a venue whose verifier cannot keep books.
    """

    def __init__(self, venue: Venue, exchange: Any, buffer: BookSink, events: EventLog, depth: int, *,
                 subscribed: Callable[[str], bool], resync: Callable[[str], None],
                 keep: bool = False) -> None:
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"book depth must be a positive integer, got {depth!r}")
        if keep and not keeps_books(venue.id):
            raise ValueError(f"the {venue.id!r} book verifier cannot keep its books")
        self._keep = keep
        self._claimed = False  # in claim(): the frame is the fast path's, its rows the kept book's
        self._id = venue.id
        self._exchange = exchange
        self._buffer = buffer
        self._events = events
        self._depth = depth
        self._subscribed = subscribed
        self._resync = resync
        # The depth the stream subscribes (Kraken's checksum runs over the book truncated to it).
        self._verifier_depth = venue.book_limit(depth)
        self._connections: dict[int, tuple[Any, _Connection]] = {}  # id(client) -> (client, state)
        self._current: Any = None
        self._current_conn: _Connection | None = None
        self._frame: tuple[Verdict, ...] = ()
        self._received = 0
        # symbol -> (ccxt's book, its delta buffer) when the book failed or its connection went:
        # a REST-snapshot book is in sync again only once ccxt rebuilt it (see the module docstring).
        self._retired: dict[str, tuple[Any, Any]] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._poll: asyncio.TimerHandle | None = None
        self._precision = _Precisions(self._symbol_any, lambda: getattr(exchange, "markets", None) or {})

    @property
    def counters(self) -> Mapping[str, int]:
        """A copy of the counts named in :data:`COUNTERS`."""
        return MappingProxyType(dict(self._counts))

    # -- the hooks ---------------------------------------------------------------------------

    def before(self, client: Any, message: Any) -> None:
        """Check one parsed frame of ``client`` before ccxt handles it (every frame, in order).

        ``message`` is the frame as ccxt parsed it (``json.loads``); anything else is ignored.
        """
        conn = self._connection(client)
        self._current, self._current_conn = client, conn
        self._received = _now_ms()
        verifier = conn.verifier
        if verifier.rest_snapshot:
            pending = verifier.pending_snapshots()
            if pending:
                self._rest_snapshots(client, conn, pending)
        if self._keep:
            for market_id in verifier.named(message):
                self._mirror(client, conn, market_id)
        self._frame = verifier.verify(message)

    def claim(self, client: Any, frame: Mapping[str, Any], receive_ms: int) -> bool:
        """The fast path: one book frame of ``client`` that flight_md parsed and ccxt never sees.

        Everything :meth:`before` and :meth:`after` do for a frame ccxt applied without an
        error, the kept book standing for ccxt's (``keep=True``; otherwise ``False``: the frame
        is left to ccxt).
        """
        if not self._keep:
            return False
        conn = self._connection(client)
        verifier = conn.verifier
        if verifier.rest_snapshot:  # a snapshot ccxt applied since the last frame seeds its book
            pending = verifier.pending_snapshots()
            if pending:
                self._rest_snapshots(client, conn, pending)
        if not verifier.claims(frame):
            return False
        self._current, self._current_conn = client, conn
        self._received = receive_ms
        self._frame = conn.verifier.verify(frame)
        self._claimed = True
        try:
            self.after(client, frame, None)
        finally:
            self._claimed = False
        return True

    def after(self, client: Any, message: Any, error: BaseException | None) -> None:
        """Store (or resynchronise) every book the frame touched, now that ccxt has applied it."""
        verdicts, self._frame = self._frame, ()
        conn = self._current_conn
        if not verdicts or client is not self._current or conn is None:
            return
        final: dict[str, Verdict] = {}
        for verdict in verdicts:
            kept = final.get(verdict.symbol)
            if kept is None or _SEVERITY[verdict.status] > _SEVERITY[kept.status]:
                final[verdict.symbol] = verdict
        verifier = conn.verifier
        for market_id, verdict in final.items():
            if error is not None and verdict.status is not Status.RESYNC:
                self._counts["ccxt_errors"] += 1
                verdict = verifier.invalidate(market_id, _ccxt_raised(error))
            status = verdict.status
            if status is Status.RESYNC:
                self._fail(client, conn, verdict)
            elif status is Status.AWAITING:
                self._counts["refused"] += 1
            else:
                self._store(client, conn, market_id, verdict)
        if verifier.rest_snapshot and self._poll is None and verifier.pending_snapshots():
            self._arm_poll()

    def connection_lost(self, client: Any) -> None:
        """Forget a websocket's verifier: its books start again from their next snapshots."""
        found = self._connections.pop(id(client), None)
        if found is None:
            return
        _, conn = found
        if conn.verifier.rest_snapshot:
            for symbol in conn.symbols.values():
                if symbol is not None:
                    self._retire(symbol)
        if self._current is client:
            self._current, self._current_conn, self._frame = None, None, ()

    # -- parts -------------------------------------------------------------------------------

    def _mirror(self, client: Any, conn: _Connection, market_id: str) -> None:
        """Make ccxt's book of a market the kept one, before ccxt handles a frame the fast path
        declined: ccxt's handler then does what it does on its own path (raises where it would,
        checks OKX's ``prevSeqId`` against the same nonce). A book without a kept one (before
        its snapshot, or since it failed) has none in ccxt either."""
        symbol = self._symbol(client, conn, market_id)
        if symbol is None:
            return
        verifier = conn.verifier
        kept = verifier.kept(market_id)
        if kept is None:
            if not verifier.rest_snapshot:  # Binance's: ccxt's book may be waiting for its snapshot
                ccxt_compat.forget_book(self._exchange, symbol)
            return
        bids, asks = kept.rows(kept.depth)
        ccxt_compat.seed_book(self._exchange, symbol, bids, asks, depth=kept.depth,
                              timestamp=kept.timestamp, nonce=kept.nonce,
                              in_place=verifier.rest_snapshot)

    def _connection(self, client: Any) -> _Connection:
        found = self._connections.get(id(client))
        if found is not None and found[0] is client:
            return found[1]
        verifier = verifier_for(self._id, depth=self._verifier_depth, precision=self._precision,
                                keep=self._keep)
        if verifier is None:
            raise ValueError(f"no book verifier for venue {self._id!r}")
        conn = _Connection(verifier)
        self._connections[id(client)] = (client, conn)
        return conn

    def _arm_poll(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a loop (a test feeding frames by hand): the next frame looks
        self._poll = loop.call_later(SNAPSHOT_POLL_S, self._poll_snapshots)

    def _poll_snapshots(self) -> None:
        """Store the books ccxt rebuilt from their REST snapshots since the last look."""
        self._poll = None
        self._received = _now_ms()
        waiting = False
        for client, conn in list(self._connections.values()):
            if not conn.verifier.rest_snapshot:
                continue
            for market_id in sorted(conn.verifier.pending_snapshots()):
                verdict = self._rest_snapshot(client, conn, market_id)
                if verdict is None:
                    waiting = True
                elif verdict.storable:
                    self._store(client, conn, market_id, verdict)
        if waiting:
            self._arm_poll()

    def _rest_snapshots(self, client: Any, conn: _Connection, pending: set[str]) -> None:
        """Report the REST snapshots ccxt applied since the last frame to the verifier."""
        for market_id in sorted(pending):
            self._rest_snapshot(client, conn, market_id)

    def _rest_snapshot(self, client: Any, conn: _Connection, market_id: str) -> Verdict | None:
        """Tell the verifier that ccxt rebuilt a book from its REST snapshot, if it has since it last failed.

        Returns:
            The verifier's verdict on the snapshot, or ``None`` while ccxt's book is not rebuilt.
        """
        symbol = self._symbol(client, conn, market_id)
        book = (getattr(self._exchange, "orderbooks", None) or {}).get(symbol) if symbol is not None else None
        if book is None or not _is_int(book.get("nonce")):
            return None
        assert symbol is not None
        retired = self._retired.get(symbol)
        if retired is not None:
            if retired[0] is book and retired[1] is getattr(book, "cache", None):
                return None  # still the book that failed: ccxt has not rebuilt it yet
            del self._retired[symbol]
        verdict = conn.verifier.on_rest_snapshot(market_id, book["nonce"])
        if verdict.status is Status.RESYNC:
            self._fail(client, conn, verdict)
        elif self._keep and isinstance(conn.verifier, BinanceVerifier):
            # The fast path takes this book's deltas from now on, from the book ccxt made of
            # its snapshot and the deltas it buffered (see the module docstring).
            conn.verifier.seed(market_id, book["bids"], book["asks"], book["nonce"], book.get("timestamp"))
        return verdict

    def _store(self, client: Any, conn: _Connection, market_id: str, verdict: Verdict) -> None:
        symbol = self._symbol(client, conn, market_id)
        if symbol is None or not self._subscribed(symbol):
            self._counts["unsubscribed"] += 1
            return
        depth = self._depth
        if self._claimed:
            kept = conn.verifier.kept(market_id)
            if kept is None:
                self._counts["no_book"] += 1
                return
            bids, asks = kept.rows(depth)
            timestamp, found = kept.timestamp, kept.nonce
        else:
            book = (getattr(self._exchange, "orderbooks", None) or {}).get(symbol)
            if book is None:
                self._counts["no_book"] += 1
                return
            bids, asks = book["bids"][:depth], book["asks"][:depth]
            timestamp, found = book.get("timestamp"), book.get("nonce")
        checked = conn.verifier.check_book(market_id, bids[:1], asks[:1])
        if checked.status is Status.RESYNC:
            self._fail(client, conn, checked)
            return
        received = self._received
        if not _is_int(timestamp) or timestamp <= 0:
            timestamp = received
        nonce = verdict.sequence
        if nonce is None:
            nonce = found if _is_int(found) else None
        try:
            self._buffer.append_book(self._id, symbol, timestamp, bids, asks, nonce, received)
        except ValueError as error:
            # A level ccxt stored as None or NaN: the book is not the venue's any more.
            self._fail(client, conn, conn.verifier.invalidate(market_id, f"unstorable book: {error}"))
            return
        self._counts["stored"] += 1
        if verdict.status is Status.UNCHECKED:
            self._counts["unchecked"] += 1

    def _fail(self, client: Any, conn: _Connection, verdict: Verdict) -> None:
        if verdict.status is not Status.RESYNC:
            return
        symbol = self._symbol(client, conn, verdict.symbol) or verdict.symbol
        self._counts["resyncs"] += 1
        if verdict.reason is not None:
            self._counts[str(verdict.reason)] += 1
        if conn.verifier.rest_snapshot:
            self._retire(symbol)
        logger.info("%s book %s: resync (%s)", self._id, symbol, verdict.detail)
        self._events.record(self._id, EventKind.BOOK_RESYNC, (symbol,), verdict.detail)
        self._resync(symbol)

    def _retire(self, symbol: str) -> None:
        book = (getattr(self._exchange, "orderbooks", None) or {}).get(symbol)
        if book is not None:
            self._retired[symbol] = (book, getattr(book, "cache", None))

    # -- symbols -----------------------------------------------------------------------------

    def _symbol(self, client: Any, conn: _Connection, market_id: str) -> str | None:
        if market_id in conn.symbols:
            return conn.symbols[market_id]
        symbol, stable = self._resolve(client, market_id)
        if stable:
            conn.symbols[market_id] = symbol
        return symbol

    def _symbol_any(self, market_id: str) -> str | None:
        """A market id's symbol without a connection (Kraken's ids are unique: the precision)."""
        return self._resolve(self._current, market_id)[0]

    def _resolve(self, client: Any, market_id: str) -> tuple[str | None, bool]:
        """The unified symbol of a frame's market id, and whether it is the same for every frame."""
        exchange = self._exchange
        found = (getattr(exchange, "markets_by_id", None) or {}).get(market_id)
        if not found:
            markets = getattr(exchange, "markets", None) or {}
            if market_id in markets:
                return market_id, True  # Kraken v2 names a pair by its unified symbol
            symbol = exchange.safe_symbol(market_id) if hasattr(exchange, "safe_symbol") else None
            return (symbol if isinstance(symbol, str) else None), True
        if len(found) == 1:
            return found[0]["symbol"], True
        spot = self._spot_url(client)
        typed = [market for market in found if bool(market.get("spot")) == spot] or list(found)
        if len(typed) == 1:
            return typed[0]["symbol"], True
        wanted = [market for market in typed if self._subscribed(market["symbol"])]
        return (wanted or typed)[0]["symbol"], False

    def _spot_url(self, client: Any) -> bool:
        is_spot = getattr(self._exchange, "is_spot_url", None)
        if callable(is_spot) and client is not None:
            return bool(is_spot(client))
        url = getattr(client, "url", "") or ""
        return "spot" in url


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)

