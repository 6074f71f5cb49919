"""Queries over the Parquet history and the ring, through a real Flight server and client.

A real :class:`~flight_md.service.FlightMarketDataServer` on ``grpc://127.0.0.1:0`` with a real
:class:`~flight_md.persist.store.Persistence` (data dir under a temporary directory), rings of
:data:`RING` rows, and thousands of rows per series moved into the history in several flushes,
so the history has several files in two date partitions and the ring holds only the newest rows
(part of them in the history as well, part only in the ring). What a client gets must equal
exactly what one large in-memory buffer holding every row (:data:`reference`) answers: no
duplicate and no gap at the seam, arrival order, the same columns and nulls.

Series of the shared (read-only) server, tick ``i`` at ``T0 + i * STEP``, ``T0`` 15 s before a
UTC midnight:

* binance ``BTC/USDT``: 3000 rows, flushed after 1000, 2000 and 2950; the ring holds 2900..2999,
  the history 0..2949.
* binance ``SOL/USDT``: 1500 rows, flushed after 1000; 400 rows evicted from the ring but not in
  the history yet (held), 100 in the ring.
* ``ETH/USDT`` on binance and on bybit, different prices, each with held rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer
from flight_md.events import EventKind, EventLog
from flight_md.persist.query import span
from flight_md.persist.retention import RetentionPolicy
from flight_md.persist.store import PersistConfig, Persistence
from flight_md.schema import MarketTick, now_ms
from flight_md.service import FlightMarketDataServer
from flight_md.tickets import parse_ticket
from tests.support import MS

DAY_MS = 86_400_000
T0 = (now_ms() // DAY_MS) * DAY_MS - 15_000
"""Tick 0 of every series: 15 s before today's UTC midnight (so rows fall on two dates)."""
STEP = 10
RING = 100
NO_RETENTION = RetentionPolicy(max_age=None, max_bytes=None)
CHANNELS = {"binance": "ticker", "bybit": "ticker"}
OFFSET = {("binance", "BTC/USDT"): 0.0, ("binance", "SOL/USDT"): 30_000.0,
          ("binance", "ETH/USDT"): 10_000.0, ("bybit", "ETH/USDT"): 20_000.0}


def ts(i: int) -> int:
    """Timestamp of tick ``i``."""
    return T0 + i * STEP


def tick(i: int, symbol: str = "BTC/USDT", exchange: str = "binance") -> MarketTick:
    price = OFFSET[(exchange, symbol)] + i
    return MarketTick(symbol, ts(i), price, 1.0 + i, price - 0.5, price + 0.5, None, None, None,
                      price, exchange, ts(i) + 7)


def persistence(buffer: MarketDataBuffer, data_dir: Path) -> Persistence:
    config = PersistConfig(data_dir, commit_interval=0.05, seal_interval=3600.0,
                           retention=NO_RETENTION)
    return Persistence(config, buffer, EventLog(), CHANNELS).open()


@dataclass
class World:
    """The shared server, its client, its store and the reference buffer."""

    server: FlightMarketDataServer
    client: flight.FlightClient
    buffer: MarketDataBuffer
    store: Persistence
    reference: MarketDataBuffer

    def get(self, ticket: str) -> pa.Table:
        return self.client.do_get(flight.Ticket(ticket.encode())).read_all()


def load(buffer: MarketDataBuffer, reference: MarketDataBuffer, store: Persistence,
         plan: list[tuple[str, str, int, int, bool]]) -> None:
    """Append ``(symbol, exchange, first, n, flush_after)`` runs to both buffers in order."""
    for symbol, exchange, first, n, flush_after in plan:
        ticks = [tick(i, symbol, exchange) for i in range(first, first + n)]
        buffer.extend(ticks)
        reference.extend(ticks)
        if flush_after:
            store.flush()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    buffer = MarketDataBuffer(RING)
    reference = MarketDataBuffer(1_000_000)
    store = persistence(buffer, tmp_path_factory.mktemp("span") / "data")
    load(buffer, reference, store, [
        ("SOL/USDT", "binance", 0, 1000, True),
        ("ETH/USDT", "binance", 0, 300, False),
        ("ETH/USDT", "bybit", 0, 250, True),
        ("BTC/USDT", "binance", 0, 1000, True),
        ("BTC/USDT", "binance", 1000, 1000, True),
        ("BTC/USDT", "binance", 2000, 950, True),
        ("BTC/USDT", "binance", 2950, 50, False),
        ("SOL/USDT", "binance", 1000, 500, False),
        ("ETH/USDT", "binance", 300, 200, False),
        ("ETH/USDT", "bybit", 250, 250, False),
    ])
    server = FlightMarketDataServer("grpc://127.0.0.1:0", buffer, persistence=store)
    client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
    try:
        yield World(server, client, buffer, store, reference)
    finally:
        client.close()
        assert server.stop(2.0 * MS), "server did not stop in time"
        store.close()


