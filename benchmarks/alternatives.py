"""What a user would pick instead: DuckDB in memory, and a pandas DataFrame grown per tick.

The same ticks go into each store; the same questions are asked of each: the newest 100
ticks of one symbol, and the ticks of one symbol in a time window (1,000 ticks wide).
flight_md's figures are its in-process API (``append``, ``get_latest_sync``,
``get_range_sync``); the Flight round trips are in the latency section.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from benchmarks import ticks
from benchmarks.report import Section, Table, median, ratio, show
from benchmarks.settings import Settings
from flight_md.buffer import MarketDataBuffer
from flight_md.schema import SCHEMA, MarketTick

__all__ = ["measure"]

RANGE_TICKS = 1_000
_COLUMNS = ", ".join(f"{f.name} {'VARCHAR' if pa.types.is_string(f.type) else 'BIGINT' if pa.types.is_integer(f.type) else 'DOUBLE'}"
                     for f in SCHEMA)


def _per_call_us(call: Callable[[], Any], count: int, budget_s: float = 1.0) -> float:
    """Median microseconds of ``count`` calls (fewer, at least 5, past ``budget_s``)."""
    out: list[float] = []
    clock = time.perf_counter_ns
    deadline = clock() + budget_s * 1e9
    while len(out) < count and (len(out) < 5 or clock() < deadline):
        start = clock()
        call()
        out.append((clock() - start) / 1000)
    return median(out)


def _rows(settings: Settings) -> list[tuple[Any, ...]]:
    names = ticks.symbols(settings.alt_symbols)
    return [(t.symbol, t.timestamp, t.price, t.volume, t.bid, t.ask, t.high, t.low, t.open,
             t.close, t.exchange, t.receive_timestamp)
            for t in ticks.ticks(names, settings.alt_ticks)]


@dataclass(frozen=True, slots=True)
class _Query:
    """The questions asked of every store."""

    symbol: str
    lo: int
    hi: int
    count: int


def _flight_md(rows: list[tuple[Any, ...]], capacity: int, q: _Query
               ) -> tuple[float, float, float]:
    """(append µs/tick, latest-100 µs, range µs)."""
    tick_objs = [MarketTick(*r) for r in rows]
    buffer = MarketDataBuffer(capacity)
    gc.collect()
    start = time.perf_counter()
    for tick in tick_objs:
        buffer.append(tick)
    append = (time.perf_counter() - start) / len(rows) * 1e6
    latest = _per_call_us(lambda: buffer.get_latest_sync(q.symbol, 100), q.count)
    rng = _per_call_us(lambda: buffer.get_range_sync(q.symbol, q.lo, q.hi), q.count)
    return append, latest, rng


def _duckdb(rows: list[tuple[Any, ...]], row_inserts: int, q: _Query
            ) -> tuple[float, float, float, float]:
    """(INSERT µs/tick, batched insert µs/tick, latest-100 µs, range µs)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute(f"CREATE TABLE ticks ({_COLUMNS})")
        sample = rows[:row_inserts]
        insert = f"INSERT INTO ticks VALUES ({', '.join('?' * len(SCHEMA))})"
        start = time.perf_counter()
        for row in sample:
            con.execute(insert, row)
        per_row = (time.perf_counter() - start) / len(sample) * 1e6
        con.execute("DELETE FROM ticks")
        start = time.perf_counter()
        for i in range(0, len(rows), 1000):
            batch = pa.Table.from_pylist(
                [dict(zip(SCHEMA.names, r)) for r in rows[i:i + 1000]], schema=SCHEMA)
            con.register("batch", batch)
            con.execute("INSERT INTO ticks SELECT * FROM batch")
            con.unregister("batch")
        batched = (time.perf_counter() - start) / len(rows) * 1e6
        latest_sql = "SELECT * FROM ticks WHERE symbol = ? ORDER BY timestamp DESC LIMIT 100"
        range_sql = "SELECT * FROM ticks WHERE symbol = ? AND timestamp >= ? AND timestamp < ?"
        latest = _per_call_us(
            lambda: con.sql(latest_sql, params=[q.symbol]).to_arrow_table(), q.count)
        rng = _per_call_us(
            lambda: con.sql(range_sql, params=[q.symbol, q.lo, q.hi]).to_arrow_table(), q.count)
    finally:
        con.close()
    return per_row, batched, latest, rng


