"""Live tails: backlog then live ticks; every way a tail ends, sync and async."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pyarrow as pa
import pytest
from client_support import (
    ROWS,
    Feeder,
    free_port,
    market,
    scaled,
    subprocess_env,
    tail_threads,
    tick,
    wait_for,
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


def _followers(server: FlightMarketDataServer, symbol: str = "BTC/USDT") -> int:
    """Live tails the server holds open for ``symbol`` on binance."""
    ring = server.buffer._rings[("binance", symbol)]
    with ring.lock:
        return len(ring.followers)


def _prices(batches: list[pa.RecordBatch]) -> list[float]:
    return [p for b in batches for p in b.column("price").to_pylist()]


def test_backlog_then_live_ticks_in_order(md: MarketDataClient,
                                          server: FlightMarketDataServer) -> None:
    with Feeder(server.buffer) as feeder, md.tail("BTC/USDT", backlog=3) as live:
        assert live.schema.names[:3] == ["symbol", "timestamp", "price"]
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
    wait_for(lambda: _followers(server) == 0)


def test_projection_start_and_read_all(md: MarketDataClient,
                                       server: FlightMarketDataServer) -> None:
    with Feeder(server.buffer, symbol="ETH/USDT"), \
            md.tail("ETH/USDT", columns=["timestamp", "price"],
                    start=timedelta(seconds=5)) as live:
        assert live.schema.names == ["timestamp", "price"]
        table = live.read_all(max_rows=8)
    assert table.num_rows == 8
    assert table.column("timestamp").to_pylist() == sorted(table.column("timestamp").to_pylist())
    assert table.column("timestamp")[0].as_py() >= now_ms() - scaled(10) * 1000


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
    threading.Timer(0.2, live.close).start()
    started = time.monotonic()
    assert list(live) == []
    assert time.monotonic() - started < scaled(3)
    assert live.end_reason is TailEnd.CLOSED and live.closed
    wait_for(lambda: not tail_threads())
    wait_for(lambda: _followers(server, "ETH/USDT") == 0)
    live.close()  # idempotent


def test_closing_the_client_closes_its_tails(location: str) -> None:
    md = MarketDataClient(location)
    tails = [md.tail("BTC/USDT"), md.tail("ETH/USDT", backlog=1)]
    md.close()
    assert all(t.end_reason is TailEnd.CLOSED for t in tails)
    assert [list(t) for t in tails] == [[], []]
    wait_for(lambda: not tail_threads())


def test_ctrl_c_closes_the_stream_and_reraises(md: MarketDataClient,
                                               server: FlightMarketDataServer) -> None:
    live = md.tail("BTC/USDT")
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in live:
            pass
    timer.join()
    assert live.end_reason is TailEnd.INTERRUPTED
    wait_for(lambda: _followers(server) == 0)
    wait_for(lambda: not tail_threads())


def test_server_shutdown_ends_iteration_cleanly(location: str,
                                                server: FlightMarketDataServer) -> None:
    with MarketDataClient(location) as md, md.tail("BTC/USDT", backlog=2) as live:
        threading.Timer(0.2, server.stop).start()
        batches = list(live)  # no exception
        assert _prices(batches) == [100.0 + ROWS - 2, 100.0 + ROWS - 1]
        assert live.end_reason is TailEnd.SERVER_CLOSED


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


_SERVE = """
import sys, time
from flight_md.buffer import MarketDataBuffer
from flight_md.schema import MarketTick
from flight_md.service import FlightMarketDataServer
buffer = MarketDataBuffer(100)
buffer.append(MarketTick("BTC/USDT", 1, 1.0, None, None, None, None, None, None, None,
                         "binance", 1))
server = FlightMarketDataServer(f"grpc://127.0.0.1:{sys.argv[1]}", buffer)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_lost_connection_raises_connection_failed() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(port)], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with MarketDataClient(f"grpc://127.0.0.1:{port}") as md, \
                md.tail("BTC/USDT", backlog=1) as live:
            assert next(live).num_rows == 1
            proc.kill()  # no goodbye: the process is gone
            with pytest.raises(ConnectionFailed,
                               match=f"^lost the connection to grpc://127.0.0.1:{port} "):
                next(live)
            assert live.end_reason is TailEnd.ERROR
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_an_abandoned_tail_stops_its_thread(md: MarketDataClient,
                                            server: FlightMarketDataServer) -> None:
    live: LiveTail | None = md.tail("BTC/USDT")
    assert tail_threads()
    del live
    gc.collect()
    wait_for(lambda: not tail_threads())
    wait_for(lambda: _followers(server) == 0)


# -- asyncio ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_atail_yields_live_batches(md: MarketDataClient,
                                         server: FlightMarketDataServer) -> None:
    prices: list[float] = []
    with Feeder(server.buffer):
        async for batch in md.atail("BTC/USDT", backlog=2, columns=["price"]):
            prices += batch.column("price").to_pylist()
            if len(prices) >= 7:
                break
    assert prices[:2] == [100.0 + ROWS - 2, 100.0 + ROWS - 1]
    assert prices[2:7] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    await asyncio.to_thread(wait_for, lambda: _followers(server) == 0)


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
    await asyncio.to_thread(wait_for, lambda: _followers(server) == 0)
    await asyncio.to_thread(wait_for, lambda: not tail_threads())


@pytest.mark.asyncio
async def test_atail_ends_when_the_server_stops(md: MarketDataClient,
                                                server: FlightMarketDataServer) -> None:
    rows = 0
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, lambda: threading.Thread(target=server.stop).start())
    async for batch in md.atail("ETH/USDT", backlog=4):
        rows += batch.num_rows
    assert rows == 4