def expected(world: World, symbol: str = "BTC/USDT", *, exchange: str | None = None,
             start: int | None = None, end: int | None = None, latest: int | None = None,
             columns: list[str] | None = None) -> pa.Table:
    """What a buffer holding every row answers."""
    if start is None and end is None:
        assert latest is not None
        return world.reference.get_latest_sync(symbol, latest, exchange=exchange,
                                               columns=columns)
    return world.reference.get_range_sync(symbol, start, end, exchange=exchange, latest=latest,
                                          columns=columns)


def ticket(symbol: str = "BTC/USDT", **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
    return f"{symbol}?{query}" if query else symbol


def assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.equals(want.schema), f"{got.schema} != {want.schema}"
    if not got.equals(want):
        g, w = got.column("timestamp").to_pylist() if "timestamp" in got.column_names else [], \
            want.column("timestamp").to_pylist() if "timestamp" in want.column_names else []
        raise AssertionError(f"{got.num_rows} rows, expected {want.num_rows}; first difference "
                             f"at {next((k for k, (a, b) in enumerate(zip(g, w)) if a != b), '-')}")


# -- the layout the tests rely on ---------------------------------------------------------------


def test_the_history_has_several_files_and_the_ring_only_the_newest_rows(world: World) -> None:
    series = {(s["exchange"], s["symbol"]): s for s in world.store.status()["series"]}
    btc = series[("binance", "BTC/USDT")]
    assert (btc["rows"], btc["oldest_ms"], btc["newest_ms"]) == (2950, ts(0), ts(2949))
    assert btc["files"] >= 4  # three flushes, one of them across midnight
    assert series[("binance", "SOL/USDT")]["rows"] == 1000
    assert world.buffer.count("BTC/USDT") == RING
    assert world.buffer.held_rows() == 400 + 100 + 150  # SOL, binance ETH, bybit ETH


# -- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "last"), [
    pytest.param(100, 900, id="inside-one-history-file"),
    pytest.param(900, 2100, id="history-files-and-midnight"),
    pytest.param(2960, 2990, id="ring-only"),
    pytest.param(2905, 2945, id="rows-in-both"),
    pytest.param(2800, 2990, id="across-the-seam"),
    pytest.param(0, 3000, id="everything"),
    pytest.param(-50, 10, id="starting-before-the-first-row"),
    pytest.param(2990, 3100, id="ending-after-the-last-row"),
    pytest.param(-100, -10, id="before-everything"),
])
def test_a_range_is_exactly_the_rows_in_it(world: World, first: int, last: int) -> None:
    got = world.get(ticket(start=ts(first), end=ts(last)))
    want = expected(world, start=ts(first), end=ts(last))
    assert want.num_rows == max(0, min(last, 3000) - max(first, 0))
    assert_same(got, want)


def test_a_range_with_one_bound(world: World) -> None:
    assert_same(world.get(ticket(start=ts(2500))), expected(world, start=ts(2500)))
    assert_same(world.get(ticket(end=ts(2975))), expected(world, end=ts(2975)))
    assert world.get(ticket(start=ts(0))).num_rows == 3000


def test_a_range_in_iso_time_across_midnight(world: World) -> None:
    midnight = ts(1500)
    day = datetime.fromtimestamp(midnight / 1000, UTC).strftime("%Y-%m-%d")
    got = world.get(ticket(start=ts(1000), end=f"{day}T00:00:00Z"))
    want = expected(world, start=ts(1000), end=midnight)
    assert want.num_rows == 500
    assert_same(got, want)


@pytest.mark.parametrize("columns", [["timestamp", "price"], ["price"],
                                     ["exchange", "price", "symbol"], ["receive_timestamp", "high"]])
