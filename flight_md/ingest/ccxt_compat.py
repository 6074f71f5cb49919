"""Every ccxt internal flight_md relies on, in one place, checked against the installed ccxt.

ccxt promises its unified methods (``load_markets``, ``watch_*``, ``fetch_*``, ``close``) and
its unified structures. Ingestion needs more than that, and this module is the only one that
touches it. :func:`check` verifies each assumption below when a stream starts; a broken one
fails the stream loudly (:class:`~flight_md.errors.StartupError` naming the assumption and
the ccxt version, an ``error`` event, ``status().last_error``) instead of leaving a stream
that looks merely stale. ``pyproject.toml`` pins ccxt to the version the tests cover.

Assumptions (the name each check reports):

``version``
    ``ccxt.__version__`` is in ``[MIN_VERSION, BELOW_VERSION)``: the 4.5 line from the
    pinned release on. ccxt publishes a patch release almost daily, mostly exchange
    definitions; the internals below live in its base and ws modules and are checked one by
    one, so a later 4.5 patch is accepted when every check passes. An older release, or a
    new minor or major line, is refused outright: the frame guard and the dial backoff
    override were written against 4.5.90's receive loop, which nothing structural can
    confirm behaves the same.
``cache``
    Every parsed ticker is stored by key, exactly once per exchange message, in the
    exchange's ``tickers`` (bid/ask: ``bidsasks``) attribute, a plain ``dict``. The stream
    replaces that dict with a :class:`Tap` (a ``dict`` whose ``__setitem__`` stores, then
    reports the pair), so it sees every update, not only the latest one a ``watch_*`` loop
    would wake up for (measured: 34 % of updates at 5,000 msg/s). ``clean_ws_data`` may
    replace the dict; the tap is re-installed before every watch call. REST fetches do not
    write the cache, so polling cannot double count. Checked: the attribute is a ``dict``,
    and the exchange's ccxt.pro source assigns ``self.<cache>[...] =``.
``trades``
    Every trade ccxt parses is appended, exactly once, with ``append`` to an ``ArrayCache``
    (or a subclass: Coinbase's ``ArrayCacheBySymbolById``) from
    ``ccxt.async_support.base.ws.cache``, stored by symbol in the exchange's ``trades`` dict;
    the cache keeps ``tradesLimit`` trades (1,000), so a ``watch_trades`` loop misses what a
    burst pushes out before it runs. The stream replaces the dict with a :class:`TradeTap`:
    every cache stored into it has its class swapped in place to a subclass whose ``append``
    stores, then reports the trade (:func:`report_appends`); trades a cache already held when
    it was swapped are reported then (Binance appends a new cache's first trade before it
    stores the cache). ccxt 4.5.90 stores a symbol's cache in ``self.trades[symbol] = ...``
    on every venue (Binance on every message: the swap is once per cache), and
    ``clean_ws_data`` replaces the dict (re-tapped before every watch call). REST
    ``fetch_trades`` does not write the cache. Checked: ``trades`` is a ``dict``, the venue's
    ccxt.pro source assigns ``self.trades[...] =``, and an ``ArrayCache`` swapped in place
    reports its appends.
``book``
    Books are not tapped: ccxt applies snapshots and deltas to ``exchange.orderbooks`` inside
    ``handle_message(client, message)``, the exchange method every client calls with each
    parsed frame (``on_message_callback``). A book stream sets ``flight_md_book`` on the
    guarded exchange (a :class:`BookObserver`: :class:`flight_md.ingest.books.BookCapture`);
    the guarded ``handle_message`` calls ``flight_md_book.before(client, message)`` first and
    ``flight_md_book.after(client, message, error)`` once ccxt handled the frame (``error``:
    what ccxt raised, which is raised on to the :class:`FrameGuard`), and the guarded
    ``on_close``/``on_error`` call ``flight_md_book.connection_lost(client)``. Resynchronising
    one book (``BookCapture``'s ``resync``): ccxt re-requests a snapshot only for a new
    subscription (Bybit, OKX, Kraken and Coinbase send one on subscribe; Binance fetches its
    REST snapshot when it subscribes), and its ``un_watch_order_book_for_symbols`` forgets the
    books it unsubscribes. So where the venue has an ``unwatch`` (Binance, Bybit, OKX) the
    stream unsubscribes the book's subscription group and subscribes it again on the same
    connection; elsewhere (Coinbase, Kraken: no ccxt unsubscribe) it ends the websocket session
    and the next one subscribes every book afresh. Tried with the emulator's ``book_gap`` on
    every venue (tests/ingest/test_trades_book_plumbing.py): one ``book_resync``, storing
    resumes from the new snapshot, nothing crossed stored. Checked: ``handle_message`` takes
    ``(client, message)``. With the fast book path a book stream also sets
    ``flight_md_decode`` (``decoder`` below): the book frames its venue's book decoder claims
    never reach ``handle_message``, so ccxt's books of those venues stay empty and its
    ``watch_order_book`` futures are not resolved by them (the stream's watchers only keep
    the books subscribed); ccxt's unsubscribe, resubscribe and the snapshot it asks for on
    subscribing are the same.
``book_mirror``
    With the fast book path, ccxt's books are the kept ones only when ccxt is to handle a
    book frame the path declined (:mod:`flight_md.ingest.books`): ``exchange.orderbooks`` is
    a dict by unified symbol, and ``exchange.order_book(snapshot, depth)`` makes ccxt's book
    of a snapshot (``bids``, ``asks`` as ``[price, amount]`` levels, ``timestamp``,
    ``nonce``, ``symbol``), cut to ``depth`` where the venue's handler calls ``limit()``
    (OKX's ``prevSeqId`` check reads that ``nonce``); a book's ``reset(snapshot)`` does the
    same in place, keeping the object and its delta buffer ``cache`` (Binance's, which the
    capture tells a rebuilt book by). Binance's kept book is seeded the other way: from
    ccxt's book once ccxt applied its REST snapshot and buffered deltas (``bids``, ``asks``
    of ``[price, amount]`` floats, ``nonce`` its last update id). Checked by the book tests.
``client``
    ``exchange.client(url)`` creates (once per URL) and returns a websocket client,
    registered in the ``exchange.clients`` dict by its ``url``, whose ``on_message``,
    ``on_error`` and ``on_close`` callbacks are the exchange's methods bound at creation
    (so a subclass overriding ``on_close`` / ``on_error`` sees every client's). Checked on a
    real client, created and unregistered again.
``handle_message``
    The client's receive loop calls ``self.handle_message(message)`` without a ``try``: a
    frame that is not JSON, or that the exchange's parser raises on, stops reading the whole
    connection (4.5.90). Each client's instance attribute ``handle_message`` is therefore
    replaced by a :class:`FrameGuard`. Checked: the method exists, takes one message, and
    ``receive_loop`` looks it up on ``self``.
``client_state``
    A client has ``url``, ``futures`` and ``subscriptions`` (dicts: empty ones mean the
    connection carries nothing), ``connected`` (a future resolved when the handshake is
    done), ``connection`` (``None`` until then) and a coroutine ``close()``.
``on_close``, ``on_error``
    ``on_close(client, error)`` and ``on_error(client, error)`` forget a client by URL
    (which is why :func:`guarded_class` makes them forget only the current one).
``ws_dial_delay``
    ``ws_dial_delay(url)`` is ccxt's per-URL dial backoff after a refused handshake (0.1 s
    doubling to 30 s, no jitter), consulted before every dial. The stream's reconnect policy
    already waits before every session; the guarded class returns 0 so one policy decides.
``open``
    ``exchange.open()`` reopens an instance after ``close()`` (ccxt marks a closed instance
    closed and refuses lazy requests on it).
``last_response_headers``
    The headers of the last HTTP response, read for a 429's ``Retry-After``.
``fetch_currencies``
    ``load_markets`` fetches currencies only when ``has["fetchCurrencies"]`` is ``True``, and
    the constructor's ``has`` option overrides it: the stream turns it off (currencies are
    never needed for market data, and on Binance and Bybit they are a private call, made
    whenever API keys are set, failing on a public-only host). Not checked: a user's
    ``ccxt_options`` may turn it back on on purpose.
``decoder``
    A client's ``handle_message(message)`` is given aiohttp's ``WSMessage`` (``type``,
    ``data``), sets ``client.last_message_at`` and, for a ``TEXT`` frame, parses
    ``message.data`` and hands the result to ``on_message_callback`` (the exchange's
    ``handle_message``); ping, pong, close and error frames are the client's own business. A
    stream with a fast decoder (:mod:`flight_md.core.decode`) sets ``flight_md_decode`` on the
    guarded exchange (a :class:`DecodeHook`); the :class:`FrameGuard` then offers each
    ``TEXT`` frame of the current client to that client's decoder first (made on its first
    frame: a replaced connection is a new client, so a new decoder; the old one is ``reset()``
    when its connection closes or fails), and a frame the decoder
    claims skips ccxt: the guard sets ``client.last_message_at`` itself, as ccxt would have.
    Everything else (binary and compressed frames, control frames, every frame a decoder
    declines) goes to ccxt unchanged, so ccxt's keep-alive (its ``lastPong``, set by a pong
    frame or by the exchange's parse of an application pong, which no decoder claims),
    subscriptions and reconnects behave as without a decoder. The futures of ``watch_*``
    calls are not resolved for claimed frames: the stream's watchers only keep groups
    subscribed and surface errors (ccxt rejects those futures when a connection fails).
    Checked: ``handle_message`` reads ``message.type``, sets ``last_message_at`` and treats
    ``WSMsgType.TEXT`` (the source of the client class), and aiohttp's ``WSMsgType.TEXT``
    exists.
``replicas``
    The fast decoders reproduce some of ccxt's parsing functions digit for digit
    (:mod:`flight_md.core.ccxt_parse`, each naming the ccxt 4.5.90 function it copies;
    :data:`~flight_md.core.ccxt_parse.REPLICATED` holds a hash of each one's source). A later
    4.5 patch that changes one of them would make a decoder's rows differ from ccxt's, so
    :func:`changed_replicas` compares the installed sources, and a stream whose replicas no
    longer match uses ccxt's parse (``decoder`` ``ccxt`` in its status) and logs one warning
    naming the functions, instead of failing: ccxt's own path is still correct.
``logger``
    The ``logger`` constructor option replaces the logger ccxt writes request headers to (at
    DEBUG, with the API key): the stream gives it one whose records are redacted.

Our own attributes on ccxt objects are prefixed ``flight_md_``: ``flight_md_closing`` on a
client the stream is closing (its close is not a failure of the current connection); on
the class :func:`guarded_class` makes, the three hooks :func:`attach` sets,
``flight_md_book`` (the book observer, ``None`` but on a book stream) and ``flight_md_base``,
the ccxt.pro class it guards, and ``flight_md_decode`` (the decode hook, ``None`` without a
fast decoder); ``flight_md_sink`` and ``flight_md_symbol`` on a tapped trade
cache.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import ccxt
import ccxt.pro as ccxt_pro
from aiohttp import WSMsgType
from ccxt.async_support.base.ws.cache import ArrayCache

from flight_md.core.ccxt_parse import REPLICATED
from flight_md.core.decode import DecodeSink, FrameDecoder
from flight_md.errors import StartupError
from flight_md.schema import now_ms
from flight_md.venues.base import BOOKS_CACHE, TRADES_CACHE, ChannelMethods

__all__ = [
    "BELOW_VERSION",
    "MIN_VERSION",
    "BookObserver",
    "DecodeHook",
    "FrameGuard",
    "Tap",
    "TradeTap",
    "attach",
    "attach_book",
    "attach_decoder",
    "changed_replicas",
    "check",
    "close_clients",
    "close_idle_clients",
    "guarded_class",
    "install_tap",
    "reopen",
    "report_appends",
    "response_headers",
    "supported_version",
]

MIN_VERSION: Final = (4, 5, 90)
"""The oldest ccxt accepted: the pinned release, whose internals this module was written for."""
BELOW_VERSION: Final = (4, 6, 0)
"""The first ccxt refused: a new minor line may move the internals without a trace."""
_CHECK_URL: Final = "wss://flight-md.invalid/ccxt-compat-check"

logger = logging.getLogger("flight_md.ingest.stream")


def _incompatible(assumption: str, found: str) -> StartupError:
    """The one phrasing of a broken assumption."""
    return StartupError(f"ccxt {ccxt.__version__} is incompatible with flight_md: {assumption}: "
                        f"{found} (tested with ccxt {'.'.join(map(str, MIN_VERSION))})")


class Tap(dict[str, Any]):
    """ccxt's ``tickers`` / ``bidsasks`` cache, reporting every store to a sink.

    It is a plain ``dict`` to ccxt: only ``__setitem__`` is extended, and it stores first.
    """

    __slots__ = ("sink",)

    def __init__(self, sink: Callable[[str, Any], None], initial: Mapping[str, Any]) -> None:
        super().__init__(initial)
        self.sink = sink

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)  # not super(): this runs for every tick
        self.sink(key, value)


_REPORTING: dict[type, type] = {}


def _reporting_class(cls: type) -> type:
    """The subclass of a ccxt trade cache class whose ``append`` reports (made once per class)."""
    found = _REPORTING.get(cls)
    if found is None:
        base_append = cls.append  # type: ignore[attr-defined]

        def append(self: Any, item: Any) -> None:
            base_append(self, item)
            self.flight_md_sink(self.flight_md_symbol, item)

        found = type(cls.__name__, (cls,), {
            "append": append, "flight_md_sink": None, "flight_md_symbol": None,
            "__module__": __name__,
            "__doc__": f"ccxt's {cls.__name__} reporting every appended trade to flight_md."})
        _REPORTING[cls] = found
    return found


def report_appends(cache: Any, symbol: str, sink: Callable[[str, Any], None]) -> None:
    """Make a ccxt trade cache report every trade appended to it as ``sink(symbol, trade)``.

    Its class is swapped in place (the object ccxt holds stays the same object); what it held
    before is reported now, once. A cache already reporting only gets the new sink.

    Raises:
        TypeError: ``cache`` is not one of ccxt's ``ArrayCache`` classes.
    """
    if getattr(type(cache), "flight_md_sink", False) is None:  # a reporting class already
        cache.flight_md_symbol = symbol
        cache.flight_md_sink = sink
        return
    if not isinstance(cache, ArrayCache):
        raise TypeError(f"ccxt stored a {type(cache).__name__} of trades, not an ArrayCache")
    held = list(cache)
    cache.flight_md_symbol = symbol
    cache.flight_md_sink = sink
    cache.__class__ = _reporting_class(type(cache))
    for item in held:
        sink(symbol, item)


class TradeTap(dict[str, Any]):
    """ccxt's ``trades`` dict (``{symbol: ArrayCache}``) whose caches report every trade.

    A plain ``dict`` to ccxt: ``__setitem__`` stores, then makes the cache report
    (:func:`report_appends`) unless it reports to this sink already.
    """

    __slots__ = ("sink",)

    def __init__(self, sink: Callable[[str, Any], None], initial: Mapping[str, Any]) -> None:
        super().__init__()
        self.sink = sink
        for key, value in initial.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        if getattr(value, "flight_md_sink", None) is not self.sink:
            report_appends(value, key, self.sink)


def install_tap(exchange: Any, cache: str, sink: Callable[[str, Any], None]) -> None:
    """Make ``exchange.<cache>`` report every update to ``sink`` (again, if ccxt replaced it).

    A ticker cache becomes a :class:`Tap`; ``trades`` a :class:`TradeTap`; ``orderbooks`` is
    left alone (books are observed per frame: ``flight_md_book``).
    """
    if cache == BOOKS_CACHE:
        return
    current = getattr(exchange, cache, None)
    kind = TradeTap if cache == TRADES_CACHE else Tap
    if type(current) is kind and current.sink is sink:
        return
    setattr(exchange, cache, kind(sink, current or {}))


class BookObserver(Protocol):
    """What a book stream installs as ``exchange.flight_md_book`` (see ``book`` above)."""

    def before(self, client: Any, message: Any) -> None:
        """A parsed frame of ``client``, before ccxt handles it."""

    def after(self, client: Any, message: Any, error: BaseException | None) -> None:
        """The same frame once ccxt handled it (``error``: what ccxt raised on it)."""

    def connection_lost(self, client: Any) -> None:
        """``client``'s websocket closed or failed."""


