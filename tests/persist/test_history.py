"""The Parquet history on real files: layout other tools read, ordered streaming scans, crash safety.

Everything here writes real Parquet on the local disk and reads it back through
:class:`~flight_md.persist.history.HistoryReader`, DuckDB and polars; crashes are real child
processes killed with SIGKILL.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shutil
import signal
import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from flight_md.persist.history import (
    DAY_MS,
    EVENTS_DIR,
    CompactionPolicy,
    HistoryReader,
    HistoryRoot,
    HistoryWriter,
    InvalidHistoryData,
    Quarantined,
    SeamPoint,
    day_of,
    plan_seam,
    quote_symbol,
)
from flight_md.schema import EVENT_SCHEMA, SCHEMA
from tests.support import ChildProcess, until

SEQ_SCHEMA = SCHEMA.append(pa.field("sequence", pa.int64(), nullable=False))
"""The ticker schema with the per-row sequence number proposed for the seam."""
T0 = int(datetime(2026, 11, 23, 22, 0, tzinfo=UTC).timestamp() * 1000)
"""Two hours before midnight UTC, so a few thousand rows 1 s apart span two days."""
SYMBOL = "BTC/USDT:USDT"
KEY = ("ticker", "binance", SYMBOL)


def ticks(timestamps: np.ndarray | list[int], *, symbol: str = SYMBOL, exchange: str = "binance",
          first_seq: int | None = None, schema: pa.Schema = SCHEMA) -> pa.Table:
    """Ticker rows at ``timestamps``; ``price`` encodes the row's index, to check identity."""
    ts = np.asarray(timestamps, dtype=np.int64)
    n = len(ts)
    price = 100.0 + np.arange(n, dtype=np.float64) + (first_seq or 0)
    cols: dict[str, pa.Array] = {
        "symbol": pa.array([symbol] * n, pa.string()),
        "timestamp": pa.array(ts),
        "price": pa.array(price),
    }
    for name in ("volume", "bid", "ask", "high", "low", "open", "close"):
        cols[name] = pa.array(price + 0.5)
    cols["exchange"] = pa.array([exchange] * n, pa.string())
    cols["receive_timestamp"] = pa.array(ts + 3)
    if first_seq is not None:
        cols["sequence"] = pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64))
        schema = SEQ_SCHEMA
    return pa.table(cols, schema=schema)


def read_all(reader: HistoryReader, *args: object, **kwargs: object) -> pa.Table:
    batches = list(reader.scan(*KEY, *args, **kwargs))  # type: ignore[arg-type]
    assert all(b.num_rows <= reader.batch_rows for b in batches)
    return pa.Table.from_batches(batches) if batches else pa.table({})


def duck(query: str) -> list[tuple[object, ...]]:
    """Rows of a DuckDB query, in-process, with no flight_md code involved."""
    relation = duckdb.sql(query)
    assert relation is not None
    return relation.fetchall()


def glob(root: Path) -> str:
    return f"{root}/history/**/*.parquet"


def partition_dir(root: Path, day: date, symbol: str = SYMBOL) -> Path:
    return root / "history" / "channel=ticker" / "exchange=binance" / f"symbol={quote_symbol(symbol)}" \
        / f"date={day.isoformat()}"


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.glob("history/**/*.parquet"))


# -- layout and other readers --------------------------------------------------------------------