def test_a_range_with_columns(world: World, columns: list[str]) -> None:
    got = world.get(ticket(start=ts(2700), end=ts(2995), columns=",".join(columns)))
    assert got.column_names == columns
    assert_same(got, expected(world, start=ts(2700), end=ts(2995), columns=columns))


@pytest.mark.parametrize(("first", "last", "latest"), [
    pytest.param(500, 2990, 100, id="newest-hundred-across-the-seam"),
    pytest.param(500, 2990, 30, id="ring-part-only"),
    pytest.param(500, 2990, 2000, id="mostly-history"),
    pytest.param(500, 2990, 10_000, id="more-than-the-range"),
    pytest.param(100, 200, 50, id="history-only"),
])
def test_latest_inside_a_range(world: World, first: int, last: int, latest: int) -> None:
    got = world.get(ticket(start=ts(first), end=ts(last), latest=latest))
    assert_same(got, expected(world, start=ts(first), end=ts(last), latest=latest))
    assert got.num_rows == min(latest, last - first)


# -- latest=N -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 50, RING, RING + 1, 500, 2999, 3000, 3001, 1_000_000])
def test_latest_n_reaches_into_the_history_beyond_the_ring(world: World, n: int) -> None:
    got = world.get(ticket(latest=n))
    assert_same(got, expected(world, latest=n))
    assert got.num_rows == min(n, 3000)


def test_latest_with_columns_beyond_the_ring(world: World) -> None:
    got = world.get(ticket(latest=700, columns="price,timestamp"))
    assert_same(got, expected(world, latest=700, columns=["price", "timestamp"]))


def test_the_bare_symbol_ticket_is_the_ring_only(world: World) -> None:
    got = world.get("BTC/USDT")
    assert_same(got, world.buffer.get_latest_sync("BTC/USDT", RING))
    assert got.column("price").to_pylist() == [float(i) for i in range(2900, 3000)]


# -- GetFlightInfo --------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    pytest.param({"start": ts(0), "end": ts(3000)}, id="everything"),
    pytest.param({"start": ts(900), "end": ts(2990)}, id="across-the-seam"),
    pytest.param({"start": ts(2960)}, id="ring-only"),
    pytest.param({"latest": 2500}, id="latest-beyond-the-ring"),
    pytest.param({"start": ts(500), "end": ts(2990), "latest": 1234}, id="latest-in-a-range"),
])
def test_flight_info_counts_include_the_history(world: World, query: dict[str, Any]) -> None:
    descriptor = flight.FlightDescriptor.for_command(ticket(**query).encode())
    info = world.client.get_flight_info(descriptor)
    want = expected(world, **query)
    assert info.total_records == want.num_rows
    (endpoint,) = info.endpoints
    assert_same(world.client.do_get(endpoint.ticket).read_all(), want)


def test_flight_info_of_a_json_command_and_of_a_path(world: World) -> None:
    body = json.dumps({"symbol": "BTC/USDT", "start": ts(1000), "end": ts(2990)}).encode()
    info = world.client.get_flight_info(flight.FlightDescriptor.for_command(body))
    assert info.total_records == 1990
    path = world.client.get_flight_info(flight.FlightDescriptor.for_path("BTC/USDT"))
    assert path.total_records == RING  # the bare symbol: the ring


# -- the hold, exchanges, unknown symbols -----------------------------------------------------------


def test_rows_held_for_the_history_close_the_gap(world: World) -> None:
    """SOL/USDT: 0..999 in the history, 1000..1399 evicted from the ring and held, 1400..1499
    in the ring."""
    assert world.buffer.count("SOL/USDT") == RING
    for first, last in ((900, 1450), (1000, 1400), (0, 1500)):
        got = world.get(ticket("SOL/USDT", start=ts(first), end=ts(last)))
        assert_same(got, expected(world, "SOL/USDT", start=ts(first), end=ts(last)))
        assert got.num_rows == last - first
    assert_same(world.get(ticket("SOL/USDT", latest=1200)), expected(world, "SOL/USDT",
                                                                       latest=1200))
    info = world.client.get_flight_info(flight.FlightDescriptor.for_command(
        ticket("SOL/USDT", start=ts(0)).encode()))
    assert info.total_records == 1500


@pytest.mark.parametrize("exchange", ["binance", "bybit"])
def test_one_symbol_on_two_exchanges(world: World, exchange: str) -> None:
    cases: list[dict[str, Any]] = [{"start": ts(100), "end": ts(480)}, {"latest": 450}]
    for params in cases:
        got = world.get(ticket("ETH/USDT", exchange=exchange, **params))
        want = expected(world, "ETH/USDT", exchange=exchange, **params)
        assert_same(got, want)
        assert set(got.column("exchange").to_pylist()) == {exchange}


