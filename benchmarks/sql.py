"""Flight SQL through the real ADBC driver (issue 14): three queries, each beside its baseline.

Every figure here is measured in one run, the SQL path and its baseline alternating
repetition by repetition against the same server process, so machine noise falls on both.
The client is this process (the ADBC Flight SQL driver, ``adbc_driver_flightsql.dbapi``, and
a plain ``pyarrow.flight`` client); the server is a real
:class:`~flight_md.service.FlightMarketDataServer` on ``grpc://127.0.0.1:0`` in a child
process (:func:`_server_child`), whose Flight SQL frontend is the one the product serves.

Latest 100 ticks
    A ticker store of :attr:`SqlSizes.ticker_symbols` symbols, each ring holding
    :attr:`SqlSizes.ticker_rows` ticks (filled through the ring's restore path). ADBC runs
    :data:`LATEST_SQL` (connection opened once, outside the timing; each call a
    ``cursor.execute`` and ``fetch_arrow_table``) beside the native ``BTC/USDT?latest=100``
    DoGet. What the client can see of the SQL path's stages is shown beside it: the same
    statement by hand through pyarrow (``GetFlightInfo`` with a ``CommandStatementQuery``,
    then ``DoGet`` of its ticket), each RPC timed apart. Both answers are checked equal first.

1 M-row pull
    One symbol's ring of :attr:`SqlSizes.bulk_rows` ticks: :data:`BULK_SQL` through ADBC
    beside the native range pull ``BTC/USDT?start=0`` (every row); MB/s = Arrow bytes
    received (``Table.nbytes``, 10^6 bytes per MB) / wall time.

1-minute bars over the history
    :attr:`SqlSizes.bars_trades` trades of one symbol over one UTC day written to a data
    dir's Parquet history by :class:`~flight_md.persist.history.HistoryWriter` (this
    process), served by a server with a real :class:`~flight_md.persist.store.Persistence`
    opened over that data dir (which refills the trades ring with the newest rows, so the
    ``bars_1m`` view reads ring and history). ADBC runs :data:`BARS_SQL`; the baseline is
    DuckDB in this process over the same Parquet files (``read_parquet`` + ``GROUP BY``
    minute with ``arg_min``/``arg_max``). Both answers are checked equal before timing.

Run as a child: ``python -m benchmarks.sql server --kind ticker|history ...``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import flight

from benchmarks import ticks
from benchmarks.process import Child, serve
from benchmarks.report import Goal, Section, Table, median, percentile, ratio, run_parts, show
from benchmarks.settings import Settings

__all__ = ["BARS_SQL", "BULK_SQL", "LATEST_SQL", "SqlSizes", "baseline_bars_sql",
           "differences", "history_chunk", "measure", "sizes"]

GOAL_LATEST_RATIO = 5.0
GOAL_BULK_RATIO = 0.7
GOAL_BARS_RATIO = 1.5
VENUE = "binance"
SYMBOL = "BTC/USDT"
LATEST = 100
DAY_MS = 86_400_000
BARS_RING = 10_000
"""Ring capacity of the bars server: Persistence.open() refills it with the newest trades."""
LATEST_SQL = (f"SELECT * FROM ticker WHERE symbol='{SYMBOL}' ORDER BY timestamp DESC "
              f"LIMIT {LATEST}")
BULK_SQL = f"SELECT * FROM ticker WHERE symbol='{SYMBOL}'"
BARS_SQL = (f"SELECT * FROM bars_1m WHERE exchange='{VENUE}' AND symbol='{SYMBOL}' "
            "ORDER BY bar_start")
BAR_EXACT = ("bar_start", "open", "high", "low", "close", "trades")
"""Bar columns both answers must hold exactly; volume and vwap are sums in another order."""
BAR_CLOSE = ("volume", "vwap")


def baseline_bars_sql(files: str, *, tie_break: bool = False) -> str:
    """The baseline's 1m bars over the Parquet ``files`` (a glob), the query an analyst
    would write with DuckDB: the same columns as ``bars_1m``, open and close by timestamp.

    ``tie_break``: open and close as ``bars_1m`` orders them, by ``(timestamp,
    receive_timestamp)`` (a struct key, about twice the work of a scalar one in DuckDB), to
    show what the view's semantics cost apart from the server's engine."""
    key = "(timestamp, receive_timestamp)" if tie_break else "timestamp"
    return f"""
