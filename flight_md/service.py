"""The Flight service: a thin ``pyarrow.flight`` adapter over the tick store.

Threads meet at two points. Flight handlers run on gRPC threads and read the
:class:`~flight_md.buffer.MarketDataBuffer` (immutable Arrow snapshots taken under a short
per-ring lock); ingestion appends to it from its asyncio thread. Subscribe and unsubscribe
go to ingestion through :class:`~flight_md.control.IngestionControl`, which hands them to the
asyncio loop with ``run_coroutine_threadsafe(...).result(timeout)``.

``@markets`` (the markets each served exchange lists) is read from ingestion through the same
control call (:meth:`~flight_md.control.IngestionControl.markets`, on the ingestion loop or in
the ingestion process, which also applies the symbol glob) and served as one immutable table.

Errors are mapped to Flight status codes in exactly one place, :func:`map_errors`. pyarrow
appends the server's Python traceback to the message of any non-Flight exception, and its
Flight error classes have no INVALID_ARGUMENT or NOT_FOUND. So expected errors cross the
boundary as *wire errors*: subclasses of the pyarrow exceptions that carry the right status
code (``ArrowInvalid`` -> INVALID_ARGUMENT, ``ArrowKeyError`` -> NOT_FOUND, ...) whose
metaclass makes ``traceback.format_exception`` fail for them, so pyarrow falls back to naming
the type. The client sees ``"<message>. Detail: Python exception: InvalidArgument"`` and the
right code; no path or source line leaves the server. Unexpected errors are logged here with
their traceback and reach the client as INTERNAL with an incident id.

On a bus (issue 16, ``bus=``: a :class:`~flight_md.bus.view.BusView`) a serving node may hold
only a shard of the rings (its ``--bus-subjects``). A ring it neither stores nor holds by its
filters is routed (:meth:`FlightMarketDataServer._route`):

* ``GetFlightInfo`` answers with one endpoint, the same ticket, whose locations are every live
  serving node that holds the ring (replicas of one stream, so one endpoint: a client reads it
  from any one location, ``locations[0]`` first, as pyarrow, ADBC and Ballista/Dremio-style
  clients do; an endpoint per node would tell the client to read and concatenate all of
  them). Its record and byte counts are -1 (unknown here). ``GetSchema`` answers from the
  ticket alone.
* ``DoGet`` of such a ring is NOT_FOUND naming the holders' locations (a Flight server cannot
  redirect a DoGet; following GetFlightInfo is the way).
* A ring nobody holds is NOT_FOUND saying which subjects this node holds and that no node on
  the bus holds it.
* A ticket without ``exchange=`` is answered here whenever this node's store resolves it (the
  default-exchange rules of :mod:`flight_md.tickets`, as without a bus). Otherwise the event
  log decides, as it does without a bus (the ingestion nodes' subscribe events reach every
  serving node): a symbol subscribed on several exchanges is INVALID_ARGUMENT asking for
  ``exchange=``; on one, that exchange's ring is routed as above. A symbol the event log does
  not know either: among the exchanges the bus knows
  (:meth:`~flight_md.bus.view.BusView.exchanges`) that this node does not hold (it would store
  the ring if it were there), those other nodes hold; all held by the same nodes: routed there
  with the ticket unchanged (they resolve the exchange by the same rules); by different nodes:
  INVALID_ARGUMENT asking for ``exchange=``; none: the answer without a bus.

Routing reads memory only (the registry's cached records), and a ring this node stores costs
one ring lookup more, so the bytes path is unchanged.

Flight SQL: a table spans every ring of its channel, so each node's SQL answers over its own
rings, except a statement without bound parameters (plain or prepared: the ADBC driver
prepares ``execute(sql)``) that provably reads only rings held elsewhere, all by the same
nodes: the ``WHERE`` of its only read of each channel table pins exchanges and symbols
(:func:`flight_md.sql.prune.ring_filters`, the proof the engine prunes rings by) and it names
no table of this node's own (events, status, bars_1m). Its ``GetFlightInfo`` endpoint carries
those nodes' locations and the same statement handle (handles are stateless: they carry the
SQL), so the ADBC driver reads the answer there. Anything else (bound parameters, joins, a
symbol without an exchange, rings of several nodes) is answered here, over the rings here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
from pyarrow import flight

from flight_md import errors
from flight_md.actions import (
    ACTIONS,
    ActionName,
    ClearRequest,
    SubscribeRequest,
    encode_result,
    parse_action,
)
from flight_md.buffer import MarketDataBuffer, Store, ambiguous_exchange
from flight_md.control import MARKET_SCHEMA, IngestionControl, markets_table
from flight_md.core.bars import BAR_SCHEMA, BarBuilder, BarInterval, bars
from flight_md.core.channels import CHANNELS, TICKER_LIKE
from flight_md.events import EventKind, EventLog
from flight_md.metrics import mark_follow, server_health
from flight_md.persist.query import Spanned, span
from flight_md.schema import EVENT_SCHEMA, now_ms
from flight_md.tickets import (
    EXCHANGE_RE,
    Query,
    Target,
    answer_schema,
    format_ticket,
    parse_criteria,
    parse_descriptor,
    parse_ticket,
)

if TYPE_CHECKING:
    from flight_md.bus.view import BusView
    from flight_md.persist.store import Persistence

__all__ = ["DEFAULT_LOCATION", "FlightMarketDataServer", "map_errors"]

logger = logging.getLogger(__name__)

DEFAULT_LOCATION: Final = "grpc://127.0.0.1:8815"
TAIL_WAIT_S: Final = 0.05
"""A live tail checks for shutdown and cancellation at least this often."""
TAIL_BATCH_ROWS: Final = 4096
TAIL_SHUTDOWN_MESSAGE: Final = "server is shutting down; the live tail ends here"
BAR_CLOSE_DELAY_MS: Final = 500
"""How long after a bar's end (on the feed's clock) a ``follow=true&bars=`` tail waits for
its last trades before it sends the bar; a trade arriving later is late and left out."""
GET_BATCH_ROWS: Final = 65_536
CLUSTER_TIMEOUT_S: Final = 0.5
"""How long the ``status`` action waits for the cluster's answers (``bus=`` only): every
node's status on ``mdctl.cluster`` and the stream's view, gathered at the same time."""
_IPC_OPTIONS: Final = pa.ipc.IpcWriteOptions()
_WORD_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Opaque(type):
    """Metaclass of wire errors: ``traceback`` cannot format them (see the module docstring)."""

    def __getattribute__(cls, name: str) -> Any:
        if name == "__qualname__":
            raise RuntimeError("wire errors carry no traceback")
        return super().__getattribute__(name)


class InvalidArgument(pa.ArrowInvalid, metaclass=_Opaque):
    """INVALID_ARGUMENT on the wire."""


class NotFound(pa.ArrowKeyError, metaclass=_Opaque):
    """NOT_FOUND on the wire."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Unimplemented(pa.ArrowNotImplementedError, metaclass=_Opaque):
    """UNIMPLEMENTED on the wire."""


