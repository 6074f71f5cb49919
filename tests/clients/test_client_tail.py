"""Live tails: backlog then live ticks; every way a tail ends, sync and async."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import threading
from datetime import timedelta

import pyarrow as pa
import pytest
from client_support import (
    ROWS,
    Feeder,
    followers,
    killable_server,
    market,
    scaled,
    tail_threads,
    tick,
)
from flight_md_client import (
    ConnectionFailed,
    InvalidRequest,
    LiveTail,
    MarketDataClient,
    NotFound,
    SlowConsumer,
    TailEnd,
)

from flight_md.schema import now_ms
from flight_md.service import FlightMarketDataServer
from tests.support import ChildProcess, until


def _followers(server: FlightMarketDataServer, symbol: str = "BTC/USDT") -> int:
    """Live tails the server holds open for ``symbol`` on binance."""
    return followers(server.buffer, symbol)


def _wait_for(predicate: object, what: str = "the condition", timeout: float = 5.0) -> None:
    until(predicate, timeout, what)  # type: ignore[arg-type]


def _prices(batches: list[pa.RecordBatch]) -> list[float]:
    return [p for b in batches for p in b.column("price").to_pylist()]


def test_backlog_then_live_ticks_in_order(md: MarketDataClient,
                                          server: FlightMarketDataServer) -> None:
    with md.tail("BTC/USDT", backlog=3) as live:
        assert live.schema.names[:3] == ["symbol", "timestamp", "price"]
        _wait_for(lambda: _followers(server) == 1, "the tail to be open")
        with Feeder(server.buffer) as feeder:  # started after the backlog was taken
            batches = []
            for batch in live:
                batches.append(batch)
                if sum(b.num_rows for b in batches) >= 3 + 10:
                    break
        prices = _prices(batches)
        assert prices[:3] == [100.0 + ROWS - 3, 100.0 + ROWS - 2, 100.0 + ROWS - 1]
        assert prices[3:] == [1000.0 + i for i in range(len(prices) - 3)]  # no gap, in order
        assert live.rows == len(prices) and feeder.sent >= 10
    assert live.end_reason is TailEnd.CLOSED
    _wait_for(lambda: _followers(server) == 0, "the server to drop the tail")


def test_projection_start_and_read_all(md: MarketDataClient,
                                       server: FlightMarketDataServer) -> None:
    before = now_ms()
    with Feeder(server.buffer, symbol="ETH/USDT"), \
            md.tail("ETH/USDT", columns=["timestamp", "price"],
                    start=timedelta(seconds=5)) as live:
        assert live.schema.names == ["timestamp", "price"]
        table = live.read_all(max_rows=8)
    assert table.num_rows == 8
    stamps = table.column("timestamp").to_pylist()
    assert stamps == sorted(stamps)
    assert stamps[0] >= before - 5000  # nothing older than 5 s before the call


def test_tail_errors_are_raised_before_iterating(md: MarketDataClient) -> None:
    with pytest.raises(NotFound, match="^unknown symbol 'NOPE/USDT'"):
        md.tail("NOPE/USDT")
    with pytest.raises(InvalidRequest, match="^symbol 'SOL/USDT' is buffered on several"):
        md.tail("SOL/USDT")
    with pytest.raises(ValueError, match="backlog must be >= 0"):
        md.tail("BTC/USDT", backlog=-1)
    assert not tail_threads()


def test_close_from_another_thread_stops_a_quiet_tail(md: MarketDataClient,
                                                      server: FlightMarketDataServer) -> None:
    live = md.tail("ETH/USDT")  # nothing arrives on this symbol
    got: list[list[pa.RecordBatch]] = []
    consumer = threading.Thread(target=lambda: got.append(list(live)))
    consumer.start()
    _wait_for(lambda: _followers(server, "ETH/USDT") == 1, "the tail to be open")
    assert consumer.is_alive()  # waiting on a quiet symbol
    live.close()
    consumer.join(scaled(10))
    assert not consumer.is_alive() and got == [[]]
    assert live.end_reason is TailEnd.CLOSED and live.closed
    _wait_for(lambda: not tail_threads(), "the reader thread to end")
    _wait_for(lambda: _followers(server, "ETH/USDT") == 0, "the server to drop the tail")
    live.close()  # idempotent


def test_closing_the_client_closes_its_tails(location: str) -> None:
    md = MarketDataClient(location)
    tails = [md.tail("BTC/USDT"), md.tail("ETH/USDT", backlog=1)]
    md.close()
    assert all(t.end_reason is TailEnd.CLOSED for t in tails)
    assert [list(t) for t in tails] == [[], []]
    _wait_for(lambda: not tail_threads(), "the reader threads to end")


_CTRL_C = """
import sys, threading, time
from flight_md_client import MarketDataClient
import flight_md_client.tail as tail_module

md = MarketDataClient(sys.argv[1])
live = md.tail("ETH/USDT")  # a quiet symbol: the loop below waits inside LiveTail.__next__
main = threading.main_thread().ident

def inside_next():
    frame = sys._current_frames().get(main)
    while frame is not None:
        if frame.f_code is tail_module.LiveTail.__next__.__code__:
            return True
        frame = frame.f_back
    return False

