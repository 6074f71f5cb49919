"""Durable history end to end (issue 13): a real ``flight-md serve`` process, killed and restarted.

Every test runs ``python -m flight_md serve`` as a process (so that SIGKILL and SIGTERM are real)
against one emulator process speaking Binance's protocol (real ccxt.pro in the server), with
``--data-dir`` given explicitly, and talks to it with a plain ``pyarrow.flight`` client:

* kill -9 mid-ingest loses nothing older than the commit interval, duplicates nothing, and the
  restarted server continues the sequence (and ``ticks_appended``) at the seam;
* a clean stop leaves everything in the Parquet history, which DuckDB and polars read with no
  flight_md import, and the rings come back;
* one server per data dir; ``--memory-only`` writes nothing; ``flush`` and ``status``;
  run-time subscriptions come back; a full disk degrades and resumes; corrupt files are
  quarantined at start.

The emulator serves more symbols than the servers subscribe (a run-time ``subscribe`` needs a
symbol the exchange lists). Tests that silence it (the ``stall`` fault) lift the stall before
they end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyarrow import flight

from tests.support import MS, EmulatorProcess, ServerProcess, child_env, emulator_fault, until

EMULATED: Final = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
"""What the emulator serves."""
SERVED: Final = EMULATED[:3]
"""What the servers subscribe at start (XRP/USDT is left for a run-time ``subscribe``)."""
RATE: Final = 900
"""Emulator updates per second over all its symbols: 300/s for each served symbol."""
COMMIT_INTERVAL_S: Final = 0.2
OPTIONS: Final = flight.FlightCallOptions(timeout=30 * MS)
Row = tuple[Any, ...]


# -- processes and calls -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--exchange", "binance", "--symbols", ",".join(EMULATED), "--rate",
                         str(RATE), "--seed", "13") as process:
        yield process


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as resources:
        yield resources


def serve(stack: ExitStack, data_dir: Path, emulator: EmulatorProcess, *extra: str,
          symbols: tuple[str, ...] = SERVED) -> ServerProcess:
    """A started server streaming ``symbols`` from the emulator into ``data_dir``."""
    server = ServerProcess(
        "--exchange", "binance", "--symbols", ",".join(symbols), "--exchange-url", emulator.url,
        "--mode", "websocket", "--heartbeat-interval", "120", "--data-dir", str(data_dir),
        "--commit-interval", str(COMMIT_INTERVAL_S), "--log-level", "WARNING", *extra)
    stack.callback(server.kill)  # after a test's own stop; a no-op then
    server.start()
    return server


def connect(stack: ExitStack, server: ServerProcess) -> flight.FlightClient:
    return stack.enter_context(flight.connect(server.location))


def action(client: flight.FlightClient, name: str, body: dict[str, Any] | None = None) -> Any:
    payload = json.dumps(body).encode() if body is not None else b""
    results = list(client.do_action(flight.Action(name, payload), OPTIONS))
    return json.loads(results[0].body.to_pybytes())


def appended(client: flight.FlightClient) -> dict[str, int]:
    return {s["symbol"]: s["ticks_appended"] for s in action(client, "status")["symbols"]}


def persistence(client: flight.FlightClient) -> dict[str, Any]:
    return dict(action(client, "status")["persistence"])


def read(client: flight.FlightClient, ticket: str) -> pa.Table:
    return client.do_get(flight.Ticket(ticket.encode()), OPTIONS).read_all()


def stored(client: flight.FlightClient, symbol: str) -> pa.Table:
    """Every row the server has for ``symbol``, history and ring (a range from the epoch)."""
    return read(client, f"{symbol}?exchange=binance&start=0")


def events(client: flight.FlightClient) -> list[dict[str, Any]]:
    return list(read(client, "@events").to_pylist())


def rows(table: pa.Table) -> list[Row]:
    """Whole rows, comparable and hashable."""
    columns = [table.column(name).to_pylist() for name in table.column_names]
    return list(zip(*columns, strict=True))




@contextmanager
def silenced(emulator: EmulatorProcess) -> Iterator[None]:
    """The emulator sends nothing meanwhile (and answers no REST request)."""
    emulator_fault(emulator.url, {"fault": "stall", "duration": 600})
    try:
        yield
    finally:
        emulator_fault(emulator.url, None)


def settled(client: flight.FlightClient) -> dict[str, int]:
    """``ticks_appended`` per symbol once it stopped moving (the exchange is silent)."""
    last: dict[str, int] = {}

    def same() -> dict[str, int] | None:
        nonlocal last
        previous, last = last, appended(client)
        return last if previous == last else None

    return dict(until(same, 30, "ingestion to go quiet", interval=0.3))


def wait_ticks(client: flight.FlightClient, at_least: int,
               symbols: tuple[str, ...] = SERVED) -> dict[str, int]:
    def enough() -> dict[str, int] | None:
        counts = appended(client)
        return counts if all(counts.get(s, 0) >= at_least for s in symbols) else None

    return dict(until(enough, 30, f"{at_least} ticks of each of {symbols}", interval=0.1))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Tail:
    """A live tail from the first stored tick: the whole ring, then every new tick."""

    client: flight.FlightClient
    symbol: str
    batches: list[pa.RecordBatch] = field(default_factory=list)
    ended: BaseException | None = None

    def __post_init__(self) -> None:
        ticket = f"{self.symbol}?follow=true&exchange=binance".encode()
        self._reader = self.client.do_get(flight.Ticket(ticket), flight.FlightCallOptions())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self.batches.append(self._reader.read_chunk().data)
        except BaseException as exc:  # noqa: BLE001 - the server went away: the tail ends
            self.ended = exc

    @property
    def count(self) -> int:
        return sum(b.num_rows for b in list(self.batches))

    def join(self) -> pa.Table:
        self._thread.join(10 * MS)
        assert not self._thread.is_alive(), f"the tail of {self.symbol} outlived its server"
        return pa.Table.from_batches(self.batches)


# -- 1. kill -9 mid-ingest -----------------------------------------------------------------------


# Which tailed rows must survive a SIGKILL at kill_ms. A row is stamped (receive_timestamp)
# when ingestion receives it, appended to its ring a little later, taken by the journal's
# committer at its next feed and written by that group commit: the committer waits one commit
# interval after a commit finishes, so a row stored at t is written by t + interval + the time
# one feed and commit take. The tail sees a row only after it was stored, so every row it got
# was stored before the kill; what it cannot tell us is how long after receive_timestamp that
# was. MARGIN_MS covers that stamping-to-store delay plus the commit's own duration, on a
# 2-core machine shared with other work (GIL and scheduling: tens of ms), times MS. The tail's
# own delivery delay needs no margin: it decides only which rows the test knows of, never
# whether a row was stored in time. kill_ms is read before the signal is sent, which can only
# move the cut-off earlier (a looser check, never a wrong one). Measured here: the newest
# survivor is 108 to 173 ms older than kill_ms (load average 3 to 7).
MARGIN_MS: Final = 150
RESTART_RING: Final = 100


def test_kill_9_loses_nothing_older_than_the_commit_interval(
        stack: ExitStack, tmp_path: Path, emulator: EmulatorProcess) -> None:
    data_dir = tmp_path / "data"
    first = serve(stack, data_dir, emulator)
    client = connect(stack, first)
    wait_ticks(client, 1)
    tails = [Tail(connect(stack, first), symbol) for symbol in SERVED]
    # Everything the ring held when a tail opened is in the tail: nothing evicted yet.
    assert max(appended(client).values()) < 10_000
    # Mid-ingest: a few seconds of ticks, several journal commits and no seal (60 s default).
    until(lambda: min(t.count for t in tails) >= 600, 30, "600 tailed ticks per symbol")
    kill_ms = now_ms()
    first.signal(signal.SIGKILL)
    assert first.wait(10 * MS) == -signal.SIGKILL
    tailed = {t.symbol: t.join() for t in tails}

    restart_ms = now_ms()
    # A ring smaller than what survived: the range below must read the history up to the
    # ring's oldest row, then the ring (its refilled rows and the new ones): the seam.
    second = serve(stack, data_dir, emulator, "--buffer-size", str(RESTART_RING))
    client = connect(stack, second)
    restored = appended(client)
    cut_off = kill_ms - COMMIT_INTERVAL_S * 1000 - MARGIN_MS * MS
    for symbol in SERVED:
        seen = rows(tailed[symbol])
        assert seen, symbol
        # The tail was live up to the kill, so the check below reaches near it.
        assert kill_ms - tailed[symbol]["receive_timestamp"][-1].as_py() < 2000 * MS, symbol
        survived_at_least = sum(1 for r in tailed[symbol]["receive_timestamp"].to_pylist()
                                if r < cut_off)
        assert restored[symbol] >= survived_at_least, (
            f"{symbol}: ticks_appended restarted at {restored[symbol]}, but "
            f"{survived_at_least} ticks older than the commit interval were stored")
    # The new server streams: every symbol takes new ticks after the restored ones.
    until(lambda: all(n >= restored[s] + 100 for s, n in appended(client).items()), 30,
          "100 new ticks per symbol after the restart")

    for symbol in SERVED:
        before = appended(client)[symbol]
        table = stored(client, symbol)
        after = appended(client)[symbol]
        assert before <= table.num_rows <= after, (
            f"{symbol}: the range holds {table.num_rows} rows; ticks_appended went from "
            f"{before} to {after} meanwhile (counted from before the kill, never reset)")
        everything = rows(table)
        received = table["receive_timestamp"].to_pylist()
        old = [r for r, at in zip(everything, received, strict=True) if at < restart_ms]
        new = everything[len(old):]
        assert len(old) > RESTART_RING, f"{symbol}: the seam is not inside the range"
        assert all(at >= restart_ms for at in received[len(old):]), (
            f"{symbol}: rows of the first run after rows of the second: not ordered at the seam")
        assert new, f"{symbol}: nothing of the second run in the range"
        seen = rows(tailed[symbol])
        # The journal loses a tail end of what was stored, never a row in the middle, and the
        # order is the order of arrival: the survivors are a prefix of what the tail saw (the
        # tail may in turn have missed the last few rows stored just before the kill).
        common = min(len(old), len(seen))
        assert old[:common] == seen[:common], f"{symbol}: the survivors are not the tail's prefix"
        at = table.column_names.index("receive_timestamp")
        must = [r for r in seen if r[at] < cut_off]
        assert len(old) >= len(must), (
            f"{symbol}: {len(must) - len(old)} rows older than kill - commit interval - margin "
            f"were lost (the newest survivor is {kill_ms - old[-1][at] if old else None} ms "
            "before the kill)")
        twice = [r for r, n in Counter(everything).items() if n > 1]
        assert not twice, f"{symbol}: {len(twice)} rows stored twice, e.g. {twice[0]}"
        timestamps = table["timestamp"].to_pylist()
        assert timestamps == sorted(timestamps), f"{symbol}: the range is not in time order"
        print(f"{symbol}: {len(seen)} tailed, {len(old)} survived; newest survivor "
              f"{kill_ms - old[-1][at]} ms before the kill; {len(new)} new rows")


# -- 2. clean stop, Parquet history, rings back ---------------------------------------------------


def history_glob(data_dir: Path) -> str:
    return f"{data_dir}/history/**/*.parquet"


def test_clean_stop_leaves_everything_in_parquet_that_duckdb_and_polars_read(
        stack: ExitStack, tmp_path: Path, emulator: EmulatorProcess) -> None:
    import duckdb
    import polars as pl

    data_dir = tmp_path / "data"
    server = serve(stack, data_dir, emulator)
    client = connect(stack, server)
    wait_ticks(client, 200)
    with silenced(emulator):
        held_counts = settled(client)
        held = {s: read(client, s) for s in SERVED}
        assert {s: t.num_rows for s, t in held.items()} == held_counts  # nothing evicted
        assert not list(data_dir.glob("history/**/*.parquet")), "sealed before the stop"
        stopping = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(5 * MS)
        took = time.monotonic() - stopping
    assert code == 0, f"no clean exit within 5 s of SIGTERM ({code}):\n{server.output}"

    # Read with no flight_md in sight: hive partitions, the symbol decoded from its
    # percent-encoded directory name.
    glob = history_glob(data_dir)
    con = duckdb.connect()
    counts = dict(con.execute(
        f"SELECT symbol, count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
        "WHERE channel = 'ticker' AND exchange = 'binance' GROUP BY symbol").fetchall())
    assert counts == held_counts
    # DuckDB lets a partition value override the file's own column: the two must agree.
    disagree = con.execute(
        f"SELECT p.filename, p.symbol, f.symbol FROM "
        f"(SELECT DISTINCT filename, symbol FROM read_parquet('{glob}', hive_partitioning=true, "
        "filename=true)) p JOIN "
        f"(SELECT DISTINCT filename, symbol FROM read_parquet('{glob}', hive_partitioning=false, "
        "filename=true)) f USING (filename) WHERE p.symbol <> f.symbol").fetchall()
    assert not disagree, disagree
    assert all("%2F" in path for (path,) in con.execute(
        f"SELECT DISTINCT filename FROM read_parquet('{glob}', filename=true)").fetchall())
    by_duckdb = con.sql(
        f"SELECT * EXCLUDE (channel, date) FROM read_parquet('{glob}', hive_partitioning=true) "
        "ORDER BY symbol, sequence").to_arrow_table()

    frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert dict(frame.group_by("symbol").len().iter_rows()) == held_counts
    assert set(frame["exchange"].unique()) == {"binance"}

    for symbol, table in held.items():
        # Every stored row, whole, in arrival order (the sequence).
        want = rows(table)
        columns = table.column_names
        duck = by_duckdb.filter(pc.equal(by_duckdb["symbol"], symbol)).select(columns)
        assert rows(duck) == want, f"{symbol}: DuckDB's rows differ from what the server held"
        pol = frame.filter(pl.col("symbol") == symbol).sort("sequence").select(columns)
        assert list(pol.iter_rows()) == want, f"{symbol}: polars' rows differ"

    restarted = serve(stack, data_dir, emulator)
    client = connect(stack, restarted)
    for symbol, table in held.items():
        ring = read(client, symbol)  # the bare ticket: the ring, refilled from the history
        assert ring.num_rows >= table.num_rows
        assert ring.slice(0, table.num_rows).equals(table), f"{symbol}: the ring came back changed"
    print(f"SIGTERM to exit: {took:.2f} s; {sum(held_counts.values())} rows in Parquet")


# -- 3. one server per data dir ---------------------------------------------------------------------


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``flight-md serve ARGS`` expected to exit on its own (a refusal)."""
    return subprocess.run([sys.executable, "-m", "flight_md", "serve", "--port", "0", *args],
                          env=child_env(), capture_output=True, text=True,
                          timeout=timeout * MS, check=False)


