"""OHLCV bars from trades (flight_md.core.bars) against DuckDB computing the same bars.

The reference is SQL over the same Arrow table in a real DuckDB: a trade's bar is
``timestamp // interval * interval``; the open is ``arg_min(price, (timestamp, arrival))`` and
the close ``arg_max``, arrival being the row's position (the module's rule: earliest and latest
exchange time, ties broken by arrival). Prices, counts and bar starts must agree exactly;
``volume`` and ``vwap`` are float sums whose order differs between engines, so they agree to
rounding.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_md.core.bars import (
    BAR_SCHEMA,
    SLICE_ROWS,
    TRADE_COLUMNS,
    BarBuilder,
    BarInterval,
    bars,
    parse_interval,
)
from flight_md.errors import InvalidArgument, InvalidTicket

T0 = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp() * 1000)
"""A UTC midnight, so every interval's bars start on it."""

EXACT = ["bar_start", "open", "high", "low", "close", "trades"]
SUMS = ["volume", "vwap"]
RTOL = 1e-9


def trade_table(ts: Any, price: Any, amount: Any) -> pa.Table:
    """Trades as the store holds them: the bar columns plus others bars() must ignore."""
    n = len(ts)
    return pa.table({
        "symbol": pa.array(["BTC/USDT"] * n),
        "timestamp": pa.array(np.asarray(ts, dtype=np.int64)),
        "trade_id": pa.array([str(i) for i in range(n)]),
        "price": pa.array(np.asarray(price, dtype=np.float64)),
        "amount": pa.array(np.asarray(amount, dtype=np.float64)),
        "side": pa.array(["buy"] * n),
    })


def random_trades(seed: int, n: int, span_ms: int, *, shuffled: float = 0.0,
                  zero_amounts: float = 0.05, grid_ms: int = 10) -> pa.Table:
    """``n`` trades over ``span_ms`` from ``T0 + 7 ms`` in arrival order; many share a timestamp
    (on a ``grid_ms`` grid) and a price; ``shuffled`` of them arrive out of timestamp order."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + 7 + rng.integers(0, span_ms // grid_ms + 1, n) * grid_ms)
    moved = rng.random(n) < shuffled
    ts[moved] = rng.permutation(ts[moved])
    price = np.round(100 + rng.normal(0, 1, n).cumsum(), 1)
    amount = rng.exponential(0.5, n)
    amount[rng.random(n) < zero_amounts] = 0.0
    return trade_table(ts, price, amount)


def duckdb_bars(trades: pa.Table, interval: BarInterval) -> pa.Table:
    """The reference: the same bars in SQL over the same Arrow table (positive timestamps, so
    DuckDB's truncating ``//`` is a floor)."""
    arrival = pa.array(np.arange(len(trades), dtype=np.int64))
    ms = interval.ms
    con = duckdb.connect()
    con.register("trades", trades.append_column("arrival", arrival))
    result = con.sql(f"""
        SELECT timestamp // {ms} * {ms} AS bar_start,
               arg_min(price, (timestamp, arrival)) AS open,
               max(price) AS high, min(price) AS low,
               arg_max(price, (timestamp, arrival)) AS close,
               sum(amount) AS volume,
               CASE WHEN sum(amount) = 0 THEN NULL ELSE sum(price * amount) / sum(amount) END
                   AS vwap,
               count(*) AS trades
        FROM trades GROUP BY 1 ORDER BY 1""").to_arrow_table()
    con.close()
    return result.cast(BAR_SCHEMA)


def assert_same_bars(got: pa.Table, want: pa.Table) -> None:
    assert got.schema == BAR_SCHEMA
    assert got.num_rows == want.num_rows
    for name in EXACT:
        assert got[name].to_pylist() == want[name].to_pylist(), name
    for name in SUMS:
        g, w = got[name].to_pylist(), want[name].to_pylist()
        assert [v is None for v in g] == [v is None for v in w], name
        np.testing.assert_allclose([v for v in g if v is not None],
                                   [v for v in w if v is not None], rtol=RTOL, err_msg=name)


def split(table: pa.Table, cuts: list[int]) -> list[pa.RecordBatch]:
    """``table`` as record batches cut at ``cuts`` (empty batches included)."""
    whole = table.combine_chunks().to_batches()[0] if table.num_rows else None
    bounds = [0, *sorted(min(c, table.num_rows) for c in cuts), table.num_rows]
    return [whole.slice(a, b - a) if whole is not None
            else pa.RecordBatch.from_pylist([], schema=table.schema)
            for a, b in itertools.pairwise(bounds)]


def follow(batches: list[pa.RecordBatch] | list[pa.Table], interval: BarInterval) -> tuple[pa.Table, int]:
    """Every bar a BarBuilder returns over ``batches`` then close(), and its late count."""
    builder = BarBuilder(interval)
    out = [builder.add(batch) for batch in batches]
    out.append(builder.close())
    return pa.concat_tables(out), builder.late_trades


# -- intervals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ms"), [("1s", 1_000), ("1m", 60_000), ("5m", 300_000),
                                          ("15m", 900_000), ("1h", 3_600_000),
                                          ("1d", 86_400_000)])