# pyarrow's GetSchema handler alone has no ``except FlightError``: there even Flight errors
# take the path that appends a traceback, so those cross the boundary opaque as well.
class _Internal(flight.FlightInternalError, metaclass=_Opaque):
    """INTERNAL on the wire."""


class _Unavailable(flight.FlightUnavailableError, metaclass=_Opaque):
    """UNAVAILABLE on the wire."""


class _Unauthenticated(flight.FlightUnauthenticatedError, metaclass=_Opaque):
    """UNAUTHENTICATED on the wire."""


class _Unauthorized(flight.FlightUnauthorizedError, metaclass=_Opaque):
    """PERMISSION_DENIED on the wire."""


class _Cancelled(flight.FlightCancelledError, metaclass=_Opaque):
    """CANCELLED on the wire."""


SLOW_CONSUMER: Final = b"slow_consumer"
"""``extra_info`` of the CANCELLED error that ends a live tail which fell too far behind."""


SERVER_SHUTDOWN: Final = b"server_shutdown"
"""``extra_info`` of the UNAVAILABLE error that ends a live tail when the server stops (and
refuses a new one while it stops): a plain Flight client tells it from a finished stream."""


def _slow_consumer(message: str) -> Exception:
    # pyarrow can send no RESOURCE_EXHAUSTED: the server cancels the stream, with a marker.
    return _Cancelled(message, extra_info=SLOW_CONSUMER)


def _shutting_down(message: str) -> Exception:
    return _Unavailable(message, extra_info=SERVER_SHUTDOWN)


_WIRE: Final[tuple[tuple[type[errors.FlightMdError], str, Callable[[str], Exception]], ...]] = (
    (errors.InvalidArgument, "INVALID_ARGUMENT", InvalidArgument),
    (errors.NotFound, "NOT_FOUND", NotFound),
    (errors.UnknownAction, "UNIMPLEMENTED", Unimplemented),
    (errors.ShuttingDown, "UNAVAILABLE", _shutting_down),
    (errors.Unavailable, "UNAVAILABLE", _Unavailable),
    (errors.SlowConsumer, "CANCELLED", _slow_consumer),
    (errors.Unauthenticated, "UNAUTHENTICATED", _Unauthenticated),
    (errors.PermissionDenied, "PERMISSION_DENIED", _Unauthorized),
)
"""The error mapping: each branch of the tree, its Flight status, and its wire error (the
first row whose class matches wins; anything else is INTERNAL)."""


def _wire(exc: errors.FlightMdError) -> tuple[str, Exception]:
    """The Flight status name and the wire error for ``exc`` (per :data:`_WIRE`)."""
    for kind, status, wire in _WIRE:
        if isinstance(exc, kind):
            return status, wire(str(exc))
    return "INTERNAL", _Internal(str(exc))


REFUSAL_LOG_BURST: Final = 20
"""Refused requests logged one line each per :data:`REFUSAL_LOG_INTERVAL_S`."""
REFUSAL_LOG_INTERVAL_S: Final = 10.0
"""Beyond the burst, refused requests of an interval are logged as one summary line."""