def test_a_second_server_on_the_same_data_dir_is_refused(
        stack: ExitStack, tmp_path: Path, emulator: EmulatorProcess) -> None:
    data_dir = tmp_path / "data"
    first = serve(stack, data_dir, emulator)
    client = connect(stack, first)
    before = wait_ticks(client, 1)

    second = run_serve("--exchange", "binance", "--symbols", ",".join(SERVED), "--exchange-url",
                       emulator.url, "--mode", "websocket", "--data-dir", str(data_dir))
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line:\n{second.stderr}"
    assert "Traceback" not in second.stderr
    message = lines[0]
    assert str(data_dir) in message, message
    assert str(first.pid) in message, f"the message should name the server holding it: {message}"
    print(message)

    # The first server never noticed: still ingesting, persisting and serving.
    until(lambda: all(n > before[s] + 50 for s, n in appended(client).items()), 30,
          "the first server to go on ingesting")
    assert persistence(client)["state"] == "ok"
    assert read(client, f"{SERVED[0]}?latest=10").num_rows == 10
    assert first.proc is not None and first.proc.poll() is None


# -- 4. --memory-only ----------------------------------------------------------------------------


def test_memory_only_writes_nothing(stack: ExitStack, tmp_path: Path, md_data_home: Path,
                                    emulator: EmulatorProcess) -> None:
    data_dir = tmp_path / "data"
    server = serve(stack, data_dir, emulator, "--memory-only")
    client = connect(stack, server)
    wait_ticks(client, 100)
    assert persistence(client) == {"state": "memory_only"}
    with pytest.raises(flight.FlightUnavailableError, match="memory-only"):
        action(client, "flush")
    assert stored(client, SERVED[0]).num_rows >= 100  # ranges answer from the ring
    assert server.stop() == 0
    assert not data_dir.exists(), sorted(data_dir.rglob("*"))
    assert not any(md_data_home.iterdir()), "wrote into the default data dir"


