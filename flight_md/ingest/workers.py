"""Sharded ingestion: the subscribed streams spread over N worker processes.

One :class:`~flight_md.ingest.process.IngestionProcess` parses every symbol of every exchange
on one asyncio loop, in one process: one core. :class:`IngestionWorkers` runs ``N`` of them
(``--ingest-workers N``), each a supervised child with its own ccxt instances and its own
connections, all filling this process's buffer and event log, and answers the Flight service
through the same :class:`~flight_md.control.IngestionControl` as one process does.

The unit of sharding: a symbol of an exchange
    Every worker runs a stream for every configured (exchange, channel), each with its share of
    the exchange's symbols (possibly none: the stream then only has its markets loaded, ready
    for a symbol that ``subscribe`` places there). A symbol's channels stay together on one
    worker: ``subscribe`` and ``unsubscribe`` act on every channel of an exchange at once, so a
    request is one call per worker it touches, and a symbol's ticker, trades and book come from
    one process. Sharding by exchange (a worker per exchange-channel group) was the
    alternative; it cannot help the case that needs it most, one exchange with many busy
    symbols, whose parsing is what saturates one core.

The rule (:class:`Shards`, pure)
    A new (exchange, symbol) goes to the worker with, in this order, the fewest subscribed
    symbols of that exchange, the fewest subscribed symbols of any exchange, the lowest index.
    So each exchange's symbols are spread evenly (within one) and, across exchanges, so are
    all symbols; the same configuration always gives the same placement. A symbol keeps its
    worker for the life of the server, also after ``unsubscribe`` (subscribing it again goes
    back there): its counters then live in one process, and ``status`` never shows it twice.

Venue limits
    Each worker's stream applies the venue's limits to its own share exactly as one process
    does (``symbols_per_message`` per subscribe message, ``streams_per_connection``,
    ``control_per_second`` per connection, a connection per subscription group where
    ``connection_per_group``): a share only lowers the load of each connection. What sharding
    adds is connections: an (exchange, channel) with S symbols opens at most
    ``ceil(S / symbols_per_message) + N - 1`` websockets in all where one process opens
    ``ceil(S / symbols_per_message)`` (a venue without connection-per-group: at most N instead
    of 1), and each worker loads the exchange's markets itself (N REST requests at start where
    one process makes one). Keep N within a venue's per-IP limits (Binance: 300 new
    connections per 5 minutes; OKX: 3 a second), which the venue registry does not model yet.

Supervision
    Each worker is an :class:`~flight_md.ingest.process.IngestionProcess`, which restarts its
    own child (with its streams and the symbols subscribed on it at that moment) and records
    ``failed`` and ``restarted`` events naming only that worker's symbols. The other workers
    and their connections are not touched; meanwhile ``status`` shows the exchanges of the dead
    worker ``down`` (the merged state is the worst of the workers holding symbols) and a
    ``subscribe`` that would reach it answers ``Unavailable``.

Threads: the Flight thread calling :class:`WorkersControl` makes one control call per worker
involved (in turn; ``status`` and ``markets`` ask every worker); each worker's reader thread
appends its symbols' rows to this process's buffer, whose rings are disjoint per worker (a
ring belongs to one (exchange, symbol), which belongs to one worker) and each locked.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Self

from flight_md import errors
from flight_md.buffer import MarketDataBuffer, Store
from flight_md.control import ClockSkew, ExchangeStatus, IngestionStatus, MarketInfo
from flight_md.errors import FlightMdError, InvalidArgument, Unavailable, UnknownExchange
from flight_md.events import EventLog
from flight_md.ingest.process import DEFAULT_CONTROL_TIMEOUT, START_TIMEOUT_S, IngestionProcess
from flight_md.ingest.state import ConnectionState

__all__ = ["IngestionWorkers", "Shards", "WorkersControl"]

logger = logging.getLogger(__name__)

_SEVERITY: Final = {ConnectionState.FAILED.value: 5, ConnectionState.DOWN.value: 4,
                    ConnectionState.RECONNECTING.value: 3, ConnectionState.CONNECTING.value: 2,
                    ConnectionState.DISCONNECTED.value: 1, ConnectionState.CONNECTED.value: 0}
"""How bad a stream state is: an exchange's merged state is its worst worker's."""


def _no_stream(exchange: str, running: Iterable[str]) -> UnknownExchange:
    return UnknownExchange(f"no stream for exchange {exchange!r}; running: "
                           f"{', '.join(running) or 'none'}")


def _names(symbols: Sequence[str]) -> list[str]:
    """A request's symbols as a list (a bare string is one symbol, as the streams take it)."""
    return [symbols] if isinstance(symbols, str) else list(symbols)