def test_interval_lengths_and_parse(text: str, ms: int) -> None:
    interval = parse_interval(text)
    assert interval is BarInterval(text)
    assert interval == text
    assert interval.ms == ms


def test_every_interval_has_a_length() -> None:
    assert sorted(i.ms for i in BarInterval) == [1_000, 60_000, 300_000, 900_000, 3_600_000,
                                                 86_400_000]


@pytest.mark.parametrize("text", ["", "2m", "1M", "1min", " 1m", "1m ", "60s", "1w", "1D"])
def test_parse_rejects_others_and_lists_the_allowed(text: str) -> None:
    with pytest.raises(InvalidTicket) as info:
        parse_interval(text)
    assert isinstance(info.value, InvalidArgument)
    assert repr(text) in str(info.value)
    assert "1s, 1m, 5m, 15m, 1h, 1d" in str(info.value)


def test_parse_error_shortens_a_huge_value() -> None:
    with pytest.raises(InvalidTicket) as info:
        parse_interval("x" * 5000)
    assert len(str(info.value)) < 120


def test_bar_schema() -> None:
    assert BAR_SCHEMA.names == ["bar_start", "open", "high", "low", "close", "volume", "vwap",
                                "trades"]
    assert BAR_SCHEMA.field("bar_start").type == pa.int64()
    assert BAR_SCHEMA.field("trades").type == pa.int64()
    for name in ["open", "high", "low", "close", "volume", "vwap"]:
        assert BAR_SCHEMA.field(name).type == pa.float64()
    assert [f.name for f in BAR_SCHEMA if f.nullable] == ["vwap"]


# -- bars() against DuckDB ---------------------------------------------------------------------


@pytest.mark.parametrize("interval", list(BarInterval))
@pytest.mark.parametrize(("n", "span_ms", "shuffled"), [
    (5_000, 3 * 3_600_000, 0.0),        # in order, several trades a second
    (5_000, 3 * 3_600_000, 0.2),        # a fifth of them out of order
    (300, 40 * 86_400_000, 0.0),        # sparse: most 1s..1h bars are empty
    (300, 40 * 86_400_000, 1.0),        # sparse and shuffled
])
def test_matches_duckdb(interval: BarInterval, n: int, span_ms: int, shuffled: float) -> None:
    trades = random_trades(seed=n + span_ms % 997 + int(shuffled * 10), n=n, span_ms=span_ms,
                           shuffled=shuffled)
    got = bars(trades, interval)
    assert_same_bars(got, duckdb_bars(trades, interval))
    assert got["trades"].to_numpy().sum() == n
    assert (np.diff(got["bar_start"].to_numpy()) > 0).all()


@pytest.mark.parametrize("shuffled", [0.0, 0.01, 1.0])
def test_matches_duckdb_over_many_slices(shuffled: float) -> None:
    """More rows than one slice, so bars straddle slices and (shuffled) pieces are merged."""
    n = 3 * SLICE_ROWS + 123
    trades = random_trades(seed=3, n=n, span_ms=3_600_000, shuffled=shuffled)
    # 5,000-row chunks (like a ring's segments) are joined into slices; one chunk is cut.
    segments = pa.Table.from_batches(trades.to_batches(max_chunksize=5_000))
    for interval in (BarInterval.S1, BarInterval.M1):
        want = duckdb_bars(trades, interval)
        assert_same_bars(bars(trades, interval), want)
        assert_same_bars(bars(segments, interval), want)