def test_layout_is_hive_and_duckdb_and_polars_read_it(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path)
    a = ticks(T0 + np.arange(0, 3 * 3600, 2) * 1000)  # 22:00 -> 01:00 next day: two partitions
    b = ticks(T0 + np.arange(500) * 1000, symbol="ETH/USDT")
    written = writer.write(*KEY, a) + writer.write("ticker", "binance", "ETH/USDT", b)
    assert [w.day.isoformat() for w in written] == ["2026-11-23", "2026-11-24", "2026-11-23"]
    assert written[0].path.endswith(".parquet")
    assert "/history/channel=ticker/exchange=binance/symbol=BTC%2FUSDT%3AUSDT/date=2026-11-23/" \
        in written[0].path

    # DuckDB decodes the partition value back to the real symbol, equal to the file's column.
    rows = duck(f"""
        SELECT channel, exchange, symbol, date::VARCHAR AS date, count(*) AS n,
               min(timestamp) AS lo, max(timestamp) AS hi
        FROM read_parquet('{glob(tmp_path)}', hive_partitioning = true)
        GROUP BY ALL ORDER BY symbol, date""")
    day1_end = T0 + 2 * 3600 * 1000
    assert rows == [
        ("ticker", "binance", "BTC/USDT:USDT", "2026-11-23", 3600, T0, day1_end - 2000),
        ("ticker", "binance", "BTC/USDT:USDT", "2026-11-24", 1800, day1_end, T0 + (3 * 3600 - 2) * 1000),
        ("ticker", "binance", "ETH/USDT", "2026-11-23", 500, T0, T0 + 499_000),
    ]
    # The file's own column, read without hive partitioning, holds the same value.
    own = duck(f"""SELECT DISTINCT symbol, exchange FROM read_parquet('{glob(tmp_path)}',
                         hive_partitioning = false) ORDER BY symbol""")
    assert own == [("BTC/USDT:USDT", "binance"), ("ETH/USDT", "binance")]
    # Every row's hive date is the UTC date of its own timestamp.
    wrong = duck(f"""SELECT count(*) FROM read_parquet('{glob(tmp_path)}', hive_partitioning = true)
                           WHERE date <> CAST(to_timestamp(timestamp / 1000) AT TIME ZONE 'UTC' AS DATE)
                        """)[0]
    assert wrong == (0,)

    frame = (pl.scan_parquet(glob(tmp_path), hive_partitioning=True)
             .group_by("symbol", "date").agg(pl.len(), pl.col("price").sum()).sort("symbol", "date").collect())
    assert frame["symbol"].to_list() == ["BTC/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT"]
    assert frame["len"].to_list() == [3600, 1800, 500]
    assert frame["price"].to_list() == pytest.approx([
        float(np.sum(100.0 + np.arange(3600))), float(np.sum(100.0 + np.arange(3600, 5400))),
        float(np.sum(100.0 + np.arange(500)))])

    # Each file: every column of the schema, zstd, sorted by timestamp and saying so.
    for path in parquet_files(tmp_path):
        pf = pq.ParquetFile(path)
        assert pf.schema_arrow == SCHEMA
        group = pf.metadata.row_group(0)
        assert {group.column(i).compression for i in range(group.num_columns)} == {"ZSTD"}
        assert [c.column_index for c in group.sorting_columns] == [SCHEMA.get_field_index("timestamp")]
        ts = pf.read(columns=["timestamp"]).column(0).to_numpy()
        assert (np.diff(ts) >= 0).all()


def test_row_groups_of_about_100k_rows(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path)
    [file] = writer.write(*KEY, ticks(T0 + np.arange(250_000)))
    meta = pq.ParquetFile(file.path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100_000, 100_000, 50_000]


def test_file_uri_and_subtree_filesystem_roots(tmp_path: Path) -> None:
    data = ticks(T0 + np.arange(1000) * 1000)
    HistoryWriter(f"file://{tmp_path}/a").write(*KEY, data)
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "b"), pafs.LocalFileSystem())
    (tmp_path / "b").mkdir()
    HistoryWriter(subtree).write(*KEY, data)
    for root in (f"file://{tmp_path}/a", subtree, tmp_path / "b"):
        reader = HistoryReader(root)
        assert read_all(reader).equals(data)
        assert reader.count(*KEY) == 1000
    assert len(parquet_files(tmp_path / "a")) == len(parquet_files(tmp_path / "b")) == 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.drop_columns(["symbol"]), "a string 'symbol' column"),
    (lambda t: t.drop_columns(["timestamp"]), "a 'timestamp' column of type int64"),
    (lambda t: t.set_column(t.schema.get_field_index("symbol"), "symbol",
                            pa.array(["ETH/USDT"] * t.num_rows)), "every row must be 'BTC/USDT:USDT'"),
    (lambda t: t.set_column(t.schema.get_field_index("exchange"), "exchange",
                            pa.array([None] * t.num_rows, pa.string())), "every row must be 'binance'"),
    (lambda t: t.set_column(t.schema.get_field_index("timestamp"), "timestamp",
                            pa.array([T0, None, T0], pa.int64())), "every row needs a timestamp"),
])
def test_bad_rows_are_refused_with_a_specific_error(tmp_path: Path, change: object, message: str) -> None:
    writer = HistoryWriter(tmp_path)
    table = change(ticks([T0, T0 + 1, T0 + 2]))  # type: ignore[operator]
    with pytest.raises(InvalidHistoryData, match=message):
        writer.write(*KEY, table)
    assert parquet_files(tmp_path) == []


