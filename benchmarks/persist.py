"""Persistence (issue 13): its cost and its promises, measured side by side in one run.

Five measurements, each beside its baseline from the same run:

Lossless ingest, persistence on vs ``--memory-only``
    Binance's ``ticker`` channel through real ccxt, the rule and search of
    :mod:`benchmarks.ingest` ("kept up"): the ``--memory-only`` server's lossless rate and the
    default server's (journal and history on), each by its own search from the same rates,
    the two searches interleaved run by run so that a change in the machine's load meets both.
    The ratio of the two lossless rates is the goal. One more run at the lower of the two
    seals the journal into Parquet every second
    (``--seal-interval 1``), so that the history writer's work falls inside the measured
    window (with the default 60 s it does not, in a window of seconds).
Ticks lost on ``kill -9``
    The emulator streams tickers at 5,000 msg/s into a persisting server; a live tail on each
    of a few symbols (``SYMBOL?exchange=..&start=0&follow=true``) records every row the server
    stored and when it arrived. After a while the server gets SIGKILL; a new server restarts on the
    data dir (recovery), and each symbol's whole history is read back over Flight
    (``start=0``). A row the tail held before ``kill - commit_interval`` was stored before that,
    so it must be back (the goal: none missing, none duplicated); rows newer than that may be
    lost and are counted apart. Every recovered row's ``sequence`` is checked too, read
    from the Parquet files themselves: no number twice, no gap.
Recovery time
    A journal of 10 M rows written the way the server writes it (:class:`Journal`, the store's
    row layout: the numeric columns and ``sequence``; 200 symbols interleaved in every group
    commit), by a child process that exits without closing it, as ``kill -9`` leaves it. Then,
    in this process, :func:`flight_md.persist.recovery.recover` alone (the journal read,
    checked and decoded), and :meth:`Persistence.open` (which recovers, writes what the
    journal held to Parquet and refills the rings): the start a restarted server waits for.
10 M-row range pull from history
    A history of 10 M rows of one symbol written by the server's :class:`HistoryWriter` (in
    files of ``persist_pull_chunk`` rows, as seals and compaction leave them), served by a
    restarted server with a small ring: DoGet ``SYMBOL?exchange=..&start=0`` read whole by a
    client in this process, vs DuckDB ``read_parquet`` of the same files into an Arrow table
    in this process (same columns). Medians of alternating runs.
Disk bytes per stored tick
    The journal and the Parquet history as the server wrote them from the emulator's ticker
    stream in the ``kill -9`` run (seconds of data per file), and the Parquet history of the
    10 M-row pull (files of a seal-to-compaction size), and the 10 M-row journal.

The synthetic rows of the recovery and pull data sets are ticker-like, not random: a price
walk on a 0.01 tick, bid and ask a tick or two around it, the day's high, low and open moving
with it, a growing 24h volume, exchange timestamps a few milliseconds apart and receive times
a few after them (:func:`ticker_columns`).

Run as a child: ``python -m benchmarks.persist journal --data-dir DIR --rows N --symbols S
--commit-rows C`` writes the journal, prints what it wrote and exits without closing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from pyarrow import flight

from benchmarks import ingest, ticks
from benchmarks.exchange import exchange
from benchmarks.process import wait_until
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.servers import flight_md_server
from benchmarks.settings import Settings

__all__ = ["GOAL_INGEST_RATIO", "GOAL_PULL_RATIO", "GOAL_RECOVERY_S", "KillCount",
           "build_journal", "count_kill", "measure", "ticker_columns"]

GOAL_INGEST_RATIO: Final = 0.9
GOAL_RECOVERY_S: Final = 5.0
"""Seconds per :data:`RECOVERY_ROWS` journalled rows."""
RECOVERY_ROWS: Final = 10_000_000
GOAL_PULL_RATIO: Final = 0.8
SMALL_COMMIT_ROWS: Final = 1_000
"""Rows per commit of the second recovery journal: a server storing 5,000 rows/s."""
VENUE: Final = "binance"
CHANNEL: Final = "ticker"
_ROW_KEY: Final = ("timestamp", "receive_timestamp", "price", "bid", "ask", "volume")
"""The columns that identify a stored ticker row (with its symbol) in the kill -9 check."""


# -- ticker-like synthetic rows ----------------------------------------------------------------


def ticker_columns(rows: int, *, seed: int, start_ms: int, gap_ms: float = 4.0,
                   base: float = 100.0) -> dict[str, np.ndarray]:
    """``rows`` ticker rows of one symbol as numpy columns (:data:`NUMERIC_FIELDS` order).

    A walk on a 0.01 tick (each step -1, 0 or +1 tick), bid a tick below and ask one or two
    above, the running high and low, a fixed open, a growing volume; exchange timestamps
    ``gap_ms`` apart on average (at least 1 ms), receive times 2 to 30 ms after them.
    """
    from flight_md.schema import NUMERIC_FIELDS

    rng = np.random.default_rng(seed)
    tick = 0.01
    steps = rng.integers(-1, 2, rows)
    price = np.round(base + tick * np.cumsum(steps), 2)
    ts = start_ms + np.cumsum(rng.integers(1, max(2, int(2 * gap_ms)), rows))
    columns = {
        "timestamp": ts.astype(np.int64),
        "price": price,
        "volume": np.round(50_000.0 + np.cumsum(rng.exponential(0.05, rows)), 3),
        "bid": np.round(price - tick, 2),
        "ask": np.round(price + tick * rng.integers(1, 3, rows), 2),
        "high": np.maximum.accumulate(price),
        "low": np.minimum.accumulate(price),
        "open": np.full(rows, base),
        "close": price,
        "receive_timestamp": (ts + rng.integers(2, 31, rows)).astype(np.int64),
    }
    return {name: columns[name] for name in NUMERIC_FIELDS}


def _journal_batch(columns: dict[str, np.ndarray], first_seq: int) -> pa.RecordBatch:
    """Rows as the server journals them: the numeric columns, then ``sequence``."""
    from flight_md.persist.store import SEQUENCE
    from flight_md.schema import NUMERIC_SCHEMA

    n = len(columns["timestamp"])
    arrays = [pa.array(columns[f.name], type=f.type) for f in NUMERIC_SCHEMA]
    schema = pa.schema([*NUMERIC_SCHEMA, pa.field(SEQUENCE, pa.int64(), nullable=False)])
    return pa.RecordBatch.from_arrays(
        [*arrays, pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64))], schema=schema)


def _history_table(columns: dict[str, np.ndarray], symbol: str, first_seq: int) -> pa.Table:
    """Rows in the history's columns (:func:`flight_md.persist.store.history_schema`)."""
    from flight_md.persist.store import SEQUENCE, history_schema

    schema = history_schema()
    n = len(columns["timestamp"])
    values: dict[str, Any] = dict(columns)
    values["symbol"] = pa.array([symbol]).take(np.zeros(n, dtype=np.int64))
    values["exchange"] = pa.array([VENUE]).take(np.zeros(n, dtype=np.int64))
    values[SEQUENCE] = np.arange(first_seq, first_seq + n, dtype=np.int64)
    return pa.Table.from_arrays([pa.array(values[f.name], type=f.type) if isinstance(
        values[f.name], np.ndarray) else values[f.name] for f in schema], schema=schema)


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file()) if root.exists() else []