@dataclass(slots=True)
class Shards:
    """Which worker owns each (exchange, symbol): the placement rule of the module docstring.

    Pure bookkeeping, no I/O, not thread-safe (:class:`IngestionWorkers` holds a lock).

    Args:
        workers: The number of workers (>= 1).
    """

    workers: int
    _owner: dict[tuple[str, str], int] = field(default_factory=dict)
    _rank: dict[tuple[str, str], int] = field(default_factory=dict)
    _subscribed: set[tuple[str, str]] = field(default_factory=set)
    _load: Counter[tuple[str | None, int]] = field(default_factory=Counter)
    """Subscribed symbols by (exchange, worker), and by (None, worker) over every exchange."""

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or self.workers < 1:
            raise InvalidArgument(f"workers must be an integer >= 1, got {self.workers!r}")

    def owner(self, exchange: str, symbol: str) -> int | None:
        """The worker that owns the symbol, ``None`` if it was never placed."""
        return self._owner.get((exchange, symbol))

    def order(self, exchange: str, symbol: str) -> int:
        """When the symbol was placed, relative to the others (unplaced: after all)."""
        return self._rank.get((exchange, symbol), 1 << 62)

    def is_subscribed(self, exchange: str, symbol: str) -> bool:
        """Whether the symbol is subscribed (on its owner)."""
        return (exchange, symbol) in self._subscribed

    def load(self, worker: int, exchange: str | None = None) -> int:
        """Subscribed symbols on ``worker`` (of ``exchange``; ``None``: of every exchange)."""
        return self._load[(exchange, worker)]

    def subscribed(self, exchange: str, worker: int | None = None) -> list[str]:
        """The subscribed symbols of ``exchange`` (on ``worker``), in placement order."""
        found = [key for key in self._subscribed if key[0] == exchange
                 and (worker is None or self._owner[key] == worker)]
        return [s for _, s in sorted(found, key=self._rank.__getitem__)]

    def place(self, exchange: str, symbols: Iterable[str]) -> dict[int, list[str]]:
        """The owner of each symbol, placing the new ones by the rule; by worker, in order.

        A new symbol's worker is chosen as if the new ones before it in the same call were
        already subscribed, so one call spreads its symbols. :meth:`mark` records what got
        subscribed; :meth:`forget` undoes a placement that was refused.
        """
        by_worker: dict[int, list[str]] = {}
        pending: Counter[tuple[str | None, int]] = Counter()
        for symbol in dict.fromkeys(symbols):
            key = (exchange, symbol)
            worker = self._owner.get(key)
            if worker is None:
                worker = min(range(self.workers), key=lambda w: (
                    self._load[(exchange, w)] + pending[(exchange, w)],
                    self._load[(None, w)] + pending[(None, w)], w))
                self._owner[key] = worker
                self._rank[key] = len(self._rank)
            if key not in self._subscribed:
                pending[(exchange, worker)] += 1
                pending[(None, worker)] += 1
            by_worker.setdefault(worker, []).append(symbol)
        return dict(sorted(by_worker.items()))

    def mark(self, exchange: str, symbols: Iterable[str], *, subscribed: bool) -> None:
        """Record that the (placed) symbols are now subscribed, or no longer."""
        for symbol in symbols:
            key = (exchange, symbol)
            worker = self._owner.get(key)
            if worker is None or (key in self._subscribed) == subscribed:
                continue
            step = 1 if subscribed else -1
            if subscribed:
                self._subscribed.add(key)
            else:
                self._subscribed.discard(key)
            self._load[(exchange, worker)] += step
            self._load[(None, worker)] += step

    def forget(self, exchange: str, symbols: Iterable[str]) -> None:
        """Undo the placement of symbols that never got subscribed (a refused ``subscribe``)."""
        for symbol in symbols:
            key = (exchange, symbol)
            if key not in self._subscribed:
                self._owner.pop(key, None)
                self._rank.pop(key, None)