@pytest.mark.parametrize(("channel", "exchange", "symbol", "message"), [
    ("Ticker", "binance", SYMBOL, "invalid channel 'Ticker'"),
    ("ticker", "../etc", SYMBOL, "invalid exchange '../etc'"),
    ("ticker", "binance", "", "invalid symbol ''"),
])
def test_bad_keys_are_refused(tmp_path: Path, channel: str, exchange: str, symbol: str, message: str) -> None:
    with pytest.raises(InvalidHistoryData, match=message):
        HistoryWriter(tmp_path).write(channel, exchange, symbol, ticks([T0]))
    with pytest.raises(InvalidHistoryData, match=message):
        list(HistoryReader(tmp_path).scan(channel, exchange, symbol))


def test_generic_over_channels_any_schema_with_the_three_columns(tmp_path: Path) -> None:
    trades = pa.table({"exchange": ["bybit"] * 3, "symbol": ["SOL/USDT"] * 3, "timestamp": [T0 + 2, T0, T0 + 1],
                       "id": ["c", "a", "b"], "side": ["buy", "sell", "buy"], "amount": [1.0, 2.0, 3.0]})
    HistoryWriter(tmp_path).write("trades", "bybit", "SOL/USDT", trades)
    got = pa.Table.from_batches(list(HistoryReader(tmp_path).scan("trades", "bybit", "SOL/USDT")))
    assert got.column("id").to_pylist() == ["a", "b", "c"]
    assert got.schema == trades.schema
    rows = duck(f"SELECT channel, symbol, id FROM read_parquet('{glob(tmp_path)}', hive_partitioning=true)"
                      " ORDER BY timestamp")
    assert rows == [("trades", "SOL/USDT", "a"), ("trades", "SOL/USDT", "b"), ("trades", "SOL/USDT", "c")]


# -- reading -------------------------------------------------------------------------------------


@pytest.fixture
def several_days(tmp_path: Path) -> tuple[HistoryReader, pa.Table]:
    """Four days in eight writes, each overlapping the next a little (late rows), with sequences.

    Returns the reader and every row in (timestamp, sequence) order.
    """
    writer = HistoryWriter(tmp_path, policy=CompactionPolicy(max_files=100))
    rng = np.random.default_rng(7)
    parts = []
    seq = 0
    for i in range(8):
        start = T0 + i * 12 * 3600 * 1000
        ts = np.sort(start + rng.integers(-600_000, 12 * 3600 * 1000, 3000))  # some before the last write
        ts[10:20] = ts[10]  # equal timestamps inside a write
        table = ticks(ts, first_seq=seq)
        seq += len(ts)
        writer.write(*KEY, table)
        parts.append(table)
    everything = pa.concat_tables(parts).sort_by([("timestamp", "ascending"), ("sequence", "ascending")])
    return HistoryReader(tmp_path, batch_rows=1000), everything


def test_scan_streams_a_range_in_order_across_days_and_overlapping_files(
        several_days: tuple[HistoryReader, pa.Table]) -> None:
    reader, everything = several_days
    assert len({day_of(t) for t in everything.column("timestamp").to_pylist()}) == 5
    assert read_all(reader).equals(everything)
    ts = everything.column("timestamp").to_numpy()
    for lo, hi in [(T0 + 3600_000, T0 + 40 * 3600_000), (int(ts[123]), int(ts[123]) + 1), (None, int(ts[5000])),
                   (int(ts[-10]), None), (T0 - 10 * DAY_MS, T0 - 9 * DAY_MS)]:
        mask = np.ones(len(ts), bool)
        if lo is not None:
            mask &= ts >= lo
        if hi is not None:
            mask &= ts < hi
        want = everything.filter(pa.array(mask))
        got = read_all(reader, lo, hi)
        assert got.num_rows == want.num_rows == reader.count(*KEY, lo, hi)
        if want.num_rows:
            assert got.equals(want)
    only = read_all(reader, None, None, ["price", "timestamp"])
    assert only.column_names == ["price", "timestamp"]
    assert only.column("price").equals(everything.column("price"))
    with pytest.raises(InvalidHistoryData, match=r"invalid columns \['nope'\]"):
        read_all(reader, None, None, ["nope"])