class DecodeHook(Protocol):
    """What a stream with a fast decoder installs as ``exchange.flight_md_decode`` (see
    ``decoder`` above)."""

    @property
    def enabled(self) -> bool:
        """Whether frames go to decoders now (not while the stream polls: a websocket probe
        waits for ccxt to resolve its watch call)."""

    def sink_at(self, receive_ms: int) -> DecodeSink:
        """Where every decoder of the stream delivers a frame received at ``receive_ms``."""

    def decoder(self, client: Any) -> FrameDecoder | None:
        """The decoder of a new connection (``client``), or ``None`` to leave it to ccxt."""


_UNSET: Final[Any] = object()
_TEXT: Final = WSMsgType.TEXT


class FrameGuard:
    """A ccxt websocket client's message handler that survives one bad frame, and offers
    ``TEXT`` frames to the stream's fast decoder first (``decoder`` above).

    Messages of a client that is no longer the exchange's current client for its URL
    (left over from an earlier session) are dropped and the client is closed, so a late
    handshake can never deliver a second copy of a tick.
    """

    __slots__ = ("_client", "_decoder", "_exchange", "_handle")

    def __init__(self, client: Any, exchange: Any) -> None:
        self._client = client
        self._exchange = exchange
        self._handle = client.handle_message
        self._decoder: Any = _UNSET

    def __call__(self, message: Any) -> None:
        client = self._client
        exchange = self._exchange
        clients = exchange.clients
        if clients is None or clients.get(client.url) is not client:
            if not getattr(client, "flight_md_closing", False):
                client.flight_md_closing = True
                orphan = exchange.flight_md_orphan
                if orphan is not None:
                    orphan(client)
            return
        hook = exchange.flight_md_decode
        if hook is not None and message.type is _TEXT and hook.enabled:
            decoder = self._decoder
            if decoder is _UNSET:
                decoder = self._decoder = self._build(hook)
            if decoder is not None:
                receive_ms = now_ms()
                try:
                    claimed = decoder.decode(message.data, receive_ms, hook.sink_at(receive_ms))
                except Exception:  # a decoder bug: ccxt parses the frame (nothing was delivered)
                    logger.exception("%s: the fast decoder raised on a frame; ccxt parses it",
                                     client.url)
                    claimed = False
                if claimed:
                    client.last_message_at = receive_ms  # what ccxt's handle_message sets first
                    return
        try:
            self._handle(message)
        except Exception as error:  # noqa: BLE001 - one bad frame must not stop the receive loop
            on_error = exchange.flight_md_frame_error
            if on_error is not None:
                on_error(error)

    def _build(self, hook: DecodeHook) -> FrameDecoder | None:
        try:
            return hook.decoder(self._client)
        except Exception:  # no decoder then: ccxt parses every frame
            logger.exception("%s: building the fast decoder failed; ccxt parses every frame",
                             self._client.url)
            return None

    def reset(self) -> None:
        """Forget this connection's decoder state (the next frame builds it afresh)."""
        decoder = self._decoder
        if decoder is not _UNSET and decoder is not None:
            decoder.reset()


