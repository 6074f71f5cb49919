"""The tick store: ring semantics against a pure-Python model, zero-copy reads, live tails."""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from flight_md import buffer as buffer_module
from flight_md.buffer import DEFAULT_BUFFER_SIZE, BufferStats, Follower, HandOff, MarketDataBuffer
from flight_md.core.channels import TICKER_SPEC, spec_for, trade_row
from flight_md.errors import AmbiguousExchange, FlightMdError, SlowConsumer, UnknownExchange, UnknownSymbol
from flight_md.schema import SCHEMA, MarketTick
from tests.support import until

EXCHANGES = ("binance", "bybit")
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT:USDT")


def mk(serial: int, ts: int, symbol: str = "BTC/USDT", exchange: str = "binance",
       missing: bool = False) -> MarketTick:
    """A tick identified by ``serial`` (price) whose every field is derived from it."""
    price = float(serial) * 2.0 + 0.5
    opt = None if missing else price + 1.0
    return MarketTick(symbol, ts, price, opt, None if missing else price - 0.25,
                      None if missing else price + 0.25, opt, None if missing else price - 3.0,
                      opt, None if missing else price, exchange, serial + 1_000_000)


def _stored(ticks: list[MarketTick]) -> pa.RecordBatch:
    """Ticks as one batch of the ring's stored schema (what an ingestion child hands over)."""
    flat = array("d")
    for t in ticks:
        flat.extend(buffer_module._row(t))
    return TICKER_SPEC.seal(flat, len(ticks), [])


def _hand_off(by_ring: dict[tuple[str, str], list[MarketTick]]
              ) -> tuple[HandOff, list[tuple[tuple[str, str], int]]]:
    """One hand-off message holding every ring's ticks, sorted by ring, and its header."""
    flat = array("d")
    header = []
    for key, ticks in by_ring.items():
        for t in ticks:
            flat.extend(buffer_module._row(t))
        header.append((key, len(ticks)))
    rows_ = len(flat) // TICKER_SPEC.width
    ipc = TICKER_SPEC.seal(flat, rows_, []).serialize().to_pybytes()
    return HandOff(flat.tobytes(), None, ipc, TICKER_SPEC), header


def row(t: MarketTick) -> dict[str, Any]:
    return {name: getattr(t, name) for name in SCHEMA.names}


def rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def filled(n: int, capacity: int = 100, symbol: str = "BTC/USDT",
           exchange: str = "binance") -> tuple[MarketDataBuffer, list[MarketTick]]:
    buf = MarketDataBuffer(capacity)
    ticks = [mk(i, 1000 + i, symbol, exchange) for i in range(n)]
    buf.extend(ticks)
    return buf, ticks


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "10", None])
def test_buffer_size_must_be_positive_int(size: Any) -> None:
    with pytest.raises(ValueError, match="buffer_size must be a positive integer"):
        MarketDataBuffer(size)


def test_defaults_and_repr() -> None:
    buf = MarketDataBuffer()
    assert buf.buffer_size == DEFAULT_BUFFER_SIZE
    assert len(buf) == 0
    assert "buffer_size=10000" in repr(buf)
    assert buf.exchanges() == [] and buf.keys() == [] and buf.stats() == []


# -- capacity, get_latest ------------------------------------------------------------------


def test_eviction_is_oldest_first() -> None:
    buf, ticks = filled(25, capacity=10)
    assert rows(buf.get_latest_sync("BTC/USDT", 100)) == [row(t) for t in ticks[15:]]
    assert buf.count("BTC/USDT") == 10
    assert len(buf) == 10


@pytest.mark.parametrize("capacity", [1, 2, 3, 7, 300, 1000])
def test_get_latest_newest_n_oldest_first(capacity: int) -> None:
    buf, ticks = filled(777, capacity=capacity)
    kept = ticks[-capacity:]
    for n in (0, 1, 2, capacity - 1, capacity, capacity + 1, 10 * capacity):
        expected = kept[len(kept) - n:] if 0 < n <= len(kept) else (kept if n else [])
        table = buf.get_latest_sync("BTC/USDT", n)
        assert table.schema.equals(SCHEMA)
        assert rows(table) == [row(t) for t in expected], n


def test_get_latest_limit_above_capacity_clamps() -> None:
    buf, _ = filled(50, capacity=20)
    assert buf.get_latest_sync("BTC/USDT", 2**31 - 1).num_rows == 20


def test_get_latest_negative_limit_is_refused() -> None:
    buf, _ = filled(5)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        buf.get_latest_sync("BTC/USDT", -1)


def test_unsealed_rows_are_visible_at_once() -> None:
    buf = MarketDataBuffer(10_000)
    for i in range(5):
        buf.append(mk(i, i))
        assert buf.get_latest_sync("BTC/USDT", 1).to_pylist() == [row(mk(i, i))]
    assert buf.count("BTC/USDT") == 5


def test_extend_returns_count_and_interleaves_rings() -> None:
    buf = MarketDataBuffer(100)
    ticks = [mk(i, i, SYMBOLS[i % 3], EXCHANGES[i % 2]) for i in range(60)]
    assert buf.extend(ticks) == 60
    assert buf.extend([]) == 0
    for exchange in EXCHANGES:
        for symbol in SYMBOLS:
            expected = [row(t) for t in ticks if (t.exchange, t.symbol) == (exchange, symbol)]
            assert rows(buf.get_latest_sync(symbol, 100, exchange=exchange)) == expected
    stats = {(s.exchange, s.symbol): s for s in buf.stats()}
    last = ticks[-1]
    assert stats[(last.exchange, last.symbol)].last_timestamp == last.timestamp


# -- get_range -----------------------------------------------------------------------------