class _RefusalLog:
    """INFO lines for refused requests, aggregated so that a hostile client cannot flood the log.

    In each interval the first ``burst`` refusals get a line each; the others are counted by
    Flight status and reported in one line when the interval ends (a timer), or at
    :meth:`flush`: ``"N more refused requests in the last T s (by status: ...)"``. Thread-safe:
    gRPC threads call :meth:`refused`.
    """

    def __init__(self, burst: int = REFUSAL_LOG_BURST,
                 interval_s: float = REFUSAL_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._suppressed: Counter[str] = Counter()
        self._timer: threading.Timer | None = None

    def refused(self, rpc: str, status: str, exc: errors.FlightMdError) -> None:
        """Log one refused request, or count it for the interval's summary line."""
        with self._lock:
            summary = self._roll_if_due()
            if self._logged < self.burst:
                self._logged += 1
                line = True
            else:
                self._suppressed[status] += 1
                line = False
                if self._timer is None:
                    delay = max(0.0, self._window_start + self.interval_s - self._clock())
                    self._timer = threading.Timer(delay, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
        self._emit(summary)
        if line:
            logger.info("%s refused: %s: %s", rpc, type(exc).__name__, exc)

    def flush(self) -> None:
        """Log the summary of the refusals not logged so far, if any, and start a new interval."""
        with self._lock:
            summary = self._roll(self._clock())
        self._emit(summary)

    def _roll_if_due(self) -> tuple[int, float, str] | None:
        now = self._clock()
        if now - self._window_start < self.interval_s:
            return None
        return self._roll(now)

    def _roll(self, now: float) -> tuple[int, float, str] | None:
        """Start a new interval (caller holds the lock); the old one's summary, if any."""
        suppressed, elapsed = self._suppressed, now - self._window_start
        self._window_start, self._logged, self._suppressed = now, 0, Counter()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not suppressed:
            return None
        by_status = ", ".join(f"{status} {count}" for status, count in sorted(suppressed.items()))
        return sum(suppressed.values()), elapsed, by_status

    @staticmethod
    def _emit(summary: tuple[int, float, str] | None) -> None:
        if summary is not None:
            logger.info("%d more refused requests in the last %.1f s (by status: %s)", *summary)


class _Counters:
    """Thread-safe counts of refused requests, by error class (exact), and their log lines
    (aggregated, :class:`_RefusalLog`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.log = _RefusalLog()

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


_incidents = itertools.count(1)


@contextlib.contextmanager
def map_errors(rpc: str, counters: _Counters | None = None) -> Iterator[None]:
    """Translate every exception raised inside into a clean Flight error.

    Args:
        rpc: The RPC name, for logs.
        counters: Where to count refused requests.
    """
    try:
        yield
    except errors.FlightMdError as exc:
        status, wire = _wire(exc)
        if counters is not None:
            counters.add(type(exc).__name__)
            counters.log.refused(rpc, status, exc)
        else:
            logger.info("%s refused: %s: %s", rpc, type(exc).__name__, exc)
        raise wire from None
    except flight.FlightError:
        raise
    except GeneratorExit:
        raise
    except Exception:
        incident = next(_incidents)
        logger.exception("%s failed unexpectedly (incident %d)", rpc, incident)
        if counters is not None:
            counters.add("internal")
        raise _Internal(
            f"internal error in {rpc} (incident {incident}); details are in the server log"
        ) from None


class FlightMarketDataServer(flight.FlightServerBase):
    """Arrow Flight server over the rings of every channel (:class:`~flight_md.buffer.Store`).

    Args:
        location: Where to listen, e.g. ``"grpc://127.0.0.1:8815"`` (port 0 picks one).
        buffer: A tick store to serve (ticker and bid/ask rings), when ``store`` is not given.
        store: Every channel's buffer (ticker, bidask, trades, book).
        events: The event log served as ``@events`` (shared with ingestion).
        control: Ingestion control for ``subscribe``/``unsubscribe``; without it those
            actions answer UNAVAILABLE.
        follow_max_lag: Ticks a live tail may fall behind before the server cancels it
            (CANCELLED, ``extra_info`` ``b"slow_consumer"``; default: the buffer capacity).
        authorize: Called as ``authorize(context, mutating)`` at the start of every RPC;
            raises ``Unauthenticated``/``PermissionDenied`` to refuse (see :mod:`flight_md.auth`).
        persistence: The journal and Parquet history: range and ``latest`` queries beyond the
            ring read it (:mod:`flight_md.persist.query`), ``flush`` writes it, ``status``
            reports it. ``None``: memory only.
        ingestion_mode: Where ingestion runs (``"process"`` or ``"thread"``), as ``status``
            reports it in ``server.ingestion_mode`` (the app passes it; ``None``: not said).
        bus: The bus this node serves from (:class:`~flight_md.bus.view.BusView`): rings it
            does not hold are routed to the nodes that do (see the module docstring), and
            ``status`` gains ``bus`` and (the action) ``cluster``. ``None``: no bus. It may
            also be set as the attribute ``bus`` after construction, before serving (the
            view's advertised location can need the port the server bound).
        **kwargs: Passed to :class:`pyarrow.flight.FlightServerBase` (``tls_certificates``,
            ``verify_client``, ``root_certificates``, ``middleware``, ...).
    """

    def __init__(self, location: str | flight.Location = DEFAULT_LOCATION,
                 buffer: MarketDataBuffer | None = None, *, store: Store | None = None,
                 events: EventLog | None = None,
                 control: IngestionControl | None = None, follow_max_lag: int | None = None,
                 authorize: Callable[[flight.ServerCallContext, bool], None] | None = None,
                 persistence: Persistence | None = None, sql_timeout_s: float = 30.0,
                 sql_memory_limit: str = "1GB", sql_max_concurrent: int = 4,
                 ingestion_mode: str | None = None, bus: BusView | None = None,
                 **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self.persistence = persistence
        if store is None:
            store = Store.of(buffer if buffer is not None else MarketDataBuffer())
        self.store = store
        self.buffer = buffer if buffer is not None else store.buffer("ticker")
        self.events = events if events is not None else EventLog()
        self.control = control
        self.ingestion_mode = ingestion_mode
        self.bus = bus
        self._sql_parser: Any = None  # a DuckDB connection that only parses (_sql_route)
        self._sql_parse_lock = threading.Lock()
        self.follow_max_lag = follow_max_lag
        self._authorize = authorize
        self.refused = _Counters()
        self._stopping = threading.Event()
        self._started = time.monotonic()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        from flight_md.sql.frontend import SqlFrontend
        from flight_md.sql.store_source import StoreTableSource

        # Flight SQL on the same port: every RPC asks the frontend first (by the command's
        # google.protobuf.Any type URL), inside this server's error mapping and counters.
        self.sql = SqlFrontend(
            StoreTableSource(self.store, self.events,
                             history=persistence.root if persistence is not None else None,
                             status=self._status_table),
            timeout_s=sql_timeout_s, memory_limit=sql_memory_limit,
            max_concurrent=sql_max_concurrent, guard=lambda rpc: map_errors(rpc, self.refused))

    # -- helpers ---------------------------------------------------------------------------

    def _check(self, context: flight.ServerCallContext, mutating: bool = False) -> None:
        if self._authorize is not None:
            self._authorize(context, mutating)

    def _route(self, query: Query) -> list[str] | None:
        """Where the ring of a ``SYMBOL`` query is when this node does not hold it: the
        Flight locations of the nodes that do; ``None``: answer here (no bus, not a ``SYMBOL``
        query, or a ring this node stores or holds by its filters). See the module docstring.

        Raises:
            UnknownSymbol: No node on the bus holds the ring.
            AmbiguousExchange: No exchange was given and the symbol is on several.
        """
        bus = self.bus
        if bus is None or query.target is not Target.TICKS:
            return None
        symbol = query.symbol
        assert symbol is not None
        wanted = query.effective_channel
        channels: tuple[str, ...] = (wanted,) if wanted is not None else TICKER_LIKE
        if self._stores(symbol, query.exchange, channels):
            return None
        exchange = query.exchange
        if exchange is None:
            subscribed = self.events.subscribers(symbol)
            if len(subscribed) > 1:  # as without a bus: the symbol is on several
                raise errors.AmbiguousExchange(ambiguous_exchange(symbol, subscribed))
            if not subscribed:
                return self._guess(bus, symbol, channels)
            exchange = subscribed[0]
        if any(bus.holds(c, exchange, symbol) for c in channels):
            return None
        locations = self._holders(bus, exchange, symbol, channels)
        if locations:
            return locations
        what = wanted if wanted is not None else " or ".join(TICKER_LIKE)
        raise errors.UnknownSymbol(
            f"no node on the bus holds {what} of {symbol!r} on {exchange}: this node holds "
            f"{', '.join(bus.subjects) or 'no subject'}, and no live serving node's subject "
            f"filters take it")

    @staticmethod
    def _holders(bus: BusView, exchange: str, symbol: str,
                 channels: tuple[str, ...]) -> list[str]:
        """The locations of the other nodes holding the ring in one of ``channels``, in
        channel order (ticker's before bidask's), each once."""
        return list(dict.fromkeys(location for c in channels
                                  for location in bus.locations(c, exchange, symbol)))

    def _guess(self, bus: BusView, symbol: str, channels: tuple[str, ...]) -> list[str] | None:
        """A symbol with no exchange given that neither this node's store nor the event log
        knows: the exchanges the bus knows that this node does not hold (it would store the
        ring if it existed there) and other nodes do. All held by the same nodes: route there
        (they resolve the exchange as a single node would); by different ones: ask for
        ``exchange=``; none: ``None``, the local answer says what is here."""
        found = {exchange: locations for exchange in bus.exchanges()
                 if not any(bus.holds(c, exchange, symbol) for c in channels)
                 and (locations := self._holders(bus, exchange, symbol, channels))}
        distinct = {tuple(locations) for locations in found.values()}
        if len(distinct) > 1:
            raise errors.AmbiguousExchange(
                f"symbol {symbol!r} is not on this node and may be on several exchanges that "
                f"other nodes hold; add exchange= one of: {', '.join(sorted(found))}")
        return list(distinct.pop()) if distinct else None

    def _sql_route(self, descriptor: flight.FlightDescriptor) -> list[str] | None:
        """Where a Flight SQL statement is answered when it reads only rings this node does
        not hold: the nodes that hold every one of them; ``None``: answer here.

        Only a statement without bound parameters (``CommandStatementQuery``, or
        ``CommandPreparedStatementQuery`` of a handle that carries none, as the ADBC driver
        sends for ``execute(sql)``) whose every channel table is read under a filter that
        :func:`flight_md.sql.prune.ring_filters` proves pins both exchanges and symbols, that
        names no other table of the node (events, status, bars_1m), and whose rings are all
        neither stored nor held here and all held by one same node.
        """
        from flight_md.sql.engine import BARS_TABLE, EVENTS_TABLE, STATUS_TABLE
        from flight_md.sql.frontend import _decode_handle  # the stateless handle's format
        from flight_md.sql.protocol import Command, unpack
        from flight_md.sql.prune import parse_tree, ring_filters

        bus = self.bus
        assert bus is not None
        try:
            command, message = unpack(descriptor.command, (Command.STATEMENT_QUERY,
                                                           Command.PREPARED_STATEMENT_QUERY))
            if command is Command.STATEMENT_QUERY:
                sql: str = message.query
            else:
                sql, params = _decode_handle(message.prepared_statement_handle)
                if params is not None:
                    return None  # the filters may name parameters: answered here
        except errors.FlightMdError:
            return None
        words = {word.lower() for word in _WORD_RE.findall(sql)}
        channels = [c for c in CHANNELS if c in words]
        if not channels or words & {BARS_TABLE, EVENTS_TABLE, STATUS_TABLE}:
            return None
        with self._sql_parse_lock:
            if self._sql_parser is None:
                import duckdb

                self._sql_parser = duckdb.connect(":memory:")
            tree = parse_tree(self._sql_parser, sql)
        filters = ring_filters(tree, sql, channels)
        common: list[str] | None = None
        for channel in channels:
            keys = filters.get(channel)
            if keys is None or keys.exchanges is None or keys.symbols is None:
                return None  # it may read any exchange's or symbol's rings
            for exchange in sorted(keys.exchanges):
                for symbol in sorted(keys.symbols):
                    if self._stores(symbol, exchange, (channel,)) \
                            or bus.holds(channel, exchange, symbol):
                        return None
                    there = bus.locations(channel, exchange, symbol)
                    common = there if common is None else [c for c in common if c in there]
                    if not common:
                        return None  # held by nobody, or not all by one node
        return common

    def _stores(self, symbol: str, exchange: str | None, channels: tuple[str, ...]) -> bool:
        """Whether this node's store has a ring of ``symbol`` (on ``exchange``) in one of
        ``channels`` (several exchanges with none given count: the local answer says so)."""
        for channel in channels:
            buffer = self.store.get(channel)
            if buffer is None:
                continue
            try:
                buffer.resolve(symbol, exchange)
            except (errors.UnknownSymbol, errors.UnknownExchange):
                continue
            except errors.AmbiguousExchange:
                pass
            return True
        return False

    def _buffer_for(self, query: Query) -> MarketDataBuffer:
        """The buffer a ``SYMBOL`` query reads: its channel's, or the ticker-like one.

        Raises:
            NotFound: No ring holds the symbol in that channel (the message lists the
                channels that do, or the channels streamed).
        """
        assert query.symbol is not None
        channel = query.effective_channel
        if channel is None:
            return self.store.ticker_like(query.symbol, query.exchange)
        buffer = self.store.get(channel)
        if buffer is not None:
            try:
                buffer.resolve(query.symbol, query.exchange)
                return buffer
            except errors.UnknownSymbol:
                if not self.store.channels_of(query.symbol, query.exchange):
                    raise
        others = self.store.channels_of(query.symbol, query.exchange)
        if others:
            raise errors.UnknownSymbol(
                f"symbol {query.symbol!r} has no {channel} channel; it has: {', '.join(others)}")
        raise errors.UnknownSymbol(
            f"no {channel} channel is streamed; streamed: "
            f"{', '.join(self.store.channels()) or 'none'}")

    def _answer(self, query: Query) -> pa.Table | Spanned:
        """Answer a non-follow query: an immutable table, or a read over history and ring."""
        if query.target is Target.TICKS and query.bars is not None:
            return self._bars(query)
        buffer = None
        if query.target is Target.TICKS and self.persistence is not None:
            try:
                buffer = self._buffer_for(query)
                spanned = span(self.persistence, buffer, query)
            except errors.NotFound:
                spanned = None  # answered below (NOT_FOUND, or empty while awaiting a tick)
            if spanned is not None:
                return spanned
        return self._table(query, buffer)

    def _bars(self, query: Query) -> pa.Table:
        """OHLCV bars of the query's trades (history and ring), computed in Arrow."""
        assert query.bars is not None
        trades = Query(Target.TICKS, symbol=query.symbol, exchange=query.exchange,
                       start=query.start, end=query.end, channel="trades")
        answer = self._answer(trades)
        batches = answer.batches() if isinstance(answer, Spanned) else answer.to_batches()
        table = bars(batches, BarInterval(query.bars))
        if query.latest is not None and table.num_rows > query.latest:
            table = table.slice(table.num_rows - query.latest)
        return table if query.columns is None else table.select(list(query.columns))

    def _table(self, query: Query, buffer: MarketDataBuffer | None = None) -> pa.Table:
        """Answer a non-follow query with an immutable table (``buffer``: the query's, when
        the caller already looked it up)."""
        if query.target is Target.MARKETS:
            return self._markets(query)
        if query.target is Target.EVENTS:
            if query.exchange is not None and query.exchange not in self._known_exchanges():
                raise errors.UnknownExchange(
                    f"unknown exchange {query.exchange!r}; known: "
                    f"{', '.join(self._known_exchanges()) or 'none'}")
            return self.events.to_table(query.exchange, query.start, query.end, query.latest)
        if query.target is Target.SNAPSHOT:
            if query.exchange is not None and query.exchange not in self._known_exchanges():
                raise errors.UnknownExchange(
                    f"unknown exchange {query.exchange!r}; buffered: "
                    f"{', '.join(self._buffered_exchanges()) or 'none'}")
            return self._snapshot(query)
        assert query.symbol is not None
        try:
            if buffer is None:
                buffer = self._buffer_for(query)
            if query.start is None and query.end is None:
                limit = query.latest if query.latest is not None else buffer.buffer_size
                return buffer.get_latest_sync(query.symbol, limit, exchange=query.exchange,
                                              columns=query.columns)
            return buffer.get_range_sync(query.symbol, query.start, query.end,
                                         exchange=query.exchange, latest=query.latest,
                                         columns=query.columns)
        except errors.NotFound:
            if self._awaiting_first_tick(query.symbol, query.exchange) is None or (
                    query.effective_channel is None
                    and self.store.channels_of(query.symbol, query.exchange)):
                raise
            return self._schema(query).empty_table()

    def _snapshot(self, query: Query) -> pa.Table:
        """The ``*`` table: each symbol's newest row, of one channel or of the ticker-like
        channels (ticker, then bid/ask for symbols without a ticker)."""
        if query.channel is not None:
            buffer = self.store.get(query.channel)
            if buffer is None:
                return self._schema(query).empty_table()
            return buffer.snapshot_sync(query.exchange, query.columns)
        buffers = [b for b in dict.fromkeys(
            self.store.get(c) for c in TICKER_LIKE) if b is not None]
        tables = [b.snapshot_sync(query.exchange, query.columns) for b in buffers]
        if len(tables) == 2:
            have = set(zip(tables[0].column("exchange").to_pylist(),
                           tables[0].column("symbol").to_pylist(), strict=True)) \
                if {"exchange", "symbol"} <= set(tables[0].column_names) else set()
            if have:
                keep = [(e, s) not in have for e, s in zip(
                    tables[1].column("exchange").to_pylist(),
                    tables[1].column("symbol").to_pylist(), strict=True)]
                tables[1] = tables[1].filter(pa.array(keep, pa.bool_()))
        tables = [t for t in tables if t.num_rows] or [self._schema(query).empty_table()]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _buffered_exchanges(self) -> list[str]:
        return sorted({e for b in self.store.buffers() for e in b.exchanges()})

    def _markets(self, query: Query) -> pa.Table:
        """The ``@markets`` table: every market ingestion's exchanges loaded, glob-filtered.

        Raises:
            UnknownExchange: ``exchange`` names no stream.
        """
        if self.control is None:
            if query.exchange is not None:
                raise errors.UnknownExchange(
                    f"unknown exchange {query.exchange!r}; no exchange is streaming (markets "
                    "come from ingestion)")
            return markets_table((), query.columns)
        # The glob is applied in ingestion, so only matching markets cross to this thread
        # (or process).
        return markets_table(self.control.markets(query.exchange, query.symbol), query.columns)

    def _awaiting_first_tick(self, symbol: str, exchange: str | None) -> tuple[str, str] | None:
        """The ``(exchange, symbol)`` a request means if it is subscribed but has no ring yet.

        Called where the buffer does not know the symbol: ``None`` means it is not subscribed
        either (so NOT_FOUND stands).

        Raises:
            AmbiguousExchange: No exchange was given and several subscribed the symbol.
        """
        exchanges = self.events.subscribers(symbol)
        if exchange is not None:
            return (exchange, symbol) if exchange in exchanges else None
        if len(exchanges) > 1:
            raise errors.AmbiguousExchange(ambiguous_exchange(symbol, exchanges))
        return (exchanges[0], symbol) if exchanges else None

    def _known_exchanges(self) -> list[str]:
        known = set(self._buffered_exchanges())
        known.update(exchange for exchange, _ in self.events.subscribed())
        if self.control is not None:
            with contextlib.suppress(errors.FlightMdError):
                known.update(e.exchange for e in self.control.status().exchanges)
        return sorted(known)

    @staticmethod
    def _schema(query: Query) -> pa.Schema:
        if query.target is Target.EVENTS:
            return EVENT_SCHEMA
        schema = answer_schema(query)
        if query.columns is None:
            return schema
        return pa.schema([schema.field(c) for c in query.columns])

    # -- RPCs ------------------------------------------------------------------------------

    def list_flights(self, context: flight.ServerCallContext,
                     criteria: bytes) -> Iterator[flight.FlightInfo]:
        with map_errors("ListFlights", self.refused):
            self._check(context)
            wanted = parse_criteria(criteria)
            # (exchange, symbol, channel or None for the ticker-like one) -> rows stored
            records: dict[tuple[str, str, str | None], int] = {}
            ticker = self.store.get("ticker")
            for buffer in self.store.buffers():
                for s in buffer.stats():
                    plain = buffer is ticker or (buffer.channel == "bidask" and (
                        ticker is None or (s.exchange, s.symbol) not in ticker.keys(s.exchange)))
                    records[(s.exchange, s.symbol, None if plain else buffer.channel)] = s.stored
            streamed = {(e, s) for e, s, c in records if c is None}
            for exchange, symbol in self.events.subscribed():
                if (exchange, symbol) not in streamed and not any(
                        k[:2] == (exchange, symbol) for k in records):
                    records[(exchange, symbol, None)] = 0  # subscribed, no row yet: 0 records
            by_exchange = (wanted is not None and EXCHANGE_RE.fullmatch(wanted) is not None
                           and wanted in self._known_exchanges())
            if by_exchange:
                keys = [k for k in records if k[0] == wanted]
            else:
                keys = [k for k in records if wanted is None or fnmatch.fnmatchcase(k[1], wanted)]
            infos = []
            for exchange, symbol, channel in sorted(keys, key=lambda k: (k[0], k[1], k[2] or "")):
                query = Query(Target.TICKS, symbol=symbol, exchange=exchange, channel=channel)
                ticket = format_ticket(query)
                descriptor = flight.FlightDescriptor.for_path(
                    exchange, symbol, *([channel] if channel else []))
                endpoint = flight.FlightEndpoint(ticket.encode(), [])
                infos.append(flight.FlightInfo(answer_schema(query), descriptor, [endpoint],
                                               records[(exchange, symbol, channel)], -1))
            markets = self._markets_flight(wanted if by_exchange else None) \
                if wanted is None or by_exchange else None
            if markets is not None:
                infos.append(markets)
        yield from infos

    def _markets_flight(self, exchange: str | None) -> flight.FlightInfo | None:
        """The ``@markets`` flight (of ``exchange``) where ingestion runs (of it), else ``None``.

        Its record count is -1 (unknown): counting would fetch every market from ingestion for
        each ListFlights; GetFlightInfo on its descriptor counts.
        """
        if self.control is None:
            return None
        if exchange is not None:
            try:
                streamed = {e.exchange for e in self.control.status().exchanges}
            except errors.FlightMdError:
                return None
            if exchange not in streamed:
                return None
        ticket = format_ticket(Query(Target.MARKETS, exchange=exchange)).encode()
        return flight.FlightInfo(MARKET_SCHEMA, flight.FlightDescriptor.for_command(ticket),
                                 [flight.FlightEndpoint(ticket, [])], -1, -1)

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        with map_errors("GetFlightInfo", self.refused):
            self._check(context)
            if self.sql.handles_descriptor(descriptor):
                info = self.sql.get_flight_info(context, descriptor)
                held = self._sql_route(descriptor) if self.bus is not None else None
                if held:  # the same (stateless) statement handle, redeemed at a holder
                    endpoint = flight.FlightEndpoint(info.endpoints[0].ticket, held)
                    return flight.FlightInfo(info.schema, descriptor, [endpoint], -1, -1)
                return info
            query = self._descriptor_query(descriptor)
            routed = self._route(query)
            if routed is not None:  # the same ticket, redeemed at any holder
                endpoint = flight.FlightEndpoint(format_ticket(query).encode(), routed)
                return flight.FlightInfo(self._schema(query), descriptor, [endpoint], -1, -1)
            answer = self._answer(query)
            endpoint = flight.FlightEndpoint(format_ticket(query).encode(), [])
            if isinstance(answer, Spanned):  # counted from file footers, bytes unknown
                return flight.FlightInfo(answer.schema, descriptor, [endpoint], answer.rows, -1)
            return flight.FlightInfo(answer.schema, descriptor, [endpoint], answer.num_rows,
                                     answer.nbytes)

    def get_schema(self, context: flight.ServerCallContext,
                   descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        with map_errors("GetSchema", self.refused):
            self._check(context)
            if self.sql.handles_descriptor(descriptor):
                return self.sql.get_schema(context, descriptor)
            query = self._descriptor_query(descriptor)
            if query.target is Target.TICKS and self._route(query) is None:
                assert query.symbol is not None
                try:
                    self._buffer_for(query).resolve(query.symbol, query.exchange)
                except errors.NotFound:
                    if self._awaiting_first_tick(query.symbol, query.exchange) is None:
                        raise
            return flight.SchemaResult(self._schema(query))

    @staticmethod
    def _descriptor_query(descriptor: flight.FlightDescriptor) -> Query:
        kind = "path" if descriptor.descriptor_type == flight.DescriptorType.PATH else "cmd"
        return parse_descriptor(kind, descriptor.path, descriptor.command)

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        with map_errors("DoGet", self.refused):
            self._check(context)
            if self.sql.handles_ticket(ticket):
                return self.sql.do_get(context, ticket)
            query = parse_ticket(ticket.ticket)
            if self.bus is not None:
                routed = self._route(query)
                if routed is not None:
                    raise errors.UnknownSymbol(
                        f"this node does not hold {query.symbol!r}"
                        f"{f' on {query.exchange}' if query.exchange else ''}; the serving "
                        f"node(s) at {', '.join(routed)} hold it: DoGet the same ticket there "
                        "(GetFlightInfo on this node answers with those locations)")
            if query.follow:
                return self._follow(context, query)
            answer = self._answer(query)
            if isinstance(answer, Spanned):
                # History streams from Parquet in bounded batches (never read whole).
                return flight.GeneratorStream(answer.schema, self._spanned(answer),
                                              options=_IPC_OPTIONS)
            # RecordBatchStream runs in C++ from here on: no Python in the bytes path. Given
            # options, pyarrow skips reading its IPC settings from the environment per call.
            return flight.RecordBatchStream(answer, options=_IPC_OPTIONS)

    def _spanned(self, answer: Spanned) -> Iterator[pa.RecordBatch]:
        with map_errors("DoGet(history)", self.refused):
            for batch in answer.batches():
                if self._stopping.is_set():
                    raise errors.ShuttingDown("server is shutting down; the read was cut short")
                yield batch

    def _follow(self, context: flight.ServerCallContext, query: Query) -> flight.FlightDataStream:
        assert query.symbol is not None
        if self._stopping.is_set():
            raise errors.ShuttingDown("server is shutting down; no new live tails")
        mark_follow(context)  # RPC metrics: a tail's duration is no request latency
        exchange = query.exchange
        channel = query.effective_channel
        try:
            buffer = self._buffer_for(query)
            buffer.resolve(query.symbol, exchange)
        except errors.NotFound:
            key = self._awaiting_first_tick(query.symbol, exchange)
            if key is None or (channel is None
                               and self.store.channels_of(query.symbol, exchange)):
                raise
            exchange = key[0]
            wanted: str = channel if channel is not None else next(
                # the tick channel the symbol is subscribed on, ticker first
                (c for c in TICKER_LIKE if c in self.events.subscribed_channels(*key)), "ticker")
            # The ring its first row will go to: follow that.
            buffer = self.store.buffer(wanted)
            buffer.ensure(*key)
        interval = BarInterval(query.bars) if query.bars is not None else None
        start = query.start
        if interval is not None and start is None:
            # The bar now open (and the latest=N closed ones before it) from the ring.
            start = (now_ms() // interval.ms - (query.latest or 0)) * interval.ms
        table, follower = buffer.follow(query.symbol, exchange=exchange,
                                        backlog=None if interval is not None else query.latest,
                                        start_ms=start, max_lag=self.follow_max_lag,
                                        columns=None if interval is not None else query.columns)
        logger.info("live tail opened for (%s, %s, %s) by %s", follower.exchange,
                    follower.symbol, buffer.channel, context.peer())
        rows = self._tail(context, table, follower) if interval is None else \
            self._bar_tail(context, table, follower, interval, query.columns)
        return flight.GeneratorStream(self._schema(query), rows)

    def _bar_tail(self, context: flight.ServerCallContext, backlog: pa.Table, follower: Any,
                  interval: BarInterval, columns: tuple[str, ...] | None,
                  ) -> Iterator[pa.RecordBatch]:
        """Bars of a live tail of trades, each sent once, when it closes: when a trade of a
        later bar arrives, or when the wall clock (less the feed's delay, and
        :data:`BAR_CLOSE_DELAY_MS` for trades still on their way) passes the bar's end."""
        builder = BarBuilder(interval)
        offset = 0  # receive time minus exchange time of the newest trade (replays: large)

        def send(table: pa.Table) -> Iterator[pa.RecordBatch]:
            if table.num_rows:
                yield from (table if columns is None else table.select(list(columns))).to_batches()

        def fed(table: pa.Table) -> pa.Table:
            nonlocal offset
            if not table.num_rows:
                return BAR_SCHEMA.empty_table()
            last = table.num_rows - 1
            offset = int(table.column("receive_timestamp")[last].as_py()) - int(
                table.column("timestamp")[last].as_py())
            return builder.add(table)

        for row in self._tail(context, backlog, follower, mapper=fed):
            yield from send(row)
            yield from send(builder.closed_until(now_ms() - offset - BAR_CLOSE_DELAY_MS))

    def _tail(self, context: flight.ServerCallContext, backlog: pa.Table,
              follower: Any, mapper: Callable[[pa.Table], pa.Table] | None = None,
              ) -> Iterator[Any]:
        """The backlog, then every row the follower reads, until the client or the server
        ends it. With ``mapper`` (bars), yields ``mapper(rows)`` tables instead of batches,
        and an empty table at least every :data:`TAIL_WAIT_S` (so the caller can close bars
        by the clock)."""
        try:
            with map_errors("DoGet(follow)", self.refused):
                if mapper is not None:
                    yield mapper(backlog)
                else:
                    yield from backlog.to_batches(max_chunksize=GET_BATCH_ROWS)
                while not self._stopping.is_set() and not context.is_cancelled():
                    table = follower.read(TAIL_WAIT_S, TAIL_BATCH_ROWS)
                    if mapper is not None:
                        yield mapper(table if table is not None else backlog.slice(0, 0))
                    elif table is not None and table.num_rows:
                        yield from table.to_batches()
                if not context.is_cancelled():
                    # Not a finished stream: UNAVAILABLE with a marker any Flight client sees
                    # after the rows (pyarrow sends a generator's Flight error as the status).
                    # Raised as the wire error, so it is not counted as a refused request.
                    raise _wire(errors.ShuttingDown(TAIL_SHUTDOWN_MESSAGE))[1]
        finally:
            follower.close()
            logger.info("live tail closed for (%s, %s)", follower.exchange, follower.symbol)

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        with map_errors("ListActions", self.refused):
            self._check(context)
            return [*((spec.name.value, spec.description) for spec in ACTIONS.values()),
                    *self.sql.list_actions()]

    def do_action(self, context: flight.ServerCallContext,
                  action: flight.Action) -> Iterator[bytes]:
        with map_errors("DoAction", self.refused):
            if self.sql.handles_action(action.type):  # prepared statements: read-only
                self._check(context)
                return iter(list(self.sql.do_action(context, action)))
            body = action.body.to_pybytes() if action.body is not None else b""
            request = parse_action(action.type, body)
            self._check(context, ACTIONS[ActionName(action.type)].mutates)
            result = self._run_action(ActionName(action.type), request)
            payload = encode_result(result)
        return iter([payload])

    def _run_action(self, name: ActionName, request: Any) -> dict[str, Any]:
        if name is ActionName.STATUS:
            status = self.status()
            if self.bus is not None:
                status["cluster"] = self.bus.cluster(CLUSTER_TIMEOUT_S)
            return status
        if name is ActionName.HEALTH:
            return server_health(self)
        if name is ActionName.CLEAR:
            assert isinstance(request, ClearRequest)
            return self._clear(request)
        if name is ActionName.FLUSH:
            if self.persistence is None:
                raise errors.Unavailable("flush needs persistence; this server runs with "
                                         "--memory-only")
            return self.persistence.flush().to_json()
        assert isinstance(request, SubscribeRequest)
        if self.control is None:
            raise errors.Unavailable(
                f"{name} needs ingestion, which is not running on this server; start the "
                "server with --exchange ID --symbols ... or --demo")
        subscribing = name is ActionName.SUBSCRIBE
        result = (self.control.subscribe if subscribing else self.control.unsubscribe)(
            request.exchange, request.symbols)
        if self.persistence is not None:  # a restart repeats it
            self.persistence.note_subscription(
                result["exchange"], list(request.symbols), subscribed=subscribing)
        return result

    def _clear(self, request: ClearRequest) -> dict[str, Any]:
        """Empty the rings of the symbols (of the exchange), in every channel."""
        buffers = self.store.buffers()
        if request.symbols is None:
            if request.exchange is not None and request.exchange not in \
                    self._buffered_exchanges():
                raise errors.UnknownExchange(
                    f"unknown exchange {request.exchange!r}; buffered: "
                    f"{', '.join(self._buffered_exchanges()) or 'none'}")
            keys = [(b, k) for b in buffers for k in b.keys(request.exchange)]
        else:
            keys = []
            for symbol in request.symbols:
                found = []
                for buffer in buffers:
                    try:
                        found.append((buffer, buffer.resolve(symbol, request.exchange)))
                    except (errors.UnknownSymbol, errors.UnknownExchange):
                        continue
                if not found:  # the ticker-like lookup says why, with what is buffered
                    self.store.ticker_like(symbol, request.exchange)
                keys += found
        by_exchange: dict[str, tuple[list[str], int]] = {}
        for buffer, (exchange, symbol) in keys:
            symbols, count = by_exchange.get(exchange, ([], 0))
            if symbol not in symbols:
                symbols.append(symbol)
            by_exchange[exchange] = (symbols, count + buffer.clear_sync(symbol,
                                                                       exchange=exchange))
        for exchange, (symbols, count) in by_exchange.items():
            listed = symbols if request.symbols is not None else []
            self.events.record(exchange, EventKind.CLEAR, listed,
                               f"cleared {count} stored ticks on request")
        return {"cleared": sum(count for _, count in by_exchange.values())}

    def status(self) -> dict[str, Any]:
        """The ``status`` action's result: exchanges, symbols and server counters.

        The store is read before ingestion: ingestion counts an update as received before it
        stores it, so every symbol's ``ticks_appended`` (and ``ticks_stored``) is at most its
        ``ticks_received`` by construction.

        With a bus, ``bus`` is this node's bus status (:meth:`BusView.status
        <flight_md.bus.view.BusView.status>`, from memory); the action alone adds ``cluster``
        (every node's answer and the stream's view, gathered for at most
        :data:`CLUSTER_TIMEOUT_S`), so metrics scrapes and the SQL ``status`` table, which call
        this too, never wait for the cluster.
        """
        buffered = [(buffer, stats) for buffer in self.store.buffers()
                    for stats in buffer.stats()]
        ingestion = self.control.status() if self.control is not None else None
        exchanges: dict[str, Any] = {}
        tick_channel: dict[str, str] = {}  # exchange -> the tick channel it streams
        per_symbol: dict[tuple[str, str, str], dict[str, Any]] = {}
        if ingestion is not None:
            for ex in ingestion.exchanges:
                entry = {
                    "state": ex.state, "mode": ex.mode, "channel": ex.channel,
                    "decoder": getattr(ex, "decoder", "ccxt"),
                    "reconnects": ex.reconnects, "symbols": list(ex.symbols),
                    "bad_frames": dict(ex.bad_frames), "callback_errors": ex.callback_errors,
                    "last_error": ex.last_error, "last_error_ms": ex.last_error_ms,
                    "clock_skew_ms": {"median": ex.clock_skew.median_ms,
                                      "p99": ex.clock_skew.p99_ms,
                                      "samples": ex.clock_skew.samples,
                                      "window_s": ex.clock_skew.window_ms / 1000},
                    "counters": dict(getattr(ex, "counters", {}) or {}),
                }
                # One entry per exchange: its ticker-like stream's (or its first stream's)
                # fields, and every stream of the exchange under "channels".
                first = exchanges.get(ex.exchange)
                if first is None or (ex.channel in TICKER_LIKE
                                     and first["channel"] not in TICKER_LIKE):
                    channels = first["channels"] if first is not None else {}
                    exchanges[ex.exchange] = {**entry, "channels": channels}
                exchanges[ex.exchange]["channels"][ex.channel] = entry
                if ex.channel in TICKER_LIKE:
                    tick_channel.setdefault(ex.exchange, ex.channel)
            for sym in ingestion.symbols:
                channel = getattr(sym, "channel", None) or tick_channel.get(sym.exchange,
                                                                            "ticker")
                per_symbol[(sym.exchange, sym.symbol, channel)] = {
                    "subscribed": sym.subscribed, "ticks_received": sym.received,
                    "ticks_dropped": sym.dropped, "stale": sym.stale,
                    "last_message_ms": sym.last_message_ms,
                }
        now = now_ms()  # after the (possibly slow) ingestion answer: ages are never negative
        for buffer, stats in buffered:
            channel = buffer.channel
            if channel in TICKER_LIKE and self.store.get("bidask") is self.store.get("ticker"):
                channel = tick_channel.get(stats.exchange, channel)  # one shared tick buffer
            entry = per_symbol.setdefault((stats.exchange, stats.symbol, channel), {
                "subscribed": False, "ticks_received": stats.appended, "ticks_dropped": 0,
                "stale": False, "last_message_ms": stats.last_receive_timestamp})
            entry.update(ticks_stored=stats.stored, ticks_appended=stats.appended,
                         last_timestamp=stats.last_timestamp,
                         last_receive_timestamp=stats.last_receive_timestamp,
                         age_ms=stats.age_ms(now), live_tails=stats.followers)
        symbols = []
        for (exchange, symbol, channel), entry in sorted(per_symbol.items()):
            entry.setdefault("ticks_stored", 0)
            entry.setdefault("ticks_appended", 0)
            entry.setdefault("last_timestamp", None)
            entry.setdefault("last_receive_timestamp", None)
            entry.setdefault("age_ms", None)
            entry.setdefault("live_tails", 0)
            symbols.append({"exchange": exchange, "symbol": symbol, "channel": channel,
                            **entry})
        return {
            "server": {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "buffer_size": self.buffer.buffer_size,
                "ingestion": self.control is not None,
                "ingestion_mode": self.ingestion_mode if self.control is not None else None,
                "refused_requests": self.refused.snapshot(),
                "events": len(self.events),
            },
            "exchanges": exchanges,
            "symbols": symbols,
            "persistence": (self.persistence.status() if self.persistence is not None
                            else {"state": "memory_only"}),
            **({"bus": self.bus.status()} if self.bus is not None else {}),
        }

    def _status_table(self) -> pa.Table:
        """The SQL ``status`` table: one row per (exchange, symbol, channel) of ``status``."""
        return pa.Table.from_pylist(self.status()["symbols"])

    def do_put(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
               reader: Any, writer: Any) -> None:
        with map_errors("DoPut", self.refused):
            self._check(context)
            if self.sql.handles_descriptor(descriptor):  # prepared-statement parameters
                self.sql.do_put(context, descriptor, reader, writer)
                return
            raise errors.UnknownAction("DoPut takes only Flight SQL prepared-statement "
                                       "parameters: flight_md is fed by exchange streams; use "
                                       "DoGet to read and DoAction to control")

    def do_exchange(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
                    reader: Any, writer: Any) -> None:
        with map_errors("DoExchange", self.refused):
            raise errors.UnknownAction("DoExchange is not supported; use DoGet with "
                                       "follow=true for a live tail")

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, grace: float = 2.0) -> bool:
        """Shut down within about ``2 * grace`` seconds, even with streams nobody reads.

        Live tails end at their next check (every 50 ms). A stream blocked writing to a client
        that stopped reading cannot be cancelled through pyarrow; after ``grace`` seconds its
        connection is severed at the socket so that gRPC finishes the call.

        Returns:
            Whether the server shut down cleanly within the time.
        """
        with self._shutdown_lock:
            if self._shut_down:
                return True
            self._shut_down = True
        self._stopping.set()
        self.sql.close()  # interrupt running queries: gRPC waits for their calls
        with self._sql_parse_lock:
            if self._sql_parser is not None:
                self._sql_parser.close()
                self._sql_parser = None
        self.refused.log.flush()
        done = threading.Event()

        def _shutdown() -> None:
            try:
                flight.FlightServerBase.shutdown(self)
            finally:
                done.set()

        threading.Thread(target=_shutdown, name="flight-md-shutdown", daemon=True).start()
        if done.wait(grace):
            return True
        severed = _sever_connections(self.port)
        logger.warning("shutdown: %d client connection(s) still busy after %.1f s; severed",
                       severed, grace)
        return done.wait(grace)

    def shutdown(self) -> None:
        """Alias of :meth:`stop` with the default grace, for ``pyarrow.flight`` callers."""
        self.stop()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _sever_connections(port: int) -> int:
    """Shut down the accepted TCP connections of this process's server on ``port``."""
    severed = 0
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux: nothing more we can do
        return 0
    for fd in fds:
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port:
                sock.getpeername()  # raises for the listening socket
                sock.shutdown(socket.SHUT_RDWR)
                severed += 1
        except (OSError, IndexError, TypeError):
            pass
        finally:
            sock.close()
    return severed