_GUARDED: dict[type, type] = {}


def _report_closed(exchange: Any, ws_client: Any, error: Any, current: bool) -> None:
    """Tell the stream that its current connection failed or closed (not one we closed)."""
    hook = exchange.flight_md_closed
    if hook is not None and current and not getattr(ws_client, "flight_md_closing", False):
        hook(error)


def guarded_class(cls: type) -> type:
    """A subclass of a ccxt.pro exchange, made safe for reconnecting under load.

    Its websocket clients get a :class:`FrameGuard`, and ``on_close`` forgets a closed
    client only if it is still the one registered for its URL (ccxt forgets by URL, so an
    old client finishing its close would otherwise unregister its successor, which would
    then be reopened next to it and deliver every tick twice).
    """
    guarded = _GUARDED.get(cls)
    if guarded is None:
        def client(self: Any, url: str) -> Any:
            ws_client = cls.client(self, url)  # type: ignore[attr-defined]
            if "handle_message" not in vars(ws_client):
                ws_client.handle_message = FrameGuard(ws_client, self)
            return ws_client

        def on_close(self: Any, ws_client: Any, error: Any) -> None:
            # ccxt forgets a closed client by URL; a client retired earlier may close after
            # its URL got a new client, which must not be forgotten in its place.
            current = (self.clients or {}).get(ws_client.url)
            if current is None or current is ws_client:
                cls.on_close(self, ws_client, error)  # type: ignore[attr-defined]
            _book_lost(self, ws_client)
            _decoder_lost(ws_client)
            _report_closed(self, ws_client, error, current is ws_client)

        def on_error(self: Any, ws_client: Any, error: Any) -> None:
            current = (self.clients or {}).get(ws_client.url)
            cls.on_error(self, ws_client, error)  # type: ignore[attr-defined]
            _book_lost(self, ws_client)
            _decoder_lost(ws_client)
            _report_closed(self, ws_client, error, current is ws_client)

        def handle_message(self: Any, ws_client: Any, message: Any) -> Any:
            book = self.flight_md_book
            if book is None:
                return cls.handle_message(self, ws_client, message)  # type: ignore[attr-defined]
            book.before(ws_client, message)
            try:
                result = cls.handle_message(self, ws_client, message)  # type: ignore[attr-defined]
            except Exception as error:
                book.after(ws_client, message, error)
                raise  # the frame guard counts it
            book.after(ws_client, message, None)
            return result

        def ws_dial_delay(self: Any, url: str) -> float:
            # ccxt 4.5.90 keeps its own per-URL dial backoff (0.1 s doubling to 30 s, no
            # jitter) after a refused handshake. The stream's policy already waits before
            # every new session; ccxt's wait on top of it would stretch retries past
            # max_reconnect_delay. One policy decides: dial at once.
            return 0.0

        guarded = type(cls.__name__, (cls,), {
            "client": client,
            "on_close": on_close,
            "on_error": on_error,
            "handle_message": handle_message,
            "ws_dial_delay": ws_dial_delay,
            "flight_md_book": None,
            "flight_md_decode": None,
            "flight_md_closed": None,
            "flight_md_orphan": None,
            "flight_md_frame_error": None,
            "flight_md_base": cls,
            "__module__": __name__,
            "__doc__": f"ccxt.pro {cls.__name__} whose websocket clients survive bad frames.",
        })
        _GUARDED[cls] = guarded
    return guarded


