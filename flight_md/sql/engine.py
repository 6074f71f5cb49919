"""The SQL engine: DuckDB over the server's tables, read-only, bounded, cancellable.

One DuckDB database per :class:`Engine`, configured once and locked
(``enable_external_access = false``: no file, network or extension access;
``lock_configuration = true``: no ``SET``/``PRAGMA`` can change that, the memory limit or the
threads). Every query runs on its own cursor (a DuckDB connection to that database), so
queries on different Flight threads do not share state.

Tables
    The database holds one view per table (:meth:`Engine.tables`): ``<channel>`` for
    each channel of the :class:`~flight_md.sql.source.TableSource`, ``events``, ``status``
    (when the source has one) and ``bars_1m`` (over ``trades``). A view reads names that each
    query's cursor registers for itself (``__ring_<channel>``, ``__history_<channel>``,
    ``__seams_<channel>``, ``__events``, ``__status``): the snapshot the source gives at that
    query's start, registered zero-copy (DuckDB scans the Arrow buffers in place, and the
    history dataset through pyarrow's scanner, which takes DuckDB's filters and projections).
    The database also holds an empty table under each of those names (created with the
    views): a cursor's registration shadows it, so a query registers only what exists (no
    history, no seams: nothing), and planning (``schema``) registers nothing at all; each
    registration costs about as much as a small query in this DuckDB.
    Only the tables a statement names are fetched and registered, and of a channel only the
    rings the statement provably reads (``WHERE symbol = 'X' AND ...``:
    :mod:`flight_md.sql.prune`; the rest of the rings would be filtered out anyway).
    ``<channel>`` is::

        SELECT <columns> FROM __ring_<channel>
        UNION ALL
        SELECT <columns> FROM __history_<channel> AS h
        LEFT JOIN __seams_<channel> AS s ON s.exchange = h.exchange AND s.symbol = h.symbol
        WHERE s.before_sequence IS NULL OR h.sequence < s.before_sequence

    (see :mod:`flight_md.sql.source` for why this has no duplicate and no gap). DuckDB pushes a
    ``WHERE symbol = ... AND timestamp > ...`` through the union and the join into the dataset
    scan, so other symbols' files are never opened.

Statements
    :func:`check_statement` allows exactly one statement of DuckDB's SELECT kind (``SELECT``,
    ``WITH``, ``VALUES``, ``TABLE``, ``FROM ...``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``) or
    ``EXPLAIN [ANALYZE]`` of one, by DuckDB's own parser; everything else is refused with
    INVALID_ARGUMENT saying what is allowed. The locked configuration is the second wall: even
    a SELECT cannot read a file (``read_csv('/etc/passwd')`` is refused by DuckDB).

Limits
    At most ``max_concurrent`` queries run at once (a query waits up to ``queue_wait_s`` for a
    slot, then UNAVAILABLE); a query runs at most ``timeout_s`` from its start to its last batch
    (then DuckDB is interrupted, UNAVAILABLE "timed out"); a client that cancels its DoGet
    interrupts DuckDB within :data:`WATCH_INTERVAL_S` (the watchdog polls the call's
    ``is_cancelled``). Results stream in batches of ``batch_rows`` from DuckDB's streaming
    result, never materialised here.

Threads: queries run on Flight threads, one cursor each; the watchdog thread only calls
``interrupt()`` on them. They meet at the engine's lock (the set of running queries, the
view definitions).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from flight_md import errors
from flight_md.sql.prune import parse_tree, ring_filters
from flight_md.sql.source import SEAMS_SCHEMA, TableSource

__all__ = [
    "BARS_TABLE",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_TIMEOUT_S",
    "EVENTS_TABLE",
    "STATUS_TABLE",
    "Engine",
    "Execution",
    "HistoryUnreadable",
    "QueryTimeout",
    "SqlError",
    "SqlLimits",
    "StatementRefused",
    "TableInfo",
    "TooManyQueries",
    "check_statement",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_MEMORY_LIMIT: Final = "1GB"
DEFAULT_MAX_CONCURRENT: Final = 4
DEFAULT_THREADS: Final = 2
DEFAULT_BATCH_ROWS: Final = 65_536
DEFAULT_QUEUE_WAIT_S: Final = 1.0
WATCH_INTERVAL_S: Final = 0.05
"""How often the watchdog checks deadlines and cancelled calls."""
MAX_MESSAGE_CHARS: Final = 2000
SCHEMA_CACHE_ENTRIES: Final = 512
TREE_CACHE_ENTRIES: Final = 512
TREE_CACHE_MAX_CHARS: Final = 65_536
"""Longest statement whose parse tree is cached (a tree is several times its text)."""

EVENTS_TABLE: Final = "events"
STATUS_TABLE: Final = "status"
BARS_TABLE: Final = "bars_1m"
BAR_MS: Final = 60_000
CATALOG: Final = "memory"
"""DuckDB's name for an in-memory database: the catalog the views live in."""
DB_SCHEMA: Final = "main"
SEQUENCE: Final = "sequence"
_IDENTIFIER_RE: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_BAR_COLUMNS: Final = ("exchange", "symbol", "timestamp", "price", "amount", "receive_timestamp")