def test_a_symbol_on_two_exchanges_needs_one_named(world: World) -> None:
    with pytest.raises(pa.ArrowInvalid, match="several exchanges; add exchange="):
        world.get(ticket("ETH/USDT", start=ts(0)))


@pytest.mark.parametrize("query", [
    ticket("XRP/USDT", start=ts(0), end=ts(10)),
    ticket("XRP/USDT", latest=5000),
    ticket("BTC/USDT", exchange="bybit", start=ts(0)),
    ticket("SOL/USDT", exchange="kraken", latest=5000),
])
def test_an_unknown_symbol_stays_not_found(world: World, query: str) -> None:
    with pytest.raises(pa.ArrowKeyError, match="unknown"):
        world.get(query)
    with pytest.raises(pa.ArrowKeyError, match="unknown"):
        world.client.get_flight_info(flight.FlightDescriptor.for_command(query.encode()))


# -- status, flush, memory only ---------------------------------------------------------------------


def act(client: flight.FlightClient, name: str) -> Any:
    (result,) = client.do_action(flight.Action(name, b""))
    return json.loads(result.body.to_pybytes())


def test_status_has_a_persistence_section(world: World) -> None:
    section = act(world.client, "status")["persistence"]
    assert section["state"] == "ok"
    assert section["held_rows"] == world.buffer.held_rows()
    rows = {(s["exchange"], s["symbol"]): s["rows"] for s in section["series"]}
    assert rows == {("binance", "BTC/USDT"): 2950, ("binance", "SOL/USDT"): 1000,
                    ("binance", "ETH/USDT"): 300, ("bybit", "ETH/USDT"): 250}


@pytest.fixture
def own_server(md_server_factory: Callable[..., Any],
               tmp_path: Path) -> Iterator[tuple[Any, Persistence]]:
    """A server of the test's own over a ring of :data:`RING` with persistence."""
    buffer = MarketDataBuffer(RING)
    store = persistence(buffer, tmp_path / "data")
    try:
        yield md_server_factory(buffer, persistence=store), store
    finally:
        store.close()


def test_the_flush_action_moves_everything_into_the_history(
        own_server: tuple[Any, Persistence]) -> None:
    harness, _ = own_server
    harness.buffer.extend(tick(i) for i in range(1000))
    result = act(harness.client, "flush")
    assert set(result) == {"segments", "rows", "files", "bytes", "events", "skipped_rows",
                           "seconds"}
    assert (result["rows"], result["skipped_rows"]) == (1000, 0)
    assert result["segments"] >= 1 and result["files"] >= 1 and result["bytes"] > 0
    assert harness.buffer.held_rows() == 0
    section = act(harness.client, "status")["persistence"]
    assert (section["history_rows_written"], section["flushes"]) == (1000, 1)
    assert act(harness.client, "flush")["rows"] == 0

    got = harness.client.do_get(flight.Ticket(ticket(start=ts(0)).encode())).read_all()
    assert got.column("price").to_pylist() == [float(i) for i in range(1000)]


def test_a_read_started_before_a_flush_is_still_exact(
        own_server: tuple[Any, Persistence]) -> None:
    """A range is planned (counted, the ring's side taken) before the history is read: a flush
    in between moves the ring's rows into the history without doubling them in the answer."""
    harness, store = own_server
    buffer = harness.buffer
    buffer.extend(tick(i) for i in range(600))
    store.flush()
    buffer.extend(tick(i) for i in range(600, 1500))  # 800 held, 100 in the ring
    queries = {ticket(start=ts(0)): range(1500), ticket(latest=1200): range(300, 1500),
               ticket(start=ts(100), end=ts(1450), latest=1000): range(450, 1450)}
    planned = {q: span(store, buffer, parse_ticket(q.encode())) for q in queries}
    assert store.flush().rows == 900
    for query, rows in queries.items():
        answer = planned[query]
        assert answer is not None and answer.rows == len(rows), query
        table = answer.read_all()
        assert table.column("price").to_pylist() == [float(i) for i in rows], query


