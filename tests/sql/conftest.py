"""Fixtures of the Flight SQL tests: real tables, a real Parquet history, a real server, ADBC.

* :class:`MemorySource`: a :class:`~flight_md.sql.source.TableSource` over real Arrow tables
  (the rings) and a real hive-partitioned Parquet history written under ``tmp_path`` as the
  persistence layer writes it (``channel=/exchange=/symbol=<quoted>/date=``, every public
  column plus ``sequence``), read through a ``pyarrow.dataset``.
* :class:`SqlOnlyServer`: a ``FlightServerBase`` that delegates every Flight SQL request to a
  :class:`~flight_md.sql.frontend.SqlFrontend` inside the service's ``map_errors`` (what the
  lead's wiring in ``service.py`` does) and refuses everything else.
* ``sql_server`` / ``adbc``: the server on ``grpc://127.0.0.1:0`` and a real ADBC Flight SQL
  connection (the Go driver through ``adbc_driver_flightsql.dbapi``) to it.

The data (:func:`market`): trades of BTC/USDT and ETH/USDT on binance and BTC/USDT on bybit,
one per second from :data:`T0`; the history holds sequences ``0..HISTORY_ROWS-1`` of each
series, the ring ``RING_FROM..TOTAL-1`` (so ``HISTORY_ROWS - RING_FROM`` rows are in both, and
the seam must drop them from the history); ticker rows in the ring only.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyarrow import flight

from flight_md.core.channels import TRADE_SCHEMA
from flight_md.schema import EVENT_SCHEMA, SCHEMA
from flight_md.service import map_errors
from flight_md.sql.engine import SqlLimits
from flight_md.sql.frontend import SqlFrontend
from flight_md.sql.source import SEAMS_SCHEMA, KeyFilter, RingSnapshot

T0 = int(datetime(2026, 11, 30, 23, 58, tzinfo=UTC).timestamp() * 1000)
"""First trade: two minutes before midnight, so the history spans two date partitions."""
STEP_MS = 1000
TOTAL = 300
HISTORY_ROWS = 200
RING_FROM = 150
SERIES = (("binance", "BTC/USDT"), ("binance", "ETH/USDT"), ("bybit", "BTC/USDT"))


def trades_of(exchange: str, symbol: str, sequences: range) -> pa.Table:
    """The fixture's trades of one series, with their sequence numbers (last column)."""
    base = {"BTC/USDT": 90_000.0, "ETH/USDT": 3_000.0}[symbol] + (5 if exchange == "bybit" else 0)
    seqs = list(sequences)
    columns: dict[str, list[Any]] = {
        "symbol": [symbol] * len(seqs),
        "exchange": [exchange] * len(seqs),
        "timestamp": [T0 + s * STEP_MS for s in seqs],
        "trade_id": [f"{exchange}-{s}" for s in seqs],
        "price": [base + (s % 17) for s in seqs],
        "amount": [0.5 + (s % 3) for s in seqs],
        "side": [("buy", "sell", None)[s % 3] for s in seqs],
        "receive_timestamp": [T0 + s * STEP_MS + 3 for s in seqs],
    }
    table = pa.Table.from_pydict(columns, schema=TRADE_SCHEMA)
    return table.append_column("sequence", pa.array(seqs, pa.int64()))


def ticks_of(exchange: str, symbol: str, n: int) -> pa.Table:
    rows = []
    for i in range(n):
        price = 100.0 + i
        rows.append({"symbol": symbol, "timestamp": T0 + i * 100, "price": price,
                     "volume": 10.0 + i, "bid": price - 0.5, "ask": price + 0.5, "high": None,
                     "low": None, "open": None, "close": price, "exchange": exchange,
                     "receive_timestamp": T0 + i * 100 + 2})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_history(root: Path, channel: str, table: pa.Table) -> None:
    """Write ``table`` (one series) as the persistence layer does: one file per date."""
    exchange = table["exchange"][0].as_py()
    symbol = table["symbol"][0].as_py()
    days = pa.compute.strftime(
        pa.compute.cast(table["timestamp"], pa.timestamp("ms", tz="UTC")), format="%Y-%m-%d")
    for day in sorted(set(days.to_pylist())):
        part = table.filter(pa.compute.equal(days, day))
        directory = (root / f"channel={channel}" / f"exchange={exchange}"
                     / f"symbol={urllib.parse.quote(symbol, safe='')}" / f"date={day}")
        directory.mkdir(parents=True, exist_ok=True)
        lo, hi = part["timestamp"][0].as_py(), part["timestamp"][-1].as_py()
        pq.write_table(part, directory / f"{lo}_{hi}_{part.num_rows}_0001.parquet",
                       compression="zstd")


def _matching(table: pa.Table, keys: KeyFilter) -> pa.Array:
    rows = zip(table["exchange"].to_pylist(), table["symbol"].to_pylist(), strict=True)
    return pa.array([keys.matches(e, s) for e, s in rows], pa.bool_())