ALLOWED: Final = ("SELECT, WITH, VALUES, TABLE, FROM, DESCRIBE, SHOW, SUMMARIZE, "
                  "EXPLAIN [ANALYZE] SELECT")
_EXPLAIN_RE: Final = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*explain(?:\s+analy[sz]e)?\b(?P<inner>.*)$",
    re.IGNORECASE | re.DOTALL)


class SqlError(errors.InvalidArgument):
    """The engine refused the SQL: a syntax, binder, catalogue or conversion error (its message
    is DuckDB's, with line and position)."""


class StatementRefused(errors.InvalidArgument):
    """The statement is not a read-only query (DDL, DML, COPY, ATTACH, SET, ...)."""


class QueryTimeout(errors.Unavailable):
    """The query ran longer than the SQL timeout and was cancelled."""


class TooManyQueries(errors.Unavailable):
    """Every query slot stayed busy while the query waited for one."""


class EngineMemoryExhausted(errors.Unavailable):
    """The query needed more memory than the engine's limit."""


class HistoryUnreadable(errors.Unavailable):
    """A file of the Parquet history could not be read (details in the server log)."""


@dataclass(frozen=True, slots=True)
class SqlLimits:
    """The engine's bounds (one default each, here).

    Attributes:
        timeout_s: Longest a query may run, from its start to its last batch (``--sql-timeout``).
        memory_limit: DuckDB's ``memory_limit`` (e.g. ``"1GB"``).
        max_concurrent: Queries that may run at once.
        threads: DuckDB worker threads (shared by all queries).
        batch_rows: Largest record batch a result streams.
        queue_wait_s: How long a query waits for a free slot before UNAVAILABLE.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    threads: int = DEFAULT_THREADS
    batch_rows: int = DEFAULT_BATCH_ROWS
    queue_wait_s: float = DEFAULT_QUEUE_WAIT_S

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise errors.ConfigError(f"sql timeout must be > 0 seconds, got {self.timeout_s!r}")
        if self.max_concurrent < 1:
            raise errors.ConfigError(
                f"sql max concurrent queries must be >= 1, got {self.max_concurrent!r}")
        if self.threads < 1:
            raise errors.ConfigError(f"sql threads must be >= 1, got {self.threads!r}")
        if self.batch_rows < 1:
            raise errors.ConfigError(f"sql batch rows must be >= 1, got {self.batch_rows!r}")
        if self.queue_wait_s < 0:
            raise errors.ConfigError(f"sql queue wait must be >= 0, got {self.queue_wait_s!r}")


@dataclass(frozen=True, slots=True)
class TableInfo:
    """One SQL table as the catalogue commands list it."""

    name: str
    table_type: str  # "TABLE" or "VIEW"
    schema: pa.Schema


def _clean(exc: BaseException) -> str:
    message = str(exc).strip()
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + " ..."


def check_statement(cursor: duckdb.DuckDBPyConnection, sql: str) -> frozenset[str]:
    """Refuse anything but one read-only query; the names of its parameters.

    Raises:
        SqlError: DuckDB cannot parse it (its message, line and position).
        StatementRefused: Not exactly one statement of an allowed kind.
    """
    try:
        statements = cursor.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlError(_clean(exc)) from None
    if not statements:
        raise SqlError(f"no SQL statement in the query; send one of: {ALLOWED}")
    if len(statements) > 1:
        raise StatementRefused(
            f"one statement per query, got {len(statements)}; send one of: {ALLOWED}")
    statement = statements[0]
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: the statement explained must be a query too.
        match = _EXPLAIN_RE.match(sql)
        if match is None:
            raise StatementRefused(f"EXPLAIN is allowed only as EXPLAIN [ANALYZE] SELECT ...; "
                                   f"allowed: {ALLOWED}")
        try:
            inner = cursor.extract_statements(match["inner"])
        except duckdb.Error:
            inner = []
        if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
            raise StatementRefused(f"EXPLAIN is allowed only of a query; allowed: {ALLOWED}")
    elif kind != duckdb.StatementType.SELECT:
        raise StatementRefused(
            f"{kind.name} statements are not allowed: flight_md's SQL is read-only; "
            f"allowed: {ALLOWED}")
    return frozenset(statement.named_parameters)


@dataclass(slots=True)
class _Running:
    cursor: duckdb.DuckDBPyConnection
    deadline: float
    cancelled: Callable[[], bool] | None
    reason: str | None = None  # why the watchdog interrupted it
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while the cursor is interrupted or closed: DuckDB's ``interrupt`` on a cursor that
    another thread is closing crashes the process (a use after free, seen as a worker's
    segfault under load), so the two never overlap, and a closed cursor is never interrupted."""
    closed: bool = False

    def interrupt(self) -> None:
        """Interrupt the query, unless its cursor is closed (then it has nothing to stop)."""
        with self.lock:
            if not self.closed:
                self.cursor.interrupt()