def test_files_with_equal_timestamps_merge_in_sequence_order(tmp_path: Path) -> None:
    # Three files over the same 5 timestamps (runs of equal timestamps longer than a batch),
    # sequences interleaved between the files: the merge orders by (timestamp, sequence).
    writer = HistoryWriter(tmp_path, policy=CompactionPolicy(max_files=100))
    ts = T0 + np.repeat(np.arange(5), 40)
    parts = []
    for i in range(3):
        table = ticks(ts, first_seq=0)
        table = table.set_column(table.schema.get_field_index("sequence"), "sequence",
                                 pa.array(np.arange(200, dtype=np.int64) * 3 + i))
        writer.write(*KEY, table)
        parts.append(table)
    want = pa.concat_tables(parts).sort_by([("timestamp", "ascending"), ("sequence", "ascending")])
    reader = HistoryReader(tmp_path, batch_rows=7)
    got = read_all(reader)
    assert got.column("sequence").to_pylist() == sorted(want.column("sequence").to_pylist())
    assert got.equals(want)
    assert read_all(reader, T0 + 1, T0 + 3).equals(want.slice(120, 240))
    [done] = writer.compact(*KEY)
    assert pq.ParquetFile(done.target.path).read().equals(want)


def test_latest_reads_the_newest_rows_across_files_and_days(several_days: tuple[HistoryReader, pa.Table]) -> None:
    reader, everything = several_days
    for n in (0, 1, 7, 2999, 3001, 9000, everything.num_rows, everything.num_rows + 5):
        got = reader.latest(*KEY, n)
        want = everything.slice(max(everything.num_rows - n, 0))
        assert got.num_rows == min(n, everything.num_rows)
        if n:
            assert got.equals(want)
    assert reader.latest(*KEY, 3, ["timestamp"]).column_names == ["timestamp"]
    assert reader.latest("ticker", "binance", "XRP/USDT", 3).num_rows == 0


def test_latest_opens_only_the_newest_files(tmp_path: Path) -> None:
    root = HistoryRoot(tmp_path)
    writer = HistoryWriter(root)
    for day in range(3):
        writer.write(*KEY, ticks(T0 + day * DAY_MS + np.arange(1000) * 1000))
    oldest = parquet_files(tmp_path)[0]
    oldest.write_bytes(b"garbage: any read of this file quarantines it")
    got = HistoryReader(root).latest(*KEY, 1500)
    assert got.column("timestamp").to_pylist()[0] == T0 + DAY_MS + 500_000
    assert root.quarantine_count == 0 and oldest.exists()  # never opened
    HistoryReader(root).count(*KEY, T0 + DAY_MS)
    assert root.quarantine_count == 0
    assert HistoryReader(root).count(*KEY) == 3000  # whole files are counted from their names
    assert sum(b.num_rows for b in HistoryReader(root).scan(*KEY)) == 2000
    assert root.quarantine_count == 1


def test_bounds_for_status(several_days: tuple[HistoryReader, pa.Table]) -> None:
    reader, everything = several_days
    bounds = reader.bounds(*KEY)
    assert bounds is not None
    ts = everything.column("timestamp")
    assert (bounds.oldest_ms, bounds.newest_ms, bounds.rows) == (ts[0].as_py(), ts[-1].as_py(), everything.num_rows)
    assert bounds.bytes == sum(p.stat().st_size for p in Path(reader.root.base).glob("history/**/*.parquet"))
    assert reader.all_bounds() == [bounds]
    assert reader.bounds("ticker", "binance", "XRP/USDT") is None
    assert reader.newest(*KEY) == SeamPoint(ts[-1].as_py(), everything.num_rows - 1)