SELECT exchange, symbol, (timestamp // 60000) * 60000 AS bar_start,
       arg_min(price, {key}) AS open, max(price) AS high, min(price) AS low,
       arg_max(price, {key}) AS close, sum(amount) AS volume,
       sum(price * amount) / sum(amount) AS vwap, count(*) AS trades
FROM read_parquet('{files}')
WHERE exchange = '{VENUE}' AND symbol = '{SYMBOL}'
GROUP BY exchange, symbol, bar_start ORDER BY bar_start
"""


@dataclass(frozen=True, slots=True)
class SqlSizes:
    """This section's sizes (kept here: :class:`~benchmarks.settings.Settings` is shared).

    Attributes:
        ticker_symbols: Symbols of the latest-100 store.
        ticker_rows: Ticks in each of their rings.
        latest_calls: Calls of each path per repetition of the latest-100 figures.
        repetitions: Repetitions of every timed figure (medians).
        bulk_rows: Rows of the one-symbol ring of the pull.
        bars_trades: Trades in the Parquet history of the bars query.
        write_chunk: Trades per ``HistoryWriter.write`` while building that history.
    """

    ticker_symbols: int
    ticker_rows: int
    latest_calls: int
    repetitions: int
    bulk_rows: int
    bars_trades: int
    write_chunk: int


FULL_SIZES = SqlSizes(ticker_symbols=20, ticker_rows=10_000, latest_calls=40, repetitions=5,
                      bulk_rows=1_000_000, bars_trades=10_000_000, write_chunk=1_000_000)
SMOKE_SIZES = SqlSizes(ticker_symbols=3, ticker_rows=1_000, latest_calls=5, repetitions=2,
                       bulk_rows=20_000, bars_trades=100_000, write_chunk=40_000)


def sizes(settings: Settings) -> SqlSizes:
    """The sizes of this section for ``settings`` (full or smoke)."""
    return SMOKE_SIZES if settings.smoke else FULL_SIZES


# -- data ------------------------------------------------------------------------------------


def _ticker_table(rows: int, seed: int) -> pa.Table:
    """``rows`` ticks of one symbol in the ticker ring's numeric columns (restore's input)."""
    from benchmarks.persist import ticker_columns
    from flight_md.schema import NUMERIC_SCHEMA

    columns = ticker_columns(rows, seed=seed, start_ms=ticks.START_MS, base=100.0 + seed)
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in NUMERIC_SCHEMA],
                                schema=NUMERIC_SCHEMA)


def history_chunk(first: int, count: int, total: int, seed: int = 11) -> pa.Table:
    """Trades ``first .. first + count`` of ``total`` spread evenly over the UTC day
    :data:`benchmarks.ticks.START_MS` starts, in the trades history's columns (the channel's
    schema and ``sequence``); the same rows whatever the chunking, except the random walk of
    the prices, which each chunk starts afresh (the baseline reads the same files)."""
    from flight_md.core.channels import spec_for
    from flight_md.persist.store import history_schema

    schema = history_schema(spec_for("trades").schema)
    rng = np.random.default_rng(seed + first)
    index = np.arange(first, first + count, dtype=np.int64)
    timestamps = ticks.START_MS + (index * DAY_MS) // max(total, 1)
    price = 60_000.0 + np.cumsum(rng.normal(0.0, 0.5, count))
    values: dict[str, Any] = {
        "symbol": pa.array([SYMBOL]).take(np.zeros(count, dtype=np.int64)),
        "exchange": pa.array([VENUE]).take(np.zeros(count, dtype=np.int64)),
        "timestamp": timestamps,
        "trade_id": pa.array((index + 1_000_000_000).astype(str)),
        "price": price,
        "amount": rng.exponential(0.05, count),
        "side": pa.array(np.where(rng.random(count) < 0.5, "buy", "sell")),
        "receive_timestamp": timestamps + 5,
        "sequence": index,
    }
    return pa.Table.from_arrays([pa.array(values[f.name], type=f.type)
                                 if isinstance(values[f.name], np.ndarray)
                                 else values[f.name].cast(f.type) for f in schema],
                                schema=schema)


def _write_history(data_dir: Path, size: SqlSizes) -> float:
    """Write the bars query's trades into ``data_dir``'s Parquet history; seconds taken."""
    from flight_md.persist.datadir import DataDir
    from flight_md.persist.history import HistoryWriter

    DataDir.open(data_dir).close()
    writer = HistoryWriter(data_dir)
    began = time.perf_counter()
    total = size.bars_trades
    for first in range(0, total, size.write_chunk):
        writer.write("trades", VENUE, SYMBOL,
                     history_chunk(first, min(size.write_chunk, total - first), total))
    return time.perf_counter() - began


# -- answers compared --------------------------------------------------------------------------


def differences(ours: pa.Table, theirs: pa.Table, exact: Sequence[str],
                close: Sequence[str] = (), rel: float = 1e-9) -> list[str]:
    """Why two answers are not the same (empty: they are): the row counts, then each column
    of ``exact`` that differs in any row, then each of ``close`` off by more than ``rel``
    (relative) in some row. Values are compared as float64 where they are numbers, row by
    row in the order given."""
    if ours.num_rows != theirs.num_rows:
        return [f"{ours.num_rows:,} rows vs {theirs.num_rows:,}"]
    out = []
    for name in (*exact, *close):
        for table in (ours, theirs):
            if name not in table.column_names:
                return [f"no column {name!r}"]
        a, b = ours.column(name), theirs.column(name)
        if pa.types.is_integer(a.type) or pa.types.is_floating(a.type):
            a, b = a.cast(pa.float64()), b.cast(pa.float64())
        if not ours.num_rows:
            continue
        if name in exact:
            same = pc.all(pc.fill_null(pc.equal(a, b), False)).as_py()
            if not same or a.null_count != b.null_count:
                out.append(f"{name} differs")
        else:
            worst = pc.max(pc.abs(pc.divide(pc.subtract(a, b), b))).as_py()
            if worst is None or worst > rel:
                out.append(f"{name} differs (relative {worst})")
    return out


def _check(what: str, problems: list[str]) -> None:
    if problems:
        raise RuntimeError(f"{what}: the answers differ: {'; '.join(problems)}")


# -- the server (child) ------------------------------------------------------------------------


def _server_child(args: argparse.Namespace) -> None:
    from flight_md.buffer import MarketDataBuffer, Store
    from flight_md.events import EventLog
    from flight_md.service import FlightMarketDataServer

    persistence: Any = None
    events = EventLog()
    if args.kind == "ticker":
        buffer = MarketDataBuffer(args.rows)
        for seed, name in enumerate(ticks.symbols(args.symbols)):
            buffer.restore(VENUE, name, _ticker_table(args.rows, seed), next_seq=args.rows)
        store = Store(args.rows, buffers={"ticker": buffer})
    else:
        from flight_md.persist.retention import RetentionPolicy
        from flight_md.persist.store import PersistConfig, Persistence

        store = Store(args.rows)
        # The trades are dated 2026-01-01: the default retention would remove them.
        persistence = Persistence(PersistConfig(Path(args.data_dir),
                                                retention=RetentionPolicy(None, None)),
                                  store, events).open()
    server = FlightMarketDataServer("grpc://127.0.0.1:0", store=store, events=events,
                                    persistence=persistence)
    ring = sum(len(b) for b in store.buffers())

    def stop() -> None:
        server.shutdown()
        if persistence is not None:
            persistence.close()

    serve({"location": f"grpc://127.0.0.1:{server.port}", "ring_rows": ring}, {},
          args.max_seconds, on_exit=stop)


def _server(kind: str, *args: str) -> Child:
    return Child("benchmarks.sql", "server", "--kind", kind, *args, name=f"flight_md-sql-{kind}",
                 start_timeout=300.0)


# -- clients -----------------------------------------------------------------------------------


def _adbc(location: str) -> Any:
    from adbc_driver_flightsql import dbapi

    return dbapi.connect(location, autocommit=True)


def _adbc_query(cursor: Any, sql: str) -> pa.Table:
    cursor.execute(sql)
    table: pa.Table = cursor.fetch_arrow_table()
    return table


def _statement(sql: str) -> flight.FlightDescriptor:
    from flight_md.sql import flight_sql_pb2 as pb
    from flight_md.sql.protocol import pack

    return flight.FlightDescriptor.for_command(pack(pb.CommandStatementQuery(query=sql)))


def _by_hand(client: flight.FlightClient, descriptor: flight.FlightDescriptor) -> tuple[float, float]:
    """Microseconds of the Flight SQL statement's GetFlightInfo, then of its DoGet."""
    clock = time.perf_counter_ns
    start = clock()
    info = client.get_flight_info(descriptor)
    planned = clock()
    client.do_get(info.endpoints[0].ticket).read_all()
    return (planned - start) / 1e3, (clock() - planned) / 1e3