# -- 5. flush and status ---------------------------------------------------------------------------


def test_flush_writes_the_files_it_counts_and_status_shows_them(
        stack: ExitStack, tmp_path: Path, emulator: EmulatorProcess) -> None:
    import pyarrow.parquet as pq

    data_dir = tmp_path / "data"
    server = serve(stack, data_dir, emulator)
    client = connect(stack, server)
    wait_ticks(client, 100)
    status = persistence(client)
    assert status["state"] == "ok", status
    assert status["data_dir"] == str(data_dir)
    assert status["series"] == []

    result = action(client, "flush")
    assert set(result) >= {"segments", "rows", "files", "bytes", "events", "skipped_rows"}
    files = sorted(data_dir.glob("history/channel=ticker/exchange=binance/symbol=*/date=*/*.parquet"))
    assert result["segments"] >= 1 and result["rows"] >= 3 * 100, result
    assert result["files"] == len(files) == len(SERVED), (result, files)
    assert result["bytes"] == sum(f.stat().st_size for f in files)
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == result["rows"]
    assert result["events"] >= 1 and list(data_dir.glob("events/date=*/*.parquet"))

    status = persistence(client)
    assert status["state"] == "ok", status
    assert status["flushes"] == 1
    series = {s["symbol"]: s for s in status["series"]}
    assert set(series) == set(SERVED)
    assert sum(s["rows"] for s in series.values()) == result["rows"]
    assert all(s["channel"] == "ticker" and s["exchange"] == "binance" and s["bytes"] > 0
               and s["oldest_ms"] <= s["newest_ms"] for s in series.values()), series
    assert status["journal"]["committed_rows"] >= result["rows"]

    # A second flush writes only what came since; nothing twice.
    wait_ticks(client, max(s["rows"] for s in series.values()) + 50)
    again = action(client, "flush")
    assert again["rows"] > 0 and again["skipped_rows"] == 0, again
    assert sum(s["rows"] for s in persistence(client)["series"]) == result["rows"] + again["rows"]