def test_a_clock_jump_lands_in_its_own_partition_and_is_found(tmp_path: Path) -> None:
    future = int(datetime(2031, 5, 2, 3, 4, tzinfo=UTC).timestamp() * 1000)
    past = int(datetime(1999, 1, 1, tzinfo=UTC).timestamp() * 1000) - 1  # 1998-12-31T23:59:59.999
    absurd = 10**15  # microseconds sent as milliseconds: year 33658, clamped to the last date
    writer = HistoryWriter(tmp_path)
    ts = [T0, T0 + 1, future, T0 + 2, past, absurd, T0 + 3]
    writer.write(*KEY, ticks(ts))
    days = sorted(p.name for p in (partition_dir(tmp_path, date(2026, 1, 1)).parent).iterdir())
    assert days == ["date=1998-12-31", "date=2026-11-23", "date=2031-05-02", "date=9999-12-31"]
    reader = HistoryReader(tmp_path)
    assert read_all(reader).column("timestamp").to_pylist() == sorted(ts)
    assert read_all(reader, future, future + 1).column("timestamp").to_pylist() == [future]
    assert read_all(reader, None, T0).column("timestamp").to_pylist() == [past]
    assert read_all(reader, future + 1).column("timestamp").to_pylist() == [absurd]
    assert reader.count(*KEY, T0, future + 1) == 5
    assert reader.latest(*KEY, 2).column("timestamp").to_pylist() == [future, absurd]
    # Written again, the same rows land in the same partitions: the layout is deterministic.
    writer.write(*KEY, ticks(ts))
    assert sorted(p.name for p in partition_dir(tmp_path, date(2026, 1, 1)).parent.iterdir()) == days


def test_events_history_lives_beside_channel_data(tmp_path: Path) -> None:
    events = pa.table({"timestamp": [T0 + 5, T0, T0 + DAY_MS], "exchange": ["binance", "*", "bybit"],
                       "kind": ["connect", "subscribe", "stale"], "symbols": [[], [SYMBOL], ["ETH/USDT"]],
                       "detail": ["", "", "no data"]}, schema=EVENT_SCHEMA)
    writer = HistoryWriter(tmp_path)
    writer.write_events(events)
    writer.write(*KEY, ticks([T0]))
    assert sorted(p.name for p in (tmp_path / EVENTS_DIR).iterdir()) == ["date=2026-11-23", "date=2026-11-24"]
    got = pa.Table.from_batches(list(HistoryReader(tmp_path).scan_events()))
    assert got.column("kind").to_pylist() == ["subscribe", "connect", "stale"]
    assert got.schema == EVENT_SCHEMA
    # Hive readers over history/ see channel data only, with one set of keys.
    assert duck(f"SELECT count(*) FROM read_parquet('{glob(tmp_path)}', hive_partitioning=true)"
                      )[0] == (1,)


# -- the seam ------------------------------------------------------------------------------------


def test_seam_by_sequence_has_no_duplicate_and_no_gap_with_equal_timestamps(tmp_path: Path) -> None:
    # 1,000 rows at 10 distinct timestamps, so equal timestamps straddle any seam.
    all_rows = ticks(T0 + np.repeat(np.arange(10), 100), first_seq=0)
    HistoryWriter(tmp_path).write(*KEY, all_rows.slice(0, 750))  # sealed: sequences 0..749
    reader = HistoryReader(tmp_path)
    for ring_first in (450, 700, 750):  # the ring holds sequences ring_first..999
        ring = all_rows.slice(ring_first)
        seam = plan_seam(SeamPoint(ring["timestamp"][0].as_py(), ring_first), reader.newest(*KEY))
        assert seam.missing == 0 and seam.read_history and seam.read_ring
        history = read_all(reader, before=seam.history_before)
        served = pa.concat_tables([history, ring])
        assert served.column("sequence").to_pylist() == list(range(1000))
        assert reader.count(*KEY, before=seam.history_before) == ring_first
        assert reader.latest(*KEY, 60, before=seam.history_before).column("sequence").to_pylist() == \
            list(range(ring_first - 60, ring_first))
    # A ring that starts after the sealed rows end: the gap is reported, not papered over.
    assert plan_seam(SeamPoint(T0 + 9, 800), reader.newest(*KEY)).missing == 50