def test_chunked_table_and_reader_match_one_batch() -> None:
    trades = random_trades(seed=11, n=20_000, span_ms=7_200_000, shuffled=0.05)
    want = bars(trades.combine_chunks().to_batches()[0], BarInterval.M1)
    chunked = pa.Table.from_batches(trades.to_batches(max_chunksize=777))
    assert chunked.column("price").num_chunks > 1
    assert_same_bars(bars(chunked, BarInterval.M1), want)
    assert_same_bars(bars(pa.RecordBatchReader.from_batches(trades.schema, chunked.to_batches()),
                          BarInterval.M1), want)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 400), shuffled=st.sampled_from([0.0, 0.1, 1.0]),
       cuts=st.lists(st.integers(0, 400), max_size=8), grid_ms=st.sampled_from([10, 1_000]),
       interval=st.sampled_from([BarInterval.S1, BarInterval.M1]))
def test_batch_splits_change_nothing(seed: int, n: int, shuffled: float, cuts: list[int],
                                     grid_ms: int, interval: BarInterval) -> None:
    """Cut anywhere (inside a bar, between equal timestamps, into empty batches): the same bars,
    the same open and close."""
    trades = random_trades(seed, n, span_ms=600_000, shuffled=shuffled, grid_ms=grid_ms)
    assert_same_bars(bars(split(trades, cuts), interval), bars(trades, interval))


# -- small cases -------------------------------------------------------------------------------


def test_empty_input() -> None:
    empty = trade_table([], [], [])
    inputs: list[Any] = [empty, pa.Table.from_batches([], schema=empty.schema), [], iter([]),
                         pa.RecordBatch.from_pylist([], schema=empty.schema)]
    for trades in inputs:
        got = bars(trades, BarInterval.M1)
        assert got.schema == BAR_SCHEMA
        assert got.num_rows == 0


def test_single_trade() -> None:
    got = bars(trade_table([T0 + 90_500], [101.5], [2.0]), BarInterval.M1)
    assert got.to_pylist() == [{"bar_start": T0 + 60_000, "open": 101.5, "high": 101.5,
                                "low": 101.5, "close": 101.5, "volume": 2.0, "vwap": 101.5,
                                "trades": 1}]


def test_out_of_order_timestamps_open_and_close_by_exchange_time() -> None:
    """Arrival order differs from exchange time: the open is the earliest trade (the first to
    arrive among equal times), the close the latest; a later bar's trade arriving in between
    changes nothing."""
    arrivals = [  # (timestamp, price)
        (T0 + 30_000, 2.0),
        (T0 + 10_000, 1.0),   # earliest time, first to arrive at it: the open
        (T0 + 65_000, 9.0),   # next bar, arrives before the rest of this one
        (T0 + 50_000, 3.0),   # latest time: the close
        (T0 + 10_000, 4.0),   # same time as the open but later
        (T0 + 20_000, 5.0),
    ]
    ts, price = zip(*arrivals, strict=True)
    got = bars(trade_table(ts, price, [1.0] * 6), BarInterval.M1).to_pylist()
    assert got[0] == {"bar_start": T0, "open": 1.0, "high": 5.0, "low": 1.0, "close": 3.0,
                      "volume": 5.0, "vwap": 3.0, "trades": 5}
    assert got[1]["bar_start"] == T0 + 60_000 and got[1]["trades"] == 1


def test_equal_timestamps_keep_arrival_order() -> None:
    got = bars(trade_table([T0 + 5] * 4, [3.0, 1.0, 4.0, 2.0], [1.0] * 4), BarInterval.S1)
    assert got.to_pylist()[0]["open"] == 3.0
    assert got.to_pylist()[0]["close"] == 2.0


