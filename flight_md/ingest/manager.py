"""Many exchange streams into one store, and the bridge the Flight service calls them through.

:class:`MarketDataManager` runs one :class:`~flight_md.ingest.stream.MarketDataStream` per
(exchange, channel), each writing into its channel's buffer of one shared
:class:`~flight_md.buffer.Store` (``store.buffer(channel)``) and all into one
:class:`~flight_md.events.EventLog`, on one asyncio loop. ``manager.streams`` and
:meth:`~MarketDataManager.get_stream` name streams by exchange, as before channels: the
exchange's ticker-like stream (``ticker``, else ``bidask``), else its first;
:meth:`~MarketDataManager.stream` takes the channel. Subscribing without a channel goes to
every stream of the exchange.

Threads meet at two points, and only there. Flight handlers run on gRPC threads; ingestion
runs on the one asyncio loop thread (:class:`IngestionThread` runs it). They meet

1. at the **buffer**: ingestion appends, handlers read immutable Arrow snapshots taken under
   a short per-ring lock (and the event log, which is locked the same way); and
2. at ``asyncio.run_coroutine_threadsafe(...).result(timeout)``: :class:`ThreadedControl`
   implements :class:`~flight_md.control.IngestionControl` by handing subscribe, unsubscribe,
   status and markets to the loop and waiting at most ``timeout`` seconds for the answer.

Nothing else in ingestion is touched from another thread.

Markets (``@markets``)
    :func:`market_infos` reads a stream's ``exchange.markets`` (ccxt's public result of
    ``load_markets``) on the loop, so it never sees the dict while ccxt replaces it, and
    returns plain :class:`~flight_md.control.MarketInfo` values. The manager keeps them until
    ccxt replaces the dict (a reload) and sets only ``subscribed`` per request: building
    Binance's 1,700 costs the loop some 20 ms, reusing them well under one. Precision is normalised to a
    step size: ccxt gives ``precision.price``/``precision.amount`` in the exchange's
    ``precisionMode``; under ``TICK_SIZE`` (Binance, Bybit, most venues) the value is the step
    itself (``0.01``), under ``DECIMAL_PLACES`` it is a count of decimals (``2`` becomes
    ``0.01``), and under ``SIGNIFICANT_DIGITS`` (Bitfinex) there is no fixed step, so the tick
    is null.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self, TypeVar

import ccxt.async_support as ccxt_async

from flight_md.buffer import MarketDataBuffer, Store
from flight_md.control import IngestionStatus, MarketInfo, submit_to_loop
from flight_md.errors import FlightMdError, InvalidArgument, Unavailable, UnknownExchange
from flight_md.events import EventLog
from flight_md.ingest.stream import MarketDataStream, channels_of
from flight_md.normalize import TICKER_LIKE, Channel

__all__ = ["DEFAULT_CONTROL_TIMEOUT", "IngestionThread", "MarketDataManager", "ThreadedControl",
           "market_infos", "tick_size"]

logger = logging.getLogger(__name__)

DEFAULT_CONTROL_TIMEOUT: Final = 10.0
"""Seconds a Flight handler waits for the ingestion loop."""

T = TypeVar("T")


def tick_size(value: Any, precision_mode: Any) -> float | None:
    """A ccxt precision value as a step size (see the module docstring), or ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if precision_mode == ccxt_async.DECIMAL_PLACES:
        return 10.0 ** -number if number == int(number) else None
    if precision_mode == ccxt_async.TICK_SIZE:
        return number if number > 0 else None
    return None  # SIGNIFICANT_DIGITS: a relative precision has no fixed step


def _optional(kind: type[T], value: Any) -> T | None:
    """``value`` as ``kind`` (``bool``, ``float``, ``int``, ``str``), or ``None``."""
    if value is None:
        return None
    if kind is bool:
        return value if isinstance(value, bool) else None  # type: ignore[return-value]
    try:
        return kind(value)  # type: ignore[call-arg]
    except (TypeError, ValueError):
        return None