def test_get_range_start_inclusive_end_exclusive() -> None:
    buf, ticks = filled(100)
    table = buf.get_range_sync("BTC/USDT", 1010, 1020)
    assert [r["timestamp"] for r in rows(table)] == list(range(1010, 1020))
    assert buf.get_range_sync("BTC/USDT", 1010, 1010).num_rows == 0
    assert rows(buf.get_range_sync("BTC/USDT", None, 1003)) == [row(t) for t in ticks[:3]]
    assert rows(buf.get_range_sync("BTC/USDT", 1097, None)) == [row(t) for t in ticks[97:]]
    assert rows(buf.get_range_sync("BTC/USDT")) == [row(t) for t in ticks]
    assert buf.get_range_sync("BTC/USDT", 5000, 6000).num_rows == 0
    assert buf.get_range_sync("BTC/USDT", 0, 1000).num_rows == 0
    assert buf.get_range_sync("BTC/USDT", 0, 1000).schema.equals(SCHEMA)


def test_get_range_out_of_order_and_repeated_timestamps_keep_arrival_order() -> None:
    stamps = [5, 3, 3, 9, 1, 5, 5, 7, 2, 8, 3, 0] * 50
    buf = MarketDataBuffer(1000)
    ticks = [mk(i, ts) for i, ts in enumerate(stamps)]
    buf.extend(ticks)
    for lo, hi in [(3, 6), (0, 1), (5, 6), (None, 4), (8, None), (10, 20), (3, 3)]:
        expected = [row(t) for t in ticks
                    if (lo is None or t.timestamp >= lo) and (hi is None or t.timestamp < hi)]
        assert rows(buf.get_range_sync("BTC/USDT", lo, hi)) == expected, (lo, hi)


def test_get_range_latest_keeps_newest_of_range() -> None:
    buf, _ = filled(100)
    table = buf.get_range_sync("BTC/USDT", 1010, 1050, latest=5)
    assert [r["timestamp"] for r in rows(table)] == list(range(1045, 1050))
    assert buf.get_range_sync("BTC/USDT", 1010, 1050, latest=0).num_rows == 0
    assert buf.get_range_sync("BTC/USDT", 1010, 1050, latest=500).num_rows == 40


# -- the model ------------------------------------------------------------------------------