@dataclass
class MemorySource:
    """A real TableSource: ring tables in memory, the history as a pyarrow dataset."""

    history_root: Path | None
    rings: dict[str, pa.Table]
    schemas: dict[str, pa.Schema]
    seams: dict[str, pa.Table] = field(default_factory=dict)
    event_table: pa.Table = field(default_factory=EVENT_SCHEMA.empty_table)
    status: pa.Table | None = None
    calls: list[str] = field(default_factory=list)
    filters: list[KeyFilter | None] = field(default_factory=list)

    def channels(self) -> Sequence[str]:
        return list(self.schemas)

    def schema(self, channel: str) -> pa.Schema:
        return self.schemas[channel]

    def ring_snapshot(self, channel: str, keys: KeyFilter | None = None) -> RingSnapshot:
        self.calls.append(f"ring:{channel}")
        self.filters.append(keys)
        ring, seams = self.rings[channel], self.seams.get(channel)
        if keys is not None:
            ring = ring.filter(_matching(ring, keys))
            seams = seams.filter(_matching(seams, keys)) if seams is not None else None
        return RingSnapshot(ring, seams)

    def history_dataset(self, channel: str) -> ds.Dataset | None:
        if self.history_root is None or not (self.history_root / f"channel={channel}").exists():
            return None
        return ds.dataset(self.history_root / f"channel={channel}", format="parquet",
                          partitioning="hive")

    def events(self) -> pa.Table:
        return self.event_table

    def status_table(self) -> pa.Table | None:
        return self.status


def market(tmp_path: Path) -> MemorySource:
    """The fixture's data (see the module docstring)."""
    history = tmp_path / "history"
    ring_parts, seams = [], []
    for exchange, symbol in SERIES:
        write_history(history, "trades", trades_of(exchange, symbol, range(HISTORY_ROWS)))
        ring_parts.append(trades_of(exchange, symbol, range(RING_FROM, TOTAL)).drop(["sequence"]))
        seams.append({"exchange": exchange, "symbol": symbol, "before_sequence": RING_FROM})
    ticks = pa.concat_tables([ticks_of("binance", "BTC/USDT", 50), ticks_of("bybit", "BTC/USDT", 30)])
    events = pa.Table.from_pylist([
        {"timestamp": T0, "exchange": "binance", "kind": "connected", "symbols": ["BTC/USDT"],
         "detail": "connected"}], schema=EVENT_SCHEMA)
    status = pa.Table.from_pylist([
        {"exchange": e, "symbol": s, "channel": "trades", "rows": TOTAL} for e, s in SERIES])
    return MemorySource(
        history_root=history,
        rings={"ticker": ticks, "trades": pa.concat_tables(ring_parts)},
        schemas={"ticker": SCHEMA, "trades": TRADE_SCHEMA},
        seams={"trades": pa.Table.from_pylist(seams, schema=SEAMS_SCHEMA)},
        event_table=events, status=status)


class SqlOnlyServer(flight.FlightServerBase):
    """Delegates Flight SQL to the frontend, as service.py does once wired; refuses the rest."""

    def __init__(self, frontend: SqlFrontend, location: str = "grpc://127.0.0.1:0",
                 **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self.sql = frontend

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        with map_errors("GetFlightInfo"):
            self._only(self.sql.handles_descriptor(descriptor))
            return self.sql.get_flight_info(context, descriptor)

    def get_schema(self, context: flight.ServerCallContext,
                   descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        with map_errors("GetSchema"):
            self._only(self.sql.handles_descriptor(descriptor))
            return self.sql.get_schema(context, descriptor)

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        with map_errors("DoGet"):
            self._only(self.sql.handles_ticket(ticket))
            return self.sql.do_get(context, ticket)

    def do_put(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
               reader: Any, writer: Any) -> None:
        with map_errors("DoPut"):
            self._only(self.sql.handles_descriptor(descriptor))
            self.sql.do_put(context, descriptor, reader, writer)

    def do_action(self, context: flight.ServerCallContext,
                  action: flight.Action) -> Iterator[flight.Result]:
        with map_errors("DoAction"):
            self._only(self.sql.handles_action(action.type))
            results = list(self.sql.do_action(context, action))
        return iter(results)

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return self.sql.list_actions()

    @staticmethod
    def _only(handled: bool) -> None:
        if not handled:
            from flight_md import errors
            raise errors.UnknownAction("this test server answers Flight SQL only")


@contextlib.contextmanager
def serving(source: MemorySource, **limits: Any) -> Iterator[SqlOnlyServer]:
    """A :class:`SqlOnlyServer` over ``source`` on a free port, stopped afterwards."""
    frontend = SqlFrontend(source, limits=SqlLimits(**limits),
                           guard=lambda rpc: map_errors(rpc))
    server = SqlOnlyServer(frontend)
    try:
        yield server
    finally:
        frontend.close()  # a query still running would keep shutdown waiting
        server.shutdown()


@pytest.fixture
def source(tmp_path: Path) -> MemorySource:
    return market(tmp_path)


@pytest.fixture
def sql_server(source: MemorySource) -> Iterator[SqlOnlyServer]:
    with serving(source) as server:
        yield server


def uri(server: flight.FlightServerBase) -> str:
    return f"grpc://127.0.0.1:{server.port}"


@pytest.fixture
def adbc(sql_server: SqlOnlyServer) -> Iterator[Any]:
    """A real ADBC Flight SQL DB-API connection to ``sql_server``."""
    from adbc_driver_flightsql import dbapi

    conn = dbapi.connect(uri(sql_server), autocommit=True)  # no transactions: read-only
    try:
        yield conn
    finally:
        conn.close()