def market_infos(stream: MarketDataStream, markets: Mapping[str, Any] | None = None,
                 ) -> tuple[MarketInfo, ...]:
    """Every market the stream's exchange loaded (or of ``markets``, ccxt's dict), by symbol;
    none before the first load.

    Call it on the stream's loop.
    """
    exchange = stream.exchange
    if markets is None:
        markets = exchange.markets or {}
    mode = exchange.precisionMode
    subscribed = set(stream.symbols)
    infos = []
    for symbol in sorted(markets):
        market = markets[symbol]
        precision = market.get("precision") or {}
        infos.append(MarketInfo(
            exchange=stream.exchange_id, symbol=symbol, id=str(market.get("id") or symbol),
            base=str(market.get("base") or ""), quote=str(market.get("quote") or ""),
            type=str(market.get("type") or ""),
            contract=_optional(bool, market.get("contract")),
            linear=_optional(bool, market.get("linear")),
            inverse=_optional(bool, market.get("inverse")),
            contract_size=_optional(float, market.get("contractSize")),
            settle=_optional(str, market.get("settle")),
            expiry=_optional(int, market.get("expiry")),
            price_tick=tick_size(precision.get("price"), mode),
            amount_tick=tick_size(precision.get("amount"), mode),
            active=_optional(bool, market.get("active")),
            subscribed=symbol in subscribed))
    return tuple(infos)


def _channel(channel: Channel | str) -> Channel:
    try:
        return Channel(channel)
    except ValueError:
        raise InvalidArgument(f"unknown channel {channel!r}; expected one of: "
                              f"{', '.join(Channel)}") from None