def _book_lost(exchange: Any, ws_client: Any) -> None:
    book = exchange.flight_md_book
    if book is not None:
        book.connection_lost(ws_client)


def _decoder_lost(ws_client: Any) -> None:
    # A decoder's state (Bybit's merged tickers) belongs to its connection; the next
    # connection is a new client, whose guard builds a new decoder.
    guard = vars(ws_client).get("handle_message")
    if isinstance(guard, FrameGuard):
        guard.reset()


def attach_book(exchange: Any, book: BookObserver | None) -> None:
    """Install (``None``: remove) the book observer of a guarded exchange (see ``book``)."""
    exchange.flight_md_book = book


def seed_book(exchange: Any, symbol: str, bids: Sequence[Sequence[float]],
              asks: Sequence[Sequence[float]], *, depth: int, timestamp: int | None,
              nonce: int | None, in_place: bool = False) -> None:
    """Make ``exchange.orderbooks[symbol]`` a ccxt book of these levels (``book_mirror``): a new
    one, or with ``in_place`` the one ccxt has, ``reset`` (Binance's: the capture tells its
    rebuilt books by their identity and delta buffer)."""
    # Lists: a book side replaces a level's amount in place (reset stores the levels as given).
    snapshot = {"bids": [list(level) for level in bids], "asks": [list(level) for level in asks],
                "timestamp": timestamp, "nonce": nonce, "symbol": symbol}
    book = exchange.orderbooks.get(symbol) if in_place else None
    if book is not None:
        book.reset(snapshot)
    else:
        exchange.orderbooks[symbol] = exchange.order_book(snapshot, depth)


