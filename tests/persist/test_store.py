"""Persistence in a running store: a real buffer and event log journalled into a real data dir.

:class:`~flight_md.persist.store.Persistence` over a real
:class:`~flight_md.buffer.MarketDataBuffer` and :class:`~flight_md.events.EventLog`, a data dir
under ``tmp_path``, the journal's committer running every :data:`COMMIT_S` and the history thread
never started (``.flush()`` moves the journal into Parquet when a test says so). Every check reads
the Parquet history back with :class:`~flight_md.persist.history.HistoryReader`.

Tick ``i`` of a series has timestamp ``T0 + i``, price ``i`` and sequence number ``i``, so
"every row exactly once" is ``sequence == timestamp - T0 == arange(n)``: a lost row is a gap, a
duplicate a repeat, a mislabelled row a mismatch.

Faults are real: a crash between a Parquet write and the journal's seal is the file state such a
crash leaves (the journal segment put back after its rows reached Parquet); a full disk is a 1 MB
tmpfs (skipped where mounting is not allowed); an unwritable history is a regular file where its
directory must go.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.events import EventKind, EventLog
from flight_md.persist.history import HistoryReader
from flight_md.persist.retention import RetentionPolicy
from flight_md.persist.store import HOLD_LIMIT_ROWS, SEQUENCE, PersistConfig, Persistence, PersistState
from flight_md.schema import SCHEMA, MarketTick, now_ms
from tests.support import MS, until

T0 = (now_ms() // 60_000) * 60_000 - 3 * 3_600_000
"""Timestamp of tick 0: three hours ago, well inside any retention."""
COMMIT_S = 0.05
NO_RETENTION = RetentionPolicy(max_age=None, max_bytes=None)
NEVER = 3600.0
"""A commit or seal interval no test waits for: the test decides when rows move."""
CHANNELS = {"binance": "ticker", "bybit": "ticker"}


# -- helpers ---------------------------------------------------------------------------------


def tick(i: int, symbol: str = "BTC/USDT", exchange: str = "binance") -> MarketTick:
    """Tick ``i``: timestamp ``T0 + i``, price ``i`` (sequence ``i`` when appended in order)."""
    price = float(i)
    return MarketTick(symbol, T0 + i, price, 1.0 + i, price - 0.5, price + 0.5, None, None,
                      None, price, exchange, T0 + i + 7)


def fill(buffer: MarketDataBuffer, first: int, n: int, symbol: str = "BTC/USDT",
         exchange: str = "binance") -> None:
    buffer.extend(tick(i, symbol, exchange) for i in range(first, first + n))


def history(root: Path | str, symbol: str = "BTC/USDT", exchange: str = "binance") -> pa.Table:
    """Every history row of one ticker series, in timestamp order."""
    batches = list(HistoryReader(root).scan("ticker", exchange, symbol))
    if not batches:
        return SCHEMA.append(pa.field(SEQUENCE, pa.int64())).empty_table()
    return pa.Table.from_batches(batches)


def assert_rows(table: pa.Table, n: int, first: int = 0) -> None:
    """``table`` holds ticks ``first .. first + n - 1`` exactly once, in order, correctly numbered."""
    seq = table.column(SEQUENCE).to_numpy()
    ts = table.column("timestamp").to_numpy()
    expected = np.arange(first, first + n)
    assert table.num_rows == n, (
        f"{table.num_rows} rows, expected {n}; {len(np.unique(seq))} distinct sequence numbers")
    assert (seq == expected).all(), f"sequence gaps/repeats at {np.flatnonzero(seq != expected)[:5]}"
    assert (ts - T0 == seq).all(), f"{int((ts - T0 != seq).sum())} rows with a wrong sequence"
    assert table.column("price").to_pylist() == [float(i) for i in expected]


def events_of(events: EventLog, kind: EventKind) -> list[str]:
    return [e.detail for e in events.events() if e.kind is kind]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., Persistence]]:
    """``open_store(buffer, events=None, *, data_dir=tmp_path/"data", **PersistConfig options)``:
    an opened :class:`Persistence` (history thread not started), closed at teardown."""
    opened: list[Persistence] = []

    def open_(buffer: MarketDataBuffer, events: EventLog | None = None, *,
              data_dir: Path | None = None, **options: Any) -> Persistence:
        options.setdefault("commit_interval", COMMIT_S)
        options.setdefault("seal_interval", NEVER)
        options.setdefault("retention", NO_RETENTION)
        config = PersistConfig(data_dir or tmp_path / "data", **options)
        store = Persistence(config, buffer, events if events is not None else EventLog(),
                            CHANNELS).open()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs (root only; skipped where mounting is refused). Request it before
    ``open_store`` so the stores are closed before it is unmounted."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a tmpfs mount, which needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill_disk(directory: Path) -> Path:
    """Write a file into ``directory`` until its filesystem is full; return the file."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return filler