def test_flush_without_persistence_is_unavailable(md_server_factory: Callable[..., Any]) -> None:
    harness = md_server_factory(MarketDataBuffer(RING))
    with pytest.raises(flight.FlightUnavailableError,
                       match="flush needs persistence; this server runs with --memory-only"):
        act(harness.client, "flush")
    assert act(harness.client, "status")["persistence"] == {"state": "memory_only"}


def test_after_a_restart_queries_read_the_history_the_last_run_left(
        md_server_factory: Callable[..., Any], tmp_path: Path) -> None:
    reference = MarketDataBuffer(1_000_000)
    first_buffer = MarketDataBuffer(RING)
    first = persistence(first_buffer, tmp_path / "data")
    load(first_buffer, reference, first, [("BTC/USDT", "binance", 0, 1200, True),
                                         ("BTC/USDT", "binance", 1200, 300, False)])
    first.events.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT",), "before the restart")
    first.close()

    buffer = MarketDataBuffer(RING)
    store = persistence(buffer, tmp_path / "data")
    try:
        harness = md_server_factory(buffer, store.events, persistence=store)
        world = World(harness.server, harness.client, buffer, store, reference)
        ticks = [tick(i) for i in range(1500, 1550)]  # this run's rows, after the restored ones
        buffer.extend(ticks)
        reference.extend(ticks)
        assert_same(world.get("BTC/USDT"), world.buffer.get_latest_sync("BTC/USDT", RING))
        assert world.get("BTC/USDT").column("price").to_pylist() == [
            float(i) for i in range(1450, 1550)]
        for first_row, last_row in ((0, 1550), (1400, 1520), (1490, 1510), (1520, 1549)):
            assert_same(world.get(ticket(start=ts(first_row), end=ts(last_row))),
                        expected(world, start=ts(first_row), end=ts(last_row)))
        for n in (10, RING, 120, 1549, 5000):
            assert_same(world.get(ticket(latest=n)), expected(world, latest=n))
        details = world.get("@events").column("detail").to_pylist()
        assert "before the restart" in details
    finally:
        store.close()


def test_a_tick_whose_clock_jumped_is_found_once(own_server: tuple[Any, Persistence]) -> None:
    harness, store = own_server
    jumped = T0 - 5 * DAY_MS
    odd = MarketTick("BTC/USDT", jumped, -1.0, None, None, None, None, None, None, None,
                     "binance", ts(300) + 7)
    harness.buffer.extend(tick(i) for i in range(300))
    harness.buffer.append(odd)
    harness.buffer.extend(tick(i) for i in range(300, 600))
    client = harness.client

    def around(stamp: int) -> pa.Table:
        return client.do_get(flight.Ticket(ticket(start=stamp - 1, end=stamp + 1).encode())
                             ).read_all()

    assert around(jumped).column("price").to_pylist() == [-1.0]  # in the ring's hold
    store.flush()
    assert around(jumped).column("price").to_pylist() == [-1.0]  # in its own day's partition
    normal = client.do_get(flight.Ticket(ticket(start=ts(0), end=ts(600)).encode())).read_all()
    assert normal.column("price").to_pylist() == [float(i) for i in range(600)]
    (series,) = store.status()["series"]
    assert (series["oldest_ms"], series["rows"]) == (jumped, 601)


def test_the_clear_action_empties_the_ring_and_the_history_keeps_the_rows(
        own_server: tuple[Any, Persistence]) -> None:
    harness, store = own_server
    client = harness.client
    harness.buffer.extend(tick(i) for i in range(500))
    store.flush()
    harness.buffer.extend(tick(i) for i in range(500, 550))
    (result,) = client.do_action(flight.Action("clear", json.dumps(
        {"symbols": ["BTC/USDT"]}).encode()))
    assert json.loads(result.body.to_pybytes()) == {"cleared": RING}
    assert client.do_get(flight.Ticket(b"BTC/USDT")).read_all().num_rows == 0
    store.flush()
    everything = ticket(start=ts(0))
    got = client.do_get(flight.Ticket(everything.encode())).read_all()
    assert got.column("price").to_pylist() == [float(i) for i in range(550)]
    info = client.get_flight_info(flight.FlightDescriptor.for_command(everything.encode()))
    assert info.total_records == 550
    harness.buffer.extend(tick(i) for i in range(550, 560))
    got = client.do_get(flight.Ticket(ticket(latest=20).encode())).read_all()
    assert got.column("price").to_pylist() == [float(i) for i in range(540, 560)]
