"""One fast writer, many readers and live tails, over a real Flight server."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.schema import SCHEMA, MarketTick

OFFSET = 1_000_000
SYMBOLS = ("BTC/USDT", "ETH/USDT")


def tick(i: int, symbol: str) -> MarketTick:
    """Tick ``i``: every field derived from ``i``, so a torn row cannot pass the check."""
    return MarketTick(symbol, i, 2.0 * i, 3.0 * i, i - 0.5, i + 0.5, None, None, None, None,
                      "binance", i + OFFSET)


def check_rows(table: pa.Table, symbol: str, contiguous: bool = True) -> list[int]:
    """Every row consistent, in arrival order; returns the timestamps."""
    stamps = table.column("timestamp").to_pylist()
    for name, factor in (("price", 2.0), ("volume", 3.0)):
        assert table.column(name).to_pylist() == [factor * s for s in stamps], name
    assert table.column("bid").to_pylist() == [s - 0.5 for s in stamps]
    assert table.column("receive_timestamp").to_pylist() == [s + OFFSET for s in stamps]
    assert table.column("high").null_count == table.num_rows
    assert set(table.column("symbol").to_pylist()) <= {symbol}
    if contiguous and stamps:
        assert stamps == list(range(stamps[0], stamps[0] + len(stamps))), "rows missing"
    else:
        assert stamps == sorted(stamps)
    return stamps


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so the writer and the readers interleave finely."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("fast_switching")
def test_writer_readers_and_live_tails(md_server_factory: Callable[..., Any],
                                       time_scale: float) -> None:
    buffer = MarketDataBuffer(5_000)  # small: the ring wraps while readers read
    for symbol in SYMBOLS:
        buffer.append(tick(0, symbol))
    harness = md_server_factory(buffer)
    failures: list[str] = []
    stop = threading.Event()
    written = {symbol: 1 for symbol in SYMBOLS}
    reads = {"buffer": 0, "flight": 0}

    def guard(name: str, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # reported by the main thread
                failures.append(f"{name}: {type(exc).__name__}: {exc}"[:2000])
                stop.set()
        return run

    def writer() -> None:
        deadline = time.monotonic() + 1.5 * time_scale
        rng = random.Random(1)
        while time.monotonic() < deadline and not stop.is_set():
            for symbol in SYMBOLS:
                n = rng.choice((1, 1, 7, 50, 300))
                first = written[symbol]
                if n == 1:
                    buffer.append(tick(first, symbol))
                else:
                    buffer.extend(tick(i, symbol) for i in range(first, first + n))
                written[symbol] = first + n
            time.sleep(0.0005)  # pace: ~a few hundred thousand ticks a second at most

    def buffer_reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            symbol = rng.choice(SYMBOLS)
            table = buffer.get_latest_sync(symbol, rng.randint(1, 1024))
            check_rows(table, symbol)
            hi = written[symbol]
            lo = rng.randint(max(0, hi - 8_000), hi)
            ranged = buffer.get_range_sync(symbol, lo, lo + rng.randint(0, 5000))
            stamps = check_rows(ranged, symbol)
            assert all(lo <= s for s in stamps)
            snapshot = buffer.snapshot_sync()
            assert snapshot.num_rows == 2 and snapshot.schema.equals(SCHEMA)
            reads["buffer"] += 1

    def flight_reader() -> None:
        client = harness.connect()
        rng = random.Random(7)
        while not stop.is_set():
            symbol = rng.choice(SYMBOLS)
            table = client.do_get(flight.Ticket(
                f"{symbol}?latest={rng.randint(1, 6_000)}".encode())).read_all()
            assert table.schema.equals(SCHEMA)
            check_rows(table, symbol)
            lo = max(0, written[symbol] - rng.randint(0, 6_000))
            ranged = client.do_get(flight.Ticket(
                f"{symbol}?start={lo}&end={lo + 2000}".encode())).read_all()
            check_rows(ranged, symbol)
            reads["flight"] += 1

    tails: dict[str, list[int]] = {}
    tail_readers: dict[str, Any] = {}

    def tail(symbol: str, key: str) -> None:
        client = harness.connect()
        reader = client.do_get(flight.Ticket(f"{symbol}?follow=true&latest=0".encode()))
        tail_readers[key] = reader
        seen = tails.setdefault(key, [])
        ready.release()
        while True:
            try:
                chunk = reader.read_chunk()
            except flight.FlightError:
                if done.is_set():  # cancelled by the main thread once everything arrived
                    return
                raise
            seen += check_rows(pa.Table.from_batches([chunk.data]), symbol)

    ready = threading.Semaphore(0)
    done = threading.Event()
    tail_threads = [threading.Thread(target=guard(f"tail {k}", lambda s=s, k=k: tail(s, k)),
                                     daemon=True)
                    for k, s in (("btc-1", "BTC/USDT"), ("btc-2", "BTC/USDT"),
                                 ("eth-1", "ETH/USDT"))]
    for thread in tail_threads:
        thread.start()
    for _ in tail_threads:
        assert ready.acquire(timeout=10 * time_scale), "a live tail did not open"
    # The tails are registered with the buffer before the first new tick.
    deadline = time.monotonic() + 10 * time_scale
    while sum(len(r.followers) for r in buffer._rings.values()) < 3:
        assert time.monotonic() < deadline, "live tails not attached"
        time.sleep(0.005)

    readers = [threading.Thread(target=guard(f"reader {k}", lambda k=k: buffer_reader(k)),
                                daemon=True) for k in range(3)]
    readers.append(threading.Thread(target=guard("flight reader", flight_reader), daemon=True))
    write = threading.Thread(target=guard("writer", writer), daemon=True)
    for thread in [*readers, write]:
        thread.start()
    write.join(30 * time_scale)
    assert not write.is_alive(), "writer did not finish"
    for key, symbol in (("btc-1", "BTC/USDT"), ("btc-2", "BTC/USDT"), ("eth-1", "ETH/USDT")):
        deadline = time.monotonic() + 20 * time_scale
        while not failures and (not tails[key] or tails[key][-1] < written[symbol] - 1):
            assert time.monotonic() < deadline, f"tail {key} did not catch up"
            time.sleep(0.005)
    done.set()
    for reader in tail_readers.values():
        reader.cancel()
    for thread in tail_threads:
        thread.join(20 * time_scale)
    stop.set()
    for thread in readers:
        thread.join(20 * time_scale)
    alive = [t for t in [*readers, *tail_threads] if t.is_alive()]
    assert failures == []
    assert not alive, "threads still running"
    assert reads["buffer"] > 0 and reads["flight"] > 0
    for key, symbol in (("btc-1", "BTC/USDT"), ("btc-2", "BTC/USDT"), ("eth-1", "ETH/USDT")):
        assert tails[key] == list(range(1, written[symbol])), f"tail {key} lost or repeated ticks"
    for symbol in SYMBOLS:
        assert buffer.stats()[SYMBOLS.index(symbol)].appended == written[symbol]