class _Watchdog:
    """One thread that interrupts queries past their deadline or whose call was cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._running: set[int] = set()
        self._entries: dict[int, _Running] = {}
        self._ids = iter(range(1, 2**62))
        self._thread: threading.Thread | None = None

    def add(self, entry: _Running) -> int:
        with self._lock:
            key = next(self._ids)
            self._entries[key] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flight-md-sql-watchdog",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
            return key

    def remove(self, key: int) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def stop_all(self, reason: str) -> int:
        """Interrupt every running query now; how many there were."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            entry.reason = reason
            try:
                entry.interrupt()
            except Exception:
                logger.debug("sql: interrupt failed", exc_info=True)
        return len(entries)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._entries:
                    self._wake.wait()
                entries = list(self._entries.values())
            now = time.monotonic()
            for entry in entries:
                if entry.reason is not None:
                    continue
                try:
                    if now >= entry.deadline:
                        entry.reason = "timeout"
                    elif entry.cancelled is not None and entry.cancelled():
                        entry.reason = "cancelled"
                    else:
                        continue
                    entry.interrupt()
                except Exception:  # a closed cursor or a finished call: nothing to interrupt
                    logger.debug("sql watchdog: interrupt failed", exc_info=True)
            with self._lock:
                self._wake.wait(WATCH_INTERVAL_S)


@dataclass(slots=True)
class Execution:
    """A running query: its result schema and its batches (iterate once, then it closes).

    Created by :meth:`Engine.execute`; holds a query slot and a cursor until :meth:`close`
    (called when the batches end, fail or are abandoned).
    """

    schema: pa.Schema
    _engine: Engine
    _reader: pa.RecordBatchReader | None
    _entry: _Running
    _key: int
    _closed: bool = field(default=False)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The result's record batches, as DuckDB produces them."""
        try:
            assert self._reader is not None
            while True:
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    return
                except duckdb.Error as exc:
                    raise self._engine._translate(exc, self._entry) from None
                except pa.ArrowException as exc:
                    raise self._engine._translate(exc, self._entry) from None
                if batch.num_rows:
                    yield batch
        finally:
            self.close()

    def read_all(self) -> pa.Table:
        """The whole result (tests and small results)."""
        return pa.Table.from_batches(list(self.batches()), schema=self.schema)

    def close(self) -> None:
        """Stop the query (if running), free its cursor and its slot."""
        if self._closed:
            return
        self._closed = True
        self._engine._finish(self._key, self._entry, self._reader)