def test_seam_plans() -> None:
    assert plan_seam(None, None).read_history is False
    only_history = plan_seam(None, SeamPoint(5, 3))
    assert (only_history.read_history, only_history.history_before, only_history.read_ring) == (True, None, False)
    only_ring = plan_seam(SeamPoint(5, 0), None)
    assert (only_ring.read_history, only_ring.read_ring, only_ring.missing) == (False, True, 0)
    fallback = plan_seam(SeamPoint(5), SeamPoint(9))
    assert (fallback.history_before, fallback.missing) == (SeamPoint(5), None)


def test_seam_by_timestamp_without_sequence_never_duplicates(tmp_path: Path) -> None:
    rows = ticks(T0 + np.repeat(np.arange(10), 10))
    HistoryWriter(tmp_path).write(*KEY, rows)
    ring = rows.slice(55)  # starts in the middle of timestamp T0 + 5
    seam = plan_seam(SeamPoint(T0 + 5), HistoryReader(tmp_path).newest(*KEY))
    history = read_all(HistoryReader(tmp_path), before=seam.history_before)
    assert history.column("timestamp").to_pylist() == [T0 + i // 10 for i in range(50)]
    assert history.num_rows + ring.num_rows == 95  # the documented loss: 5 evicted rows at T0 + 5


# -- atomic writes -------------------------------------------------------------------------------


def child_code(body: str) -> str:
    """A child script with this module's row makers, without importing the test module (and
    DuckDB, polars and pytest with it)."""
    return "\n".join([
        "import sys", "import numpy as np", "import pyarrow as pa",
        "from flight_md.persist.history import CompactionPolicy, HistoryWriter",
        "from flight_md.schema import SCHEMA",
        "SEQ_SCHEMA = SCHEMA.append(pa.field('sequence', pa.int64(), nullable=False))",
        f"T0, SYMBOL, KEY = {T0!r}, {SYMBOL!r}, {KEY!r}",
        inspect.getsource(ticks), inspect.getsource(small_writes), textwrap.dedent(body)])


WRITER_CHILD = """
writer = HistoryWriter(sys.argv[1])
print("ready", flush=True)
for i in range(1000):
    writer.write(*KEY, ticks(T0 + np.arange(400_000) + i * 400_000), compact=False)
"""


def test_a_writer_killed_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    part = partition_dir(tmp_path, date(2026, 11, 23))
    for _ in range(5):  # the kill usually lands mid-write; retry the rare one between two files
        shutil.rmtree(tmp_path / "history", ignore_errors=True)
        child = ChildProcess(["-c", child_code(WRITER_CHILD), str(tmp_path)], ready=re.compile("ready"))
        with child:
            until(lambda: part.is_dir() and any(p.suffix == ".parquet" for p in part.iterdir())
                  and any(p.name.endswith(".tmp") for p in part.iterdir()), 30, "a file written and the next begun")
            child.signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
        temps = [p for p in part.iterdir() if p.name.endswith(".tmp")]
        if temps:
            break
    assert temps, "the child was never killed mid-write"
    complete = [p for p in part.iterdir() if p.suffix == ".parquet"]
    reader = HistoryReader(tmp_path)
    assert reader.count(*KEY) == 400_000 * len(complete) == sum(b.num_rows for b in reader.scan(*KEY))
    for path in complete:
        assert pq.ParquetFile(path).metadata.num_rows == 400_000
    assert duck(f"SELECT count(*) FROM read_parquet('{glob(tmp_path)}', hive_partitioning=true)"
                      )[0] == (400_000 * len(complete),)
    report = HistoryWriter(tmp_path).recover()
    assert report.temp_files_removed == len(temps)
    assert not [p for p in part.iterdir() if p.name.endswith(".tmp")]


# -- compaction ----------------------------------------------------------------------------------


def small_writes(writer: HistoryWriter, files: int, rows: int = 500, first_seq: int = 0) -> pa.Table:
    parts = []
    for i in range(files):
        table = ticks(T0 + np.arange(rows) * 3 + i * rows, first_seq=first_seq + i * rows)  # overlapping
        writer.write(*KEY, table, compact=False)
        parts.append(table)
    return pa.concat_tables(parts).sort_by([("timestamp", "ascending"), ("sequence", "ascending")])


def test_small_files_are_compacted_into_one_sorted_file(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, policy=CompactionPolicy(max_files=4), row_group_rows=1000)
    everything = small_writes(writer, 4)
    assert len(parquet_files(tmp_path)) == 4  # not more than max_files yet
    more = ticks(T0 + np.arange(500) * 3 + 4 * 500, first_seq=2000)
    writer.write(*KEY, more)  # the fifth file: compacted after the write
    everything = pa.concat_tables([everything, more]).sort_by([("timestamp", "ascending"), ("sequence", "ascending")])
    [merged] = parquet_files(tmp_path)
    pf = pq.ParquetFile(merged)
    assert pf.metadata.num_rows == 2500
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)] == [1000, 1000, 500]
    assert pf.read().equals(everything)
    assert read_all(HistoryReader(tmp_path)).equals(everything)
    assert writer.compact(*KEY) == []  # nothing left to merge


