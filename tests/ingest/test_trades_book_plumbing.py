"""The stream plumbing a book stream needs (the capture itself is tested in test_book_*.py):
``MarketDataStream(channel="book")`` on every venue stores books, and a book the capture
fails is resubscribed: in place where ccxt can unsubscribe, else by a new session."""

from __future__ import annotations

from typing import Any

import pytest

from flight_md.emulator import Emulator
from flight_md.emulator.fault import Fault
from flight_md.errors import NotFound
from flight_md.events import EventKind
from flight_md.ingest.stream import MarketDataStream
from flight_md.normalize import BookTop
from flight_md.venues import VENUES, emulated

from .support import MS, wait_until


def rows(stream: MarketDataStream, symbol: str) -> Any:
    try:
        return stream.buffer.get_latest_sync(symbol, 100_000, exchange=stream.exchange_id)
    except NotFound:
        return None


def count(stream: MarketDataStream, symbol: str) -> int:
    table = rows(stream, symbol)
    return 0 if table is None else table.num_rows


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", emulated())
async def test_a_failed_book_is_resubscribed_and_storing_resumes(venue_id: str) -> None:
    symbol = VENUES[venue_id].test_symbols[0]
    async with Emulator(venue_id, [symbol], rate=100) as emu:
        stream = MarketDataStream(venue_id, url=emu.url, channel="book", book_depth=10,
                                  reconnect_delay=0.05, heartbeat_interval=10 * MS)
        tops: list[BookTop] = []
        stream.add_callback(tops.append)
        await stream.connect()
        await stream.subscribe([symbol])
        try:
            await wait_until(lambda: count(stream, symbol) >= 5, 10 * MS, "the first books")
            await emu.inject(Fault.BOOK_GAP)
            await wait_until(lambda: stream.counters()["resyncs"] == 1, 10 * MS, "the resync")
            at_resync = count(stream, symbol)
            await wait_until(lambda: count(stream, symbol) >= at_resync + 5, 10 * MS, "books again")
            kinds = [e.kind for e in stream.events.events(venue_id)]
            assert kinds.count(EventKind.BOOK_RESYNC) == 1
            # Where ccxt can unsubscribe, only the book's group is resubscribed: the connection stays.
            in_place = VENUES[venue_id].channels["book"].unwatch is not None  # type: ignore[index]
            assert (EventKind.DISCONNECT not in kinds) is in_place, kinds
            table = rows(stream, symbol)
            for bids, asks in zip(table.column("bids").to_pylist(), table.column("asks").to_pylist(),
                                  strict=True):
                assert len(bids) <= 10 and len(asks) <= 10 and bids[0]["price"] < asks[0]["price"]
            assert len(tops) == table.num_rows and tops[-1].bids[0][0] < tops[-1].asks[0][0]
            assert stream.status().exchanges[0].counters["stored"] == table.num_rows
        finally:
            await stream.disconnect()