@dataclass(slots=True)
class _Stream:
    """A stream as ``add_stream`` was asked for it (every worker runs it)."""

    exchange: str
    timeout: float | None
    kwargs: dict[str, Any]


class IngestionWorkers:
    """Ingestion in ``count`` supervised child processes, sharded by (exchange, symbol).

    The surface of :class:`~flight_md.ingest.process.IngestionProcess` that a server needs
    (``start``, ``add_stream``, ``control``, ``stop``, and ``subscribe``, ``unsubscribe``,
    ``status``, ``markets`` with a timeout); see the module docstring for the rule, the limits
    and supervision.

    Args:
        count: Worker processes (>= 1).
        buffer: The tick buffer, when no ``store`` is given (as for :class:`IngestionProcess`).
        events: Where every worker's events go.
        name: The children's process name (``-<index>`` is appended).
        on_fatal: As for :class:`IngestionProcess` (called by the worker that found the bad
            symbol, once).
        store: Every channel's buffers, shared by the workers (default: one around
            ``buffer``); each worker's rows of a channel go to ``store.buffer(channel)``.
    """

    def __init__(self, count: int, buffer: MarketDataBuffer | None = None,
                 events: EventLog | None = None, *, name: str = "flight-md-ingest",
                 on_fatal: Callable[[str, errors.InvalidArgument], None] | None = None,
                 store: Store | None = None) -> None:
        self.shards = Shards(count)
        if store is None:
            store = Store.of(buffer if buffer is not None else MarketDataBuffer())
        self.store = store
        """Every channel's buffers, which every worker fills."""
        self.buffer = buffer if buffer is not None else store.buffer("ticker")
        """The tick buffer (``store.buffer("ticker")`` unless one was given)."""
        self.events = events if events is not None else EventLog()
        self.workers: tuple[IngestionProcess, ...] = tuple(
            IngestionProcess(buffer, self.events, name=f"{name}-{index}", on_fatal=on_fatal,
                             store=store)
            for index in range(count))
        """The workers, by index."""
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()  # placement: one subscribe/unsubscribe at a time
        self._pool = concurrent.futures.ThreadPoolExecutor(
            count, thread_name_prefix=f"{name}-call") if count > 1 else None
        """Asks every worker at once (``status`` answers in one worker's time, not N)."""

    @property
    def count(self) -> int:
        """The number of workers."""
        return len(self.workers)

    @property
    def pids(self) -> tuple[int | None, ...]:
        """Each worker's current child process id."""
        return tuple(worker.pid for worker in self.workers)

    @property
    def alive(self) -> bool:
        """Whether every worker's child runs."""
        return all(worker.alive for worker in self.workers)

    @property
    def restarts(self) -> int:
        """Restarts of dead children, over every worker."""
        return sum(worker.restarts for worker in self.workers)

    @property
    def exchanges(self) -> tuple[str, ...]:
        """The exchanges streamed, in the order their streams were added."""
        return tuple(dict.fromkeys(stream.exchange for stream in self._streams))

    def _each(self, call: Callable[[IngestionProcess], Any]) -> list[Any]:
        """``call`` on every worker at once; the results by worker (the first error raised)."""
        pool = self._pool
        if pool is None:
            return [call(worker) for worker in self.workers]
        try:
            futures = [pool.submit(call, worker) for worker in self.workers]
        except RuntimeError:  # shut down by stop()
            raise Unavailable("ingestion is not running") from None
        return [future.result() for future in futures]

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start every worker's child at once and wait until all are ready (idempotent).

        Raises:
            Unavailable: A child did not come up within ``timeout`` seconds (every worker
                is stopped again).
        """
        if os.cpu_count() is not None and self.count > (os.cpu_count() or 1):
            logger.warning("%d ingestion workers on %d cores: workers beyond the cores compete "
                           "for them and add connections without adding speed", self.count,
                           os.cpu_count())
        try:
            self._each(lambda worker: worker.start(timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def add_stream(self, exchange_id: str, symbols: Sequence[str] = (),
                   timeout: float | None = 30.0, **stream_kwargs: Any) -> None:
        """Start the stream in every worker, each with the symbols the rule places there
        (``IngestionProcess.add_stream``, all workers at once; blocks until each connected).

        Raises:
            FlightMdError: What a worker raised (the lowest index first); workers that
                succeeded keep their share running.
        """
        names = list(dict.fromkeys(_names(symbols)))
        with self._lock:
            placed = self.shards.place(exchange_id, names)

            def add(worker: IngestionProcess) -> None:
                index = self.workers.index(worker)
                worker.add_stream(exchange_id, placed.get(index, []), timeout, **stream_kwargs)

            try:
                self._each(add)
            except BaseException:
                self.shards.forget(exchange_id, names)
                raise
            self.shards.mark(exchange_id, names, subscribed=True)
            self._streams.append(_Stream(exchange_id, timeout, dict(stream_kwargs)))

    def _exchange(self, exchange: str | None) -> str:
        """The exchange a request names (``None``: the only one), as the streams check it."""
        running = self.exchanges
        if exchange is None:
            if len(running) == 1:
                return running[0]
            if not running:
                raise Unavailable("no exchange is streaming")
            raise InvalidArgument(f"several exchanges are streaming; name one of: "
                                  f"{', '.join(running)}")
        if exchange not in running:
            raise _no_stream(exchange, running)
        return exchange

    def subscribe(self, exchange: str | None, symbols: Sequence[str],
                  timeout: float | None) -> dict[str, Any]:
        """``subscribe`` on the worker owning each symbol (a new one: the worker the rule picks).

        All or nothing across workers: if a worker refuses its part (a symbol the exchange does
        not list, a worker being restarted), what the others subscribed in this call is
        unsubscribed again and the error is raised.
        """
        exchange_id = self._exchange(exchange)
        names = _names(symbols)
        with self._lock:
            fresh = [s for s in dict.fromkeys(names)
                     if not self.shards.is_subscribed(exchange_id, s)]
            if not names:  # let a worker phrase the refusal, as one process would
                self.workers[0].subscribe(exchange_id, symbols, timeout)
            placed = self.shards.place(exchange_id, names)
            done: list[tuple[int, list[str]]] = []
            answers: list[dict[str, Any]] = []
            try:
                for index, part in placed.items():
                    answers.append(self.workers[index].subscribe(exchange_id, part, timeout))
                    done.append((index, [s for s in part if s in fresh]))
            except BaseException:
                for index, part in done:  # all or nothing: undo this call's new subscriptions
                    if part:
                        try:
                            self.workers[index].unsubscribe(exchange_id, part, timeout)
                        except FlightMdError as error:
                            logger.warning("%s: could not undo the subscription of %s on worker "
                                           "%d: %s", exchange_id, ", ".join(part), index, error)
                self.shards.forget(exchange_id, fresh)
                raise
            got = {s for answer in answers for s in answer["subscribed"]}
            self.shards.mark(exchange_id, got, subscribed=True)
            self.shards.forget(exchange_id, [s for s in fresh if s not in got])
        return self._answer(answers, exchange_id, "subscribed",
                            [s for s in dict.fromkeys(names) if s in got])

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str],
                    timeout: float | None) -> dict[str, Any]:
        """``unsubscribe`` on the worker owning each symbol. A symbol that is not subscribed
        (or no symbol) is refused by its owner (or the first worker) exactly as one process
        refuses it, before any other worker is asked."""
        exchange_id = self._exchange(exchange)
        names = _names(symbols)
        with self._lock:
            answers: list[dict[str, Any]] = []
            unknown = [s for s in names if not self.shards.is_subscribed(exchange_id, s)]
            if not names or unknown:
                owner = self.shards.owner(exchange_id, unknown[0]) if unknown else None
                answers.append(self.workers[owner or 0].unsubscribe(
                    exchange_id, unknown if unknown else symbols, timeout))
            known = [s for s in names if s not in unknown]
            for index, part in (self.shards.place(exchange_id, known) if known else {}).items():
                answers.append(self.workers[index].unsubscribe(exchange_id, part, timeout))
            gone = {s for answer in answers for s in answer["unsubscribed"]}
            self.shards.mark(exchange_id, gone, subscribed=False)
        return self._answer(answers, exchange_id, "unsubscribed",
                            [s for s in dict.fromkeys(names) if s in gone])

    @staticmethod
    def _answer(answers: list[dict[str, Any]], exchange: str, key: str,
                symbols: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = {"exchange": exchange, key: symbols}
        channels = next((a["channels"] for a in answers if "channels" in a), None)
        if channels is not None:  # every worker runs the same streams
            result["channels"] = channels
        return result

    def status(self, timeout: float | None) -> IngestionStatus:
        """Every stream's status, merged over the workers (:func:`merge_status`).

        Raises:
            Unavailable: A worker was stopped (or never started), or is too slow.
        """
        parts = self._each(lambda worker: worker.status(timeout))
        return merge_status(parts, self.shards)

    def markets(self, exchange: str | None, pattern: str | None,
                timeout: float | None) -> tuple[MarketInfo, ...]:
        """Every stream's loaded markets (whose symbol ``pattern`` matches): the first worker
        that answers lists them (every worker loads the same), ``subscribed`` as the owners say.

        Raises:
            Unavailable: No worker answers.
            UnknownExchange: No stream runs for ``exchange``.
        """
        if exchange is not None:
            self._exchange(exchange)

        def ask(worker: IngestionProcess) -> tuple[MarketInfo, ...] | FlightMdError:
            try:
                return worker.markets(exchange, pattern, timeout)
            except Unavailable as error:
                return error

        answers = self._each(ask)
        lists = [a for a in answers if not isinstance(a, FlightMdError)]
        if not lists:
            raise answers[0]
        subscribed = {(m.exchange, m.symbol) for found in lists for m in found if m.subscribed}
        with self._lock:  # a subscribe on another thread changes the placement
            for index, answer in enumerate(answers):
                if isinstance(answer, FlightMdError):  # being restarted: what it was given
                    subscribed.update((e, s) for e in self.exchanges
                                      for s in self.shards.subscribed(e, index))
        return tuple(m if m.subscribed == ((m.exchange, m.symbol) in subscribed)
                     else replace(m, subscribed=not m.subscribed) for m in lists[0])

    def control(self, timeout: float = DEFAULT_CONTROL_TIMEOUT) -> WorkersControl:
        """The :class:`~flight_md.control.IngestionControl` for the Flight service."""
        return WorkersControl(self, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker at once, each bounded by ``timeout`` (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is None:
            for worker in self.workers:
                worker.stop(timeout)
            return
        for future in [pool.submit(worker.stop, timeout) for worker in self.workers]:
            future.result()
        pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def merge_status(parts: Sequence[IngestionStatus], shards: Shards) -> IngestionStatus:
    """One status from every worker's (``parts`` by worker index).

    Per (exchange, channel): the symbols of every worker, in placement order; ``reconnects``,
    ``bad_frames``, ``callback_errors`` and ``counters`` summed (each worker counts its own
    connections and frames); ``state`` the worst of the workers holding symbols of it (a
    worker being restarted makes it ``down``), ``mode`` ``rest`` if any of them polls;
    ``last_error`` the latest, naming its worker. ``clock_skew``, which cannot be merged from
    summaries, is the sample-weighted median of the workers' medians and the largest p99 (exact
    with one worker holding the symbols). Symbols come from their owner only, so none is listed
    twice.
    """
    if len(parts) == 1:
        return parts[0]
    grouped: dict[tuple[str, str], list[tuple[int, ExchangeStatus]]] = {}
    for index, part in enumerate(parts):
        for ex in part.exchanges:
            grouped.setdefault((ex.exchange, ex.channel), []).append((index, ex))
    exchanges = tuple(_merge_exchange(entries, shards) for entries in grouped.values())
    rank = {key: i for i, key in enumerate(grouped)}
    first: dict[str, int] = {}
    for i, (exchange, _) in enumerate(grouped):
        first.setdefault(exchange, i)
    symbols = [sym for index, part in enumerate(parts) for sym in part.symbols
               if shards.owner(sym.exchange, sym.symbol) in (index, None)]
    symbols.sort(key=lambda s: (first.get(s.exchange, len(rank)),
                                rank.get((s.exchange, s.channel or ""), 0),
                                shards.order(s.exchange, s.symbol)))
    return IngestionStatus(exchanges, tuple(symbols))


def _merge_exchange(entries: list[tuple[int, ExchangeStatus]], shards: Shards) -> ExchangeStatus:
    holding = [(i, ex) for i, ex in entries if ex.symbols] or entries[:1]
    _, worst = max(holding, key=lambda item: (_SEVERITY.get(item[1].state, 6), -item[0]))
    errored = [(ex.last_error_ms or 0, i, ex) for i, ex in entries if ex.last_error is not None]
    last_error, last_error_ms = worst.last_error, worst.last_error_ms
    if errored:
        _, index, latest = max(errored, key=lambda item: (item[0], -item[1]))
        last_error, last_error_ms = f"worker {index}: {latest.last_error}", latest.last_error_ms
    owned = {s: i for i, ex in entries for s in ex.symbols if shards.owner(ex.exchange, s) in (i, None)}
    bad: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    for _, ex in entries:
        bad.update(ex.bad_frames)
        counters.update(ex.counters)
    return replace(
        worst,
        mode="rest" if any(ex.mode == "rest" for _, ex in holding) else worst.mode,
        reconnects=sum(ex.reconnects for _, ex in entries),
        symbols=tuple(sorted(owned, key=lambda s: shards.order(worst.exchange, s))),
        bad_frames=dict(bad), callback_errors=sum(ex.callback_errors for _, ex in entries),
        last_error=last_error, last_error_ms=last_error_ms,
        clock_skew=_merge_skew([ex.clock_skew for _, ex in entries]),
        counters={name: counters[name] for name in dict.fromkeys(
            name for _, ex in entries for name in ex.counters)})


def _merge_skew(skews: Sequence[ClockSkew]) -> ClockSkew:
    measured = [s for s in skews if s.samples and s.median_ms is not None]
    if len(measured) <= 1:
        return measured[0] if measured else skews[0]
    ordered = sorted(measured, key=lambda s: s.median_ms or 0)
    half, seen, median = sum(s.samples for s in ordered) / 2, 0, ordered[-1].median_ms
    for skew in ordered:
        seen += skew.samples
        if seen >= half:
            median = skew.median_ms
            break
    p99s = [s.p99_ms for s in measured if s.p99_ms is not None]
    return ClockSkew(median, max(p99s) if p99s else None, sum(s.samples for s in measured),
                     max(s.window_ms for s in measured))


class WorkersControl:
    """:class:`~flight_md.control.IngestionControl` over :class:`IngestionWorkers`."""

    def __init__(self, workers: IngestionWorkers,
                 timeout: float = DEFAULT_CONTROL_TIMEOUT) -> None:
        self.workers = workers
        self.timeout = timeout

    def subscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Start streaming ``symbols``; returns ``{"exchange": id, "subscribed": [...]}``."""
        return self.workers.subscribe(exchange, symbols, self.timeout)

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Stop streaming ``symbols``; returns ``{"exchange": id, "unsubscribed": [...]}``."""
        return self.workers.unsubscribe(exchange, symbols, self.timeout)

    def status(self) -> IngestionStatus:
        """Every stream's status, merged over the workers (a worker being restarted: its
        exchanges ``down``)."""
        return self.workers.status(self.timeout)

    def markets(self, exchange: str | None, pattern: str | None = None,
                ) -> tuple[MarketInfo, ...]:
        """Every stream's loaded markets (read in the workers, filtered there)."""
        return self.workers.markets(exchange, pattern, self.timeout)