@pytest.mark.parametrize("interval", list(BarInterval))
def test_bar_alignment(interval: BarInterval) -> None:
    """Bars are [start, start + interval), starts on multiples of the interval from the epoch:
    UTC midnights for 1d, whole hours for 1h."""
    ms = interval.ms
    edge = T0 + 5 * ms
    got = bars(trade_table([edge - 1, edge, edge + ms - 1, edge + ms], [1.0, 2.0, 3.0, 4.0],
                           [1.0] * 4), interval)
    assert got["bar_start"].to_pylist() == [edge - ms, edge, edge + ms]
    assert got["trades"].to_pylist() == [1, 2, 1]
    assert got["close"].to_pylist() == [1.0, 3.0, 4.0]
    for start in got["bar_start"].to_pylist():
        when = datetime.fromtimestamp(start / 1000, UTC)
        assert start % ms == 0
        if interval is BarInterval.D1:
            assert (when.hour, when.minute, when.second) == (0, 0, 0)
        if interval is BarInterval.H1:
            assert (when.minute, when.second) == (0, 0)


def test_vwap_is_null_only_when_volume_is_zero() -> None:
    trades = trade_table([T0 + 1, T0 + 2, T0 + 60_001, T0 + 60_002],
                         [10.0, 11.0, 20.0, 30.0], [0.0, 0.0, 0.0, 2.0])
    got = bars(trades, BarInterval.M1).to_pylist()
    assert got[0]["volume"] == 0.0 and got[0]["vwap"] is None and got[0]["trades"] == 2
    assert (got[0]["open"], got[0]["close"]) == (10.0, 11.0)
    assert got[1]["volume"] == 2.0 and got[1]["vwap"] == 30.0
    assert got[1]["vwap"] is not None
    assert_same_bars(bars(trades, BarInterval.M1), duckdb_bars(trades, BarInterval.M1))


def test_bad_trade_columns_are_refused() -> None:
    good = trade_table([T0], [1.0], [1.0])
    with pytest.raises(ValueError, match="no columns 'amount'; bars need one each of timestamp, "
                                         "price, amount"):
        bars(good.drop_columns(["amount"]), BarInterval.M1)
    with pytest.raises(ValueError, match="2 columns 'price'"):
        bars(good.append_column("price", pa.array([2.0])), BarInterval.M1)
    with pytest.raises(ValueError, match="column 'timestamp' is timestamp\\[ms\\]; bars need int64"):
        bars(good.set_column(1, "timestamp", pa.array([T0], pa.timestamp("ms"))), BarInterval.M1)
    with pytest.raises(ValueError, match="column 'price' holds 1 nulls"):
        bars(good.set_column(3, "price", pa.array([None], pa.float64())), BarInterval.M1)
    with pytest.raises(ValueError, match="no columns 'price'"):
        bars(good.drop_columns(["price"]).slice(0, 0), BarInterval.M1)  # checked even when empty
    with pytest.raises(ValueError, match="no columns 'price'"):
        BarBuilder(BarInterval.M1).add(good.drop_columns(["price"]))
    assert list(TRADE_COLUMNS) == ["timestamp", "price", "amount"]


# -- BarBuilder (follow=true) ------------------------------------------------------------------


def one(ts: int, price: float, amount: float = 1.0) -> pa.Table:
    return trade_table([ts], [price], [amount])


def test_builder_follow_mode() -> None:
    builder = BarBuilder(BarInterval.M1)
    assert builder.open_bar_start is None
    assert builder.add(trade_table([], [], [])).num_rows == 0
    assert builder.closed_until(T0 + 999_999).num_rows == 0
    assert builder.add(one(T0 + 1_000, 1.0)).num_rows == 0
    assert builder.add(one(T0 + 2_000, 2.0)).num_rows == 0
    assert builder.open_bar_start == T0
    assert builder.closed_until(T0 + 59_999).num_rows == 0  # the bar has not ended yet

    sent = builder.add(one(T0 + 61_000, 3.0))  # a later bar's trade closes it
    assert sent.to_pylist() == [{"bar_start": T0, "open": 1.0, "high": 2.0, "low": 1.0,
                                 "close": 2.0, "volume": 2.0, "vwap": 1.5, "trades": 2}]
    assert builder.open_bar_start == T0 + 60_000

    sent = builder.closed_until(T0 + 120_000)  # the wall clock passed its end
    assert sent["bar_start"].to_pylist() == [T0 + 60_000]
    assert builder.open_bar_start is None
    assert builder.closed_until(T0 + 999_999).num_rows == 0

    assert builder.add(one(T0 + 119_000, 4.0)).num_rows == 0  # its bar was sent: late
    assert builder.add(one(T0 + 30_000, 5.0)).num_rows == 0   # older still: late
    assert builder.late_trades == 2
    assert builder.open_bar_start is None

    assert builder.add(one(T0 + 125_000, 6.0)).num_rows == 0
    assert builder.add(one(T0 + 121_000, 7.0)).num_rows == 0  # same open bar, earlier time
    last = builder.close().to_pylist()
    assert last == [{"bar_start": T0 + 120_000, "open": 7.0, "high": 7.0, "low": 6.0,
                     "close": 6.0, "volume": 2.0, "vwap": 6.5, "trades": 2}]
    assert builder.close().num_rows == 0
    with pytest.raises(RuntimeError, match="closed"):
        builder.add(one(T0 + 200_000, 1.0))