class BufferModel(RuleBasedStateMachine):
    """Every read compared to the last ``capacity`` ticks kept in plain Python lists."""

    followers = Bundle("followers")

    def __init__(self) -> None:
        super().__init__()
        self.serial = 0
        self.held: list[tuple[pa.Table, list[dict[str, Any]]]] = []
        self.patches: list[Any] = []

    @initialize(capacity=st.sampled_from([1, 2, 3, 4, 5, 8, 9, 16, 33, 100]),
                seal=st.sampled_from([1, 2, 3, 4, 256]), compact=st.sampled_from([2, 3, 8]),
                prefill=st.lists(st.tuples(st.sampled_from(EXCHANGES),
                                           st.sampled_from(SYMBOLS[:2]), st.integers(0, 15),
                                           st.booleans()), min_size=1, max_size=60))
    def setup(self, capacity: int, seal: int, compact: int,
              prefill: list[tuple[str, str, int, bool]]) -> None:
        for name, value in (("SEAL_ROWS", seal), ("COMPACT_SEGMENTS", compact),
                            ("FRESH_BATCHES", compact + 1)):
            patch = mock.patch.object(buffer_module, name, value)
            patch.start()
            self.patches.append(patch)
        self.capacity = capacity
        self.buf = MarketDataBuffer(capacity)
        self.kept: dict[tuple[str, str], list[MarketTick]] = {}
        self.appended: dict[tuple[str, str], int] = {}
        self.pending: dict[int, tuple[Follower, list[MarketTick]]] = {}
        for index, item in enumerate(prefill):
            t = self._tick(*item)
            self.buf.append(t)
            self._store(t)
            if index % 5 == 4:  # a read between appends seals pending rows early
                self.buf.get_latest_sync(t.symbol, 1, exchange=t.exchange)

    def teardown(self) -> None:
        for table, snapshot in getattr(self, "held", []):
            assert rows(table) == snapshot, "a table held by a reader changed"
        for patch in reversed(self.patches):
            patch.stop()

    # -- writes --

    def _store(self, t: MarketTick) -> None:
        key = (t.exchange, t.symbol)
        kept = self.kept.setdefault(key, [])
        kept.append(t)
        del kept[:-self.capacity]
        self.appended[key] = self.appended.get(key, 0) + 1
        for follower, pending in list(self.pending.values()):
            if (follower.exchange, follower.symbol) == key:
                pending.append(t)

    def _tick(self, exchange: str, symbol: str, ts: int, missing: bool) -> MarketTick:
        self.serial += 1
        return mk(self.serial, ts, symbol, exchange, missing)

    @rule(exchange=st.sampled_from(EXCHANGES), symbol=st.sampled_from(SYMBOLS),
          ts=st.integers(0, 15), missing=st.booleans())
    def append(self, exchange: str, symbol: str, ts: int, missing: bool) -> None:
        t = self._tick(exchange, symbol, ts, missing)
        self.buf.append(t)
        self._store(t)

    @rule(items=st.lists(st.tuples(st.sampled_from(EXCHANGES), st.sampled_from(SYMBOLS[:2]),
                                   st.integers(0, 15), st.booleans()), max_size=40),
          ordered=st.booleans())
    def extend(self, items: list[tuple[str, str, int, bool]], ordered: bool) -> None:
        if ordered:  # long ordered runs exercise the binary-search path of get_range
            items = [(e, s, 100 + self.serial + i, m) for i, (e, s, _, m) in enumerate(items)]
        ticks = [self._tick(*item) for item in items]
        assert self.buf.extend(ticks) == len(ticks)
        for t in ticks:
            self._store(t)

    @rule(items=st.lists(st.tuples(st.sampled_from(EXCHANGES), st.sampled_from(SYMBOLS),
                                   st.integers(0, 15), st.booleans()), min_size=1, max_size=40),
          how=st.sampled_from(["batch", "run"]))
    def append_columnar(self, items: list[tuple[str, str, int, bool]], how: str) -> None:
        """The columnar paths: one batch per ring (append_batch), or one hand-off message
        holding every ring's rows, sorted by ring (run_appender)."""
        ticks = [self._tick(*item) for item in items]
        by_ring: dict[tuple[str, str], list[MarketTick]] = {}
        for t in ticks:
            by_ring.setdefault((t.exchange, t.symbol), []).append(t)
        if how == "batch":
            for (exchange, symbol), ring_ticks in by_ring.items():
                self.buf.append_batch(exchange, symbol, _stored(ring_ticks))
        else:
            run, header = _hand_off(by_ring)
            first = 0
            for (exchange, symbol), n in header:
                self.buf.run_appender(exchange, symbol)(run, first, n)
                first += n
        for ring_ticks in by_ring.values():
            for t in ring_ticks:
                self._store(t)

    @rule(n=st.integers(1, 300))
    def append_many_one_symbol(self, n: int) -> None:
        ticks = [self._tick("binance", "BTC/USDT", 100 + self.serial + i, False)
                 for i in range(n)]
        self.buf.extend(ticks)
        for t in ticks:
            self._store(t)

    # -- reads --

    def _check_lookup(self, symbol: str, exchange: str | None, call: Callable[[], Any]) -> Any:
        on = sorted(e for (e, s) in self.kept if s == symbol)
        if exchange is not None and (exchange, symbol) in self.kept:
            return call()
        if exchange is not None:
            error: type[FlightMdError] = (UnknownSymbol if exchange in {e for e, _ in self.kept}
                                          else UnknownExchange)
        elif not on:
            error = UnknownSymbol
        elif len(on) > 1:
            error = AmbiguousExchange
        else:
            return call()
        with pytest.raises(error):
            call()
        return None

    def _ring_key(self, symbol: str, exchange: str | None) -> tuple[str, str]:
        if exchange is None:
            exchange = next(e for (e, s) in sorted(self.kept) if s == symbol)
        return exchange, symbol

    @rule(exchange=st.sampled_from([*EXCHANGES, None, "kraken"]),
          symbol=st.sampled_from(SYMBOLS), limits=st.lists(st.integers(0, 120), min_size=1,
                                                           max_size=4))
    def get_latest(self, exchange: str | None, symbol: str, limits: list[int]) -> None:
        for n in limits:
            table = self._check_lookup(
                symbol, exchange,
                lambda n=n: self.buf.get_latest_sync(symbol, n, exchange=exchange))
            if table is None:
                return
            kept = self.kept[self._ring_key(symbol, exchange)]
            expected = kept[max(0, len(kept) - n):] if n else []
            assert table.schema.equals(SCHEMA)
            assert rows(table) == [row(t) for t in expected]

    @rule(exchange=st.sampled_from(EXCHANGES), symbol=st.sampled_from(SYMBOLS[:2]),
          bounds=st.lists(st.tuples(st.none() | st.integers(-1, 17) | st.integers(95, 2000),
                                    st.none() | st.integers(0, 17) | st.integers(0, 2000),
                                    st.none() | st.integers(0, 10)), max_size=4),
          edges=st.lists(st.integers(0, 15), max_size=3))
    def get_range(self, exchange: str, symbol: str,
                  bounds: list[tuple[int | None, int | None, int | None]],
                  edges: list[int]) -> None:
        # Bounds right at stored timestamps are where off-by-one errors live.
        for e in edges:
            bounds = [*bounds, (e, 1, None), (None, e, None), (e, None, None), (e, 0, 2)]
        for lo, width, latest in bounds:
            hi = None if width is None else (0 if lo is None else lo) + width
            table = self._check_lookup(
                symbol, exchange,
                lambda lo=lo, hi=hi, latest=latest: self.buf.get_range_sync(
                    symbol, lo, hi, exchange=exchange, latest=latest))
            if table is None:
                return
            expected = [t for t in self.kept[(exchange, symbol)]
                        if (lo is None or t.timestamp >= lo) and (hi is None or t.timestamp < hi)]
            if latest is not None:
                expected = expected[max(0, len(expected) - latest):] if latest else []
            assert table.schema.equals(SCHEMA)
            assert rows(table) == [row(t) for t in expected], (lo, hi, latest)

    @rule(exchange=st.sampled_from(EXCHANGES), symbol=st.sampled_from(SYMBOLS),
          columns=st.lists(st.sampled_from(SCHEMA.names), min_size=1, max_size=4, unique=True))
    def projected(self, exchange: str, symbol: str, columns: list[str]) -> None:
        if (exchange, symbol) not in self.kept:
            return
        table = self.buf.get_latest_sync(symbol, 10, exchange=exchange, columns=columns)
        assert table.schema.equals(pa.schema([SCHEMA.field(c) for c in columns]))
        kept = self.kept[(exchange, symbol)][-10:]
        assert rows(table) == [{c: getattr(t, c) for c in columns} for t in kept]

    @rule(exchange=st.sampled_from([*EXCHANGES, None]))
    def snapshot(self, exchange: str | None) -> None:
        table = self.buf.snapshot_sync(exchange)
        expected = [row(kept[-1]) for key, kept in sorted(self.kept.items())
                    if kept and (exchange is None or key[0] == exchange)]
        assert table.schema.equals(SCHEMA)
        assert rows(table) == expected

    @rule()
    def hold(self) -> None:
        if len(self.held) < 4 and self.kept:
            exchange, symbol = min(self.kept)
            table = self.buf.get_latest_sync(symbol, self.capacity, exchange=exchange)
            self.held.append((table, rows(table)))

    # -- clear --

    def _clear_model(self, keys: list[tuple[str, str]]) -> int:
        dropped = 0
        for key in keys:
            dropped += len(self.kept[key])
            self.kept[key] = []
            for follower, pending in self.pending.values():
                if (follower.exchange, follower.symbol) == key:
                    pending.clear()
        return dropped

    @rule(exchange=st.sampled_from(EXCHANGES), symbol=st.sampled_from(SYMBOLS))
    def clear_symbol(self, exchange: str, symbol: str) -> None:
        if (exchange, symbol) not in self.kept:
            with pytest.raises((UnknownSymbol, UnknownExchange)):
                self.buf.clear_sync(symbol, exchange=exchange)
            return
        expected = self._clear_model([(exchange, symbol)])
        assert self.buf.clear_sync(symbol, exchange=exchange) == expected

    @rule(exchange=st.sampled_from([*EXCHANGES, None]))
    def clear_exchange(self, exchange: str | None) -> None:
        keys = [k for k in self.kept if exchange is None or k[0] == exchange]
        if exchange is not None and not keys:
            with pytest.raises(UnknownExchange):
                self.buf.clear_sync(exchange=exchange)
            return
        expected = self._clear_model(keys)
        assert self.buf.clear_sync(exchange=exchange) == expected

    # -- live tails --

    @rule(target=followers, exchange=st.sampled_from(EXCHANGES),
          backlog=st.none() | st.integers(0, 12), max_lag=st.none() | st.integers(1, 40))
    def follow(self, exchange: str, backlog: int | None, max_lag: int | None) -> Any:
        key = (exchange, "BTC/USDT")
        if key not in self.kept:
            return None
        table, follower = self.buf.follow("BTC/USDT", exchange=exchange, backlog=backlog,
                                          max_lag=max_lag)
        kept = self.kept[key]
        expected = kept if backlog is None else (kept[max(0, len(kept) - backlog):]
                                                 if backlog else [])
        assert rows(table) == [row(t) for t in expected]
        limit = self.capacity if max_lag is None else max(1, min(max_lag, self.capacity))
        assert follower.max_lag == limit
        self.pending[id(follower)] = (follower, [])
        return follower

    @rule(follower=followers, max_rows=st.integers(1, 50))
    def read(self, follower: Follower | None, max_rows: int) -> None:
        if follower is None or id(follower) not in self.pending:
            return
        pending = self.pending[id(follower)][1]
        if len(pending) > follower.max_lag:
            # Persistent until a clear: a lagging tail never silently skips ticks.
            with pytest.raises(SlowConsumer, match="fell .* behind"):
                follower.read(0, max_rows)
            return
        table = follower.read(0, max_rows)
        if not pending:
            assert table is None
            return
        assert table is not None
        assert rows(table) == [row(t) for t in pending[:max_rows]]
        del pending[:max_rows]

    @rule(follower=consumes(followers))
    def close(self, follower: Follower | None) -> None:
        if follower is None:
            return
        follower.close()
        assert follower.read(0) is None
        self.pending.pop(id(follower), None)

    # -- invariants --

    @invariant()
    def counts_and_stats(self) -> None:
        if not hasattr(self, "buf"):
            return
        stats = {(s.exchange, s.symbol): s for s in self.buf.stats()}
        assert set(stats) == set(self.kept)
        for key, kept in self.kept.items():
            s = stats[key]
            assert s.stored == len(kept) == self.buf.count(key[1], exchange=key[0])
            assert s.appended == self.appended[key]
            assert s.last_timestamp == (kept[-1].timestamp if kept else None)
            assert s.last_receive_timestamp == (kept[-1].receive_timestamp if kept else None)
        assert len(self.buf) == sum(len(k) for k in self.kept.values())
        assert self.buf.exchanges() == sorted({e for e, _ in self.kept})


BufferModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                         deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestBufferModel = BufferModel.TestCase


@settings(max_examples=150, deadline=None)
@given(capacity=st.sampled_from([1, 2, 3, 5, 8, 64]),
       stamps=st.lists(st.integers(0, 30), max_size=200),
       reads=st.lists(st.tuples(st.integers(0, 70), st.integers(-1, 31), st.integers(0, 31)),
                      max_size=8))
def test_random_sequences_match_model(capacity: int, stamps: list[int],
                                      reads: list[tuple[int, int, int]]) -> None:
    """One symbol, random (possibly decreasing or repeated) timestamps, reads at the end."""
    buf = MarketDataBuffer(capacity)
    ticks = [mk(i, ts) for i, ts in enumerate(stamps)]
    for i, t in enumerate(ticks):
        buf.append(t)
        if i % 7 == 3:  # reads in between convert pending rows early
            buf.get_latest_sync("BTC/USDT", 1)
    kept = ticks[-capacity:] if ticks else []
    if not ticks:
        with pytest.raises(UnknownSymbol):
            buf.get_latest_sync("BTC/USDT")
        return
    for n, lo, width in reads:
        assert rows(buf.get_latest_sync("BTC/USDT", n)) == [
            row(t) for t in (kept[max(0, len(kept) - n):] if n else [])]
        hi = lo + width
        assert rows(buf.get_range_sync("BTC/USDT", lo, hi)) == [
            row(t) for t in kept if lo <= t.timestamp < hi]


# -- async facade ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_facade() -> None:
    buf, ticks = filled(30)
    buf.extend(mk(100 + i, 2000 + i, "ETH/USDT", "bybit") for i in range(5))
    assert rows(await buf.get_latest("BTC/USDT", 3)) == [row(t) for t in ticks[-3:]]
    assert rows(await buf.get_latest("BTC/USDT", 3, exchange="binance",
                                     columns=["price"])) == [{"price": t.price}
                                                             for t in ticks[-3:]]
    assert rows(await buf.get_range("BTC/USDT", 1005, 1008)) == [row(t) for t in ticks[5:8]]
    assert (await buf.get_range("BTC/USDT", 1005, 1008, columns=["timestamp"])).column_names == [
        "timestamp"]
    with pytest.raises(UnknownSymbol):
        await buf.get_latest("XRP/USDT")
    assert await buf.clear("BTC/USDT") == 30
    assert await buf.clear() == 5
    assert await buf.clear(exchange="bybit") == 0
    assert len(buf) == 0


# -- exchange selection ---------------------------------------------------------------------


@pytest.fixture
def two_exchanges() -> MarketDataBuffer:
    buf = MarketDataBuffer(100)
    buf.extend(mk(i, i, "ETH/USDT", "binance") for i in range(3))
    buf.extend(mk(10 + i, i, "ETH/USDT", "bybit") for i in range(4))
    buf.extend(mk(20 + i, i, "BTC/USDT", "bybit") for i in range(5))
    return buf