def forget_book(exchange: Any, symbol: str) -> None:
    """Drop ccxt's book of ``symbol``, if it has one (``book_mirror``)."""
    exchange.orderbooks.pop(symbol, None)


def attach_decoder(exchange: Any, hook: DecodeHook | None) -> None:
    """Install (``None``: remove) the decode hook of a guarded exchange (see ``decoder``)."""
    exchange.flight_md_decode = hook


def attach(exchange: Any, *, frame_error: Callable[[BaseException], None],
           closed: Callable[[Any], None], orphan: Callable[[Any], None]) -> None:
    """Connect a guarded exchange's hooks: a bad frame, the current connection closing or
    failing (not one the stream closed), and a message from a superseded client."""
    exchange.flight_md_frame_error = frame_error
    exchange.flight_md_closed = closed
    exchange.flight_md_orphan = orphan


def reopen(exchange: Any) -> None:
    """Make a closed exchange usable again (ccxt marks an instance closed in ``close()``)."""
    exchange.open()


def response_headers(exchange: Any) -> Mapping[str, Any] | None:
    """The headers of the exchange's last HTTP response, if ccxt kept them."""
    headers = getattr(exchange, "last_response_headers", None)
    return headers if isinstance(headers, Mapping) else None


async def close_clients(exchange: Any, timeout: float,
                        close_later: Callable[[Any], None]) -> None:
    """Close every websocket of ``exchange`` now; one that is still connecting is passed to
    ``close_later`` once it is up (closing it mid-handshake would leave it open)."""
    clients = list((getattr(exchange, "clients", None) or {}).values())
    if not clients:
        return
    exchange.clients.clear()
    for client in clients:
        client.flight_md_closing = True
        connected = client.connected
        if client.connection is None and connected is not None and not connected.done():
            connected.add_done_callback(lambda _f, c=client: close_later(c))
    tasks = [asyncio.ensure_future(client.close()) for client in clients]
    try:
        await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()  # aiohttp drops the connection when its close is cancelled
        await asyncio.gather(*tasks, return_exceptions=True)


