"""Book streams end to end: ``MarketDataStream(channel="book")`` with the capture, against the synthetic emulator.

One test per registered venue with a dialect (its ``test_symbols``): books are stored, a lost
book update (the emulator's ``book_gap`` fault) is a ``book_resync`` event naming the gap, the
stream's session ends and the next one stores from new snapshots; no stored book is crossed and
none is stored from the failure until the new session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.emulator import Emulator, Fault
from flight_md.errors import NotFound
from flight_md.events import EventKind
from flight_md.venues import emulated, venue
from tests.ingest.support import wait_until
from tests.ingest.test_book_capture import never_crossed
from tests.ingest.test_book_faults import LOST


def rows(buffer: MarketDataBuffer, exchange: str, symbol: str) -> pa.Table | None:
    try:
        return buffer.get_range_sync(symbol, exchange=exchange)
    except NotFound:
        return None


def count(buffer: MarketDataBuffer, exchange: str, symbol: str) -> int:
    table = rows(buffer, exchange, symbol)
    return 0 if table is None else table.num_rows


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange_id", emulated())
async def test_a_book_stream_resyncs_a_lost_update_and_stores_from_the_new_snapshot(
        exchange_id: str, make_emulator: Callable[..., Awaitable[Emulator]],
        make_stream: Callable[..., Awaitable[Any]]) -> None:
    symbols = venue(exchange_id).test_symbols
    emulator = await make_emulator(exchange_id, symbols, rate=40.0)
    buffer = MarketDataBuffer(10_000, channel="book", book_depth=10)
    stream = await make_stream(emulator, symbols, channel="book", buffer=buffer)
    await wait_until(lambda: all(count(buffer, exchange_id, s) >= 3 for s in symbols), 10, "books stored")
    await emulator.inject(Fault.BOOK_GAP)

    def resyncs() -> list[Any]:
        return [e for e in stream.events.events(exchange_id) if e.kind is EventKind.BOOK_RESYNC]

    await wait_until(resyncs, 10, "a book_resync event")
    failed_at = resyncs()[0].timestamp
    before = {s: count(buffer, exchange_id, s) for s in symbols}
    await wait_until(lambda: all(count(buffer, exchange_id, s) >= before[s] + 3 for s in symbols), 10,
                     "books stored again from the new session")
    events = resyncs()
    assert events and all(e.detail.startswith(LOST[exchange_id]) for e in events), events
    assert len({e.symbols for e in events}) == len(events)  # one event per failed book, never repeated
    for symbol in symbols:
        table = rows(buffer, exchange_id, symbol)
        assert table is not None
        never_crossed(table)
        if any(e.symbols == (symbol,) for e in events):
            # Nothing stale: the first row stored after the failure was received after it.
            times = table.column("receive_timestamp").to_pylist()
            assert min(times[before[symbol]:]) >= failed_at