class MarketDataManager:
    """One stream per (exchange, channel), into one store and one event log.

    Args:
        buffer: The tick buffer (ticker and bidask) when no ``store`` is given: the store is
            then one around it (:meth:`Store.of <flight_md.buffer.Store.of>`).
        events: The shared event log (a new one by default).
        store: Every channel's buffer (a new one by default); each stream gets
            ``store.buffer(channel)``.
        on_fatal: Called on the loop with ``(exchange_id, error)`` when a stream added with
            ``keep_retrying=True`` finds, once its markets load, a symbol the exchange does
            not list (an invalid argument that could not be checked at start).

    Use it on the loop that runs ingestion; from other threads go through
    :class:`ThreadedControl`.
    """

    def __init__(self, buffer: MarketDataBuffer | None = None,
                 events: EventLog | None = None, *,
                 on_fatal: Callable[[str, InvalidArgument], None] | None = None,
                 store: Store | None = None) -> None:
        if store is not None and buffer is not None and store.buffer(buffer.channel) is not buffer:
            raise InvalidArgument("pass a store or a buffer, not both (or the store's own buffer)")
        if store is None:
            store = Store.of(buffer) if buffer is not None else Store.of(MarketDataBuffer())
        self.store = store
        self.events = events if events is not None else EventLog()
        self.on_fatal = on_fatal
        self._streams: dict[tuple[str, Channel], MarketDataStream] = {}
        self._markets: dict[str, tuple[Any, tuple[MarketInfo, ...]]] = {}
        """Per exchange: ccxt's markets dict and its infos (``subscribed`` all false)."""

    @property
    def buffer(self) -> MarketDataBuffer:
        """The tick buffer (``store.buffer("ticker")``, which bidask shares in a store made
        around one buffer)."""
        return self.store.buffer(Channel.TICKER.value)

    @property
    def streams(self) -> Mapping[str, MarketDataStream]:
        """Running streams by exchange id (a read-only view): each exchange's ticker-like
        stream, else its first; :meth:`stream` and :meth:`all_streams` see every channel."""
        by_exchange: dict[str, MarketDataStream] = {}
        for (exchange_id, channel), stream in self._streams.items():
            current = by_exchange.get(exchange_id)
            if current is None or (channel in TICKER_LIKE and (
                    current.channel not in TICKER_LIKE
                    or (channel is Channel.TICKER and current.channel is not Channel.TICKER))):
                by_exchange[exchange_id] = stream
        return MappingProxyType(by_exchange)

    def all_streams(self) -> tuple[MarketDataStream, ...]:
        """Every running stream, in the order they were added."""
        return tuple(self._streams.values())

    def streams_of(self, exchange_id: str) -> tuple[MarketDataStream, ...]:
        """Every stream of ``exchange_id`` (one per channel), in the order they were added.

        Raises:
            UnknownExchange: No stream runs for it.
        """
        found = tuple(s for (e, _), s in self._streams.items() if e == exchange_id)
        if not found:
            raise UnknownExchange(f"no stream for exchange {exchange_id!r}; running: "
                                  f"{', '.join(self.streams) or 'none'}")
        return found

    def stream(self, exchange_id: str, channel: Channel | str) -> MarketDataStream:
        """The stream of ``exchange_id`` for ``channel``.

        Raises:
            UnknownExchange: No such stream runs (the message lists the exchange's channels).
            InvalidArgument: Unknown channel.
        """
        found = self._streams.get((exchange_id, _channel(channel)))
        if found is None:
            has = [c.value for (e, c) in self._streams if e == exchange_id]
            raise UnknownExchange(f"no {Channel(channel)} stream for exchange {exchange_id!r}; "
                                  f"it streams: {', '.join(has) or 'nothing'}")
        return found

    async def add_stream(self, exchange_id: str, symbols: Sequence[str] = (), *,
                         keep_retrying: bool = False,
                         **stream_kwargs: Any) -> MarketDataStream:
        """Start a stream for ``exchange_id`` and one or more channels: connect, then subscribe
        ``symbols`` (on every channel).

        Args:
            exchange_id: ccxt exchange id.
            symbols: Symbols to subscribe right away.
            channel: The stream's channel (``stream_kwargs["channel"]``, default ``ticker``);
                one stream per (exchange, channel).
            channels: Several channels (``stream_kwargs["channels"]``, as for
                :class:`MarketDataStream`): one stream per channel is registered (see
                :meth:`stream`).
            keep_retrying: If the exchange cannot be reached, keep the stream and retry in
                the background (:meth:`MarketDataStream.start`) instead of raising
                ``Unavailable``: what a server does.
            **stream_kwargs: :class:`MarketDataStream` arguments (``buffer``, ``store`` and
                ``events`` are the manager's; ``buffer_size`` and ``book_depth`` are ignored:
                the store's buffers have them), ``decoder`` among them (``"fast"``, the
                default, or ``"ccxt"``; ``status()`` reports each stream's).

        Returns:
            The connected stream. With several channels, one stream over all of them (its
            calls reach every channel); the registered per-channel streams share its
            connections, so :meth:`remove_stream` of one channel stops that channel in it too.

        Raises:
            InvalidArgument: A stream for the exchange and a channel already runs, or a bad
                argument or symbol (no stream is kept).
            Unavailable: The exchange cannot be reached (no stream is kept), unless
                ``keep_retrying``.
        """
        wanted = channels_of(stream_kwargs.pop("channel", None),
                             stream_kwargs.pop("channels", None))
        keys = [(exchange_id, channel) for channel in wanted]
        for key in keys:
            if key in self._streams:
                raise InvalidArgument(f"a {key[1]} stream for {exchange_id!r} is already "
                                      "running; subscribe to it or remove it first")
        for reserved in ("buffer", "events", "store"):
            if reserved in stream_kwargs:
                raise InvalidArgument(f"{reserved}= belongs to the manager; do not pass it")
        stream_kwargs.pop("buffer_size", None)
        stream_kwargs.pop("book_depth", None)
        stream = MarketDataStream(exchange_id, events=self.events, channels=wanted,
                                  store=self.store, **stream_kwargs)
        parts = stream.parts()
        for key, part in zip(keys, parts, strict=True):
            self._streams[key] = part  # reserve the keys while connecting
        try:
            if keep_retrying:
                await stream.start(symbols, on_invalid=lambda error: self._fatal(exchange_id, error))
            else:
                await stream.connect()
                if symbols:
                    await stream.subscribe(symbols)
        except BaseException:
            for key, part in zip(keys, parts, strict=True):
                if self._streams.get(key) is part:
                    del self._streams[key]
            await stream.disconnect()
            raise
        return stream

    def _fatal(self, exchange_id: str, error: InvalidArgument) -> None:
        logger.error("%s: %s", exchange_id, error)
        if self.on_fatal is not None:
            self.on_fatal(exchange_id, error)

    def get_stream(self, exchange_id: str) -> MarketDataStream:
        """The stream of ``exchange_id`` (its ticker-like stream, else its first: see
        :attr:`streams`).

        Raises:
            UnknownExchange: No stream runs for it.
        """
        stream = self.streams.get(exchange_id)
        if stream is None:
            raise UnknownExchange(f"no stream for exchange {exchange_id!r}; running: "
                                  f"{', '.join(self.streams) or 'none'}")
        return stream

    async def remove_stream(self, exchange_id: str, channel: Channel | str | None = None) -> None:
        """Disconnect and forget the stream of ``exchange_id`` and ``channel`` (``None``: every
        stream of the exchange); what they stored stays buffered.

        Raises:
            UnknownExchange: No such stream runs.
        """
        streams = [self.stream(exchange_id, channel)] if channel is not None \
            else list(self.streams_of(exchange_id))
        for stream in streams:
            del self._streams[(exchange_id, stream.channel)]
        if not any(e == exchange_id for e, _ in self._streams):
            self._markets.pop(exchange_id, None)
        for stream in streams:
            await stream.disconnect()

    async def shutdown(self) -> None:
        """Disconnect every stream (concurrently); the buffer and the log stay readable."""
        streams = list(self._streams.values())
        self._streams.clear()
        results = await asyncio.gather(*(s.disconnect() for s in streams), return_exceptions=True)
        for stream, result in zip(streams, results):
            if isinstance(result, Exception):
                logger.warning("%s: error while disconnecting: %s", stream.exchange_id, result)

    def markets(self, exchange_id: str | None = None,
                pattern: str | None = None) -> tuple[MarketInfo, ...]:
        """Every stream's loaded markets (:func:`market_infos`), streams in the order they
        were added; ``exchange_id``: that stream's only; ``pattern``: only symbols it matches
        (:func:`fnmatch.fnmatchcase`).

        Raises:
            UnknownExchange: No stream runs for ``exchange_id``.
        """
        streams = [self.get_stream(exchange_id)] if exchange_id is not None \
            else list(self.streams.values())
        found: list[MarketInfo] = []
        for stream in streams:
            loaded = stream.exchange.markets or {}
            cached = self._markets.get(stream.exchange_id)
            if cached is None or cached[0] is not loaded:
                cached = (loaded, tuple(replace(info, subscribed=False)
                                        for info in market_infos(stream, loaded)))
                self._markets[stream.exchange_id] = cached
            subscribed = {s for other in self.streams_of(stream.exchange_id) for s in other.symbols}
            for info in cached[1]:
                if pattern is not None and not fnmatch.fnmatchcase(info.symbol, pattern):
                    continue
                found.append(replace(info, subscribed=True) if info.symbol in subscribed
                             else info)
        return tuple(found)

    def status(self) -> IngestionStatus:
        """Every stream's status, exchanges in the order they were added."""
        parts = [stream.status() for stream in self._streams.values()]
        return IngestionStatus(tuple(e for p in parts for e in p.exchanges),
                               tuple(s for p in parts for s in p.symbols))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        keys = [f"{e}/{c.value}" for e, c in self._streams]
        return f"MarketDataManager(streams={keys!r})"