def close_idle_clients(exchange: Any, close_later: Callable[[Any], None]) -> None:
    """Unregister and close websockets left without subscriptions (Binance: one per former
    group)."""
    clients = getattr(exchange, "clients", None) or {}
    for url, client in list(clients.items()):
        if not client.subscriptions and not client.futures:
            del clients[url]
            client.flight_md_closing = True
            close_later(client)


# -- the check --------------------------------------------------------------------------------


def supported_version(text: str) -> bool:
    """Whether a ccxt version string is in ``[MIN_VERSION, BELOW_VERSION)``."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text.strip())
    if match is None:
        return False
    version = tuple(int(part) for part in match.groups())
    return MIN_VERSION <= version < BELOW_VERSION


def _params(fn: Any) -> list[str] | None:
    """The parameter names of a function or bound method (``self`` excluded), if it is one."""
    if not callable(fn) or isinstance(fn, type):
        return None
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None
    return names[1:] if names[:1] == ["self"] else names


def _method(owner: Any, name: str, arity: int, assumption: str) -> Any:
    """``owner.<name>``, a callable taking ``arity`` positional arguments."""
    fn: Any = getattr(owner, name, None)
    params = _params(fn)
    if params is None:
        raise _incompatible(assumption, f"{name} is {type(fn).__name__}, not a method")
    if len(params) < arity:
        raise _incompatible(assumption, f"{name}({', '.join(params)}) takes fewer than {arity} "
                                        "arguments")
    return fn


@functools.cache
def _assigns_by_key(cls: type, cache: str) -> bool:
    """Whether the module of a ccxt.pro class in ``cls``'s ancestry stores into
    ``self.<cache>[...]`` (the module's text is searched: ``inspect.getsource`` of a class
    takes a second on ccxt's largest)."""
    pattern = re.compile(rf"self\.{re.escape(cache)}\[[^\]\n]+\]\s*=(?!=)")
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        path = getattr(module, "__file__", None)
        if not klass.__module__.startswith("ccxt.pro.") or path is None:
            continue
        try:
            source = Path(path).read_text(encoding="utf-8")
        except OSError:
            continue
        if pattern.search(source):
            return True
    return False


@functools.cache
def _calls_on_self(cls: type, method: str, callee: str) -> bool:
    try:
        source = inspect.getsource(getattr(cls, method))
    except (AttributeError, OSError, TypeError):
        return False
    return f"self.{callee}(" in source


def _check_client(exchange: Any) -> None:
    clients = getattr(exchange, "clients", None)
    if clients is not None and not isinstance(clients, dict):
        raise _incompatible("client", f"exchange.clients is {type(clients).__name__}, not a dict")
    make = _method(exchange, "client", 1, "client")
    had = set(clients or ())
    try:
        client: Any = make(_CHECK_URL)
    except Exception as error:
        raise _incompatible("client", f"client(url) raised {type(error).__name__}: {error}") from error
    try:
        registry = getattr(exchange, "clients", None)
        found: Any = registry.get(_CHECK_URL) if isinstance(registry, dict) else None
        if found is None or found is not client:
            raise _incompatible("client", "client(url) did not register the client in "
                                          "exchange.clients by its url")
        if getattr(client, "url", None) != _CHECK_URL:
            raise _incompatible("client_state", "a client has no url")
        for name in ("message", "error", "close"):
            bound = getattr(client, f"on_{name}_callback", None)
            expected = getattr(exchange, "handle_message" if name == "message" else f"on_{name}")
            if bound != expected:
                raise _incompatible("client", f"a client's on_{name}_callback is not the "
                                              "exchange's method")
        for name in ("futures", "subscriptions"):
            if not isinstance(getattr(client, name, None), dict):
                raise _incompatible("client_state", f"client.{name} is not a dict")
        if not isinstance(getattr(client, "connected", None), asyncio.Future):
            raise _incompatible("client_state", "client.connected is not a future")
        if not hasattr(client, "connection") or client.connection is not None:
            raise _incompatible("client_state", "client.connection is not None before connecting")
        if not inspect.iscoroutinefunction(getattr(type(client), "close", None)):
            raise _incompatible("client_state", "client.close is not a coroutine function")
        client_cls: Any = type(client)
        _method(client_cls, "handle_message", 1, "handle_message")
        if not _calls_on_self(client_cls, "receive_loop", "handle_message"):
            raise _incompatible("handle_message", "the receive loop does not call "
                                                  "self.handle_message")
        if not isinstance(vars(client).get("handle_message"), FrameGuard):
            raise _incompatible("handle_message", "the frame guard could not be installed")
        _check_decoder(client_cls)
    finally:
        registry = getattr(exchange, "clients", None)
        if isinstance(registry, dict) and _CHECK_URL not in had:
            registry.pop(_CHECK_URL, None)


def check(exchange: Any, methods: ChannelMethods, *, websocket: bool,
          logger: logging.Logger | None = None) -> None:
    """Verify every assumption in this module's docstring against ``exchange`` and its ccxt.

    Call it on the running loop (creating a websocket client binds it), before any request.
    The websocket assumptions are checked when ``websocket`` (the stream may use ccxt.pro
    for this channel; ``exchange`` is then built with :func:`guarded_class`).

    Args:
        exchange: The stream's ccxt exchange instance.
        methods: The channel's ccxt methods (the ``cache`` attribute is checked).
        websocket: Whether the stream may stream the channel over ccxt.pro.
        logger: The logger the exchange was constructed with, if any.

    Raises:
        StartupError: An assumption does not hold; the message names it and the ccxt version.
    """
    if not supported_version(str(getattr(ccxt, "__version__", ""))):
        raise _incompatible("version", f"expected >={'.'.join(map(str, MIN_VERSION))},"
                                       f"<{'.'.join(map(str, BELOW_VERSION))}")
    _method(exchange, "open", 0, "open")
    if not hasattr(exchange, "last_response_headers"):
        raise _incompatible("last_response_headers", "the exchange has no last_response_headers")
    if logger is not None and getattr(exchange, "logger", None) is not logger:
        raise _incompatible("logger", "the logger constructor option was not used")
    if not websocket:
        return  # REST only: no websocket, no cache tap
    base = getattr(type(exchange), "flight_md_base", None)
    if base is None or not issubclass(base, ccxt_pro.Exchange):
        raise _incompatible("client", f"{type(exchange).__name__} is not a guarded ccxt.pro exchange")
    cache = getattr(exchange, methods.cache, None)
    if not isinstance(cache, dict):
        raise _incompatible("cache", f"exchange.{methods.cache} is {type(cache).__name__}, "
                                     "not a dict")
    if not _assigns_by_key(base, methods.cache):
        raise _incompatible("cache", f"{base.__name__} does not store tickers by key in "
                                     f"self.{methods.cache}")
    if methods.cache == TRADES_CACHE:
        _check_trade_cache()
    elif methods.cache == BOOKS_CACHE:
        _method(base, "handle_message", 2, "book")
    for name in ("on_close", "on_error"):
        _method(base, name, 2, name)
    _method(base, "ws_dial_delay", 1, "ws_dial_delay")
    _check_client(exchange)


def _source_digest(name: str) -> str:
    module_name, class_name, attribute = name.rsplit(".", 2)
    try:
        owner = getattr(importlib.import_module(module_name), class_name)
        return hashlib.sha256(inspect.getsource(getattr(owner, attribute)).encode()).hexdigest()[:16]
    except (ImportError, AttributeError, TypeError, OSError):
        return ""  # gone or unreadable: changed


@functools.cache
def changed_replicas(replicated: tuple[tuple[str, str], ...] | None = None) -> tuple[str, ...]:
    """The ccxt functions :mod:`flight_md.core.ccxt_parse` copies whose installed source
    differs from the one copied (``replicated``: ``(name, digest)`` pairs, by default
    :data:`~flight_md.core.ccxt_parse.REPLICATED`'s); empty when every replica matches."""
    pairs = tuple(REPLICATED.items()) if replicated is None else replicated
    return tuple(name for name, digest in pairs if _source_digest(name) != digest)


@functools.cache
def _handles_text(client_cls: type) -> bool:
    try:
        source = inspect.getsource(client_cls.handle_message)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return False
    return all(part in source for part in (
        "self.last_message_at =", "message.type == WSMsgType.TEXT", "message.data",
        "self.handle_text_or_binary_message("))


def _check_decoder(client_cls: type) -> None:
    """The receive path the decode hook stands in for (see ``decoder``)."""
    if getattr(WSMsgType, "TEXT", None) is None:
        raise _incompatible("decoder", "aiohttp has no WSMsgType.TEXT")
    if not _handles_text(client_cls):
        raise _incompatible("decoder", "a client's handle_message does not set last_message_at "
                                       "and parse TEXT frames' data")


def _check_trade_cache() -> None:
    """A small ``ArrayCache``, swapped to report, reports each append once and still evicts."""
    seen: list[tuple[str, Any]] = []
    try:
        cache = ArrayCache(2)
        cache.append({"id": "0"})
        report_appends(cache, "X/Y", lambda symbol, item: seen.append((symbol, item["id"])))
        for number in (1, 2, 3):
            cache.append({"id": str(number)})
        kept = [item["id"] for item in cache]
    except Exception as error:
        raise _incompatible("trades", f"a trade cache cannot be tapped ({type(error).__name__}: "
                                      f"{error})") from error
    if seen != [("X/Y", "0"), ("X/Y", "1"), ("X/Y", "2"), ("X/Y", "3")] or kept != ["2", "3"]:
        raise _incompatible("trades", f"a tapped ArrayCache(2) reported {seen} and kept {kept}")
