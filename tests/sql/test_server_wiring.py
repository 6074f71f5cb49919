"""Flight SQL beside the native tickets on one real server, over the real store and history.

:class:`WiredServer` is the real :class:`~flight_md.service.FlightMarketDataServer` with the
frontend wired in the way service.py is meant to wire it (each RPC asks the frontend first,
inside the server's own ``map_errors``); :class:`~flight_md.sql.store_source.StoreTableSource`
reads the server's real :class:`~flight_md.buffer.Store` (trades and ticker buffers) and the
real Parquet history a real :class:`~flight_md.persist.store.Persistence` wrote. Several flushes
put each series partly in the history, partly in the ring, partly in both, and some rows
evicted from the ring but held for the history: SQL must count exactly what the native range
tickets return for the same bounds, and what a reference buffer holding every row holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer, Store
from flight_md.events import EventLog
from flight_md.persist.retention import RetentionPolicy
from flight_md.persist.store import PersistConfig, Persistence
from flight_md.schema import now_ms
from flight_md.service import FlightMarketDataServer, map_errors
from flight_md.sql.engine import Engine
from flight_md.sql.frontend import SqlFrontend
from flight_md.sql.source import KeyFilter
from flight_md.sql.store_source import StoreTableSource
from tests.sql.test_safety import query
from tests.support import MS

DAY_MS = 86_400_000
T0 = (now_ms() // DAY_MS) * DAY_MS - 15_000
"""First trade: 15 s before today's UTC midnight (two date partitions)."""
STEP = 10
RING = 100
SERIES = {("binance", "BTC/USDT"): 0.0, ("binance", "ETH/USDT"): 1000.0, ("bybit", "BTC/USDT"): 5.0}