def test_exchange_selection(two_exchanges: MarketDataBuffer) -> None:
    buf = two_exchanges
    assert buf.get_latest_sync("ETH/USDT", exchange="binance").num_rows == 3
    assert buf.get_latest_sync("ETH/USDT", exchange="bybit").num_rows == 4
    # Unambiguous symbol: the exchange may be omitted.
    assert buf.get_latest_sync("BTC/USDT").column("exchange").to_pylist() == ["bybit"] * 5
    assert buf.resolve("BTC/USDT") == ("bybit", "BTC/USDT")
    assert buf.exchanges() == ["binance", "bybit"]
    assert buf.keys("bybit") == [("bybit", "BTC/USDT"), ("bybit", "ETH/USDT")]


def test_ambiguous_exchange_lists_candidates(two_exchanges: MarketDataBuffer) -> None:
    for call in (lambda: two_exchanges.get_latest_sync("ETH/USDT"),
                 lambda: two_exchanges.get_range_sync("ETH/USDT", 0, 5),
                 lambda: two_exchanges.follow("ETH/USDT"),
                 lambda: two_exchanges.count("ETH/USDT"),
                 lambda: two_exchanges.clear_sync("ETH/USDT")):
        with pytest.raises(AmbiguousExchange) as info:
            call()
        message = str(info.value)
        assert "'ETH/USDT'" in message and "binance, bybit" in message
        assert "exchange=" in message


def test_unknown_symbol_and_exchange(two_exchanges: MarketDataBuffer) -> None:
    with pytest.raises(UnknownSymbol, match=r"unknown symbol 'XRP/USDT'; buffered: "
                                            r"BTC/USDT, ETH/USDT"):
        two_exchanges.get_latest_sync("XRP/USDT")
    with pytest.raises(UnknownSymbol, match=r"unknown symbol 'XRP/USDT' on binance; "
                                            r"buffered: ETH/USDT"):
        two_exchanges.get_latest_sync("XRP/USDT", exchange="binance")
    with pytest.raises(UnknownSymbol, match="on binance"):
        two_exchanges.get_range_sync("BTC/USDT", exchange="binance")
    with pytest.raises(UnknownExchange, match=r"unknown exchange 'kraken'; buffered: "
                                              r"binance, bybit"):
        two_exchanges.get_latest_sync("ETH/USDT", exchange="kraken")
    with pytest.raises(UnknownExchange, match="'kraken'"):
        two_exchanges.clear_sync(exchange="kraken")
    with pytest.raises(UnknownSymbol, match="buffered: none"):
        MarketDataBuffer().get_latest_sync("BTC/USDT")


def test_unknown_symbol_message_is_bounded() -> None:
    buf = MarketDataBuffer(4)
    for i in range(50):
        buf.append(mk(i, i, f"S{i:02d}/USDT"))
    with pytest.raises(UnknownSymbol) as info:
        buf.get_latest_sync("XRP/USDT")
    assert "(30 more)" in str(info.value)
    assert len(str(info.value)) < 400


# -- columns --------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [
    ["price"], ["timestamp", "price"], ["symbol"], ["exchange", "price", "symbol"],
    ["receive_timestamp", "exchange", "close", "symbol", "timestamp"], list(SCHEMA.names),
    list(reversed(SCHEMA.names)),
])
def test_columns_projection(columns: list[str]) -> None:
    buf, ticks = filled(40)
    expected_schema = pa.schema([SCHEMA.field(c) for c in columns])
    for table in (buf.get_latest_sync("BTC/USDT", 5, columns=columns),
                  buf.get_range_sync("BTC/USDT", 1035, None, columns=columns),
                  buf.follow("BTC/USDT", backlog=5, columns=columns)[0]):
        assert table.schema.equals(expected_schema)
        assert rows(table) == [{c: getattr(t, c) for c in columns} for t in ticks[-5:]]
    snapshot = buf.snapshot_sync(columns=columns)
    assert snapshot.schema.equals(expected_schema)
    assert rows(snapshot) == [{c: getattr(ticks[-1], c) for c in columns}]


def test_follower_projection() -> None:
    buf, _ = filled(3)
    _, follower = buf.follow("BTC/USDT", columns=["symbol", "price"])
    buf.append(mk(9, 9))
    table = follower.read(0)
    assert table is not None and rows(table) == [{"symbol": "BTC/USDT", "price": 18.5}]


def test_a_tail_closed_on_the_thread_that_holds_its_rings_lock_does_not_deadlock() -> None:
    # The garbage collector closes an abandoned Flight tail (its generator's `finally`) on
    # whichever thread allocates; once that was the journal thread, mid-seal of that very ring
    # under its lock, and the server hung. Its close must return, the tail must count as
    # closed at once, and the ring must forget it at its next report.
    buf, _ = filled(3)
    _, follower = buf.follow("BTC/USDT")
    assert buf.tails == 1 and buf.stats()[0].followers == 1
    ring = follower._ring
    with ring.lock:
        follower.close()  # the same thread holds the (non-reentrant) lock
        assert follower.closed and buf.tails == 0
    assert follower.read(0) is None
    assert buf.stats()[0].followers == 0
    buf.append(mk(9, 9))  # the ring works on
    assert buf.get_latest_sync("BTC/USDT", 1).num_rows == 1
    follower.close()  # twice is harmless
    assert buf.tails == 0


# -- snapshot and stats ---------------------------------------------------------------------


def test_snapshot_newest_row_per_symbol(two_exchanges: MarketDataBuffer) -> None:
    buf = two_exchanges
    table = buf.snapshot_sync()
    assert table.schema.equals(SCHEMA)
    assert [(r["exchange"], r["symbol"], r["timestamp"]) for r in rows(table)] == [
        ("binance", "ETH/USDT", 2), ("bybit", "BTC/USDT", 4), ("bybit", "ETH/USDT", 3)]
    assert rows(buf.snapshot_sync("bybit"))[0]["price"] == mk(24, 4).price
    buf.clear_sync("ETH/USDT", exchange="bybit")
    assert [r["symbol"] for r in rows(buf.snapshot_sync("bybit"))] == ["BTC/USDT"]
    buf.clear_sync()
    empty = buf.snapshot_sync()
    assert empty.num_rows == 0 and empty.schema.equals(SCHEMA)
    assert MarketDataBuffer().snapshot_sync(columns=["price"]).schema.names == ["price"]