def _bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


# -- the journal child ---------------------------------------------------------------------


def _journal_child(args: argparse.Namespace) -> None:
    """Write a journal the way the server does, then exit without closing it (as kill -9)."""
    from flight_md.persist.datadir import DataDir
    from flight_md.persist.journal import Journal

    data_dir = DataDir.open(args.data_dir)
    # Commits only when told (one per round), as the committer does once per interval.
    journal = Journal(data_dir.journal, commit_interval=3600.0)
    names = ticks.symbols(args.symbols)
    per_commit = max(1, args.commit_rows // args.symbols)  # rows of each symbol per commit
    per_symbol = args.rows // args.symbols
    commits = math.ceil(per_symbol / per_commit)
    block = 50  # commits whose rows are generated at once
    now = int(time.time() * 1000)
    start_ms = now - int(per_symbol * 4 * 1.1)  # within any retention, ending about now
    began = time.perf_counter()
    written = 0
    for first in range(0, commits, block):
        count = min(block, commits - first)
        pieces = []
        for k, symbol in enumerate(names):
            rows = min(per_symbol - first * per_commit, count * per_commit)
            batch = _journal_batch(
                ticker_columns(rows, seed=k * 100_003 + first, base=50.0 + k,
                               start_ms=start_ms + first * per_commit * 4),
                first * per_commit)
            pieces.append((symbol, batch))
        for c in range(count):
            for symbol, batch in pieces:
                part = batch.slice(c * per_commit, per_commit)
                if part.num_rows:
                    journal.append(CHANNEL, VENUE, symbol, part)
                    written += part.num_rows
            journal.commit()
    stats = journal.stats()
    sys.stdout.write(json.dumps({
        "rows": written, "commits": stats.commits, "bytes": stats.bytes_written,
        "rows_per_commit": per_commit * len(names), "symbols": len(names),
        "seconds": time.perf_counter() - began,
        "segments": len(_files(data_dir.journal, "*.wal"))}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # no close: the last segment is left open, as a killed server leaves it


def build_journal(data_dir: Path, rows: int, symbols: int, commit_rows: int,
                  timeout: float = 600.0) -> dict[str, Any]:
    """Write ``rows`` journalled rows into ``data_dir`` in a child process (see
    :func:`_journal_child`) and return what it wrote."""
    root = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.persist", "journal", "--data-dir", str(data_dir),
         "--rows", str(rows), "--symbols", str(symbols), "--commit-rows", str(commit_rows)],
        cwd=root, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the journal child failed ({result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# -- 1. lossless ingest, persistence on vs memory-only ---------------------------------------


@dataclass(slots=True)
class IngestResult:
    memory_only: dict[int, bool] = field(default_factory=dict)
    persisting: dict[int, bool] = field(default_factory=dict)
    runs: list[ingest.Run] = field(default_factory=list)


_DESIGNS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("--memory-only", {"memory_only": True}),
                   ("persisting (default settings)", {}))


def _ingest(settings: Settings) -> IngestResult:
    """The two servers' searches, interleaved: each probe of one is followed by the other's
    (in alternating order), so that a change in the machine's load meets both."""
    out = IngestResult()
    kept: list[dict[int, bool]] = [out.memory_only, out.persisting]
    symbols = settings.persist_symbols

    def probe(which: int, rate: int) -> None:
        name, server = _DESIGNS[which]
        run = ingest.one_run("flight_md", CHANNEL, rate, symbols, settings, VENUE, server)
        out.runs.append(dataclasses.replace(run, design=name))
        kept[which][rate] = run.kept_up

    for k, rate in enumerate(settings.persist_rates):
        for which in ((0, 1) if k % 2 == 0 else (1, 0)):
            probe(which, rate)
    for step in range(settings.persist_search_steps):
        rates = [ingest.next_rate(k, max_rate=settings.persist_max_rate,
                                  resolution=settings.ingest_resolution) for k in kept]
        if all(r is None for r in rates):
            break
        for which in ((0, 1) if step % 2 else (1, 0)):
            next_one = rates[which]
            if next_one is not None:
                probe(which, next_one)
    if settings.persist_seal_run:
        both = [ingest.lossless_rate(k) for k in kept]
        sealed = min(r for r in both if r is not None) if any(both) else \
            min(settings.persist_rates)
        run = ingest.one_run("flight_md", CHANNEL, sealed, symbols, settings, VENUE,
                          {"seal_interval": 1.0})
        out.runs.append(dataclasses.replace(run, design="persisting, seal every 1 s"))
    return out


# -- 2. ticks lost on kill -9 --------------------------------------------------------------


class _Tail:
    """A live tail of one symbol from its ring's start, on a thread: every row it gets, with
    the time its batch arrived."""

    def __init__(self, location: str, symbol: str) -> None:
        self.symbol = symbol
        self.batches: list[tuple[float, pa.RecordBatch]] = []
        self.error: str | None = None
        self.reader: Any = None
        self._thread = threading.Thread(target=self._run, args=(location,), daemon=True,
                                        name=f"persist-tail-{symbol}")
        self._thread.start()

    def _run(self, location: str) -> None:
        try:
            client = flight.connect(location)
            self.reader = client.do_get(flight.Ticket(
                f"{self.symbol}?exchange={VENUE}&start=0&follow=true".encode()))
            while True:
                try:
                    chunk = self.reader.read_chunk()
                except StopIteration:
                    break
                if chunk.data is not None and chunk.data.num_rows:
                    self.batches.append((time.time(), chunk.data))
        except Exception as exc:  # noqa: BLE001 - the kill ends every tail with an error
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    @property
    def rows(self) -> int:
        return sum(b.num_rows for _, b in self.batches)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _keys(symbol: str, batch: pa.RecordBatch | pa.Table) -> list[tuple[Any, ...]]:
    columns = [batch.column(name).to_pylist() for name in _ROW_KEY]
    return [(symbol, *row) for row in zip(*columns, strict=True)]


@dataclass(frozen=True, slots=True)
class KillCount:
    """What a restart brought back of what the tails saw before ``kill -9``.

    Attributes:
        old: Rows the tails held before ``kill - commit_interval``.
        old_missing: Of those, rows not back after the restart (the goal: 0).
        new: Rows the tails received in the last commit interval before the kill (or after).
        new_missing: Of those, rows not back (informational).
        duplicated: Rows back more often than the tails saw them.
        unseen: Rows back that no tail saw (stored, journalled, not yet streamed).
        oldest_missing_s: How long before the kill the oldest missing row arrived at its tail
            (NaN: none missing).
    """

    old: int
    old_missing: int
    new: int
    new_missing: int
    duplicated: int
    unseen: int
    oldest_missing_s: float


def count_kill(seen: Sequence[tuple[float, tuple[Any, ...]]], recovered: Sequence[tuple[Any, ...]],
               kill_time: float, commit_interval: float) -> KillCount:
    """Compare what tails saw (arrival time, row key) with what came back after the kill.

    Rows are matched as multisets, so a row that really was stored twice must come back
    twice, and one stored once must come back once.
    """
    back = Counter(recovered)
    wanted = Counter(key for _, key in seen)
    remaining = Counter(back)
    cut = kill_time - commit_interval
    old = old_missing = new = new_missing = 0
    oldest = math.nan
    for arrived, key in sorted(seen, key=lambda item: item[0]):
        is_old = arrived < cut
        old += is_old
        new += not is_old
        if remaining[key] > 0:
            remaining[key] -= 1
            continue
        if is_old:
            old_missing += 1
        else:
            new_missing += 1
        age = kill_time - arrived
        oldest = age if math.isnan(oldest) else max(oldest, age)
    duplicated = sum(max(0, back[key] - count) for key, count in wanted.items())
    unseen = sum(count for key, count in back.items() if key not in wanted)
    return KillCount(old, old_missing, new, new_missing, duplicated, unseen, oldest)


@dataclass(slots=True)
class KillResult:
    count: KillCount | None = None
    seconds: float = 0.0
    commit_interval: float = math.nan
    sent: int = 0
    rate: float = math.nan
    stored: int = 0
    tail_rows: int = 0
    recovered_rows: int = 0
    sequence_duplicates: int = 0
    sequence_gaps: int = 0
    restart_s: float = math.nan
    recovery: dict[str, Any] = field(default_factory=dict)
    journal_bytes: int = 0
    journal_rows: int = 0
    history_bytes: int = 0
    history_rows: int = 0
    history_files: int = 0
    last_commit_age_s: float = math.nan
    commit_gap_median_s: float = math.nan
    commit_gap_max_s: float = math.nan
    errors: list[str] = field(default_factory=list)


def commit_times(path: Path) -> list[int]:
    """The wall-clock ms of every intact COMMIT record of a journal segment, in file order
    (read from the records as :mod:`flight_md.persist.journal` documents them)."""
    from flight_md.persist.journal import COMMIT, MAGIC, RECORD_HEADER, RecordKind

    data = path.read_bytes()
    out: list[int] = []
    at = len(MAGIC) if data.startswith(MAGIC) else len(data)
    while at + RECORD_HEADER.size <= len(data):
        length, _, kind, _ = RECORD_HEADER.unpack_from(data, at)
        payload = at + RECORD_HEADER.size
        if payload + length > len(data):
            break  # a torn tail
        if kind == RecordKind.COMMIT and length >= COMMIT.size:
            out.append(COMMIT.unpack_from(data, payload)[2])
        at = payload + length + (-length % 8)
    return out


def _status(location: str) -> dict[str, Any]:
    client = flight.connect(location)
    try:
        result = next(iter(client.do_action(flight.Action("status", b""))))
        return dict(json.loads(result.body.to_pybytes()))
    finally:
        client.close()


def _sequences(data_dir: Path) -> tuple[int, int]:
    """Duplicate and missing sequence numbers over every series of the Parquet history."""
    import pyarrow.dataset as ds

    from flight_md.persist.store import SEQUENCE

    files = [str(p) for p in _files(data_dir / "history", "**/*.parquet")]
    if not files:
        return 0, 0
    table = ds.dataset(files, format="parquet").to_table(columns=["symbol", SEQUENCE])
    duplicates = gaps = 0
    for symbol in pa.compute.unique(table.column("symbol")).to_pylist():
        seq = np.sort(table.filter(pa.compute.equal(table.column("symbol"), symbol))
                      .column(SEQUENCE).to_numpy())
        duplicates += int(len(seq) - len(np.unique(seq)))
        gaps += int(seq[-1] - seq[0] + 1 - len(np.unique(seq))) if len(seq) else 0
    return duplicates, gaps


def _kill(settings: Settings, work: Path) -> KillResult:
    out = KillResult()
    data_dir = work / "kill"
    names = ticks.venue_symbols(VENUE, settings.persist_symbols)
    with exchange(symbols=len(names), rate=settings.persist_kill_rate, venue=VENUE) as emulator:
        server = flight_md_server(exchange_url=emulator.hello["url"], ingest_symbols=len(names),
                                  channel=CHANNEL, data_dir=data_dir, name="flight_md-kill9")
        try:
            server.start()
            location = server.hello["location"]
            if not wait_until(lambda: len(server.call("counts")["appended"]) >= len(names),
                              60.0, 0.2):
                raise RuntimeError(f"ingestion did not reach {len(names)} symbols in 60 s")
            status = _status(location)["persistence"]
            out.commit_interval = float(status["commit_interval_s"])
            tails = [_Tail(location, symbol) for symbol in names[:settings.persist_kill_tails]]
            if not wait_until(lambda: all(t.batches or t.error for t in tails), 30.0, 0.05):
                raise RuntimeError("a live tail received nothing within 30 s")
            started = time.time()
            sent0 = sum(emulator.call("counts")["by_channel"].values())
            time.sleep(settings.persist_kill_seconds)
            out.stored = sum(server.call("counts")["appended"].values())
            out.sent = sum(emulator.call("counts")["by_channel"].values())
            kill_time = time.time()
            out.rate = (out.sent - sent0) / (kill_time - started)
            os.kill(server.pid, signal.SIGKILL)
            out.seconds = kill_time - started
            for tail in tails:
                tail.join(10.0)
        finally:
            server.close(grace=2.0)
    journal = _files(data_dir / "journal", "*.wal")
    out.journal_bytes = _bytes(journal)
    commits = [wall for path in journal for wall in commit_times(path)]
    window = [c / 1e3 for c in commits if c / 1e3 >= started]
    if commits:
        out.last_commit_age_s = kill_time - commits[-1] / 1e3
    if len(window) > 1:
        out.commit_gap_max_s = float(np.max(np.diff(window)))
        out.commit_gap_median_s = float(np.median(np.diff(window)))
    restart = flight_md_server(data_dir=data_dir, history=True, name="flight_md-restarted")
    began = time.perf_counter()
    with restart:
        out.restart_s = time.perf_counter() - began
        location = restart.hello["location"]
        persistence = _status(location)["persistence"]
        out.recovery = dict(persistence.get("recovery", {}))
        out.journal_rows = int(out.recovery.get("journal_rows", 0))
        series = [s for s in persistence.get("series", []) if s["channel"] == CHANNEL]
        out.history_rows = sum(int(s["rows"]) for s in series)
        out.history_bytes = sum(int(s["bytes"]) for s in series)
        out.history_files = sum(int(s["files"]) for s in series)
        client = flight.connect(location)
        recovered: list[tuple[Any, ...]] = []
        for symbol in names[:settings.persist_kill_tails]:
            table = client.do_get(flight.Ticket(
                f"{symbol}?exchange={VENUE}&start=0".encode())).read_all()
            recovered += _keys(symbol, table)
        client.close()
    out.recovered_rows = len(recovered)
    out.sequence_duplicates, out.sequence_gaps = _sequences(data_dir)
    seen = [(arrived, key) for tail in tails for arrived, batch in tail.batches
            for key in _keys(tail.symbol, batch)]
    out.tail_rows = len(seen)
    out.count = count_kill(seen, recovered, kill_time, out.commit_interval)
    out.errors += [f"{t.symbol}: {t.error}" for t in tails
                   if t.error and not t.batches]  # a tail that never got a row
    return out


# -- 3. recovery time ----------------------------------------------------------------------


@dataclass(slots=True)
class RecoveryResult:
    built: dict[str, Any] = field(default_factory=dict)
    journal_bytes: int = 0
    recover_s: list[float] = field(default_factory=list)
    recovered_rows: int = 0
    open_s: float = math.nan
    open_report: dict[str, Any] = field(default_factory=dict)
    history_bytes: int = 0
    history_rows: int = 0
    history_files: int = 0
    rings: int = 0


def _recovery(settings: Settings, work: Path, small_commits: bool) -> RecoveryResult:
    """The goal's case (``small_commits`` False): the journal read alone, then
    ``Persistence.open()``; with ``small_commits``, a tenth of the rows in commits of 1,000
    rows, the journal read alone."""
    from flight_md.buffer import MarketDataBuffer
    from flight_md.events import EventLog
    from flight_md.persist.datadir import DataDir
    from flight_md.persist.recovery import recover
    from flight_md.persist.store import PersistConfig, Persistence

    out = RecoveryResult()
    data_dir = work / "recovery"
    rows = settings.persist_recovery_rows // (10 if small_commits else 1)
    out.built = build_journal(data_dir, rows, settings.persist_recovery_symbols,
                              SMALL_COMMIT_ROWS if small_commits else settings.persist_commit_rows)
    out.journal_bytes = _bytes(_files(data_dir / "journal", "*.wal"))
    layout = DataDir.open(data_dir)  # for its paths; closed before the server's open
    journal_dir, quarantine = layout.journal, layout.quarantine
    layout.close()
    for _ in range(settings.persist_recovery_repetitions):
        began = time.perf_counter()
        found = recover(journal_dir, quarantine)
        out.recover_s.append(time.perf_counter() - began)
        out.recovered_rows = found.rows
        del found
    if small_commits:
        return out
    buffer = MarketDataBuffer()
    persistence = Persistence(PersistConfig(data_dir), buffer, EventLog(), {VENUE: CHANNEL})
    began = time.perf_counter()
    persistence.open()
    out.open_s = time.perf_counter() - began
    try:
        out.open_report = dict(persistence.recovery)
        out.rings = sum(1 for s in buffer.stats() if s.stored)
    finally:
        persistence.close()
    files = _files(data_dir / "history", "**/*.parquet")
    out.history_files = len(files)
    out.history_bytes = _bytes(files)
    out.history_rows = sum(int(p.name.split("_")[2]) for p in files)
    return out


# -- 4. range pull from history: Flight vs DuckDB ------------------------------------------


@dataclass(slots=True)
class PullResult:
    scan_s: list[float] = field(default_factory=list)
    bare_s: list[float] = field(default_factory=list)
    rows: int = 0
    files: int = 0
    bytes: int = 0
    write_s: float = math.nan
    flight_s: list[float] = field(default_factory=list)
    duckdb_s: list[float] = field(default_factory=list)
    flight_rows: int = 0
    duckdb_rows: int = 0
    arrow_bytes: int = 0


def _pull(settings: Settings, work: Path) -> PullResult:
    import duckdb

    from flight_md.persist.datadir import DataDir
    from flight_md.persist.history import HistoryWriter
    from flight_md.schema import SCHEMA

    out = PullResult()
    data_dir = work / "pull"
    DataDir.open(data_dir).close()
    symbol = ticks.symbols(1)[0]
    rows, chunk = settings.persist_pull_rows, settings.persist_pull_chunk
    gap_ms = 1.0
    start_ms = int(time.time() * 1000) - int(rows * gap_ms * 1.5)
    writer = HistoryWriter(data_dir)
    began = time.perf_counter()
    for first in range(0, rows, chunk):
        n = min(chunk, rows - first)
        columns = ticker_columns(n, seed=first, gap_ms=gap_ms,
                                 start_ms=start_ms + int(first * gap_ms * 1.5))
        writer.write(CHANNEL, VENUE, symbol, _history_table(columns, symbol, first))
    out.write_s = time.perf_counter() - began
    files = _files(data_dir / "history", "**/*.parquet")
    out.rows, out.files, out.bytes = rows, len(files), _bytes(files)
    names = ", ".join(f'"{name}"' for name in SCHEMA.names)
    sql = (f"SELECT {names} FROM read_parquet('{data_dir / 'history'}/**/*.parquet', "
           "hive_partitioning=true)")
    ticket = flight.Ticket(f"{symbol}?exchange={VENUE}&start=0".encode())
    with flight_md_server(data_dir=data_dir, history=True, buffer_size=settings.persist_ring,
                          name="flight_md-history") as server:
        client = flight.connect(server.hello["location"])
        connection = duckdb.connect()

        def by_flight() -> int:
            table = client.do_get(ticket).read_all()
            out.arrow_bytes = table.nbytes
            return int(table.num_rows)

        def by_duckdb() -> int:
            result = connection.sql(sql).arrow()
            table = result.read_all() if isinstance(result, pa.RecordBatchReader) else result
            return int(table.num_rows)

        by_flight()  # untimed: opens the files once on each side (footers, page cache)
        by_duckdb()
        for rep in range(settings.persist_pull_repetitions):
            for name in (("flight", "duckdb") if rep % 2 == 0 else ("duckdb", "flight")):
                began = time.perf_counter()
                got = by_flight() if name == "flight" else by_duckdb()
                elapsed = time.perf_counter() - began
                if name == "flight":
                    out.flight_s.append(elapsed)
                    out.flight_rows = got
                else:
                    out.duckdb_s.append(elapsed)
                    out.duckdb_rows = got
        connection.close()
        client.close()
    _floors(settings, data_dir, symbol, out)
    return out


class _BareServer(flight.FlightServerBase):
    """A Flight server with one table in memory: any Flight server's floor for these bytes."""

    def __init__(self, table: pa.Table) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.table = table

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        from benchmarks.servers import FLIGHT_MD_IPC_OPTIONS

        return flight.RecordBatchStream(self.table, options=FLIGHT_MD_IPC_OPTIONS)


def _floors(settings: Settings, data_dir: Path, symbol: str, out: PullResult) -> None:
    """Where the pull's time goes: the history scan alone in this process (no Flight), and a
    bare Flight server in this process streaming the same rows from memory."""
    from flight_md.persist.history import HistoryReader
    from flight_md.schema import SCHEMA

    reader = HistoryReader(data_dir)

    def scan() -> list[pa.RecordBatch]:
        return list(reader.scan(CHANNEL, VENUE, symbol, 0, None, SCHEMA.names))

    scan()
    for _ in range(settings.persist_pull_repetitions):
        began = time.perf_counter()
        batches = scan()
        out.scan_s.append(time.perf_counter() - began)
    server = _BareServer(pa.Table.from_batches(batches, schema=batches[0].schema))
    del batches
    try:
        client = flight.connect(f"grpc://127.0.0.1:{server.port}")
        client.do_get(flight.Ticket(b"all")).read_all()
        for _ in range(settings.persist_pull_repetitions):
            began = time.perf_counter()
            client.do_get(flight.Ticket(b"all")).read_all()
            out.bare_s.append(time.perf_counter() - began)
        client.close()
    finally:
        server.shutdown()


# -- the section ---------------------------------------------------------------------------


def _per_row(size: int, rows: int) -> float:
    return size / rows if rows else math.nan


def _step(name: str, errors: list[str], timings: dict[str, float], run: Any,
          *args: Any) -> Any:
    """One measurement; a failure is written into the section, and the others still run."""
    began = time.perf_counter()
    timings[f"{name} load"] = os.getloadavg()[0]
    try:
        return run(*args)
    except Exception as exc:  # noqa: BLE001 - reported as a miss with its reason
        print(f"persist: {name} failed:\n{traceback.format_exc(limit=12)}", file=sys.stderr,
              flush=True)
        errors.append(f"{name}: {ingest._one_line(exc)}")
        return None
    finally:
        timings[name] = time.perf_counter() - began


def _ingest_tables(result: IngestResult | None, settings: Settings, section: Section,
                   errors: list[str]) -> None:
    failures = [e for e in errors if e.startswith("ingest")]
    memory = ingest.lossless_rate(result.memory_only) if result else None
    persisting = ingest.lossless_rate(result.persisting) if result else None
    value = ratio(float(persisting) if persisting else math.nan,
                  float(memory) if memory else math.nan)
    if result is not None:
        summary = Table(("Server", "Lossless rate (kept up)", "Lowest rate that did not keep up",
                         "Ratio to --memory-only"))
        for name, kept in (("--memory-only", result.memory_only),
                           ("persisting (default settings)", result.persisting)):
            failed = [r for r, ok in kept.items() if not ok]
            summary.add(name, ingest._lossless_cell(kept),
                        f"{min(failed):,} msg/s" if failed else "none probed",
                        "1.00x" if kept is result.memory_only else show(value, "x"))
        runs = Table(ingest._RUN_HEADERS)
        for run in result.runs:
            runs.add(*ingest._run_cells(run))
        section.tables += [summary, _same_rate(result), runs]
        if memory is None:
            failures.append(f"--memory-only did not keep up at {min(result.memory_only):,} msg/s")
        if persisting is None:
            failures.append(f"persisting did not keep up at {min(result.persisting):,} msg/s")
        if result.persisting and all(result.persisting.values()):
            section.notes.append(
                f"The persisting server kept up with every rate probed, up to "
                f"{max(result.persisting):,} msg/s: its lossless rate is at least that.")
    section.goals.append(Goal.judge(
        "persist.ingest", "Lossless ticker ingest, persistence on vs --memory-only",
        value, ">=", GOAL_INGEST_RATIO, "x",
        measured_note=(f"{persisting:,} vs {memory:,} msg/s" if persisting and memory
                       else ""), failures=failures))


def _same_rate(result: IngestResult) -> Table:
    """CPU per stored tick of the two servers at each rate both kept up with: the cost of
    persistence in CPU time, which the machine's load moves less than it moves the rates."""
    table = Table(("Rate both kept up with", "--memory-only CPU µs/tick",
                   "persisting CPU µs/tick", "persisting / --memory-only"))
    by_rate: dict[int, dict[str, ingest.Run]] = {}
    for run in result.runs:
        if run.kept_up and run.design in (name for name, _ in _DESIGNS):
            by_rate.setdefault(run.rate, {})[run.design] = run
    for rate, pair in sorted(by_rate.items()):
        if len(pair) == len(_DESIGNS):
            memory, persisting = (pair[name].cpu_us_per_tick for name, _ in _DESIGNS)
            table.add(f"{rate:,} msg/s", show(memory, "µs"), show(persisting, "µs"),
                      show(ratio(persisting, memory), "x"))
    if not table.rows:
        table.add("none", "n/a", "n/a", "n/a")
    return table


def _kill_tables(result: KillResult | None, settings: Settings, section: Section,
                 errors: list[str]) -> None:
    failures = [e for e in errors if e.startswith("kill")]
    count = result.count if result is not None else None
    if result is not None and count is not None:
        table = Table(("Rate msg/s", "Symbols (tailed)", "Tailed for", "Commit interval",
                       "Sent by the emulator", "Stored (ticks_appended)", "Tails held",
                       "Held before kill - interval", "Of those not back", "Held later",
                       "Later ones not back", "Back more often than held", "Back, never tailed",
                       "Oldest row not back, age at kill", "History sequence gaps",
                       "History sequence duplicates"))
        table.add(f"{settings.persist_kill_rate:,} (sent {show(result.rate, '/s')})",
                  f"{settings.persist_symbols} ({settings.persist_kill_tails})",
                  show(result.seconds, "s"), show(result.commit_interval * 1e3, "ms"),
                  f"{result.sent:,}", f"{result.stored:,}", f"{result.tail_rows:,}",
                  f"{count.old:,}", f"{count.old_missing:,}", f"{count.new:,}",
                  f"{count.new_missing:,}", f"{count.duplicated:,}", f"{count.unseen:,}",
                  show(count.oldest_missing_s * 1e3, "ms"), f"{result.sequence_gaps:,}",
                  f"{result.sequence_duplicates:,}")
        section.tables.append(table)
        recovery = result.recovery
        section.notes.append(
            f"kill -9: the restarted server recovered {recovery.get('journal_rows', 0):,} "
            f"journalled rows from {recovery.get('journal_segments', 0)} segment(s) "
            f"(torn tails cut: {recovery.get('torn_tails', 0)}, "
            f"{recovery.get('torn_bytes', 0):,} bytes; quarantined: "
            f"{recovery.get('quarantined_segments', 0)}) in {recovery.get('seconds', 'n/a')} s "
            f"by its own count, and answered its first request {result.restart_s:.1f} s after "
            "it was launched (Python start and imports included). The journal's COMMIT records "
            f"(their wall-clock stamps): the last one {show(result.last_commit_age_s * 1e3, 'ms')} "
            f"before the kill; between commits while the tails ran, median "
            f"{show(result.commit_gap_median_s * 1e3, 'ms')}, longest "
            f"{show(result.commit_gap_max_s * 1e3, 'ms')} (the commit interval is "
            f"{show(result.commit_interval * 1e3, 'ms')}).")
        if result.errors:
            section.notes.append("kill -9: " + "; ".join(result.errors))
        if count.old_missing:
            failures.append(f"oldest {show(count.oldest_missing_s * 1e3, 'ms')} before the kill")
        if count.duplicated:
            failures.append(f"{count.duplicated:,} duplicated")
        if result.sequence_duplicates:
            failures.append(f"{result.sequence_duplicates:,} sequence numbers twice in the "
                            "history")
        if result.sequence_gaps:
            failures.append(f"{result.sequence_gaps:,} sequence numbers missing in the history")
        if count.old == 0:
            failures.append("no row was held long enough to be judged")
    value = float(count.old_missing) if count is not None else math.nan
    section.goals.append(Goal.judge(
        "persist.kill9",
        f"Ticks lost on kill -9 at {settings.persist_kill_rate:,} msg/s (stored before kill - "
        "commit interval)", value, "<=", 0, "", conditions="none duplicated",
        measured_note=f"of {count.old:,}" if count is not None else "", failures=failures))


def _recovery_tables(result: RecoveryResult | None, small: RecoveryResult | None,
                     section: Section, errors: list[str]) -> None:
    failures = [e for e in errors if e.startswith("recovery")]
    table = Table(("Journal", "Rows", "Rows per commit", "Commits", "Segments", "Journal MB",
                   "What is timed", "Seconds", "Per 10 M rows", "Rows/s"))
    value = math.nan
    for item, label in ((result, "goal's case"), (small, "small commits")):
        if item is None:
            continue
        built = item.built
        rows = int(built.get("rows", 0))
        cells = (label, f"{rows:,}", f"{built.get('rows_per_commit', 0):,}",
                 f"{built.get('commits', 0):,}", str(built.get("segments", 0)),
                 show(item.journal_bytes / 1e6))
        read = median(item.recover_s)
        table.add(*cells, f"recover() alone (median of {len(item.recover_s)})", show(read, "s"),
                  show(read * RECOVERY_ROWS / rows if rows else math.nan, "s"),
                  show(rows / read if read else math.nan, "/s"))
        if math.isfinite(item.open_s):
            per = item.open_s * RECOVERY_ROWS / rows if rows else math.nan
            table.add(*cells, "Persistence.open() (recover, write Parquet, refill rings; once)",
                      show(item.open_s, "s"), show(per, "s"),
                      show(rows / item.open_s if item.open_s else math.nan, "/s"))
            if item is result:
                value = per
        if item.recovered_rows != rows:
            failures.append(f"recovered {item.recovered_rows:,} of {rows:,} rows ({label})")
    section.tables.append(table)
    note = ""
    if result is not None:
        read = median(result.recover_s)
        rows = int(result.built.get("rows", 0))
        note = f"journal read alone {show(read * RECOVERY_ROWS / rows if rows else math.nan, 's')}"
        if result.history_rows != rows:
            failures.append(f"Persistence.open() wrote {result.history_rows:,} of {rows:,} rows "
                            "to Parquet")
        if result.rings != int(result.built.get("symbols", -1)):
            failures.append(f"{result.rings} of {result.built.get('symbols')} rings refilled")
    section.goals.append(Goal.judge(
        "persist.recovery", "Recovery time per 10 M journalled rows (Persistence.open)",
        value, "<=", GOAL_RECOVERY_S, "s", measured_note=note, failures=failures))


def _pull_tables(result: PullResult | None, section: Section, errors: list[str]) -> None:
    failures = [e for e in errors if e.startswith("pull")]
    value = math.nan
    if result is not None:
        flight_s, duck_s = median(result.flight_s), median(result.duckdb_s)
        flight_rate = result.rows / flight_s if flight_s else math.nan
        duck_rate = result.rows / duck_s if duck_s else math.nan
        value = ratio(flight_rate, duck_rate)
        table = Table(("Reader", "Rows", "Seconds (median)", "Rows/s", "Arrow MB/s",
                       "flight_md / DuckDB"))
        mb = result.arrow_bytes / 1e6
        table.add("flight_md DoGet start=0 (history, over Flight)", f"{result.flight_rows:,}",
                  show(flight_s, "s"), show(flight_rate, "/s"),
                  show(mb / flight_s if flight_s else math.nan, "MB/s"), show(value, "x"))
        table.add("DuckDB read_parquet -> Arrow (in-process)", f"{result.duckdb_rows:,}",
                  show(duck_s, "s"), show(duck_rate, "/s"),
                  show(mb / duck_s if duck_s else math.nan, "MB/s"), "1.00x")
        floors = (("where the time goes: HistoryReader.scan alone (in-process, no Flight)",
                   result.scan_s),
                  ("where the time goes: bare Flight server, the same rows from memory",
                   result.bare_s))
        for name, times in floors:
            if times:
                took = median(times)
                rate = result.rows / took if took else math.nan
                table.add(name, f"{result.rows:,}", show(took, "s"), show(rate, "/s"),
                          show(mb / took if took else math.nan, "MB/s"),
                          show(ratio(rate, duck_rate), "x"))
        section.tables.append(table)
        section.notes.append(
            f"Range pull: the history held {result.rows:,} rows of one symbol in "
            f"{result.files} Parquet file(s), {result.bytes / 1e6:,.0f} MB, written by "
            f"HistoryWriter in {result.write_s:.1f} s; the Arrow result is "
            f"{result.arrow_bytes / 1e6:,.0f} MB. Runs: flight_md "
            f"{', '.join(f'{x:.2f}' for x in result.flight_s)} s; DuckDB "
            f"{', '.join(f'{x:.2f}' for x in result.duckdb_s)} s.")
        for name, got in (("flight_md", result.flight_rows), ("DuckDB", result.duckdb_rows)):
            if got != result.rows:
                failures.append(f"{name} returned {got:,} of {result.rows:,} rows")
    section.goals.append(Goal.judge(
        "persist.pull", "Range pull from history over Flight vs DuckDB read_parquet in-process",
        value, ">=", GOAL_PULL_RATIO, "x", failures=failures,
        measured_note=f"{result.rows:,} rows" if result is not None else ""))


def _disk_table(kill: KillResult | None, recovery: RecoveryResult | None,
                pull: PullResult | None, section: Section) -> None:
    table = Table(("Data", "Where", "Rows", "Files", "Bytes", "Bytes per tick"))
    if kill is not None:
        table.add(f"emulator tickers through ccxt, {kill.seconds:.0f} s at "
                  f"{show(kill.rate, 'msg/s')}"
                  " (the kill -9 run)", "journal, at the kill", f"{kill.journal_rows:,}", "",
                  f"{kill.journal_bytes:,}", show(_per_row(kill.journal_bytes, kill.journal_rows)))
        table.add("the same, after the restart", "Parquet history", f"{kill.history_rows:,}",
                  f"{kill.history_files:,}", f"{kill.history_bytes:,}",
                  show(_per_row(kill.history_bytes, kill.history_rows)))
    if recovery is not None:
        rows = int(recovery.built.get("rows", 0))
        table.add(f"synthetic tickers, {recovery.built.get('symbols', '')} symbols, "
                  f"{recovery.built.get('rows_per_commit', 0):,} rows per commit",
                  "journal", f"{rows:,}", str(recovery.built.get("segments", "")),
                  f"{recovery.journal_bytes:,}", show(_per_row(recovery.journal_bytes, rows)))
        table.add("the same, after Persistence.open()", "Parquet history",
                  f"{recovery.history_rows:,}", f"{recovery.history_files:,}",
                  f"{recovery.history_bytes:,}",
                  show(_per_row(recovery.history_bytes, recovery.history_rows)))
    if pull is not None:
        table.add("synthetic tickers, one symbol", "Parquet history", f"{pull.rows:,}",
                  f"{pull.files:,}", f"{pull.bytes:,}", show(_per_row(pull.bytes, pull.rows)))
    if table.rows:
        section.tables.append(table)


def measure(settings: Settings) -> Section:
    """The five persistence figures (see the module docstring), side by side."""
    section = Section("persist", "Persistence: journal and Parquet history", _method(settings))
    errors: list[str] = []
    took: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="flight_md-bench-persist-") as scratch:
        work = Path(scratch)
        ingested = _step("ingest", errors, took, _ingest, settings)
        killed = _step("kill -9", errors, took, _kill, settings, work)
        shutil.rmtree(work / "kill", ignore_errors=True)
        recovered = _step("recovery", errors, took, _recovery, settings, work, False)
        shutil.rmtree(work / "recovery", ignore_errors=True)
        small = _step("recovery (small commits)", errors, took, _recovery, settings, work,
                      True)
        shutil.rmtree(work / "recovery", ignore_errors=True)
        pulled = _step("pull", errors, took, _pull, settings, work)
    _ingest_tables(ingested, settings, section, errors)
    _kill_tables(killed, settings, section, errors)
    _recovery_tables(recovered, small, section, errors)
    _pull_tables(pulled, section, errors)
    _disk_table(killed, recovered, pulled, section)
    for error in errors:
        section.notes.append(f"Failed: {error} (its goal is missed; see the log for the "
                             "traceback).")
    section.notes.append(
        "Time per measurement (data set building included), and the machine's 1-minute load "
        "average when it began (2 cores; other work on the machine moves the figures): "
        + ", ".join(f"{name} {seconds:.0f} s (load {took[name + ' load']:.1f})"
                    for name, seconds in took.items() if not name.endswith(" load")) + ".")
    return section


def _method(settings: Settings) -> str:
    return f"""
Persistence is on by default: every server here keeps its journal and Parquet history in a
temporary data dir of its own, with the default settings (`--fsync interval`, `--commit-interval
0.2`, `--seal-interval 60`) unless a row says otherwise. **Lossless ingest**: Binance `ticker`
through real ccxt, {settings.persist_symbols} symbols, the rule and search of the ingest section ("kept up"):
the `--memory-only` server's and the persisting server's lossless rates, each by its own search
from {', '.join(f'{r:,}' for r in settings.persist_rates)} msg/s (at most {settings.persist_search_steps} more runs each, up to {settings.persist_max_rate:,} msg/s), the two
searches interleaved run by run so that the machine's load meets both alike; one more run at the lower of the two lossless rates seals the journal into Parquet
every second, so that the history writer works inside the {settings.ingest_seconds:g} s window. **kill -9**: the
emulator sends {settings.persist_kill_rate:,} tickers/s over {settings.persist_symbols} symbols to a persisting server; in this process one live
tail for each of {settings.persist_kill_tails} of them (`SYMBOL?exchange=binance&start=0&follow=true`; more tails load the server
more) records every row and when its batch arrived; after {settings.persist_kill_seconds:g} s the server gets SIGKILL. A new server starts on the data dir
(recovery) and each symbol is read back whole over Flight (`start=0`). A row a tail held before
*kill - commit interval* was stored before then and must be back exactly as often as it was
held (rows are matched as multisets on their symbol, timestamps, price, bid, ask and volume);
rows held later may be lost and are counted apart; the history's `sequence` numbers, read
from the Parquet files, must have no gap and no repeat. **Recovery**: a child process writes
a journal with `Journal.append` in the store's row layout (numeric columns + `sequence`), 200
symbols interleaved in every group commit, and exits without closing it, as `kill -9` leaves
it. The goal's case: {settings.persist_recovery_rows:,} rows in commits of {settings.persist_commit_rows:,} rows (10 M rows reach a journal
within one 60 s seal interval only at about 170,000 rows/s, commits of some 33,000 rows);
beside it, {settings.persist_recovery_rows // 10:,} rows in commits of 1,000 (a server storing 5,000 rows/s). Timed in this
process, page cache warm: `recover()` alone (read, checksums, decode), and `Persistence.open()`
(recover, write what the journal holds to Parquet, refill 200 rings of 10,000), the wait of a
restarted server before it serves. **Range pull**: {settings.persist_pull_rows:,} rows of one symbol written by `HistoryWriter` in
files of {settings.persist_pull_chunk:,} rows; a server restarted on that data dir (ring {settings.persist_ring:,}) streams
`SYMBOL?exchange=binance&start=0` to a client in this process (`read_all`), against DuckDB
`read_parquet('.../history/**/*.parquet', hive_partitioning=true)` of the same columns into an
Arrow table in this process; one untimed pull each, then {settings.persist_pull_repetitions} alternating, medians. The synthetic
rows are ticker-like (a price walk on a 0.01 tick, bid/ask around it, high/low/open, growing
volume, timestamps milliseconds apart): `benchmarks.persist.ticker_columns`. **Disk**: bytes on
disk per row of the journal and of the Parquet history (zstd) as written in these runs.
"""


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.persist")
    parser.add_argument("role", choices=("journal",))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--commit-rows", type=int, default=1_000)
    args = parser.parse_args(argv)
    _journal_child(args)


if __name__ == "__main__":
    _main()