def announce():
    while not inside_next():
        time.sleep(0.005)
    print("waiting", flush=True)

threading.Thread(target=announce, daemon=True).start()
try:
    for _ in live:
        pass
    print("iteration ended without KeyboardInterrupt", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", live.end_reason.value, flush=True)
while any(t.name.startswith("flight-md-tail") for t in threading.enumerate()):
    time.sleep(0.01)
print("reader thread ended", flush=True)
"""


def test_ctrl_c_closes_the_stream_and_reraises(server: FlightMarketDataServer) -> None:
    # Ctrl-C goes to a child process that tails, never to the test runner.
    child = ChildProcess(["-c", _CTRL_C, f"grpc://127.0.0.1:{server.port}"],
                         ready=re.compile(r"^waiting$"))
    with child:
        assert _followers(server, "ETH/USDT") == 1
        child.signal(signal.SIGINT)
        assert child.wait(scaled(20)) == 0, child.output
    assert child.stdout == ["waiting\n", "KeyboardInterrupt interrupted\n",
                            "reader thread ended\n"], child.output
    _wait_for(lambda: _followers(server, "ETH/USDT") == 0, "the server to drop the tail")


def test_server_shutdown_ends_iteration_cleanly(location: str,
                                                server: FlightMarketDataServer) -> None:
    with MarketDataClient(location) as md, md.tail("BTC/USDT", backlog=2) as live:
        backlog = [next(live)]
        while sum(b.num_rows for b in backlog) < 2:
            backlog.append(next(live))
        assert _prices(backlog) == [100.0 + ROWS - 2, 100.0 + ROWS - 1]
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        assert list(live) == []  # no exception, nothing more
        assert live.end_reason is TailEnd.SERVER_CLOSED
        stopper.join(scaled(10))


def test_a_slow_reader_gets_slow_consumer() -> None:
    with market(capacity=5000, follow_max_lag=10) as server, \
            MarketDataClient(f"grpc://127.0.0.1:{server.port}") as md, \
            md.tail("BTC/USDT", backlog=1) as live:
        assert next(live).num_rows == 1
        stamp = now_ms()
        server.buffer.extend(tick("BTC/USDT", stamp + i, 1.0) for i in range(2000))
        with pytest.raises(SlowConsumer, match="fell [0-9]+ ticks behind \\(limit 10\\)"):
            for _ in live:
                pass
        assert live.end_reason is TailEnd.ERROR


def test_a_lost_connection_raises_connection_failed() -> None:
    with killable_server() as (child, location), MarketDataClient(location) as md, \
            md.tail("BTC/USDT", backlog=1) as live:
        assert next(live).num_rows == 1
        child.kill()  # SIGKILL, no goodbye: the process is gone
        with pytest.raises(ConnectionFailed, match=f"^lost the connection to {location} "):
            next(live)
        assert live.end_reason is TailEnd.ERROR


def test_an_abandoned_tail_stops_its_thread(md: MarketDataClient,
                                            server: FlightMarketDataServer) -> None:
    live: LiveTail | None = md.tail("BTC/USDT")
    assert tail_threads()
    del live
    gc.collect()
    _wait_for(lambda: not tail_threads(), "the reader thread to end")
    _wait_for(lambda: _followers(server) == 0, "the server to drop the tail")


# -- asyncio ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_atail_yields_live_batches(md: MarketDataClient,
                                         server: FlightMarketDataServer) -> None:
    prices: list[float] = []
    feeder = Feeder(server.buffer)
    try:
        async for batch in md.atail("BTC/USDT", backlog=2, columns=["price"]):
            prices += batch.column("price").to_pylist()
            if len(prices) >= 2:
                feeder.start()  # after the backlog: every feeder tick is a live one
            if len(prices) >= 7:
                break
    finally:
        feeder.stop()
    assert prices[:2] == [100.0 + ROWS - 2, 100.0 + ROWS - 1]
    assert prices[2:7] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    await asyncio.to_thread(_wait_for, lambda: _followers(server) == 0)


@pytest.mark.asyncio
async def test_cancelling_the_task_stops_the_tail(md: MarketDataClient,
                                                  server: FlightMarketDataServer) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in md.atail("BTC/USDT", backlog=1):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), scaled(5))
    ticking = asyncio.create_task(asyncio.sleep(0.05))  # the loop stays responsive meanwhile
    await ticking
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(_wait_for, lambda: _followers(server) == 0)
    await asyncio.to_thread(_wait_for, lambda: not tail_threads())


@pytest.mark.asyncio
async def test_atail_ends_when_the_server_stops(md: MarketDataClient,
                                                server: FlightMarketDataServer) -> None:
    rows = 0
    stopper = threading.Thread(target=server.stop)
    async for batch in md.atail("ETH/USDT", backlog=4):
        rows += batch.num_rows
        if rows == 4 and not stopper.is_alive():
            stopper.start()  # the backlog is in: now the server goes away
    assert rows == 4
    await asyncio.to_thread(stopper.join, scaled(10))