class Engine:
    """DuckDB over a :class:`~flight_md.sql.source.TableSource` (see the module docstring).

    Args:
        source: The server's tables.
        limits: Time, memory and concurrency bounds.
        prune_rings: Snapshot only the rings a statement can read (:mod:`flight_md.sql.prune`);
            ``False`` reads every ring of every table named (the tests' reference answer).
    """

    def __init__(self, source: TableSource, limits: SqlLimits | None = None, *,
                 prune_rings: bool = True) -> None:
        self.source = source
        self.prune_rings = prune_rings
        self.limits = limits if limits is not None else SqlLimits()
        try:
            self._db = duckdb.connect(":memory:", config={
                "enable_external_access": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "memory_limit": self.limits.memory_limit,
                "threads": self.limits.threads,
                "lock_configuration": True,
            })
        except duckdb.Error as exc:
            raise errors.ConfigError(f"cannot start the SQL engine: {_clean(exc)}") from None
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent)
        self._lock = threading.Lock()
        self._active = 0
        self._views: tuple[Any, ...] | None = None
        self._generation = 0  # bumped whenever the views are redefined
        self._schemas: OrderedDict[tuple[Any, ...], pa.Schema] = OrderedDict()
        self._trees: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._tables: list[TableInfo] = []
        self._watchdog = _Watchdog()
        self._parser = self._db.cursor()
        self._parser_lock = threading.Lock()

    @property
    def running(self) -> int:
        """Queries holding a slot now (planning or streaming)."""
        with self._lock:
            return self._active

    def close(self) -> int:
        """Interrupt every running query (a server stopping: gRPC waits for its calls to end);
        how many there were. Queries started afterwards still run."""
        return self._watchdog.stop_all("shutdown")

    # -- catalogue ---------------------------------------------------------------------------

    def _channels(self) -> list[tuple[str, pa.Schema]]:
        channels = []
        for channel in self.source.channels():
            if not _IDENTIFIER_RE.fullmatch(channel) or channel in (EVENTS_TABLE, STATUS_TABLE,
                                                                  BARS_TABLE):
                raise errors.ConfigError(f"channel {channel!r} cannot be a SQL table name")
            channels.append((channel, self.source.schema(channel)))
        return channels

    def tables(self) -> list[TableInfo]:
        """Every SQL table, with the schema ``SELECT *`` gives (views are (re)defined here)."""
        self._ensure_views(refresh=True)
        with self._lock:
            return list(self._tables)

    def _ensure_views(self, *, refresh: bool = False, events: pa.Schema | None = None,
                      status: pa.Schema | None | bool = False) -> None:
        """(Re)define the views if a schema changed.

        The channels' schemas are checked on every call (cheap); the events' and the status
        table's only when ``refresh`` (the catalogue) or when a query fetched them (``events``,
        ``status``: their schemas then; ``status=False`` means not fetched): building those
        tables costs more than a small query.
        """
        channels = self._channels()
        with self._lock:
            known = self._views
        if refresh or known is None:
            events = self.source.events().schema
            table = self.source.status_table()
            status = table.schema if table is not None else None
        if known is not None:
            if events is None:
                events = known[1]
            if status is False:
                status = known[2]
        assert events is not None and not isinstance(status, bool)
        signature = (tuple(channels), events, status)
        with self._lock:
            if signature != self._views:
                self._define_views(channels, events, status)
                self._views = signature
                self._generation += 1

    def _define_views(self, channels: list[tuple[str, pa.Schema]], events: pa.Schema,
                      status: pa.Schema | None) -> None:
        """(Re)create the views over empty stand-ins of the names each query registers."""
        cursor = self._db.cursor()
        try:
            existing = {row[0] for row in cursor.sql(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
                " AND database_name = current_database()").fetchall()}
            tables: list[TableInfo] = []
            wanted: list[str] = []
            for channel, schema in channels:
                _create_stand_in(cursor, f"__ring_{channel}", schema)
                _create_stand_in(cursor, f"__history_{channel}",
                                 schema.append(pa.field(SEQUENCE, pa.int64())))
                _create_stand_in(cursor, f"__seams_{channel}", SEAMS_SCHEMA)
                cursor.execute(_channel_view(channel, schema))
                tables.append(TableInfo(channel, "TABLE", schema))
                wanted.append(channel)
            _create_stand_in(cursor, "__events", events)
            cursor.execute(f"CREATE OR REPLACE VIEW {EVENTS_TABLE} AS SELECT * FROM __events")
            tables.append(TableInfo(EVENTS_TABLE, "TABLE", events))
            wanted.append(EVENTS_TABLE)
            if status is not None:
                _create_stand_in(cursor, "__status", status)
                cursor.execute(f"CREATE OR REPLACE VIEW {STATUS_TABLE} AS SELECT * FROM __status")
                tables.append(TableInfo(STATUS_TABLE, "TABLE", status))
                wanted.append(STATUS_TABLE)
            trades = dict(channels).get("trades")
            if trades is not None and all(c in trades.names for c in _BAR_COLUMNS):
                cursor.execute(_BARS_VIEW)
                bars = cursor.sql(f"SELECT * FROM {BARS_TABLE} LIMIT 0").to_arrow_table().schema
                tables.append(TableInfo(BARS_TABLE, "VIEW", bars))
                wanted.append(BARS_TABLE)
            for stale in existing - set(wanted):
                cursor.execute(f'DROP VIEW IF EXISTS "{stale}"')
            self._tables = sorted(tables, key=lambda t: t.name)
        finally:
            cursor.close()

    # -- queries -----------------------------------------------------------------------------

    def check(self, sql: str) -> frozenset[str]:
        """:func:`check_statement` on the engine's parser; the parameter names."""
        with self._parser_lock:
            return check_statement(self._parser, sql)

    def schema(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pa.Schema:
        """The result schema of ``sql`` (planned over empty tables, not run: ``LIMIT 0``).

        Cached per statement text, parameter types and view definitions: BI tools and
        dashboards send the same statements again and again, and planning costs about as much
        as running a small query.
        """
        self._ensure_views()  # first: a redefinition changes the key
        if isinstance(params, Mapping):
            kinds: tuple[Any, ...] = tuple(sorted((k, type(v).__name__) for k, v in params.items()))
        else:
            kinds = tuple(type(v).__name__ for v in params) if params is not None else ()
        with self._lock:
            key = (sql, kinds, self._generation)
            cached = self._schemas.get(key)
            if cached is not None:
                self._schemas.move_to_end(key)
                return cached
        execution = self.execute(sql, params, schema_only=True)
        execution.close()
        with self._lock:
            self._schemas[key] = execution.schema
            while len(self._schemas) > SCHEMA_CACHE_ENTRIES:
                self._schemas.popitem(last=False)
        return execution.schema

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
                cancelled: Callable[[], bool] | None = None,
                schema_only: bool = False) -> Execution:
        """Start ``sql``; the caller iterates :meth:`Execution.batches` (or closes it).

        Args:
            sql: One read-only statement.
            params: Values of its ``?``/``$n`` (a sequence) or ``$name`` (a mapping) parameters.
            cancelled: Polled by the watchdog: when it returns true, DuckDB is interrupted.
            schema_only: Plan only (``LIMIT 0``): the execution has its schema and no rows.

        Raises:
            SqlError, StatementRefused: The statement (INVALID_ARGUMENT).
            TooManyQueries: No slot became free in time (UNAVAILABLE).
            QueryTimeout: Planning alone took longer than the timeout.
        """
        names = self.check(sql)
        if names and params is None:
            raise SqlError(f"the query has {len(names)} parameter(s) and none were bound: "
                           "bind them (a prepared statement's DoPut) or write the values in")
        self._ensure_views()
        if not self._slots.acquire(timeout=self.limits.queue_wait_s):
            raise TooManyQueries(
                f"too many concurrent SQL queries (limit {self.limits.max_concurrent}); "
                "retry shortly")
        with self._lock:
            self._active += 1
        cursor: duckdb.DuckDBPyConnection | None = None
        key = 0
        entry: _Running | None = None
        try:
            cursor = self._db.cursor()
            self._register(cursor, sql, params, placeholders=schema_only)
            entry = _Running(cursor, time.monotonic() + self.limits.timeout_s, cancelled)
            key = self._watchdog.add(entry)
            try:
                relation = cursor.sql(sql, params=params) if params is not None \
                    else cursor.sql(sql)
                if relation is None:  # DuckDB gives no relation for statements without rows
                    raise StatementRefused(f"the statement returns no rows; allowed: {ALLOWED}")
                if schema_only:
                    schema = relation.limit(0).to_arrow_table().schema
                    reader = None
                else:
                    reader = relation.to_arrow_reader(self.limits.batch_rows)
                    schema = reader.schema
            except (duckdb.Error, pa.ArrowException) as exc:
                raise self._translate(exc, entry) from None
            return Execution(schema, self, reader, entry, key)
        except BaseException:
            self._finish(key, entry, None, cursor, slot=True)
            raise

    def _finish(self, key: int, entry: _Running | None, reader: pa.RecordBatchReader | None,
                cursor: duckdb.DuckDBPyConnection | None = None, *, slot: bool = True) -> None:
        if key:
            self._watchdog.remove(key)
        cursor = entry.cursor if entry is not None else cursor
        try:
            if reader is not None:
                if entry is not None:
                    entry.interrupt()  # stops a query abandoned mid-stream
                elif cursor is not None:
                    cursor.interrupt()
                reader.close()
        except Exception:
            logger.debug("sql: closing a reader failed", exc_info=True)
        finally:
            if cursor is not None:
                try:
                    if entry is not None:
                        with entry.lock:  # never while the watchdog interrupts it
                            entry.closed = True
                            cursor.close()
                    else:
                        cursor.close()
                except Exception:
                    logger.debug("sql: closing a cursor failed", exc_info=True)
            if slot:
                with self._lock:
                    self._active -= 1
                self._slots.release()

    def _register(self, cursor: duckdb.DuckDBPyConnection, sql: str,
                  params: Sequence[Any] | Mapping[str, Any] | None = None, *,
                  placeholders: bool = False) -> None:
        """Register, on ``cursor``, a snapshot of every table ``sql`` names (``placeholders``:
        empty tables of the same schemas, which is all planning needs), of only the rings it
        can read."""
        words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
        channels = dict(self._channels())
        wanted = set(words)
        if BARS_TABLE in words:
            wanted.add("trades")
        if placeholders:
            return  # the database's own empty stand-ins (_define_views) are what planning reads
        filters = {}
        if self.prune_rings and wanted & channels.keys():
            filters = ring_filters(self._tree(sql), sql, [c for c in channels if c in wanted],
                                   params)
        for channel in channels:
            if channel not in wanted:
                continue
            keys = filters.get(channel)
            snapshot = self.source.ring_snapshot(channel, keys) if keys is not None \
                else self.source.ring_snapshot(channel)
            ring = snapshot.table
            if isinstance(ring, pa.RecordBatchReader):
                ring = ring.read_all()  # a reader scans once; a view may scan twice
            _register_channel(cursor, channel, ring, self.source.history_dataset(channel),
                              snapshot.seams)
        if EVENTS_TABLE in words:
            events = self.source.events()
            self._ensure_views(events=events.schema)
            cursor.register("__events", events)
        if STATUS_TABLE in words:
            status = self.source.status_table()
            self._ensure_views(status=status.schema if status is not None else None)
            if status is not None:
                cursor.register("__status", status)

    def _tree(self, sql: str) -> dict[str, Any] | None:
        """:func:`~flight_md.sql.prune.parse_tree` of ``sql``, cached per text: parsing costs
        about as much as a small query in this DuckDB, and dashboards repeat statements."""
        with self._lock:
            if sql in self._trees:
                self._trees.move_to_end(sql)
                return self._trees[sql]
        with self._parser_lock:
            tree = parse_tree(self._parser, sql)
        if len(sql) <= TREE_CACHE_MAX_CHARS:
            with self._lock:
                self._trees[sql] = tree
                while len(self._trees) > TREE_CACHE_ENTRIES:
                    self._trees.popitem(last=False)
        return tree

    def _translate(self, exc: BaseException, entry: _Running | None) -> errors.FlightMdError:
        """The flight_md error for an engine failure (logged where it is the server's fault)."""
        if isinstance(exc, duckdb.InterruptException):
            if entry is not None and entry.reason == "timeout":
                return QueryTimeout(f"query cancelled: it ran longer than the SQL timeout "
                                    f"({self.limits.timeout_s:g} s, --sql-timeout)")
            if entry is not None and entry.reason == "shutdown":
                return errors.ShuttingDown("server is shutting down; the query was cancelled")
            return errors.Unavailable("query cancelled")
        if isinstance(exc, duckdb.OutOfMemoryException):
            return EngineMemoryExhausted(
                f"query needs more memory than the SQL engine's limit "
                f"({self.limits.memory_limit}); add filters or aggregate more")
        message = _clean(exc)
        if "reading the stream registered as" in message or isinstance(exc, pa.ArrowException):
            logger.warning("sql: a table could not be read: %s", message)
            return HistoryUnreadable("a stored table could not be read (details are in the "
                                     "server log); retry, or narrow the query's time range")
        if isinstance(exc, duckdb.PermissionException):
            return StatementRefused(f"{message}\nflight_md's SQL reads only its own tables: "
                                    "files, the network and extensions are not reachable")
        if isinstance(exc, (duckdb.InternalException, duckdb.FatalException)):
            logger.error("sql: DuckDB internal error: %s", message)
            return errors.Unavailable("the SQL engine failed on this query (details are in the "
                                      "server log)")
        return SqlError(message)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _channel_view(channel: str, schema: pa.Schema) -> str:
    # A LEFT JOIN, not NOT EXISTS: DuckDB pushes the query's filters through it into the
    # dataset scan (through an anti-join it does not, and every file would be opened).
    columns = ", ".join(_quote(n) for n in schema.names)
    history = ", ".join(f"h.{_quote(n)}" for n in schema.names)
    return (f"CREATE OR REPLACE VIEW {channel} AS "
            f"SELECT {columns} FROM __ring_{channel} "
            f"UNION ALL "
            f"SELECT {history} FROM __history_{channel} AS h "
            f"LEFT JOIN __seams_{channel} AS s ON s.exchange = h.exchange AND s.symbol = h.symbol "
            f"WHERE s.before_sequence IS NULL OR h.{SEQUENCE} < s.before_sequence")


