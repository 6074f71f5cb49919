"""Book faults injected by the emulator (``book_gap``, ``book_checksum``): one resync, nothing stale or crossed stored.

Real ccxt.pro against the synthetic emulator, the capture installed as the book stream installs
it (:func:`tests.ingest.test_book_capture.observed`), into a real book buffer. A resync is
answered as the stream answers it: the websocket session ends (every client closed) and the
next ``watch_order_book`` subscribes the book afresh, from a new snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from flight_md.emulator import Fault
from flight_md.schema import now_ms
from tests.ingest.test_book_capture import Rig, never_crossed, rig
from tests.support import MS, async_until

SYMBOL = {"binance": "BTC/USDT", "bybit": "BTC/USDT:USDT", "coinbase": "BTC/USD", "kraken": "BTC/USD", "okx": "BTC/USDT"}
# What each venue's verifier (or its checksum) sees of a lost update, and of a wrong checksum.
LOST = {"binance": "gap: expected U ", "bybit": "gap: expected u ", "coinbase": "gap: expected sequence_num ",
        "kraken": "checksum mismatch: ", "okx": "gap: expected prevSeqId "}
CASES = [*((venue, Fault.BOOK_GAP, detail) for venue, detail in sorted(LOST.items())),
         ("kraken", Fault.BOOK_CHECKSUM, "checksum mismatch: "), ("okx", Fault.BOOK_CHECKSUM, "checksum mismatch: ")]


async def watch(r: Rig, symbol: str) -> None:
    """The stream's book loop: watch, and after a failed watch (ccxt's own sequence error) watch again."""
    while True:
        try:
            await r.exchange.watch_order_book(symbol, 10 if r.exchange.id == "kraken" else None)
        except Exception:  # noqa: BLE001 - a closed session or ccxt's own sequence error: resubscribe
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.parametrize(("exchange_id", "fault", "detail"), CASES)
async def test_a_book_fault_resyncs_once_and_nothing_stale_or_crossed_is_stored(
        exchange_id: str, fault: Fault, detail: str) -> None:
    symbol = SYMBOL[exchange_id]
    resynced: dict[str, int] = {}  # rows stored when the resync was asked for; when the session was closed
    closing: list[asyncio.Task[None]] = []
    box: dict[str, Any] = {}

    async def end_session() -> None:
        # As the stream: the session's watcher ends, its websockets close, a new session subscribes.
        box["watcher"].cancel()
        clients = list((box["rig"].exchange.clients or {}).values())
        await asyncio.gather(box["watcher"], *(client.close() for client in clients), return_exceptions=True)
        resynced["closed_at"] = now_ms()
        box["watcher"] = asyncio.create_task(watch(box["rig"], symbol))

    def on_resync(asked: str) -> None:
        resynced["rows"] = box["rig"].rows(asked).num_rows
        closing.append(asyncio.get_running_loop().create_task(end_session()))

    async with rig(exchange_id, on_resync=on_resync, symbols=(symbol,), rate=50, seed=0) as r:
        box["rig"] = r
        box["watcher"] = asyncio.create_task(watch(r, symbol))
        try:
            await async_until(lambda: (r.exchange.id, symbol) in list(r.buffer.keys()) and r.rows(symbol).num_rows >= 5, 10,
                              "books stored before the fault")
            await r.emulator.inject(fault)
            await async_until(lambda: "closed_at" in resynced, 10, "the resync and the session's end")
            await async_until(lambda: r.rows(symbol).num_rows >= resynced["rows"] + 5, 10,
                              "books stored again after the new snapshot")
        finally:
            await asyncio.gather(*closing, return_exceptions=True)
            box["watcher"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await box["watcher"]
        assert r.emulator.stats.faults.get(fault, 0) == 1
        (event,) = r.book_resyncs()
        assert event.symbols == (symbol,) and event.detail.startswith(detail), event
        assert r.resyncs == [symbol]
        counters = r.capture.counters
        assert counters["resyncs"] == 1 and counters["gap" if detail.startswith("gap") else "checksum"] == 1
        rows = r.rows(symbol)
        never_crossed(rows)
        # Nothing stale: no book stored from the failure until the new session's snapshot.
        after = rows.column("receive_timestamp").to_pylist()[resynced["rows"]:]
        assert after and min(after) >= resynced["closed_at"]


@pytest.mark.asyncio
async def test_book_faults_wait_for_a_book_update() -> None:
    # Tickers pass through an armed book fault; the first book update after the snapshot takes it.
    async with rig("okx", symbols=("BTC/USDT",), rate=50, seed=0) as r:
        await r.emulator.inject(Fault.BOOK_GAP)
        ticker: Any = await asyncio.wait_for(r.exchange.watch_ticker("BTC/USDT"), 5 * MS)
        assert ticker["symbol"] == "BTC/USDT"
        await async_until(lambda: r.emulator.stats.frames_total > 5, 5, "tickers sent")
        assert r.emulator.stats.faults.get(Fault.BOOK_GAP, 0) == 0
        await asyncio.wait_for(r.exchange.watch_order_book("BTC/USDT"), 5 * MS)
        await async_until(lambda: r.emulator.stats.faults.get(Fault.BOOK_GAP, 0) == 1, 5, "the fault to hit an update")
        await async_until(lambda: len(r.book_resyncs()) == 1, 5, "the resync")
        assert r.rows("BTC/USDT").num_rows == 1  # the snapshot; the update after the lost one is refused