def test_builder_equal_timestamps_one_trade_per_batch() -> None:
    """A live tail delivers one trade at a time, many in the same millisecond: the open is the
    first to arrive, the close the last, even when the earliest time arrives mid-bar."""
    builder = BarBuilder(BarInterval.S1)
    for ts, price in [(T0 + 5, 3.0), (T0 + 5, 1.0), (T0 + 2, 8.0), (T0 + 2, 9.0), (T0 + 7, 4.0),
                      (T0 + 7, 2.0), (T0 + 6, 5.0)]:
        assert builder.add(one(ts, price)).num_rows == 0
    assert builder.close().to_pylist() == [{"bar_start": T0, "open": 8.0, "high": 9.0,
                                            "low": 1.0, "close": 2.0, "volume": 7.0,
                                            "vwap": 32.0 / 7, "trades": 7}]
    assert builder.late_trades == 0


def test_builder_late_trade_after_a_later_bar_arrived() -> None:
    builder = BarBuilder(BarInterval.M1)
    batch = trade_table([T0 + 1, T0 + 60_001, T0 + 2, T0 + 120_001],
                        [1.0, 2.0, 3.0, 4.0], [1.0] * 4)
    sent = builder.add(batch)  # one batch: lateness is per trade, not per batch
    assert sent["bar_start"].to_pylist() == [T0, T0 + 60_000]
    assert sent["trades"].to_pylist() == [1, 1]
    assert builder.late_trades == 1
    assert builder.close()["bar_start"].to_pylist() == [T0 + 120_000]


def test_builder_in_order_equals_bars() -> None:
    trades = random_trades(seed=5, n=2 * SLICE_ROWS + 17, span_ms=1_800_000)
    for interval in (BarInterval.S1, BarInterval.M1, BarInterval.D1):
        want = bars(trades, interval)
        got, late = follow(split(trades, [1, 999, 40_000, 40_000, SLICE_ROWS + 5]), interval)
        assert late == 0
        assert_same_bars(got, want)
        # A backlog handed over at once, as a ring's 5,000-row segments (joined into slices).
        got, late = follow([pa.Table.from_batches(trades.to_batches(max_chunksize=5_000))],
                           interval)
        assert late == 0
        assert_same_bars(got, want)


def on_time_reference(trades: pa.Table, interval: BarInterval) -> tuple[pa.Table, int]:
    """The late rule, one trade at a time: drop a trade whose bar is before the newest bar of
    the trades before it; bars() of the rest."""
    newest = None
    keep = []
    for ts in trades["timestamp"].to_pylist():
        bar = ts // interval.ms
        keep.append(newest is None or bar >= newest)
        newest = bar if newest is None else max(newest, bar)
    kept = trades.filter(pa.array(keep))
    return bars(kept, interval), trades.num_rows - kept.num_rows


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 300), shuffled=st.sampled_from([0.0, 0.05, 0.5]),
       cuts=st.lists(st.integers(0, 300), max_size=8), grid_ms=st.sampled_from([10, 1_000]))
def test_builder_any_split_same_bars_and_late_count(seed: int, n: int, shuffled: float,
                                                    cuts: list[int], grid_ms: int) -> None:
    trades = random_trades(seed, n, span_ms=300_000, shuffled=shuffled, grid_ms=grid_ms)
    want, want_late = on_time_reference(trades, BarInterval.S1)
    got, late = follow(split(trades, cuts), BarInterval.S1)
    assert late == want_late
    assert_same_bars(got, want)