class WiredServer(FlightMarketDataServer):
    """The native server with Flight SQL delegated first (the wiring service.py adds)."""

    def __init__(self, *args: Any, sql_source: StoreTableSource, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql = SqlFrontend(sql_source, guard=lambda rpc: map_errors(rpc, self.refused))

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        if self.sql.handles_descriptor(descriptor):
            with map_errors("GetFlightInfo(sql)", self.refused):
                self._check(context)
                return self.sql.get_flight_info(context, descriptor)
        return super().get_flight_info(context, descriptor)

    def get_schema(self, context: flight.ServerCallContext,
                   descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        if self.sql.handles_descriptor(descriptor):
            with map_errors("GetSchema(sql)", self.refused):
                self._check(context)
                return self.sql.get_schema(context, descriptor)
        return super().get_schema(context, descriptor)

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        if self.sql.handles_ticket(ticket):
            with map_errors("DoGet(sql)", self.refused):
                self._check(context)
                return self.sql.do_get(context, ticket)
        return super().do_get(context, ticket)

    def do_put(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
               reader: Any, writer: Any) -> None:
        if self.sql.handles_descriptor(descriptor):
            with map_errors("DoPut(sql)", self.refused):
                self._check(context)  # binding parameters reads nothing and changes nothing
                self.sql.do_put(context, descriptor, reader, writer)
                return
        super().do_put(context, descriptor, reader, writer)

    def do_action(self, context: flight.ServerCallContext,
                  action: flight.Action) -> Iterator[Any]:
        if self.sql.handles_action(action.type):
            with map_errors("DoAction(sql)", self.refused):
                self._check(context)
                results = list(self.sql.do_action(context, action))
            return iter(results)
        return super().do_action(context, action)

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [*super().list_actions(context), *self.sql.list_actions()]

    def stop(self, grace: float = 2.0) -> bool:
        self.sql.close()  # running queries first: gRPC's shutdown waits for them
        return super().stop(grace)


@dataclass
class World:
    server: WiredServer
    client: flight.FlightClient
    reference: MarketDataBuffer  # every trade of every series, in one big buffer


def trade(buffer: MarketDataBuffer, exchange: str, symbol: str, i: int) -> None:
    buffer.append_trade(exchange, symbol, T0 + i * STEP, str(i), 100.0 + SERIES[(exchange, symbol)]
                        + i % 13, 0.25 + i % 4, ("buy", "sell")[i % 2], T0 + i * STEP + 5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = Path(tmp_path_factory.mktemp("wired")) / "data"
    store = Store(RING)
    trades = store.buffer("trades")
    reference = MarketDataBuffer(1_000_000, channel="trades")
    events = EventLog()
    persistence = Persistence(PersistConfig(data, commit_interval=0.05, seal_interval=3600.0,
                                            retention=RetentionPolicy(None, None)),
                              store, events).open()
    # (series, first, n, flush after): each series ends partly in history, partly in the ring,
    # ETH with rows evicted from the ring but not yet in the history (held).
    plan = [(("binance", "BTC/USDT"), 0, 800, True), (("bybit", "BTC/USDT"), 0, 300, True),
            (("binance", "ETH/USDT"), 0, 400, True), (("binance", "BTC/USDT"), 800, 700, True),
            (("binance", "BTC/USDT"), 1500, 60, False), (("binance", "ETH/USDT"), 400, 350, False),
            (("bybit", "BTC/USDT"), 300, 40, False)]
    for (exchange, symbol), first, n, flush_after in plan:
        for i in range(first, first + n):
            trade(trades, exchange, symbol, i)
            trade(reference, exchange, symbol, i)
        if flush_after:
            persistence.flush()
    source = StoreTableSource(store, events, history=persistence.root)
    server = WiredServer("grpc://127.0.0.1:0", store=store, events=events,
                         persistence=persistence, sql_source=source)
    client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
    try:
        yield World(server, client, reference)
    finally:
        client.close()
        assert server.stop(2.0 * MS), "server did not stop in time"
        persistence.close()


def native(world: World, exchange: str, symbol: str, start: int, end: int) -> pa.Table:
    ticket = f"{symbol}?exchange={exchange}&channel=trades&start={start}&end={end}"
    table: pa.Table = world.client.do_get(flight.Ticket(ticket.encode())).read_all()
    return table


@pytest.mark.parametrize(("first", "last"), [(0, 10_000), (0, 50), (700, 900), (1450, 1600),
                                             (390, 760)])
@pytest.mark.parametrize("series", sorted(SERIES))
def test_sql_counts_agree_with_native_range_tickets(world: World, series: tuple[str, str],
                                                    first: int, last: int) -> None:
    exchange, symbol = series
    start, end = T0 + first * STEP, T0 + last * STEP
    want = native(world, exchange, symbol, start, end)
    got = query(world.client,
                f"SELECT trade_id, timestamp FROM trades WHERE exchange = '{exchange}' AND "
                f"symbol = '{symbol}' AND timestamp >= {start} AND timestamp < {end} "
                "ORDER BY timestamp")
    reference = world.reference.get_range_sync(symbol, start, end, exchange=exchange)
    assert got.num_rows == want.num_rows == reference.num_rows
    assert got["trade_id"].to_pylist() == want["trade_id"].to_pylist() \
        == reference["trade_id"].to_pylist()


def test_native_tickets_and_actions_still_work_beside_sql(world: World) -> None:
    assert query(world.client, "SELECT count(*) AS n FROM trades").to_pylist() == [
        {"n": 1560 + 750 + 340}]
    names = [a.type for a in world.client.list_actions()]
    assert {"status", "CreatePreparedStatement", "ClosePreparedStatement"} <= set(names)
    bad = flight.Ticket(b"NOPE/USDT?channel=trades")
    with pytest.raises(pa.ArrowKeyError):
        world.client.do_get(bad).read_all()
    with pytest.raises(pa.ArrowInvalid, match="CREATE statements are not allowed"):
        query(world.client, "CREATE TABLE x (a INT)")
    assert world.server.refused.snapshot().get("StatementRefused") == 1


def test_adbc_over_the_wired_server(world: World) -> None:
    from adbc_driver_flightsql import dbapi

    with dbapi.connect(f"grpc://127.0.0.1:{world.server.port}", autocommit=True) as conn, \
            conn.cursor() as cursor:
        cursor.execute("SELECT symbol, exchange, count(*) AS n FROM trades "
                       "WHERE timestamp >= ? GROUP BY ALL ORDER BY ALL", parameters=(T0,))
        assert cursor.fetchall() == [("BTC/USDT", "binance", 1560), ("BTC/USDT", "bybit", 340),
                                     ("ETH/USDT", "binance", 750)]
        assert conn.adbc_get_table_schema("trades") == world.server.store.buffer("trades").schema


def test_the_world_spans_history_held_rows_and_ring(world: World) -> None:
    source = world.server.sql.engine.source
    snapshot = source.ring_snapshot("trades")
    history = source.history_dataset("trades")
    assert history is not None and history.count_rows() >= 1500 + 400 + 300
    assert snapshot.seams is not None and snapshot.seams.num_rows == len(SERIES)
    # ETH's ring holds 100 rows but the snapshot 350: the rows evicted and held for the history.
    eth = snapshot.table.filter(pa.compute.equal(snapshot.table["symbol"], "ETH/USDT"))
    assert eth.num_rows == 350 > RING


def test_bearer_tokens_apply_to_sql(tmp_path: Path) -> None:
    from adbc_driver_flightsql import dbapi
    from adbc_driver_manager import Error as AdbcError

    from flight_md.auth import MIDDLEWARE_KEY, TokenAuth
    from flight_md.config import Secret

    store = Store(RING)
    trade(store.buffer("trades"), "binance", "BTC/USDT", 1)
    events = EventLog()
    auth = TokenAuth([Secret("full-s3cret")], read_only_tokens=[Secret("ro-s3cret")])
    server = WiredServer("grpc://127.0.0.1:0", store=store, events=events,
                         sql_source=StoreTableSource(store, events), authorize=auth.authorize,
                         middleware={MIDDLEWARE_KEY: auth})
    uri = f"grpc://127.0.0.1:{server.port}"
    try:
        with pytest.raises(AdbcError, match="(?i)unauthenticated") as refused, \
                dbapi.connect(uri, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM trades")
        assert "s3cret" not in str(refused.value)
        header = {"adbc.flight.sql.authorization_header": "Bearer ro-s3cret"}
        with dbapi.connect(uri, autocommit=True, db_kwargs=header) as conn, \
                conn.cursor() as cursor:  # a read-only token may query
            cursor.execute("SELECT count(*) AS n FROM trades WHERE symbol = ?", ("BTC/USDT",))
            assert cursor.fetchall() == [(1,)]
    finally:
        assert server.stop(2.0 * MS)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM trades WHERE symbol = 'ETH/USDT' ORDER BY timestamp DESC LIMIT 500",
    ("SELECT exchange, count(*), min(timestamp), max(timestamp) FROM trades "
    "WHERE symbol = 'BTC/USDT' AND exchange IN ('bybit', 'binance') GROUP BY ALL ORDER BY ALL"),
    "SELECT count(*) FROM trades WHERE exchange = 'bybit' AND symbol = 'BTC/USDT'",
    "SELECT count(*) FROM trades WHERE exchange = 'kraken'",
])
def test_pruned_rings_answer_as_every_ring_does(world: World, sql: str) -> None:
    # The real store's seams and held rows: a pruned snapshot (one series' ring and seam) must
    # meet the history exactly where the whole snapshot does.
    source = world.server.sql.engine.source
    assert isinstance(source, StoreTableSource)
    pruned, whole = Engine(source), Engine(source, prune_rings=False)
    got = pruned.execute(sql).read_all().to_pylist()
    assert got == whole.execute(sql).read_all().to_pylist()
    if "500" in sql:
        assert len(got) == 500 and {r["symbol"] for r in got} == {"ETH/USDT"}


def test_a_pruned_ring_snapshot_holds_only_its_series(world: World) -> None:
    source = world.server.sql.engine.source
    snapshot = source.ring_snapshot("trades", KeyFilter(symbols=frozenset({"ETH/USDT"})))
    assert set(snapshot.table["symbol"].to_pylist()) == {"ETH/USDT"}
    assert snapshot.table.num_rows == 350  # the evicted rows held for the history included
    assert snapshot.seams is not None and snapshot.seams.to_pylist() == [
        r for r in source.ring_snapshot("trades").seams.to_pylist() if r["symbol"] == "ETH/USDT"]
