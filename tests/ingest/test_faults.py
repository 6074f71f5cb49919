"""Staleness, giving up, and what each bad frame is counted as, per exchange and channel.

Cut connections (resets, 1006/1001 closes, server shutdowns) and refused reconnects are
tested once for every venue in ``tests/venues/test_venues.py``.
"""

from __future__ import annotations

import time

import pytest

from flight_md.emulator import Fault
from flight_md.ingest.stream import ConnectionState

from .support import MS, SYMBOLS, kinds, sent, stored, wait_until

pytestmark = pytest.mark.timeout(60 * MS)


async def _settled(stream, emu, unread: int = 0) -> dict[str, tuple[int, int]]:
    """Stop the emulator writing and return (sent, stored) per symbol once nothing is in flight.

    "Nothing in flight" is a condition, not a pause: the live connection delivers every frame
    it was sent, so the stored count reaches the sent count less at most ``unread`` frames per
    symbol (written to connections the stream had already closed, which nobody reads).
    """
    await emu.inject(Fault.STALL)

    def caught_up() -> bool:
        return all(0 <= sent(emu, stream, s) - stored(stream, s) <= unread for s in SYMBOLS)

    await wait_until(caught_up, 5, f"the store to catch up with the emulator (within {unread})")
    counts = {s: (sent(emu, stream, s), stored(stream, s)) for s in SYMBOLS}
    emu.clear_faults()
    return counts


@pytest.mark.asyncio
async def test_a_silent_stream_is_stale_within_the_heartbeat_and_recovers(make_emulator, make_stream):
    heartbeat = 1.0 * MS
    emu = await make_emulator("binance", rate=200.0)
    stream = await make_stream(emu, SYMBOLS, heartbeat_interval=heartbeat, mode="websocket")
    await wait_until(lambda: all(stored(stream, s) >= 5 for s in SYMBOLS), 5, "ticks")
    stalled_at = time.monotonic()
    await emu.inject(Fault.STALL, duration=2.5 * MS)
    await wait_until(lambda: "stale" in kinds(stream), heartbeat + 1.0, "a stale event")
    assert time.monotonic() - stalled_at <= heartbeat + 1.0 * MS
    stale = next(e for e in stream.events.events() if e.kind == "stale")
    assert stale.symbols == SYMBOLS and "no message for" in stale.detail
    assert all(s.stale for s in stream.status().symbols)  # per-symbol staleness is visible
    assert stream.state is ConnectionState.RECONNECTING
    # The stall ends; the stream reconnects and resubscribes everything.
    await wait_until(lambda: kinds(stream)[-1] == "reconnect", 10, "a reconnect")
    await wait_until(lambda: not any(s.stale for s in stream.status().symbols), 5, "fresh symbols")
    # Frames queued during the stall went to sockets the stream had already given up on.
    counts = await _settled(stream, emu, unread=10_000)
    assert all(stored_ <= sent_ for sent_, stored_ in counts.values()), counts


@pytest.mark.asyncio
async def test_gives_up_after_max_reconnect_attempts(make_emulator, make_stream):
    emu = await make_emulator("binance", rate=200.0)
    stream = await make_stream(emu, SYMBOLS, max_reconnect_attempts=2, mode="websocket")
    await wait_until(lambda: stored(stream, "BTC/USDT") > 0, 5, "a tick")
    await emu.inject(Fault.REFUSE)  # until cleared
    await emu.inject(Fault.RESET)
    await wait_until(lambda: stream.state is ConnectionState.FAILED, 15, "the stream to give up")
    assert kinds(stream)[-1] == "failed"
    assert kinds(stream).count("disconnect") == 3  # the cut, then two failed attempts
    failed = stream.events.events()[-1]
    assert "gave up after 2 reconnect attempts" in failed.detail and failed.symbols == SYMBOLS
    emu.clear_faults()


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange, channel, expected", [
    # What each corruption becomes depends on where ccxt notices it: invalid JSON is caught
    # before parsing; a missing symbol makes ccxt's parser raise on Binance, while Bybit takes
    # the symbol from the topic (an intact tick); "abc" is parsed to None by ccxt and caught
    # by the raw-payload check, or makes ccxt's parser raise.
    ("binance", "ticker", {"malformed_frame": 2, "unparseable_frame": 1, "non_numeric": 1}),
    ("binance", "bidask", {"malformed_frame": 2, "unparseable_frame": 1, "non_numeric": 1}),
    ("bybit", "ticker", {"malformed_frame": 2, "non_numeric": 1}),
    ("bybit", "bidask", {"malformed_frame": 2, "unparseable_frame": 2}),
])
async def test_bad_frames_are_counted_and_dropped_without_a_reconnect(
        make_emulator, make_stream, exchange, channel, expected):
    symbols = ("BTC/USDT:USDT", "ETH/USDT:USDT") if exchange == "bybit" else SYMBOLS[:2]
    emu = await make_emulator(exchange, symbols=symbols, rate=200.0)
    stream = await make_stream(emu, symbols, channel=channel)
    await wait_until(lambda: all(stored(stream, s) >= 5 for s in symbols), 5, "ticks")
    faults = [Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC]
    for fault in faults:
        before = emu.stats.faults.get(fault, 0)
        await emu.inject(fault, count=1)
        await wait_until(lambda f=fault, b=before: emu.stats.faults.get(f, 0) > b, 5, f"{fault} applied")
    await emu.inject(Fault.STALL)
    repaired = len(faults) - sum(expected.values())

    def all_accounted() -> bool:  # every frame sent was read: stored, or dropped and counted
        intact = sum(sent(emu, stream, s) for s in symbols)
        return sum(stored(stream, s) for s in symbols) == intact + repaired

    await wait_until(all_accounted, 5, "every frame sent to be stored or counted")
    status = stream.status()
    assert status.exchanges[0].bad_frames == expected
    assert status.exchanges[0].reconnects == 0 and stream.state is ConnectionState.CONNECTED
    assert "disconnect" not in kinds(stream)
    # Every intact frame was stored; a corrupted one was either dropped and counted, or (Bybit
    # filling the symbol in from the topic) was a valid update and stored.
    intact = sum(sent(emu, stream, s) for s in symbols)
    total = sum(stored(stream, s) for s in symbols)
    assert total == intact + repaired
    assert sum(s.dropped for s in status.symbols) == expected.get("non_numeric", 0)
    emu.clear_faults()