def _pandas(rows: list[tuple[Any, ...]], grow_ticks: int, q: _Query
            ) -> tuple[float, float, float]:
    """(grow-per-tick µs/tick, latest-100 µs, range µs)."""
    import pandas as pd

    df = pd.DataFrame({f.name: pd.Series(dtype="object" if pa.types.is_string(f.type)
                                         else "int64" if pa.types.is_integer(f.type)
                                         else "float64") for f in SCHEMA})
    sample = rows[:grow_ticks]
    start = time.perf_counter()
    for row in sample:
        df.loc[len(df)] = row
    grow = (time.perf_counter() - start) / len(sample) * 1e6
    full = pd.DataFrame.from_records(rows, columns=SCHEMA.names)
    count = max(3, q.count // 10)
    latest = _per_call_us(lambda: full[full.symbol == q.symbol].nlargest(100, "timestamp"),
                          count)
    rng = _per_call_us(lambda: full[(full.symbol == q.symbol) & (full.timestamp >= q.lo)
                                    & (full.timestamp < q.hi)], count)
    return grow, latest, rng


def measure(settings: Settings) -> Section:
    """Insert cost per tick and query latency of flight_md, DuckDB and pandas."""
    total = settings.alt_symbols * settings.alt_ticks
    section = Section(
        "alternatives", "Alternatives: DuckDB and pandas",
        f"""
{total:,} ticks ({settings.alt_symbols} symbols x {settings.alt_ticks:,}, round-robin) go into
each store. **flight_md**: `MarketDataBuffer(buffer_size={settings.alt_ticks:,})`, `append()` per
tick, `get_latest_sync(symbol, 100)` and `get_range_sync(symbol, start, end)` in-process.
**DuckDB** (in-memory): one `INSERT INTO ticks VALUES (?, ...)` per tick (first
{settings.alt_row_inserts:,} ticks), or per 1,000-tick Arrow batch (`INSERT INTO ticks SELECT *
FROM batch`); queries `... WHERE symbol = ? ORDER BY timestamp DESC LIMIT 100` and
`... WHERE symbol = ? AND timestamp >= ? AND timestamp < ?` fetched as Arrow. **pandas**: a
DataFrame grown with `df.loc[len(df)] = row` per tick up to {settings.alt_pandas_ticks:,} rows;
queries `df[df.symbol == s].nlargest(100, "timestamp")` and a boolean-mask range on a frame of
all {total:,} ticks. Ranges are {RANGE_TICKS:,} ticks of one symbol wide. Query figures are
medians of up to {settings.alt_queries} calls (at most about a second's worth) per repetition, medians over
{min(settings.repetitions, 3)} repetitions. Ratios are flight_md / the alternative, as everywhere in this report (below 1: flight_md is faster).
""")
    rows = _rows(settings)
    symbol = rows[0][0]
    lo = ticks.START_MS + settings.alt_ticks // 3
    hi = lo + min(RANGE_TICKS, settings.alt_ticks // 3)

    query = _Query(symbol, lo, hi, settings.alt_queries)
    fm_append, fm_latest, fm_range = [], [], []
    db_row, db_batch, db_latest, db_range = [], [], [], []
    pd_append, pd_latest, pd_range = [], [], []
    repetitions = min(settings.repetitions, 3)  # DuckDB and pandas inserts take seconds each
    for _ in range(repetitions):
        a, lat, rg = _flight_md(rows, settings.alt_ticks, query)
        fm_append.append(a)
        fm_latest.append(lat)
        fm_range.append(rg)
        r, b, lat, rg = _duckdb(rows, settings.alt_row_inserts, query)
        db_row.append(r)
        db_batch.append(b)
        db_latest.append(lat)
        db_range.append(rg)
        a, lat, rg = _pandas(rows, settings.alt_pandas_ticks, query)
        pd_append.append(a)
        pd_latest.append(lat)
        pd_range.append(rg)

    append = median(fm_append)
    latest = median(fm_latest)
    rng = median(fm_range)
    table = Table(("Store", "Insert µs/tick", "Latest 100 µs", "Range µs",
                   "flight_md / it, insert", "flight_md / it, latest", "flight_md / it, range"))
    table.add("flight_md (append, in-process reads)", show(append, "µs"), show(latest, "µs"),
              show(rng, "µs"), "1x", "1x", "1x")
    for label, ins, lat, rg in (
            ("DuckDB, INSERT per tick", median(db_row), median(db_latest), median(db_range)),
            ("DuckDB, Arrow batch of 1,000", median(db_batch), median(db_latest),
             median(db_range)),
            ("pandas, df.loc[len(df)] = row", median(pd_append), median(pd_latest),
             median(pd_range))):
        table.add(label, show(ins, "µs"), show(lat, "µs"), show(rg, "µs"),
                  show(ratio(append, ins), "x"), show(ratio(latest, lat), "x"),
                  show(ratio(rng, rg), "x"))
    section.tables.append(table)
    section.notes += [
        ("The DuckDB per-1,000 batch figure includes building the Arrow batch from Python rows; "
         "it needs a writer that batches, which a live feed does not give for free (it delays "
         "every tick by up to the batch interval)."),
        (f"pandas' per-tick append grows with the frame; the figure is the mean up to "
         f"{settings.alt_pandas_ticks:,} rows."),
    ]
    return section