def _timed_us(call: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e3


# -- latest 100 --------------------------------------------------------------------------------


def _latest(settings: Settings, section: Section) -> None:
    size = sizes(settings)
    ticket = flight.Ticket(f"{SYMBOL}?latest={LATEST}".encode())
    descriptor = _statement(LATEST_SQL)
    adbc_us: list[float] = []
    native_us: list[float] = []
    info_us: list[float] = []
    get_us: list[float] = []
    with ExitStack() as stack:
        server = stack.enter_context(_server("ticker", "--symbols", str(size.ticker_symbols),
                                             "--rows", str(size.ticker_rows)))
        location = server.hello["location"]
        client = stack.enter_context(closing(flight.connect(location)))
        conn = stack.enter_context(closing(_adbc(location)))
        cursor = stack.enter_context(closing(conn.cursor()))
        ours = _adbc_query(cursor, LATEST_SQL)
        native = client.do_get(ticket).read_all()
        _check("latest 100", differences(
            ours.sort_by("timestamp"), native, native.column_names) + (
            [] if ours.column_names == native.column_names else
            [f"columns {ours.column_names} vs {native.column_names}"]))
        _by_hand(client, descriptor)  # warm-up, as the two calls above were
        for rep in range(size.repetitions):
            order = ("adbc", "hand", "native") if rep % 2 == 0 else ("native", "hand", "adbc")
            for which in order:
                for _ in range(size.latest_calls):
                    if which == "adbc":
                        adbc_us.append(_timed_us(partial(_adbc_query, cursor, LATEST_SQL)))
                    elif which == "native":
                        native_us.append(_timed_us(lambda: client.do_get(ticket).read_all()))
                    else:
                        info, get = _by_hand(client, descriptor)
                        info_us.append(info)
                        get_us.append(get)
    total_us = [a + b for a, b in zip(info_us, get_us, strict=True)]
    base = median(native_us)
    out = Table(("Path", "RPCs", "Calls", "p50 (µs)", "p90 (µs)", "Ratio to native (p50)"))
    out.add("ADBC `cursor.execute` + `fetch_arrow_table`", "GetFlightInfo + DoGet",
            f"{len(adbc_us):,}", show(median(adbc_us)), show(percentile(adbc_us, 90)),
            show(ratio(median(adbc_us), base), "x"))
    out.add("Flight SQL by hand (pyarrow), whole", "GetFlightInfo + DoGet", f"{len(total_us):,}",
            show(median(total_us)), show(percentile(total_us, 90)),
            show(ratio(median(total_us), base), "x"))
    out.add("... of which GetFlightInfo (parse, check, plan: schema)", "1", f"{len(info_us):,}",
            show(median(info_us)), show(percentile(info_us, 90)),
            show(ratio(median(info_us), base), "x"))
    out.add("... of which DoGet (snapshot, run, stream)", "1", f"{len(get_us):,}",
            show(median(get_us)), show(percentile(get_us, 90)),
            show(ratio(median(get_us), base), "x"))
    out.add(f"native DoGet `{SYMBOL}?latest={LATEST}` (baseline)", "DoGet", f"{len(native_us):,}",
            show(base), show(percentile(native_us, 90)), "1x")
    section.tables.append(out)
    section.goals.append(Goal.judge(
        "sql.latest", f"ADBC `ORDER BY timestamp DESC LIMIT {LATEST}` vs native latest={LATEST} "
        f"({size.ticker_symbols} symbols x {size.ticker_rows:,} ticks)",
        ratio(median(adbc_us), base), "<=", GOAL_LATEST_RATIO, "x",
        measured_note=f"{show(median(adbc_us), 'µs')} vs {show(base, 'µs')}, GetFlightInfo "
        f"{show(median(info_us), 'µs')}, DoGet {show(median(get_us), 'µs')}"))


# -- 1 M-row pull ------------------------------------------------------------------------------


def _bulk(settings: Settings, section: Section) -> None:
    size = sizes(settings)
    ticket = flight.Ticket(f"{SYMBOL}?start=0".encode())
    pulls: dict[str, list[tuple[float, int, int]]] = {"adbc": [], "native": []}
    with ExitStack() as stack:
        server = stack.enter_context(_server("ticker", "--symbols", "1",
                                             "--rows", str(size.bulk_rows)))
        location = server.hello["location"]
        client = stack.enter_context(closing(flight.connect(location)))
        conn = stack.enter_context(closing(_adbc(location)))
        cursor = stack.enter_context(closing(conn.cursor()))

        def pull(which: str) -> pa.Table:
            if which == "adbc":
                return _adbc_query(cursor, BULK_SQL)
            table: pa.Table = client.do_get(ticket).read_all()
            return table

        ours, native = pull("adbc"), pull("native")  # also the warm-up of each
        _check("1 M-row pull", differences(ours.sort_by("timestamp"), native, native.column_names))
        if native.num_rows != size.bulk_rows:
            raise RuntimeError(f"the ring holds {native.num_rows:,} rows, not {size.bulk_rows:,}")
        del ours, native
        for rep in range(size.repetitions):
            for which in (("adbc", "native") if rep % 2 == 0 else ("native", "adbc")):
                start = time.perf_counter()
                table = pull(which)
                pulls[which].append((time.perf_counter() - start, table.num_rows, table.nbytes))
                del table
    speeds = {k: median([b / s / 1e6 for s, _, b in v]) for k, v in pulls.items()}
    out = Table(("Path", "Rows", "MB", "Median seconds", "MB/s", "Ratio to native"))
    for key, label in (("adbc", f"ADBC `{BULK_SQL}`"),
                       ("native", f"native DoGet `{SYMBOL}?start=0` (baseline)")):
        rows, nbytes = pulls[key][0][1], pulls[key][0][2]
        out.add(label, f"{rows:,}", show(nbytes / 1e6), show(median([p[0] for p in pulls[key]]), "s"),
                show(speeds[key], "MB/s"), show(ratio(speeds[key], speeds["native"]), "x"))
    section.tables.append(out)
    section.goals.append(Goal.judge(
        "sql.bulk", f"ADBC `SELECT *` of {size.bulk_rows:,} rows vs the native range pull, MB/s",
        ratio(speeds["adbc"], speeds["native"]), ">=", GOAL_BULK_RATIO, "x",
        measured_note=f"{show(speeds['adbc'], 'MB/s')} vs {show(speeds['native'], 'MB/s')}"))


# -- 1m bars over the history ------------------------------------------------------------------


def _bars(settings: Settings, section: Section) -> None:
    import duckdb

    size = sizes(settings)
    work = Path(tempfile.mkdtemp(prefix="flight_md-bench-sql-"))
    try:
        data_dir = work / "data"
        write_s = _write_history(data_dir, size)
        files = list((data_dir / "history" / "channel=trades").rglob("*.parquet"))
        glob = str(data_dir / "history" / "channel=trades" / "**" / "*.parquet")
        baselines = {"duck": baseline_bars_sql(glob),
                     "tied": baseline_bars_sql(glob, tie_break=True)}
        times: dict[str, list[float]] = {"adbc": [], "duck": [], "tied": []}
        with ExitStack() as stack:
            server = stack.enter_context(_server("history", "--data-dir", str(data_dir),
                                                 "--rows", str(BARS_RING)))
            conn = stack.enter_context(closing(_adbc(server.hello["location"])))
            cursor = stack.enter_context(closing(conn.cursor()))
            duck = stack.enter_context(closing(duckdb.connect()))

            def run(which: str) -> pa.Table:
                if which == "adbc":
                    return _adbc_query(cursor, BARS_SQL)
                return duck.sql(baselines[which]).to_arrow_table()

            ours = run("adbc")
            problems = differences(ours, run("duck"), BAR_EXACT, BAR_CLOSE)
            problems += [f"tie-broken baseline: {p}" for p in
                         differences(ours, run("tied"), BAR_EXACT, BAR_CLOSE)]
            counted = pc.sum(ours.column("trades")).as_py() if ours.num_rows else 0
            if counted != size.bars_trades:
                problems.append(f"the bars count {counted:,} trades of {size.bars_trades:,}")
            _check("1m bars", problems)
            for rep in range(size.repetitions):
                order = ("adbc", "duck", "tied") if rep % 2 == 0 else ("tied", "duck", "adbc")
                for which in order:
                    start = time.perf_counter()
                    run(which)
                    times[which].append(time.perf_counter() - start)
            ring_rows = server.hello["ring_rows"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_ms, duck_ms, tied_ms = (1e3 * median(times[k]) for k in ("adbc", "duck", "tied"))
    out = Table(("Path", "History trades", "Parquet files", "Bars", "Median (ms)",
                 "Ratio to DuckDB", "Trades/s reduced"))
    for label, ms in ((f"ADBC `{BARS_SQL}`", ours_ms),
                      (("DuckDB in-process, `read_parquet` + GROUP BY, open/close by timestamp "
                        "(baseline)"), duck_ms),
                      (("DuckDB in-process, the same with `bars_1m`'s tie-break "
                        "(timestamp, receive_timestamp)"), tied_ms)):
        out.add(label, f"{size.bars_trades:,}", f"{len(files):,}", f"{ours.num_rows:,}",
                show(ms), show(ratio(ms, duck_ms), "x"),
                show(size.bars_trades / (ms / 1e3), "/s"))
    section.tables.append(out)
    section.notes.append(f"The history was written in {write_s:.1f} s by `HistoryWriter` "
                         f"({size.write_chunk:,} trades a call); the server's `Persistence.open()` "
                         f"refilled the trades ring with the newest {ring_rows:,} of them, so "
                         "`bars_1m` reads ring and history (the view skips the history rows the "
                         "ring holds); the bars count every trade once (checked).")
    section.goals.append(Goal.judge(
        "sql.bars", f"ADBC 1m bars over {size.bars_trades:,} history trades vs DuckDB "
        "in-process on the same Parquet files",
        ratio(ours_ms, duck_ms), "<=", GOAL_BARS_RATIO, "x",
        measured_note=f"{show(ours_ms, 'ms')} vs {show(duck_ms, 'ms')}, vs the same tie-break "
        f"{show(ratio(ours_ms, tied_ms), 'x')}"))


# -- the section -------------------------------------------------------------------------------


def measure(settings: Settings) -> Section:
    """The three issue-14 measurements; one that fails is reported and the others still run."""

    size = sizes(settings)
    section = Section(
        "sql", "Flight SQL through ADBC",
        f"""
The client is this process: the ADBC Flight SQL driver (`adbc_driver_flightsql.dbapi.connect`,
connection and cursor opened once, outside the timing; each call `cursor.execute` then
`fetch_arrow_table`) and a plain `pyarrow.flight` client for the baselines. The server is a real
`FlightMarketDataServer` on `grpc://127.0.0.1:0` in its own process; the SQL path and its
baseline alternate against that same server, and both answers are checked equal before
anything is timed.

**Latest 100.** A ticker store of {size.ticker_symbols} symbols x {size.ticker_rows:,} ticks each (rings filled
through the restore path). `{LATEST_SQL}` through ADBC vs the native DoGet `{SYMBOL}?latest={LATEST}`:
{size.repetitions} repetitions x {size.latest_calls} calls of each; p50 and p90 over all calls. The SQL path's
stages as the client sees them: the same statement by hand through pyarrow, a
`CommandStatementQuery` GetFlightInfo (the server parses, checks and plans it: the result
schema) then DoGet of its ticket (snapshot of the rings, DuckDB runs it, batches stream), each
timed apart.

**1 M-row pull.** One symbol's ring of {size.bulk_rows:,} ticks: `{BULK_SQL}` through ADBC vs the
native range pull `{SYMBOL}?start=0` (every row). MB/s = Arrow bytes received (`Table.nbytes`,
10^6 bytes per MB) / wall time; median of {size.repetitions} alternating pulls after one warm-up each.

**1m bars over the history.** {size.bars_trades:,} trades of one symbol over one UTC day written to a data
dir's Parquet history by `HistoryWriter`; the server opens a real `Persistence` over it.
`{BARS_SQL}` through ADBC vs DuckDB in this process over the same Parquet files (`read_parquet`,
`GROUP BY` minute with `arg_min`/`arg_max` by timestamp, result as Arrow; DuckDB uses every
core, the server's engine its default 2 threads). Shown beside it, not judged: the same
baseline with `bars_1m`'s own open/close tie-break, `(timestamp, receive_timestamp)`, which
separates the view's semantics from the server's engine. Median of {size.repetitions} alternating
repetitions.
""")
    parts = (("latest 100", _latest), ("1 M-row pull", _bulk), ("1m bars", _bars))
    return run_parts(section, [(name, partial(part, settings, section)) for name, part in parts],
                     log="sql")


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sql")
    parser.add_argument("role", choices=("server",))
    parser.add_argument("--kind", choices=("ticker", "history"), required=True)
    parser.add_argument("--symbols", type=int, default=1)
    parser.add_argument("--rows", type=int, default=10_000,
                        help="ticker: ticks per ring; history: the rings' capacity")
    parser.add_argument("--data-dir", help="history: the data dir to open")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    if args.kind == "history" and not args.data_dir:
        parser.error("--kind history needs --data-dir")
    _server_child(args)


if __name__ == "__main__":
    _main()