def test_stats(two_exchanges: MarketDataBuffer) -> None:
    buf = two_exchanges
    stats = buf.stats()
    assert all(isinstance(s, BufferStats) for s in stats)
    assert [(s.exchange, s.symbol, s.stored, s.appended) for s in stats] == [
        ("binance", "ETH/USDT", 3, 3), ("bybit", "BTC/USDT", 5, 5), ("bybit", "ETH/USDT", 4, 4)]
    btc = buf.stats("bybit")[0]
    assert btc.last_timestamp == 4
    assert btc.last_receive_timestamp == mk(24, 4).receive_timestamp
    assert btc.age_ms(now=btc.last_receive_timestamp + 250) == 250
    assert btc.age_ms() is not None
    buf.clear_sync("BTC/USDT")
    btc = buf.stats("bybit")[0]
    assert (btc.stored, btc.appended, btc.last_timestamp, btc.age_ms()) == (0, 5, None, None)


def test_stats_count_evicted_appends() -> None:
    buf, _ = filled(1234, capacity=100)
    (s,) = buf.stats()
    assert (s.stored, s.appended) == (100, 1234)


# -- clear -----------------------------------------------------------------------------------


def test_clear_returns_dropped_and_empties(two_exchanges: MarketDataBuffer) -> None:
    buf = two_exchanges
    assert buf.clear_sync("ETH/USDT", exchange="binance") == 3
    assert buf.get_latest_sync("ETH/USDT", exchange="binance").num_rows == 0
    assert buf.get_latest_sync("ETH/USDT", exchange="bybit").num_rows == 4
    assert buf.clear_sync(exchange="bybit") == 9
    assert len(buf) == 0
    buf.append(mk(50, 50, "ETH/USDT", "binance"))
    assert rows(buf.get_latest_sync("ETH/USDT", exchange="binance")) == [
        row(mk(50, 50, "ETH/USDT", "binance"))]
    assert buf.clear_sync() == 1


# -- zero copy ------------------------------------------------------------------------------


def test_held_tables_never_change() -> None:
    buf, _ = filled(700, capacity=500)
    latest = buf.get_latest_sync("BTC/USDT", 500)
    ranged = buf.get_range_sync("BTC/USDT", 1300, 1600)
    snap = buf.snapshot_sync()
    backlog, follower = buf.follow("BTC/USDT", backlog=None)
    buf.append(mk(700, 1700))
    tailed = follower.read(0)
    assert tailed is not None
    held = [(t, rows(t)) for t in (latest, ranged, snap, backlog, tailed)]
    for round_ in range(3):
        buf.extend(mk(1000 + round_ * 5000 + i, 5000 + i) for i in range(5000))  # 10 wraps
        buf.get_latest_sync("BTC/USDT", 3)
        buf.clear_sync()
        buf.extend(mk(99_000 + i, 1 + i) for i in range(77))
    for table, before in held:
        assert rows(table) == before


def _data_addresses(table: pa.Table, column: str = "price") -> list[tuple[int, int]]:
    out = []
    for chunk in table.column(column).chunks:
        data = chunk.buffers()[1]
        out.append((data.address, data.size))
    return out


def test_reads_share_stored_buffers() -> None:
    buf, _ = filled(5000, capacity=10_000)
    first = buf.get_latest_sync("BTC/USDT", 3000)
    second = buf.get_latest_sync("BTC/USDT", 3000)
    assert _data_addresses(first) == _data_addresses(second)
    whole = _data_addresses(buf.get_latest_sync("BTC/USDT", 10_000))
    for column in ("price", "timestamp", "bid"):
        ranges = _data_addresses(buf.get_latest_sync("BTC/USDT", 10_000), column)
        for table in (buf.get_range_sync("BTC/USDT", 2000, 4500, columns=[column]),
                      buf.get_latest_sync("BTC/USDT", 1234, columns=[column])):
            for address, _ in _data_addresses(table, column):
                assert any(lo <= address < lo + size for lo, size in ranges), column
    assert whole


def test_repeated_reads_allocate_no_copies() -> None:
    buf, _ = filled(20_000, capacity=20_000)
    buf.get_latest_sync("BTC/USDT", 20_000)  # seal anything pending first
    one_copy = 20_000 * 8 * 10
    before = pa.total_allocated_bytes()
    held = [buf.get_latest_sync("BTC/USDT", 20_000) for _ in range(50)]
    held += [buf.get_range_sync("BTC/USDT", 1000, 19_000) for _ in range(50)]
    grown = pa.total_allocated_bytes() - before
    assert grown < one_copy, f"100 reads allocated {grown} bytes; one copy is {one_copy}"
    assert sum(t.num_rows for t in held) == 50 * 20_000 + 50 * 18_000


# -- follow -----------------------------------------------------------------------------------


def test_follow_backlog_then_every_tick_once_in_order() -> None:
    buf, ticks = filled(50, capacity=10_000)
    backlog, follower = buf.follow("BTC/USDT", backlog=10)
    assert rows(backlog) == [row(t) for t in ticks[-10:]]
    assert (follower.exchange, follower.symbol) == ("binance", "BTC/USDT")
    seen: list[dict[str, Any]] = []
    appended: list[MarketTick] = []
    serial = 1000
    for burst in (1, 2, 255, 256, 257, 0, 5000, 3, 1):
        new = [mk(serial + i, serial + i) for i in range(burst)]
        serial += burst
        buf.extend(new)
        appended += new
        while (table := follower.read(0, max_rows=700)) is not None:
            assert table.num_rows <= 700
            seen += rows(table)
    assert seen == [row(t) for t in appended]