class ThreadedControl:
    """:class:`~flight_md.control.IngestionControl` for a manager running on another thread.

    Every call hands a coroutine to the manager's loop with
    ``asyncio.run_coroutine_threadsafe`` and blocks the calling (gRPC) thread for at most
    ``timeout`` seconds.

    Args:
        manager: The manager; it must only be used on ``loop``.
        loop: The running loop of the ingestion thread.
        timeout: Seconds to wait for each answer.
    """

    def __init__(self, manager: MarketDataManager, loop: asyncio.AbstractEventLoop,
                 timeout: float = DEFAULT_CONTROL_TIMEOUT) -> None:
        self.manager = manager
        self.loop = loop
        self.timeout = timeout

    def subscribe(self, exchange: str | None, symbols: Sequence[str],
                  channels: Sequence[str] | None = None) -> dict[str, Any]:
        """Start streaming ``symbols`` on ``channels`` (``None``: every channel the exchange
        streams); returns ``{"exchange": id, "subscribed": [...]}``, plus ``"channels": [...]``
        when ``channels`` is given or the exchange streams several."""
        return self._call(self._subscribe(exchange, symbols, channels), "subscribe")

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str],
                    channels: Sequence[str] | None = None) -> dict[str, Any]:
        """Stop streaming ``symbols`` on ``channels`` (``None``: every channel that has them);
        returns ``{"exchange": id, "unsubscribed": [...]}`` (``"channels"`` as for
        :meth:`subscribe`)."""
        return self._call(self._unsubscribe(exchange, symbols, channels), "unsubscribe")

    def status(self) -> IngestionStatus:
        """A consistent snapshot of every stream (taken on the loop)."""
        return self._call(self._status(), "status")

    def markets(self, exchange: str | None, pattern: str | None = None,
                ) -> tuple[MarketInfo, ...]:
        """Every stream's loaded markets, read on the loop (:meth:`MarketDataManager.markets`)."""
        return self._call(self._markets(exchange, pattern), "markets")

    # -- on the loop ------------------------------------------------------------------------

    def _pick(self, exchange: str | None) -> MarketDataStream:
        streams = self.manager.streams
        if exchange is None:
            if len(streams) == 1:
                return next(iter(streams.values()))
            if not streams:
                raise Unavailable("no exchange is streaming")
            raise InvalidArgument(f"several exchanges are streaming; name one of: "
                                  f"{', '.join(streams)}")
        return self.manager.get_stream(exchange)

    def _targets(self, exchange: str | None,
                 channels: Sequence[str] | None) -> list[MarketDataStream]:
        exchange_id = self._pick(exchange).exchange_id
        if channels is None:
            return list(self.manager.streams_of(exchange_id))
        if isinstance(channels, str) or not channels:
            raise InvalidArgument(f"channels must be a non-empty list of channel names, got "
                                  f"{channels!r}")
        return [self.manager.stream(exchange_id, channel) for channel in dict.fromkeys(channels)]

    async def _subscribe(self, exchange: str | None, symbols: Sequence[str],
                         channels: Sequence[str] | None = None) -> dict[str, Any]:
        streams = self._targets(exchange, channels)
        for stream in streams:
            await stream.subscribe(symbols)
        names = [symbols] if isinstance(symbols, str) else symbols
        wanted = [s for s in dict.fromkeys(names) if all(s in st.symbols for st in streams)]
        return self._answer(streams, "subscribed", wanted, channels)

    async def _unsubscribe(self, exchange: str | None, symbols: Sequence[str],
                           channels: Sequence[str] | None = None) -> dict[str, Any]:
        streams = self._targets(exchange, channels)
        names = [symbols] if isinstance(symbols, str) else list(symbols)
        if channels is None:  # every channel that has them
            if not names or any(all(s not in st.symbols for st in streams) for s in names):
                await streams[0].unsubscribe(symbols)  # raises: says what is wrong, as before
            streams = [st for st in streams if any(s in st.symbols for s in names)]
        removed: dict[str, None] = {}
        for stream in streams:
            for symbol in await stream.unsubscribe(
                    [s for s in names if s in stream.symbols] if channels is None else names):
                removed[symbol] = None
        return self._answer(streams, "unsubscribed", list(removed), channels)

    def _answer(self, streams: list[MarketDataStream], key: str, symbols: list[str],
                channels: Sequence[str] | None) -> dict[str, Any]:
        # "channels" only where channels are in play: a one-channel exchange answers as before.
        exchange_id = streams[0].exchange_id
        answer: dict[str, Any] = {"exchange": exchange_id, key: symbols}
        if channels is not None or len(self.manager.streams_of(exchange_id)) > 1:
            answer["channels"] = [stream.channel.value for stream in streams]
        return answer

    async def _status(self) -> IngestionStatus:
        return self.manager.status()

    async def _markets(self, exchange: str | None,
                       pattern: str | None) -> tuple[MarketInfo, ...]:
        return self.manager.markets(exchange, pattern)

    # -- the bridge -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        future = submit_to_loop(
            self.loop, coro, closed=f"ingestion is not running; cannot {what}",
            on_loop="ThreadedControl must not be called from the ingestion loop itself (it "
                    "would wait for itself); await the manager instead")
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"ingestion did not answer within {self.timeout:g} s ({what}); "
                              "the exchange may be slow or unreachable") from None
        except concurrent.futures.CancelledError:
            raise Unavailable(f"ingestion stopped before answering ({what})") from None
        except FlightMdError:
            raise
        except (ccxt_async.BaseError, OSError) as error:
            raise Unavailable(f"{what} failed: {type(error).__name__}") from None