def test_a_reader_mid_scan_is_not_disturbed_by_compaction(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, policy=CompactionPolicy(max_files=100))
    everything = small_writes(writer, 6, rows=3000)
    scan: Iterator[pa.RecordBatch] = HistoryReader(tmp_path, batch_rows=100).scan(*KEY)
    first = next(scan)
    [done] = writer.compact(*KEY)
    assert len(done.sources) == 6 and len(parquet_files(tmp_path)) == 1
    got = pa.Table.from_batches([first, *scan])
    assert got.equals(everything)


def compaction_reached(part: Path, child: ChildProcess, step: int) -> bool:
    """Step 0: the merged file is being written; 1: the marker is there; 2: sources are going."""
    names = [p.name for p in part.iterdir()]
    if "compacted" in child.output:
        return True  # the window was missed: the compaction finished
    if step == 0:
        return any(n.endswith(".tmp") for n in names)
    marker = any(n.startswith("_compaction-") for n in names)
    if step == 1:
        return marker
    return marker and sum(n.endswith(".parquet") for n in names) < 13


COMPACT_CHILD = """
writer = HistoryWriter(sys.argv[1], policy=CompactionPolicy(max_files=1000), row_group_rows=2000)
small_writes(writer, 12, rows=10_000)
print("ready", flush=True)
writer.compact(*KEY)
print("compacted", flush=True)
"""


def test_compaction_killed_at_any_point_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    seen_states: set[str] = set()
    for attempt in range(3):
        root = tmp_path / str(attempt)
        child = ChildProcess(["-c", child_code(COMPACT_CHILD), str(root)], ready=re.compile("ready"))
        with child:
            part = partition_dir(root, date(2026, 11, 23))
            # Kill at a different step each time: when the temporary file appears, when the
            # marker appears, or once the first source is gone (or, if that window was missed,
            # after the compaction finished).
            until(functools.partial(compaction_reached, part, child, attempt % 3), 30, "the compaction step")
            child.signal(signal.SIGKILL)
            child.wait(10)
        names = [p.name for p in part.iterdir()]
        seen_states.add(f"tmp={any(n.endswith('.tmp') for n in names)} "
                        f"marker={any(n.startswith('_compaction-') for n in names)} "
                        f"files={sum(n.endswith('.parquet') for n in names)}")
        want = list(range(12 * 10_000))
        reader = HistoryReader(root)
        for phase in ("before recovery", "after recovery"):
            got = pa.Table.from_batches(list(reader.scan(*KEY, columns=["sequence"])))
            assert sorted(got.column("sequence").to_pylist()) == want, phase
            assert reader.count(*KEY) == len(want), phase
            HistoryWriter(root).recover()
        names = [p.name for p in part.iterdir()]
        assert not [n for n in names if not n.endswith(".parquet")]  # no temp file, no marker
        # After recovery, external readers see every row exactly once too.
        assert duck(f"SELECT count(*), count(DISTINCT sequence) FROM read_parquet('{glob(root)}')"
                          )[0] == (len(want), len(want))
    assert len(seen_states) >= 2, seen_states