# -- 6. run-time subscriptions ----------------------------------------------------------------------


def test_run_time_subscriptions_come_back_after_a_restart(
        stack: ExitStack, tmp_path: Path, emulator: EmulatorProcess) -> None:
    data_dir = tmp_path / "data"
    added, removed = EMULATED[3], SERVED[2]
    server = serve(stack, data_dir, emulator)
    client = connect(stack, server)
    wait_ticks(client, 1)
    action(client, "subscribe", {"symbols": [added], "exchange": "binance"})
    action(client, "unsubscribe", {"symbols": [removed], "exchange": "binance"})
    wait_ticks(client, 50, (added,))
    assert server.stop() == 0

    restarted = serve(stack, data_dir, emulator)
    client = connect(stack, restarted)

    def subscribed() -> dict[str, bool]:
        return {s["symbol"]: s["subscribed"] for s in action(client, "status")["symbols"]}

    until(lambda: subscribed().get(added) and not subscribed().get(removed), 30,
          f"{added} subscribed and {removed} not, as before the restart")
    restored = appended(client)[added]
    assert restored >= 50
    # Streaming again, not only refilled from the history.
    wait_ticks(client, restored + 50, (added,))


# -- 7. disk full ------------------------------------------------------------------------------------


def umount(mount_point: Path) -> None:
    done = subprocess.run(["umount", str(mount_point)], check=False, capture_output=True,
                          timeout=30)
    if done.returncode:  # still busy (a process the test could not stop): detach it
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True,
                       timeout=30)


