"""Callbacks get every stored tick, sync or async; a raising one is logged and counted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flight_md.emulator import Fault
from flight_md.errors import InvalidArgument
from flight_md.schema import MarketTick

from .support import MS, SYMBOLS, sent, stored, wait_until

pytestmark = pytest.mark.timeout(60 * MS)


@pytest.mark.asyncio
async def test_sync_and_async_callbacks_receive_every_tick(make_emulator, make_stream, caplog):
    emu = await make_emulator("binance", rate=500.0)
    stream = await make_stream(emu, connect=False)
    plain: list[MarketTick] = []
    awaited: list[MarketTick] = []
    raised = {"sync": 0, "async": 0}

    def on_tick(tick: MarketTick) -> None:
        plain.append(tick)

    async def on_tick_async(tick: MarketTick) -> None:
        await asyncio.sleep(0)
        awaited.append(tick)

    def broken(tick: MarketTick) -> None:
        raised["sync"] += 1
        if raised["sync"] % 10 == 0:
            raise ValueError("sync callback bug")

    async def broken_async(tick: MarketTick) -> None:
        raised["async"] += 1
        if raised["async"] % 10 == 0:
            raise ValueError("async callback bug")

    for callback in (on_tick, on_tick_async, broken, broken_async):
        stream.add_callback(callback)
    with caplog.at_level(logging.ERROR, logger="flight_md.ingest.stream"):
        await stream.connect()
        await stream.subscribe(list(SYMBOLS))
        await wait_until(lambda: len(plain) >= 300, 10, "300 ticks")
        await emu.inject(Fault.STALL)
        # Nothing in flight: every frame the emulator sent has been stored.
        await wait_until(lambda: all(stored(stream, s) == sent(emu, stream, s) for s in SYMBOLS),
                         5, "the store to catch up with the emulator")
        total = sum(stored(stream, s) for s in SYMBOLS)
        await wait_until(lambda: len(awaited) == total and raised["async"] == total, 5,
                         "async callbacks to catch up")
        emu.clear_faults()
    assert len(plain) == total and raised["sync"] == total
    for symbol in SYMBOLS:  # the same ticks, in the same order, as the buffer
        rows = stream.buffer.get_latest_sync(symbol, total, exchange="binance").to_pylist()
        assert [t.price for t in plain if t.symbol == symbol] == [r["price"] for r in rows]
        assert [t.price for t in awaited if t.symbol == symbol] == [r["price"] for r in rows]
    errors = total // 10 * 2
    assert stream.status().exchanges[0].callback_errors == errors
    logged = [r for r in caplog.records if "callback" in r.getMessage()]
    assert len(logged) == errors and all(r.exc_info for r in logged)
    assert any("binance BTC/USDT: callback" in r.getMessage() for r in logged)
    assert stream.state.value == "connected"  # streaming went on

    stream.remove_callback(on_tick)
    count = len(plain)
    before = stored(stream, "BTC/USDT")
    await wait_until(lambda: stored(stream, "BTC/USDT") > before + 5, 5, "more ticks")
    assert len(plain) == count
    with pytest.raises(InvalidArgument, match="not registered"):
        stream.remove_callback(on_tick)
    with pytest.raises(InvalidArgument, match="must be callable"):
        stream.add_callback(42)