def _register_channel(cursor: duckdb.DuckDBPyConnection, channel: str, ring: pa.Table,
                      history: ds.Dataset | None, seams: pa.Table | None) -> None:
    # Each registration costs about a small query in this DuckDB: an absent history or seam
    # table is left to the database's empty stand-in of that name (_define_views), which a
    # name registered on the cursor shadows.
    cursor.register(f"__ring_{channel}", ring)
    if history is not None:
        cursor.register(f"__history_{channel}", history)
    if seams is not None:
        cursor.register(f"__seams_{channel}", seams)


def _create_stand_in(cursor: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    """An empty table ``name`` of ``schema`` in the database itself (seen by every cursor)."""
    cursor.register("__stand_in", schema.empty_table())
    cursor.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM __stand_in")
    cursor.unregister("__stand_in")


# Open and close follow flight_md.core.bars: the earliest and latest trade in exchange time;
# among equal timestamps the first and last received (SQL has no arrival order across ring and
# history, so the receive time stands for it). Timestamps are >= 0, so // is a floor.
_BARS_VIEW: Final = f"""CREATE OR REPLACE VIEW {BARS_TABLE} AS
SELECT exchange, symbol, timestamp // {BAR_MS} * {BAR_MS} AS bar_start,
       arg_min(price, (timestamp, receive_timestamp)) AS open,
       max(price) AS high, min(price) AS low,
       arg_max(price, (timestamp, receive_timestamp)) AS close,
       sum(amount) AS volume,
       CASE WHEN sum(amount) = 0 THEN NULL ELSE sum(price * amount) / sum(amount) END AS vwap,
       count(*) AS trades
FROM trades GROUP BY exchange, symbol, bar_start"""