class IngestionThread:
    """An asyncio loop on a background thread running a :class:`MarketDataManager`.

    The Flight server runs in the main thread; ingestion runs here::

        with IngestionThread(buffer, events) as ingestion:
            ingestion.add_stream("binance", symbols=["BTC/USDT"])
            server = FlightMarketDataServer(..., control=ingestion.control())

    Args:
        buffer: The tick buffer (as for :class:`MarketDataManager`).
        events: The shared event log.
        name: The thread's name.
        on_fatal: The manager's ``on_fatal`` (called on the ingestion thread).
        store: Every channel's buffer (as for :class:`MarketDataManager`).
    """

    def __init__(self, buffer: MarketDataBuffer | None = None, events: EventLog | None = None,
                 *, name: str = "flight-md-ingest",
                 on_fatal: Callable[[str, InvalidArgument], None] | None = None,
                 store: Store | None = None) -> None:
        if store is None:
            store = Store.of(buffer if buffer is not None else MarketDataBuffer())
        self.store = store
        self.buffer = buffer if buffer is not None else store.buffer(Channel.TICKER.value)
        self.events = events if events is not None else EventLog()
        self.name = name
        self.on_fatal = on_fatal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._manager: MarketDataManager | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The ingestion loop (after :meth:`start`)."""
        if self._loop is None:
            raise Unavailable("ingestion thread is not running; call start() first")
        return self._loop

    @property
    def manager(self) -> MarketDataManager:
        """The manager (after :meth:`start`); use it only on :attr:`loop`."""
        if self._manager is None:
            raise Unavailable("ingestion thread is not running; call start() first")
        return self._manager

    def start(self) -> Self:
        """Start the loop thread and create the manager on it (idempotent)."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        self._manager = self.run(self._make_manager())
        return self

    async def _make_manager(self) -> MarketDataManager:
        return MarketDataManager(events=self.events, on_fatal=self.on_fatal, store=self.store)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run a coroutine on the ingestion loop and wait for its result.

        Raises:
            Unavailable: It did not finish within ``timeout`` seconds (it is cancelled).
        """
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"ingestion did not finish within {timeout:g} s") from None

    def add_stream(self, exchange_id: str, symbols: Sequence[str] = (),
                   timeout: float | None = 30.0, **stream_kwargs: Any) -> MarketDataStream:
        """:meth:`MarketDataManager.add_stream`, from any thread (blocks until connected)."""
        return self.run(self.manager.add_stream(exchange_id, symbols, **stream_kwargs), timeout)

    def control(self, timeout: float = DEFAULT_CONTROL_TIMEOUT) -> ThreadedControl:
        """The :class:`~flight_md.control.IngestionControl` for the Flight service."""
        return ThreadedControl(self.manager, self.loop, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect every stream, stop the loop and join the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._manager is not None and loop.is_running():
                self.run(self._manager.shutdown(), timeout)
        except Exception as error:  # noqa: BLE001 - stopping must finish even if a stream misbehaves
            logger.warning("ingestion did not shut down cleanly: %s", error)
        finally:
            if loop.is_running():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
            self._loop = self._thread = None
            self._manager = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