@pytest.fixture
def small_disk(stack: ExitStack, tmp_path: Path) -> Path:
    """A 2 MiB tmpfs mounted as the data dir (skips where mounting is not allowed); unmounted
    after the processes the test starts are gone (the stack stops them first)."""
    mount_point = tmp_path / "data"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                       check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        pytest.skip(f"cannot mount a small tmpfs for the full-disk test: {detail}")
    stack.callback(umount, mount_point)
    return mount_point


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    chunk = b"\0" * 65536
    written = 0
    with path.open("wb", buffering=0) as out:
        try:
            while True:
                written += out.write(chunk)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
        try:
            while True:  # the last partial chunk's worth, byte by byte in pages
                written += out.write(b"\0" * 512)
        except OSError:
            pass
    return written


def test_a_full_disk_degrades_and_resumes_without_losing_what_was_committed(
        stack: ExitStack, small_disk: Path, emulator: EmulatorProcess) -> None:
    data_dir = small_disk
    server = serve(stack, data_dir, emulator)
    client = connect(stack, server)
    wait_ticks(client, 100)
    committed = {s: rows(stored(client, s)) for s in SERVED}
    commits = persistence(client)["journal"]["commits"]
    # Two commits later every row read above is in the journal (the first may have been
    # taking its rows already while they were read).
    until(lambda: persistence(client)["journal"]["commits"] >= commits + 2, 10,
          "two more journal commits")

    filler = data_dir / "filler"
    fill(filler)
    status = until(lambda: (s := persistence(client))["state"] == "degraded" and s, 10,
                   "persistence to say degraded")
    assert "No space" in status["last_error"], status
    kinds = [e["kind"] for e in events(client)]
    assert kinds.count("persist_error") == 1, kinds
    # Ingestion and serving go on from memory; a flush answers (it writes nothing).
    degraded_at = appended(client)
    assert action(client, "flush")["rows"] == 0
    until(lambda: all(n >= degraded_at[s] + 100 for s, n in appended(client).items()), 30,
          "ingestion to go on while the disk is full")
    for symbol in SERVED:
        ring = read(client, symbol)  # nothing evicted yet: every row since the start
        assert ring.num_rows >= degraded_at[symbol] + 100
        assert rows(ring)[:len(committed[symbol])] == committed[symbol]
        assert read(client, f"{symbol}?latest=50").num_rows == 50
        # A range (history, empty here, then the ring) answers every row memory holds.
        assert stored(client, symbol).slice(0, ring.num_rows).equals(ring), symbol

    # Space comes back.
    subprocess.run(["mount", "-o", "remount,size=64m", str(data_dir)], check=True,
                   capture_output=True, timeout=30)
    # The journal commits again at its next interval, the history at its next retry: neither
    # waits for the next seal (a minute by default), even after the flush that failed above.
    until(lambda: persistence(client)["state"] == "ok", 5, "persistence to resume")
    kinds = [e["kind"] for e in events(client)]
    assert kinds.index("persist_resumed") > kinds.index("persist_error"), kinds
    filler.unlink()
    resumed_at = appended(client)
    flushed = action(client, "flush")
    assert flushed["rows"] > 0, flushed
    journal = persistence(client)["journal"]
    assert journal["dropped_rows"] == 0, journal
    assert server.stop() == 0

    restarted = serve(stack, data_dir, emulator)
    client = connect(stack, restarted)
    for symbol in SERVED:
        everything = rows(stored(client, symbol))
        assert everything[:len(committed[symbol])] == committed[symbol], (
            f"{symbol}: rows committed before the disk filled were lost or changed")
        # Nothing was dropped while degraded either: the journal kept it pending.
        assert len(everything) >= resumed_at[symbol]
        twice = [r for r, n in Counter(everything).items() if n > 1]
        assert not twice, f"{symbol}: {len(twice)} rows stored twice"