def test_both_copies_present_after_a_crash_are_read_once_and_recovery_removes_the_sources(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, policy=CompactionPolicy(max_files=100))
    everything = small_writes(writer, 3)
    part = partition_dir(tmp_path, date(2026, 11, 23))
    saved = tmp_path / "saved"
    shutil.copytree(part, saved)
    [done] = writer.compact(*KEY)
    # The state a kill between the rename and the deletes leaves: target, sources, marker.
    for source in saved.iterdir():
        shutil.copy(source, part / source.name)
    (part / "_compaction-0123abcd.json").write_text(json.dumps(
        {"version": 1, "target": Path(done.target.path).name, "sources": list(done.sources)}))
    reader = HistoryReader(tmp_path)
    assert read_all(reader).equals(everything)
    assert reader.count(*KEY) == everything.num_rows
    assert reader.latest(*KEY, 10).equals(everything.slice(everything.num_rows - 10))
    report = HistoryWriter(tmp_path).recover()
    assert (report.compactions_finished, report.duplicate_sources_removed) == (1, 3)
    assert [p.name for p in part.iterdir()] == [Path(done.target.path).name]
    assert read_all(reader).equals(everything)


def test_a_marker_whose_target_never_appeared_is_rolled_back(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, policy=CompactionPolicy(max_files=100))
    everything = small_writes(writer, 3)
    part = partition_dir(tmp_path, date(2026, 11, 23))
    sources = sorted(p.name for p in part.iterdir())
    (part / ".0123abcd.parquet.tmp").write_bytes(b"PAR1 half a file")
    (part / "_compaction-0123abcd.json").write_text(json.dumps(
        {"version": 1, "target": "1_2_3_0123abcd.parquet", "sources": sources}))
    assert read_all(HistoryReader(tmp_path)).equals(everything)
    report = writer.recover()
    assert (report.compactions_rolled_back, report.temp_files_removed) == (1, 1)
    assert sorted(p.name for p in part.iterdir()) == sources
    assert len(writer.compact(*KEY)) == 1
    assert read_all(HistoryReader(tmp_path)).equals(everything)


# -- corrupt files -------------------------------------------------------------------------------


def corrupt_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = os.urandom(2000)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "corrupt pages"])
def test_a_corrupt_file_is_quarantined_on_read(tmp_path: Path, damage: str) -> None:
    found: list[Quarantined] = []
    root = HistoryRoot(tmp_path, on_quarantine=found.append)
    writer = HistoryWriter(root, policy=CompactionPolicy(max_files=100), row_group_rows=10_000)
    good = ticks(T0 + np.arange(50_000), first_seq=0)
    bad = ticks(T0 + 10**6 + np.arange(50_000), first_seq=50_000)
    writer.write(*KEY, good)
    [bad_file] = writer.write(*KEY, bad)
    path = Path(bad_file.path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not parquet at all")
    else:
        corrupt_middle(path)
    reader = HistoryReader(root)
    got = read_all(reader)
    # Never a crash; the good file's rows all come out, and any rows of the bad one that could
    # be read before the damage are real rows, in order.
    assert got.slice(0, good.num_rows).equals(good)
    assert got.column("sequence").to_pylist() == list(range(got.num_rows))
    # Never a silent skip: moved aside, counted, reported.
    assert root.quarantine_count == 1 and [q.path for q in found] == [bad_file.path]
    assert found[0].moved_to == str(tmp_path / "quarantine" / path.relative_to(tmp_path))
    assert Path(found[0].moved_to).exists() and not path.exists()
    assert parquet_files(tmp_path) != [] and all(p.exists() for p in parquet_files(tmp_path))
    assert read_all(reader).equals(good)  # later scans no longer see it
    assert root.quarantine_count == 1


def test_a_corrupt_file_is_quarantined_on_compaction(tmp_path: Path) -> None:
    root = HistoryRoot(tmp_path)
    writer = HistoryWriter(root, policy=CompactionPolicy(max_files=100))
    everything = small_writes(writer, 4, rows=2000)
    victim = parquet_files(tmp_path)[2]
    victim_rows = pq.ParquetFile(victim).read()
    corrupt_middle(victim)
    assert writer.compact(*KEY) == []  # the corrupt source stops this round
    assert root.quarantine_count == 1 and not victim.exists()
    assert len(parquet_files(tmp_path)) == 3  # the others untouched
    [done] = writer.compact(*KEY)
    assert len(done.sources) == 3
    seqs = set(victim_rows.column("sequence").to_pylist())
    want = everything.filter(pa.array([s not in seqs for s in everything.column("sequence").to_pylist()]))
    assert read_all(HistoryReader(root)).equals(want)