def test_follow_backlog_none_is_everything_and_zero_is_nothing() -> None:
    buf, ticks = filled(30)
    assert rows(buf.follow("BTC/USDT", backlog=None)[0]) == [row(t) for t in ticks]
    assert buf.follow("BTC/USDT")[0].num_rows == 0
    assert buf.follow("BTC/USDT", backlog=1000)[0].num_rows == 30


def _read_on_a_thread(buf: MarketDataBuffer, follower: Any) -> tuple[threading.Thread,
                                                                    dict[str, Any]]:
    """Start ``follower.read`` with an hour's timeout; return once it is waiting in the ring."""
    out: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: out.update(table=follower.read(3600.0)),
                              daemon=True)
    reader.start()
    ring = buf._rings[("binance", "BTC/USDT")]
    until(lambda: ring.waiting == 1, 10, "the read to wait for a tick")
    return reader, out


def test_follow_read_waits_for_a_tick(time_scale: float) -> None:
    """A waiting read returns as soon as a tick is appended (not at its hour's timeout)."""
    buf, _ = filled(3)
    _, follower = buf.follow("BTC/USDT")
    assert follower.read(0) is None
    reader, out = _read_on_a_thread(buf, follower)
    buf.append(mk(5, 5))
    reader.join(10 * time_scale)  # only a read that ignored the append outlasts this
    assert not reader.is_alive(), "the append did not wake the waiting read"
    assert out["table"] is not None and rows(out["table"]) == [row(mk(5, 5))]


def test_follow_close_wakes_a_waiting_read(time_scale: float) -> None:
    """close() wakes a waiting read, which returns None (not at its hour's timeout)."""
    buf, _ = filled(3)
    _, follower = buf.follow("BTC/USDT")
    reader, out = _read_on_a_thread(buf, follower)
    follower.close()
    reader.join(10 * time_scale)  # only a read that ignored the close outlasts this
    assert not reader.is_alive(), "close() did not wake the waiting read"
    assert out["table"] is None
    assert follower.closed
    buf.append(mk(9, 9))
    assert follower.read(0) is None


def test_slow_consumer_beyond_max_lag() -> None:
    buf, _ = filled(5, capacity=1000)
    _, follower = buf.follow("BTC/USDT", max_lag=10)
    buf.extend(mk(100 + i, i) for i in range(10))
    table = follower.read(0)
    assert table is not None and table.num_rows == 10
    buf.extend(mk(200 + i, i) for i in range(11))
    with pytest.raises(SlowConsumer, match=r"'BTC/USDT' on binance fell 11 ticks behind "
                                           r"\(limit 10\)"):
        follower.read(0)
    # It keeps failing rather than silently skipping ticks.
    with pytest.raises(SlowConsumer):
        follower.read(0)


def test_slow_consumer_behind_eviction() -> None:
    buf, _ = filled(5, capacity=20)
    _, follower = buf.follow("BTC/USDT", max_lag=10_000)
    assert follower.max_lag == 20
    buf.extend(mk(100 + i, i) for i in range(21))
    with pytest.raises(SlowConsumer):
        follower.read(0)


def test_clear_moves_followers_to_the_present() -> None:
    buf, _ = filled(5, capacity=50)
    _, follower = buf.follow("BTC/USDT", max_lag=10)
    buf.extend(mk(100 + i, i) for i in range(30))  # far beyond max_lag ...
    buf.clear_sync()  # ... but clear forgives it
    assert follower.read(0) is None
    buf.append(mk(500, 500))
    table = follower.read(0)
    assert table is not None and rows(table) == [row(mk(500, 500))]


def test_followers_on_other_rings_are_untouched() -> None:
    buf = MarketDataBuffer(100)
    buf.append(mk(1, 1, "BTC/USDT"))
    buf.append(mk(2, 2, "ETH/USDT"))
    _, btc = buf.follow("BTC/USDT")
    buf.extend(mk(10 + i, i, "ETH/USDT") for i in range(5))
    assert btc.read(0) is None
    buf.append(mk(3, 3, "BTC/USDT"))
    table = btc.read(0)
    assert table is not None and rows(table) == [row(mk(3, 3, "BTC/USDT"))]


# -- columnar appends (the ingestion process's hand-off) ------------------------------------


def test_append_batch_refuses_another_schema() -> None:
    buf = MarketDataBuffer(10)
    with pytest.raises(ValueError, match=r"a ticker batch must have the schema \['timestamp'"):
        buf.append_batch("binance", "BTC/USDT", pa.record_batch({"price": [1.0]}))
    buf.append_batch("binance", "BTC/USDT", _stored([]))  # empty: nothing stored, no ring
    assert buf.keys() == []


def test_small_batches_are_merged_not_kept_one_segment_each() -> None:
    buf = MarketDataBuffer(10_000)
    ticks = [mk(i, 1000 + i) for i in range(5000)]
    for t in ticks:
        buf.append_batch("binance", "BTC/USDT", _stored([t]))
    ring = buf._rings["binance", "BTC/USDT"]
    assert len(ring.segments) + len(ring.fresh) < 30  # not 5,000 one-row segments
    table = buf.get_latest_sync("BTC/USDT", 10_000)
    assert rows(table) == [row(t) for t in ticks]
    assert table.column("price").num_chunks < 30


def test_batch_appends_evict_across_batch_boundaries() -> None:
    buf = MarketDataBuffer(100)
    ticks = [mk(i, 1000 + i) for i in range(1000)]
    sizes = [1, 7, 33, 64, 99, 100, 101, 250]
    at = 0
    while at < len(ticks):
        n = sizes[at % len(sizes)]
        buf.append_batch("binance", "BTC/USDT", _stored(ticks[at:at + n]))
        at += n
        kept = ticks[max(0, min(at, len(ticks)) - 100):min(at, len(ticks))]
        assert rows(buf.get_latest_sync("BTC/USDT", 100)) == [row(t) for t in kept]
    stats = buf.stats()[0]
    assert (stats.stored, stats.appended) == (100, 1000)
    assert (stats.last_timestamp, stats.last_receive_timestamp) == (
        ticks[-1].timestamp, ticks[-1].receive_timestamp)
    ring = buf._rings["binance", "BTC/USDT"]
    held = sum(seg.batch.num_rows for seg in ring.segments) + ring.fresh_rows
    assert held < 100 + 2 * ring.seal_rows + 250  # evicted rows are freed, not all kept