# -- 8. corrupt files found at start ---------------------------------------------------------------


@pytest.fixture(scope="module")
def killed(emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir a server left when killed mid-ingest: Parquet files of a flush, and the
    journal segment written since (not sealed, never closed)."""
    data_dir = tmp_path_factory.mktemp("killed") / "data"
    with ExitStack() as stack:
        server = serve(stack, data_dir, emulator)
        client = connect(stack, server)
        wait_ticks(client, 100)
        assert action(client, "flush")["files"] == len(SERVED)
        commits = persistence(client)["journal"]["commits"]
        wait_ticks(client, 300)
        # At least four group commits in the new segment, whatever the pace of the ticks:
        # the tests damage one in the middle.
        until(lambda: persistence(client)["journal"]["commits"] >= commits + 4, 30,
              "four commits after the flush", interval=0.1)
        server.signal(signal.SIGKILL)
        server.wait(10 * MS)
    return data_dir


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "journal").glob("*.wal"))


def flip_middle_batch(path: Path) -> None:
    """Flip one byte inside the payload of the segment's middle BATCH record (the framing is
    flight_md.persist.journal's: magic, then header, payload, padding per record), so the
    damage is always one a checksum covers, with whole commits after it."""
    from flight_md.persist.journal import MAGIC, RECORD_HEADER, RecordKind

    data = bytearray(path.read_bytes())
    pos, batches = len(MAGIC), []
    while pos < len(data):
        length, _, kind, _ = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        if kind == RecordKind.BATCH:
            batches.append((start, length))
        pos = start + length + (-length % 8)
    assert len(batches) >= 3, f"{path.name}: too few commits to damage one in the middle"
    start, length = batches[len(batches) // 2]
    data[start + length // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_journal_segment_and_a_truncated_parquet_file_are_quarantined(
        stack: ExitStack, tmp_path: Path, killed: Path, emulator: EmulatorProcess) -> None:
    import shutil

    from flight_md.events import Event, EventKind
    from flight_md.persist.datadir import DataDir
    from flight_md.persist.recovery import open_journal

    data_dir = tmp_path / "data"
    shutil.copytree(killed, data_dir)
    [segment] = segments(data_dir)
    # A later segment (one event, closed), so that the damaged one is not the journal's
    # tail, which a crash may leave torn: damage there is corruption.
    with DataDir.open(data_dir) as opened:
        journal, _ = open_journal(opened)
        journal.append_events(Event(now_ms(), "*", EventKind.ERROR, (), "written by the test"))
        journal.close()
    assert len(segments(data_dir)) == 2
    flip_middle_batch(segment)
    victim = min(data_dir.glob(f"history/**/symbol={quote(SERVED[0], safe='')}/*/*.parquet"))
    relative = victim.relative_to(data_dir)
    os.truncate(victim, victim.stat().st_size // 2)

    server = serve(stack, data_dir, emulator)
    client = connect(stack, server)
    status = persistence(client)
    assert status["state"] == "ok", status
    assert status["recovery"]["quarantined_segments"] == 1, status["recovery"]
    assert status["quarantined_files"] >= 1, status
    assert (data_dir / "quarantine" / "journal" / segment.name).is_file()
    assert (data_dir / "quarantine" / relative).is_file(), sorted(data_dir.rglob("*"))
    assert not victim.exists()
    found = events(client)
    recovered = [e["detail"] for e in found if e["kind"] == "recovered"]
    assert recovered and "corrupt segments quarantined: 1" in recovered[-1], recovered
    assert any(e["kind"] == "quarantined" and victim.name in e["detail"] for e in found), found
    # And it serves: the rings (what survived), ranges over history and ring, new ticks.
    start = appended(client)
    for symbol in SERVED:
        assert read(client, symbol).num_rows > 0, symbol
    until(lambda: all(n >= start[s] + 50 for s, n in appended(client).items()), 30,
          "50 new ticks per symbol")
    for symbol in SERVED:
        everything = rows(stored(client, symbol))
        assert len(everything) == len(set(everything)), f"{symbol}: rows stored twice"


def test_a_bit_flip_inside_the_killed_servers_last_segment_is_quarantined(
        stack: ExitStack, tmp_path: Path, killed: Path, emulator: EmulatorProcess) -> None:
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(killed, data_dir)
    [segment] = segments(data_dir)
    flip_middle_batch(segment)  # whole commits follow the damage: not a torn write

    server = serve(stack, data_dir, emulator)
    client = connect(stack, server)
    status = persistence(client)
    assert status["state"] == "ok", status
    # A kill -9 leaves the last segment unfinished, and a torn write there is cut; but a
    # checksum failure with whole commits after it is corruption: the file is copied aside
    # as found, the commits before the damage are kept.
    recovery = status["recovery"]
    assert (data_dir / "quarantine" / "journal" / segment.name).is_file(), (
        recovery, sorted(p.name for p in data_dir.rglob("*")))
    assert recovery["quarantined_segments"] == 1 and recovery["torn_tails"] == 0, recovery
    assert recovery["journal_rows"] > 0, recovery
    recovered = [e["detail"] for e in events(client) if e["kind"] == "recovered"]
    assert recovered and "corrupt segments quarantined: 1" in recovered[-1], recovered
