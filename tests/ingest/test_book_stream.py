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
from flight_md.ingest.books import COUNTERS
from flight_md.venues import emulated, venue
from tests.emulator.conftest import recording_path
from tests.ingest.support import MS, wait_until
from tests.ingest.test_book_capture import EXPECTED, never_crossed
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


def top(buffer: MarketDataBuffer, exchange: str, symbol: str) -> Any:
    table = rows(buffer, exchange, symbol)
    if table is None or table.num_rows == 0:
        return None
    row = table.slice(table.num_rows - 1).to_pylist()[0]
    return ([[lv["price"], lv["amount"]] for lv in row["bids"]], [[lv["price"], lv["amount"]] for lv in row["asks"]])


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange_id", sorted(EXPECTED))
async def test_a_book_stream_s_replay_ends_with_the_book_rebuilt_from_the_recording(
        exchange_id: str, make_emulator: Callable[..., Awaitable[Emulator]],
        make_stream: Callable[..., Awaitable[Any]]) -> None:
    expected = EXPECTED[exchange_id]()
    symbols = sorted(expected.tops)
    emulator = await make_emulator(exchange_id, (), replay=recording_path(exchange_id), speed=0)
    buffer = MarketDataBuffer(10_000, channel="book", book_depth=10)
    # A replay goes silent when it ends: no stale reconnect (which replays the rest again) in the test.
    stream = await make_stream(emulator, symbols, channel="book", buffer=buffer, heartbeat_interval=60.0 * MS)
    await wait_until(lambda: all(top(buffer, exchange_id, s) == expected.tops[s] for s in symbols), 15,
                     "the stored books to equal the recording's")
    for symbol in symbols:
        wanted = expected.frames[symbol]
        if wanted is not None:  # every update, once (the last ones may leave the top 10 as it was)
            await wait_until(lambda s=symbol, n=wanted: count(buffer, exchange_id, s) >= n, 5, f"{symbol}'s rows")
            assert count(buffer, exchange_id, symbol) == wanted, symbol
        table = rows(buffer, exchange_id, symbol)
        assert table is not None
        never_crossed(table)
        nonces = table.column("nonce").to_pylist()
        if expected.sequenced:
            assert None not in nonces and nonces == sorted(nonces), symbol  # the venue's sequence, rising
        else:
            assert set(nonces) == {None}, symbol
        assert min(table.column("timestamp").to_pylist()) > 0
    assert [e for e in stream.events.events(exchange_id) if e.kind is EventKind.BOOK_RESYNC] == []
    counters = stream.status().exchanges[0].counters
    assert set(counters) == set(COUNTERS)
    assert counters["stored"] == sum(count(buffer, exchange_id, s) for s in symbols)
    assert counters["unchecked"] == counters["resyncs"] == 0  # every Kraken checksum was checked