def test_a_tail_reads_hand_off_pieces_without_converting_pending_rows() -> None:
    buf = MarketDataBuffer(1000)
    buf.ensure("binance", "BTC/USDT")
    _, follower = buf.follow("BTC/USDT", exchange="binance")
    ticks = [mk(i, 1000 + i) for i in range(40)]
    got = []
    for i in range(0, 40, 4):  # 10 messages of 4 rows
        run, _ = _hand_off({("binance", "BTC/USDT"): ticks[i:i + 4]})
        buf.run_appender("binance", "BTC/USDT")(run, 0, 4)
        table = follower.read(0)
        assert table is not None
        got += rows(table)
        # What the tail got is the child's batch itself (zero copy), not a conversion.
        assert _data_addresses(table) == _data_addresses(pa.Table.from_batches([run.batch()]))
    assert got == [row(t) for t in ticks]
    ring = buf._rings["binance", "BTC/USDT"]
    assert ring.pending_rows == 40  # their floats wait for one vectorised seal


def test_hand_off_runs_of_trades_keep_their_ids() -> None:
    spec = spec_for("trades")
    buf = MarketDataBuffer(100, channel="trades")
    flat = array("d")
    ids: list[str | None] = []
    for i in range(6):
        flat.extend(trade_row(1000 + i, 10.0 + i, 1.0, "buy" if i % 2 else None, 2000 + i))
        ids.append(None if i == 3 else f"t{i}")
    run = HandOff(flat.tobytes(), ids, spec.seal(flat, 6, ids).serialize().to_pybytes(), spec)
    buf.run_appender("binance", "BTC/USDT")(run, 0, 2)
    buf.run_appender("binance", "ETH/USDT")(run, 2, 4)
    assert buf.get_latest_sync("BTC/USDT", 10).column("trade_id").to_pylist() == ["t0", "t1"]
    eth = buf.get_latest_sync("ETH/USDT", 10)
    assert eth.column("trade_id").to_pylist() == ["t2", None, "t4", "t5"]
    assert eth.column("side").to_pylist() == [None, "buy", None, "buy"]
    assert buf.stats()[1].last_receive_timestamp == 2005


def test_batch_appended_rows_are_journalled_once() -> None:
    buf = MarketDataBuffer(50)
    buf.persist()
    ticks = [mk(i, 1000 + i) for i in range(300)]
    journalled = []
    for i in range(0, 300, 10):
        if i % 20:
            buf.append_batch("binance", "BTC/USDT", _stored(ticks[i:i + 10]))
        else:
            run, _ = _hand_off({("binance", "BTC/USDT"): ticks[i:i + 10]})
            buf.run_appender("binance", "BTC/USDT")(run, 0, 10)
        if i % 30 == 0:
            for _, _, first, batches in buf.take_unjournalled():
                assert first == len(journalled)
                journalled += pa.Table.from_batches(batches).to_pylist()
    for _, _, first, batches in buf.take_unjournalled():
        assert first == len(journalled)
        journalled += pa.Table.from_batches(batches).to_pylist()
    stored = [{k: v for k, v in row(t).items() if k not in ("symbol", "exchange")} for t in ticks]
    assert journalled == stored


@pytest.mark.parametrize("channel", ["ticker", "trades"])
def test_pending_rows_of_many_rings_are_journalled_once_with_their_sequence(channel: str) -> None:
    # Rings whose unjournalled rows are still pending are converted together (one batch
    # for all of them); a read between two takes, or a ring's own seal, sends a ring down
    # the per-ring path. Every row reaches the journal once, in order, with its number.
    buf = MarketDataBuffer(50, channel=channel)  # seal_rows 12: some rounds seal
    buf.persist()
    sequence = pa.field("sequence", pa.int64(), nullable=False)
    sent: dict[str, list[dict[str, Any]]] = {s: [] for s in SYMBOLS}
    got: dict[str, list[dict[str, Any]]] = {s: [] for s in SYMBOLS}
    serial = 0
    for round_ in range(12):
        for k, symbol in enumerate(SYMBOLS):
            for _ in range((round_ * 5 + k * 3) % 9):
                serial += 1
                if channel == "trades":
                    trade_id = None if serial % 7 == 0 else f"t{serial}"
                    buf.append_trade("binance", symbol, 1000 + serial, trade_id, 10.0 + serial,
                                     1.0, "buy" if serial % 2 else None, 2000 + serial)
                    sent[symbol].append({"trade_id": trade_id, "price": 10.0 + serial})
                else:
                    buf.append_row("binance", symbol, buffer_module._row(mk(serial, 1000 + serial)))
                    sent[symbol].append({"price": float(serial) * 2.0 + 0.5})
        if round_ % 4 == 3:
            buf.get_latest_sync(SYMBOLS[round_ % 3], 5)
        for _, symbol, first, batches in buf.take_unjournalled(sequence):
            assert first == len(got[symbol])
            table = pa.Table.from_batches(batches)
            assert table.schema == buf.spec.stored.append(sequence)
            assert table.column("sequence").to_pylist() == list(range(first, first + len(table)))
            got[symbol] += table.select(list(sent[symbol][0])).to_pylist()
    assert buf.take_unjournalled(sequence) == []
    assert got == sent


def test_tails_counts_open_live_tails() -> None:
    buf, _ = filled(3)
    _, first = buf.follow("BTC/USDT")
    _, second = buf.follow("BTC/USDT")
    assert buf.tails == 2
    first.close()
    first.close()  # twice: counted once
    assert buf.tails == 1
    second.close()
    assert buf.tails == 0
