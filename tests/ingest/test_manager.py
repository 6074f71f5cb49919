"""MarketDataManager (many exchanges, one buffer), ThreadedControl and IngestionThread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.emulator import EmulatorThread
from flight_md.errors import (
    AmbiguousExchange,
    InvalidArgument,
    Unavailable,
    UnknownExchange,
)
from flight_md.events import EventLog
from flight_md.ingest.manager import IngestionThread, MarketDataManager, ThreadedControl
from flight_md.ingest.stream import ConnectionState
from tests.support import until as _wait

from .support import FAST, MS, SYMBOLS, stored, wait_until

pytestmark = pytest.mark.timeout(60 * MS)


@pytest.mark.asyncio
async def test_two_exchanges_stream_into_one_buffer(make_emulator):
    binance = await make_emulator("binance", rate=200.0)
    bybit = await make_emulator("bybit", rate=200.0)
    buffer, events = MarketDataBuffer(1000), EventLog()
    async with MarketDataManager(buffer, events) as manager:
        a = await manager.add_stream("binance", symbols=SYMBOLS, url=binance.url, **FAST)
        b = await manager.add_stream("bybit", symbols=["BTC/USDT"], url=bybit.url,
                                     channel="bidask", buffer_size=5, **FAST)
        assert a.buffer is b.buffer is buffer and a.events is b.events is events
        assert set(manager.streams) == {"binance", "bybit"}
        assert manager.get_stream("bybit") is b
        await wait_until(lambda: all(stored(a, s) > 3 for s in SYMBOLS) and stored(b, "BTC/USDT") > 3,
                         5, "ticks from both exchanges")
        assert buffer.exchanges() == ["binance", "bybit"]
        with pytest.raises(AmbiguousExchange):  # BTC/USDT is on both now
            buffer.get_latest_sync("BTC/USDT")
        status = manager.status()
        assert [e.exchange for e in status.exchanges] == ["binance", "bybit"]
        assert [e.channel for e in status.exchanges] == ["ticker", "bidask"]
        assert {(s.exchange, s.symbol) for s in status.symbols} == {
            ("binance", s) for s in SYMBOLS} | {("bybit", "BTC/USDT")}
        assert {e.exchange for e in events.events()} == {"binance", "bybit"}

        with pytest.raises(InvalidArgument, match="already running"):
            await manager.add_stream("binance", url=binance.url)
        with pytest.raises(UnknownExchange, match=r"no stream for exchange 'okx'; running: binance, bybit"):
            manager.get_stream("okx")
        await manager.remove_stream("bybit")
        assert b.state is ConnectionState.DISCONNECTED and set(manager.streams) == {"binance"}
        assert stored(b, "BTC/USDT") > 0  # the ticks stay
        with pytest.raises(UnknownExchange):
            await manager.remove_stream("bybit")
    assert a.state is ConnectionState.DISCONNECTED and not manager.streams


@pytest.mark.asyncio
async def test_a_stream_that_cannot_start_is_not_kept(make_emulator):
    emu = await make_emulator("binance")
    async with MarketDataManager() as manager:
        with pytest.raises(InvalidArgument, match="unknown symbol 'NOPE/USDT'"):
            await manager.add_stream("binance", symbols=["NOPE/USDT"], url=emu.url)
        assert not manager.streams
        with pytest.raises(Unavailable, match="cannot reach binance"):
            await manager.add_stream("binance", url="http://127.0.0.1:9")
        assert not manager.streams
        with pytest.raises(InvalidArgument, match="belongs to the manager"):
            await manager.add_stream("binance", url=emu.url, buffer=MarketDataBuffer())


@pytest.fixture
def ingestion():
    """Ingestion on its own thread, with two emulators on a third, torn down in order."""
    with EmulatorThread(exchange="binance", symbols=SYMBOLS, rate=200.0, seed=0) as binance, \
            EmulatorThread(exchange="bybit", symbols=SYMBOLS, rate=200.0, seed=0) as bybit:
        thread = IngestionThread(MarketDataBuffer(1000), EventLog())
        thread.start()
        try:
            yield thread, binance, bybit
        finally:
            thread.stop()


def test_threaded_control_from_other_threads(ingestion):
    thread, binance, bybit = ingestion
    assert thread.start() is thread  # idempotent
    control = thread.control(timeout=5.0 * MS)
    with pytest.raises(Unavailable, match="no exchange is streaming"):
        control.subscribe(None, ["BTC/USDT"])
    thread.add_stream("binance", symbols=["BTC/USDT"], url=binance.url, **FAST)

    # exchange=None with exactly one stream picks it.
    assert control.subscribe(None, ["ETH/USDT", "BTC/USDT"]) == {
        "exchange": "binance", "subscribed": ["ETH/USDT", "BTC/USDT"]}
    _wait(lambda: {("binance", "BTC/USDT"), ("binance", "ETH/USDT")} <= set(thread.buffer.keys()),
          5, "ticks")
    with pytest.raises(InvalidArgument, match=r"unknown symbol 'ETH/USDX' on binance; did you mean ETH/USDT"):
        control.subscribe("binance", ["ETH/USDX"])
    with pytest.raises(UnknownExchange, match="running: binance"):
        control.subscribe("kraken", ["BTC/USDT"])

    thread.add_stream("bybit", symbols=["SOL/USDT"], url=bybit.url, **FAST)
    with pytest.raises(InvalidArgument, match="several exchanges are streaming; name one of: binance, bybit"):
        control.unsubscribe(None, ["BTC/USDT"])
    assert control.unsubscribe("binance", ["ETH/USDT"]) == {
        "exchange": "binance", "unsubscribed": ["ETH/USDT"]}

    # Many gRPC-like threads asking at once all get consistent answers.
    results: list[object] = []

    def ask() -> None:
        results.append(control.status())

    askers = [threading.Thread(target=ask) for _ in range(8)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(10 * MS)
    assert len(results) == 8
    status = control.status()
    assert [e.exchange for e in status.exchanges] == ["binance", "bybit"]
    assert status.exchanges[0].symbols == ("BTC/USDT",)


def test_threaded_control_times_out_when_the_loop_does_not_answer(ingestion):
    thread, binance, _ = ingestion
    thread.add_stream("binance", symbols=["BTC/USDT"], url=binance.url, **FAST)
    control = ThreadedControl(thread.manager, thread.loop, timeout=0.2)
    blocking, release = threading.Event(), threading.Event()

    def block() -> None:  # a blocked ingestion loop, until the test lets it go
        blocking.set()
        release.wait(60 * MS)

    thread.loop.call_soon_threadsafe(block)
    assert blocking.wait(10 * MS), "the ingestion loop never ran the blocker"
    try:
        # Only the control's own timeout can end this call: the loop answers nothing
        # until release is set.
        with pytest.raises(Unavailable, match=r"did not answer within 0.2 s \(status\)"):
            control.status()
    finally:
        release.set()
    assert thread.control(timeout=5.0 * MS).status().exchanges[0].exchange == "binance"


@pytest.mark.asyncio
async def test_threaded_control_refuses_to_run_on_its_own_loop():
    manager = MarketDataManager()
    control = ThreadedControl(manager, asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="must not be called from the ingestion loop"):
        control.status()


def test_ingestion_thread_stops_cleanly():
    thread = IngestionThread()
    with pytest.raises(Unavailable, match="not running"):
        _ = thread.manager
    with thread:
        loop = thread.loop
        assert loop.is_running()
        assert isinstance(thread.manager, MarketDataManager)
    assert loop.is_closed()
    thread.stop()  # idempotent
    control = ThreadedControl(MarketDataManager(), loop)
    with pytest.raises(Unavailable, match="ingestion is not running"):
        control.status()