# -- every row journalled exactly once ----------------------------------------------------------


def test_each_stored_row_is_journalled_within_an_interval_and_once(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    buffer = MarketDataBuffer(100)
    store = open_store(buffer)
    journal = store.journal
    assert journal is not None
    fill(buffer, 0, 1000)
    fill(buffer, 0, 400, "ETH/USDT", "bybit")
    until(lambda: journal.stats().committed_rows == 1400, 5 * MS, "rows journalled")
    assert journal.stats().pending_rows == 0
    assert buffer.take_unjournalled() == [], "the committer left rows behind"

    result = store.flush()
    assert (result.rows, result.skipped_rows) == (1400, 0)
    assert_rows(history(tmp_path / "data"), 1000)
    assert_rows(history(tmp_path / "data", "ETH/USDT", "bybit"), 400)
    assert journal.stats().committed_rows == 1400  # nothing journalled twice
    assert store.flush().rows == 0


def test_rows_appended_while_flushes_run_reach_the_history_once(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    buffer = MarketDataBuffer(8)
    store = open_store(buffer)
    n = 1500
    series = [("BTC/USDT", "binance"), ("ETH/USDT", "bybit")]

    def ingest() -> None:
        for i in range(n):
            for symbol, exchange in series:
                buffer.append(tick(i, symbol, exchange))

    writer = threading.Thread(target=ingest)
    writer.start()
    flushes = 0
    while writer.is_alive():
        store.flush()
        flushes += 1
    writer.join()
    store.flush()
    assert flushes > 1, "the flushes did not overlap the appends"
    for symbol, exchange in series:
        assert_rows(history(tmp_path / "data", symbol, exchange), n)
    assert buffer.held_rows() == 0
    assert store.status()["journal"]["committed_rows"] == 2 * n


def test_a_ring_wrapping_between_commits_holds_every_row_until_it_is_in_history(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    buffer = MarketDataBuffer(8)
    store = open_store(buffer, commit_interval=NEVER)  # nothing journalled before the flush
    fill(buffer, 0, 3000)
    assert buffer.count("BTC/USDT") == 8
    assert buffer.get_latest_sync("BTC/USDT", 100).column("price").to_pylist() == [
        float(i) for i in range(2992, 3000)]
    assert buffer.held_rows() == 2992
    assert store.status()["held_rows"] == 2992

    assert store.flush().rows == 3000
    assert_rows(history(tmp_path / "data"), 3000)
    assert buffer.held_rows() == 0
    fill(buffer, 3000, 500)
    assert store.flush().rows == 500
    assert_rows(history(tmp_path / "data"), 3500)
    assert buffer.stats()[0].appended == 3500


def test_clear_empties_the_ring_not_the_history(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    buffer = MarketDataBuffer(8)
    store = open_store(buffer, commit_interval=NEVER)
    assert store.journal is not None
    fill(buffer, 0, 100)
    store.journal.commit()  # journalled, evicted from the ring, held for the history
    fill(buffer, 100, 50)  # not journalled yet when the ring is cleared
    assert buffer.clear_sync("BTC/USDT") == 8
    assert buffer.count("BTC/USDT") == 0
    assert buffer.held_rows() == 0
    fill(buffer, 150, 20)

    assert store.flush().rows == 170
    assert_rows(history(tmp_path / "data"), 170)
    assert buffer.get_latest_sync("BTC/USDT", 100).column("price").to_pylist() == [
        float(i) for i in range(162, 170)]
    assert buffer.stats()[0].appended == 170


# -- restart --------------------------------------------------------------------------------------


def test_a_restart_refills_rings_counters_events_and_subscriptions(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    reference = MarketDataBuffer(10_000)  # what the first run's rings held, uncut
    first_buffer, first_events = MarketDataBuffer(100), EventLog()
    first = open_store(first_buffer, first_events)
    for buffer in (first_buffer, reference):
        fill(buffer, 0, 3000)
        fill(buffer, 0, 500, "ETH/USDT", "bybit")
    first_events.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT",), "first run subscribed")
    first.note_subscription("binance", ["ETH/USDT", "SOL/USDT"], subscribed=True)
    first.note_subscription("binance", ["SOL/USDT"], subscribed=False)  # undone: not repeated
    first.note_subscription("bybit", ["ETH/USDT"], subscribed=False)
    closed = first.close()
    assert closed.rows == 3500
    assert first.status() == {"state": "closed"}

    buffer, events = MarketDataBuffer(100), EventLog()
    store = open_store(buffer, events)
    assert store.recovery["rings_refilled"] == 2
    for symbol, exchange, appended in (("BTC/USDT", "binance", 3000), ("ETH/USDT", "bybit", 500)):
        assert buffer.get_latest_sync(symbol, 1000, exchange=exchange).equals(
            reference.get_latest_sync(symbol, 100, exchange=exchange))
        (stats,) = buffer.stats(exchange)
        assert (stats.stored, stats.appended) == (100, appended)
        assert stats.last_timestamp == T0 + appended - 1
    assert "first run subscribed" in [e.detail for e in events.events()]
    assert store.run_time_subscriptions() == {
        "binance": {"added": ["ETH/USDT"], "removed": []},
        "bybit": {"added": [], "removed": ["ETH/USDT"]}}

    fill(buffer, 3000, 10)  # numbered on from where the last run stopped
    assert buffer.stats("binance")[0].appended == 3010
    store.flush()
    assert_rows(history(tmp_path / "data"), 3010)
    assert_rows(history(tmp_path / "data", "ETH/USDT", "bybit"), 500)


def test_a_crash_image_of_a_running_store_recovers_every_committed_row(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    buffer = MarketDataBuffer(50)
    store = open_store(buffer)
    journal = store.journal
    assert journal is not None
    fill(buffer, 0, 400)
    store.flush()  # some rows already in Parquet, the rest only in the journal
    fill(buffer, 400, 600)
    until(lambda: journal.stats().committed_rows == 1000, 5 * MS, "rows journalled")
    # The files as they are now, with the store still running: what kill -9 leaves behind
    # (the copy does not carry the flock, which the kernel drops at a kill).
    shutil.copytree(tmp_path / "data", tmp_path / "crashed")

    again = MarketDataBuffer(50)
    recovered = open_store(again, data_dir=tmp_path / "crashed")
    assert recovered.recovery["journal_rows"] == 600
    assert recovered.recovery["history_rows_written"] == 600
    assert_rows(history(tmp_path / "crashed"), 1000)
    assert again.get_latest_sync("BTC/USDT", 1000).column("price").to_pylist() == [
        float(i) for i in range(950, 1000)]
    assert again.stats()[0].appended == 1000


def crash_after_history_write(store: Persistence, data_dir: Path) -> Path:
    """Leave ``data_dir`` as a crash right after the Parquet write and before the seal would:
    the closed segment's rows in Parquet, the segment itself still in the journal."""
    assert store.journal is not None
    assert store.journal.rotate() is not None
    saved = data_dir.parent / "journal-before-seal"
    shutil.copytree(data_dir / "journal", saved)
    result = store.flush()
    assert result.segments == 1
    store.close()
    shutil.rmtree(data_dir / "journal")
    shutil.copytree(saved, data_dir / "journal")
    return saved


def test_a_crash_between_history_write_and_seal_writes_no_row_twice(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    data = tmp_path / "data"
    buffer = MarketDataBuffer(8)
    store = open_store(buffer)
    fill(buffer, 0, 1000)
    fill(buffer, 0, 700, "ETH/USDT")
    crash_after_history_write(store, data)
    # The crash came between the two series: ETH/USDT's file was not written yet.
    shutil.rmtree(data / "history" / "channel=ticker" / "exchange=binance" / "symbol=ETH%2FUSDT")

    again = MarketDataBuffer(8)
    recovered = open_store(again)
    assert recovered.recovery["journal_rows"] >= 1700
    assert recovered.recovery["history_rows_written"] == 700
    assert_rows(history(data), 1000)
    assert_rows(history(data, "ETH/USDT"), 700)
    assert again.stats("binance")[0].appended == 1000
    fill(again, 1000, 5)
    recovered.flush()
    assert_rows(history(data), 1005)


def test_a_crash_between_history_write_and_seal_duplicates_no_event(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    data = tmp_path / "data"
    buffer, events = MarketDataBuffer(8), EventLog()
    store = open_store(buffer, events)
    fill(buffer, 0, 100)
    events.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT",), "recorded once")
    crash_after_history_write(store, data)

    again = EventLog()
    open_store(MarketDataBuffer(8), again)
    assert_rows(history(data), 100)
    stored = pa.Table.from_batches(list(HistoryReader(data).scan_events()))
    assert stored.column("detail").to_pylist().count("recorded once") == 1
    assert [e.detail for e in again.events()].count("recorded once") == 1


# -- status ----------------------------------------------------------------------------------------


def test_status_reports_journal_history_and_every_series(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    buffer = MarketDataBuffer(8)
    store = open_store(buffer, commit_interval=NEVER)
    fill(buffer, 0, 300)
    fill(buffer, 0, 30, "ETH/USDT", "bybit")
    before = store.status()
    assert before["state"] == PersistState.OK.value
    assert before["last_error"] is None
    assert before["data_dir"] == str(tmp_path / "data")
    assert before["history"] == str(tmp_path / "data" / "history")
    assert (before["fsync"], before["commit_interval_s"], before["seal_interval_s"]) == (
        "interval", NEVER, NEVER)
    assert before["held_rows"] == 292 + 22
    assert before["series"] == []
    assert before["retention"] == {"max_age_days": None, "max_bytes": None,
                                   "partitions_removed": 0}

    result = store.flush()
    after = store.status()
    assert after["journal"]["committed_rows"] == 330
    assert after["journal"]["pending_rows"] == 0
    assert after["journal"]["write_errors"] == after["journal"]["dropped_rows"] == 0
    assert after["held_rows"] == 0
    assert after["flushes"] == 1
    assert after["history_rows_written"] == result.rows == 330
    assert after["history_files_written"] == result.files == 2
    assert after["quarantined_files"] == 0
    series = {(s["exchange"], s["symbol"]): s for s in after["series"]}
    assert set(series) == {("binance", "BTC/USDT"), ("bybit", "ETH/USDT")}
    btc = series[("binance", "BTC/USDT")]
    assert (btc["channel"], btc["rows"], btc["files"]) == ("ticker", 300, 1)
    assert (btc["oldest_ms"], btc["newest_ms"]) == (T0, T0 + 299)
    assert btc["bytes"] == sum(p.stat().st_size for p in (tmp_path / "data" / "history").rglob(
        "*.parquet") if "BTC" in str(p))
    assert series[("bybit", "ETH/USDT")]["rows"] == 30
    store.close()
    assert store.status() == {"state": "closed"}


# -- a disk that refuses writes ---------------------------------------------------------------------


def block_by_a_file(root: Path) -> Callable[[], None]:
    """Put a regular file where the history's directory must go (mkdir fails, even as root)."""
    (root / "history").write_text("not a directory\n")
    return lambda: (root / "history").unlink()


def block_by_a_full_disk(root: Path) -> Callable[[], None]:
    return fill_disk(root).unlink


@pytest.fixture(params=["file-in-the-way", "full-tmpfs"])
def broken_history(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Callable[
        [Path], Callable[[], None]]]:
    """``(history root, break_it)``: ``break_it(root)`` makes history writes fail and returns
    what undoes it."""
    if request.param == "full-tmpfs":
        return request.getfixturevalue("small_fs"), block_by_a_full_disk
    root = tmp_path / "history-root"
    root.mkdir()
    return root, block_by_a_file


def test_an_unwritable_history_degrades_then_resumes_without_losing_rows(
        broken_history: tuple[Path, Any], open_store: Callable[..., Persistence]) -> None:
    root, break_it = broken_history
    buffer, events = MarketDataBuffer(8), EventLog()
    store = open_store(buffer, events, history_uri=str(root))
    fill(buffer, 0, 2000)
    repair = break_it(root)

    assert store.flush().rows == 0
    status = store.status()
    assert status["state"] == "degraded"
    assert status["last_error"]
    assert len(events_of(events, EventKind.PERSIST_ERROR)) == 1
    assert "serving from memory" in events_of(events, EventKind.PERSIST_ERROR)[0]
    # The ring keeps the rows it evicted (queries still see them), up to a bound...
    assert 0 < buffer.held_rows() <= HOLD_LIMIT_ROWS
    # ...and serving from memory goes on.
    fill(buffer, 2000, 500)
    assert buffer.get_latest_sync("BTC/USDT", 100).column("price").to_pylist() == [
        float(i) for i in range(2492, 2500)]
    store.flush()
    assert store.status()["state"] == "degraded"
    assert buffer.held_rows() <= HOLD_LIMIT_ROWS
    assert len(events_of(events, EventKind.PERSIST_ERROR)) == 1  # once, not per retry
    assert events_of(events, EventKind.PERSIST_RESUMED) == []

    repair()
    result = store.flush()
    assert result.rows == 2500
    status = store.status()
    assert (status["state"], status["last_error"]) == ("ok", None)
    assert len(events_of(events, EventKind.PERSIST_RESUMED)) == 1
    assert_rows(history(root), 2500)


def test_a_full_journal_disk_degrades_keeps_the_rows_pending_and_resumes(
        small_fs: Path, open_store: Callable[..., Persistence]) -> None:
    buffer, events = MarketDataBuffer(8), EventLog()
    store = open_store(buffer, events, data_dir=small_fs / "data")
    filler = fill_disk(small_fs)
    fill(buffer, 0, 2000)
    until(lambda: store.status()["state"] == "degraded", 5 * MS, "the failed commit noticed")
    until(lambda: store.status()["journal"]["pending_rows"] == 2001, 5 * MS,  # and the event
          "rows kept pending")
    assert store.status()["journal"]["write_errors"] >= 1
    assert len(events_of(events, EventKind.PERSIST_ERROR)) == 1
    assert buffer.count("BTC/USDT") == 8  # serving from memory goes on

    assert store.flush().rows == 0
    assert buffer.held_rows() <= HOLD_LIMIT_ROWS
    filler.unlink()
    until(lambda: store.status()["journal"]["pending_rows"] == 0, 5 * MS, "commits resumed")
    assert store.flush().rows == 2000
    assert store.status()["state"] == "ok"
    assert len(events_of(events, EventKind.PERSIST_RESUMED)) == 1
    assert_rows(history(small_fs / "data"), 2000)


def test_degraded_with_concurrent_ingest_loses_nothing(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    root = tmp_path / "history-root"
    root.mkdir()
    buffer = MarketDataBuffer(8)
    store = open_store(buffer, history_uri=str(root))
    repair = block_by_a_file(root)
    stop = threading.Event()
    appended = 0

    def ingest() -> None:
        nonlocal appended
        while not stop.is_set() or appended < 2000:
            buffer.append(tick(appended))
            appended += 1

    writer = threading.Thread(target=ingest)
    writer.start()
    try:
        for flushes in range(1, 2001):
            store.flush()  # fails once rows reached the journal, and releases what the ring held
            if flushes >= 20 and store.status()["state"] == "degraded":
                break
    finally:
        stop.set()
        writer.join()
    assert store.status()["state"] == "degraded"
    repair()
    store.flush()
    assert_rows(history(root), appended)



def test_a_restart_with_rows_still_in_the_journal_loses_none(
        small_fs: Path, open_store: Callable[..., Persistence]) -> None:
    first_buffer = MarketDataBuffer(8)
    first = open_store(first_buffer, history_uri=str(small_fs))
    fill(first_buffer, 0, 1000)
    first.flush()
    fill(first_buffer, 1000, 1000)
    filler = fill_disk(small_fs)
    first.close()  # the final move fails: 1000..1999 stay in the journal

    buffer = MarketDataBuffer(8)
    store = open_store(buffer, history_uri=str(small_fs))  # the disk is still full
    assert store.status()["state"] == "degraded"
    fill(buffer, 2000, 500)
    filler.unlink()
    store.flush()
    assert_rows(history(small_fs), 2500)
    assert buffer.stats()[0].appended == 2500


def test_events_recorded_while_closing_are_journalled(
        small_fs: Path, open_store: Callable[..., Persistence]) -> None:
    buffer, events = MarketDataBuffer(8), EventLog()
    first = open_store(buffer, events, history_uri=str(small_fs))
    filler = fill_disk(small_fs)
    fill(buffer, 0, 100)
    first.close()  # its flush fails and records persist_error
    assert len(events_of(events, EventKind.PERSIST_ERROR)) == 1
    filler.unlink()

    again = EventLog()
    open_store(MarketDataBuffer(8), again, history_uri=str(small_fs))
    assert_rows(history(small_fs), 100)
    assert len(events_of(again, EventKind.PERSIST_ERROR)) == 1


def test_a_journal_that_works_again_resumes_without_waiting_for_a_flush(
        small_fs: Path, open_store: Callable[..., Persistence]) -> None:
    buffer, events = MarketDataBuffer(8), EventLog()
    store = open_store(buffer, events, data_dir=small_fs / "data")
    journal = store.journal
    assert journal is not None
    filler = fill_disk(small_fs)
    fill(buffer, 0, 500)
    until(lambda: store.status()["state"] == "degraded", 5 * MS, "the failed commit noticed")
    store.flush()  # the rotate fails too
    filler.unlink()
    until(lambda: journal.stats().last_error is None and journal.stats().pending_rows == 0,
          5 * MS, "commits resumed")
    until(lambda: store.status()["state"] == "ok", 1 * MS, "persistence resumed")


# -- retention and history roots -------------------------------------------------------------


def test_retention_runs_at_start_and_removes_whole_old_days(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    """An open with ``--retention 2d`` removes the partitions of days older than that (and
    keeps today's), as ``status`` then shows."""
    data = tmp_path / "data"
    day = 86_400_000
    old_ts = (now_ms() // day - 10) * day + 1_000  # ten days ago
    store = open_store(MarketDataBuffer(8), data_dir=data)
    assert store.writer is not None
    old = _with_sequence(pa.Table.from_pylist(
        [_row_dict(tick(i, "ETH/USDT"), old_ts + i) for i in range(5)]))
    store.writer.write("ticker", "binance", "ETH/USDT", old)
    fill(store.buffer, 0, 20)
    store.flush()
    store.close()
    days = sorted(p.name for p in (data / "history").glob("channel=*/exchange=*/symbol=*/date=*"))
    assert len(days) == 2

    again = open_store(MarketDataBuffer(8), data_dir=data,
                       retention=RetentionPolicy(max_age=timedelta(days=2), max_bytes=None))
    kept = {p.parent.name: p.name for p in
            (data / "history").glob("channel=*/exchange=*/symbol=*/date=*")}
    assert kept == {"symbol=BTC%2FUSDT": next(d for d in days if d != min(days))}
    status = again.status()
    assert status["retention"]["partitions_removed"] == 1
    assert [s["symbol"] for s in status["series"]] == ["BTC/USDT"]


def test_a_history_uri_elsewhere_keeps_the_journal_in_the_data_dir(
        open_store: Callable[..., Persistence], tmp_path: Path) -> None:
    """``--history-uri`` as a ``file://`` URI (what pyarrow's FileSystem.from_uri takes, as
    for ``s3://``): the Parquet lands there, the journal stays in the data dir."""
    elsewhere = tmp_path / "lake"
    elsewhere.mkdir()
    buffer = MarketDataBuffer(8)
    store = open_store(buffer, history_uri=elsewhere.as_uri())
    fill(buffer, 0, 100)
    assert store.flush().rows == 100
    assert_rows(history(elsewhere), 100)
    assert not list((tmp_path / "data").glob("history/**/*.parquet"))
    assert (tmp_path / "data" / "journal").is_dir()
    assert store.status()["history"] == elsewhere.as_uri()


def _row_dict(t: MarketTick, timestamp: int) -> dict[str, Any]:
    row = {name: getattr(t, name) for name in SCHEMA.names}
    row["timestamp"] = timestamp
    return row


def _with_sequence(table: pa.Table) -> pa.Table:
    table = pa.Table.from_pylist(table.to_pylist(), schema=SCHEMA)
    return table.append_column(pa.field(SEQUENCE, pa.int64(), nullable=False),
                               pa.array(range(table.num_rows), pa.int64()))
