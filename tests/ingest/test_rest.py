"""REST polling: rest mode, changed-only storage, 429/5xx backoff, auto fallback and return."""

from __future__ import annotations

from typing import Any

import pytest

from flight_md.emulator import Fault
from flight_md.ingest.stream import ConnectionState, Mode

from .support import MS, SYMBOLS, kinds, sent, stored, wait_until

pytestmark = pytest.mark.timeout(60 * MS)

QUICK = {"poll_interval": 0.05, "ccxt_options": {"rateLimit": 5}}
"""Poll often; ccxt's client-side rate limiter (Binance weighs a 24h ticker query heavily)
would otherwise space the polls by most of a second."""


@pytest.mark.asyncio
async def test_an_unchanged_market_polled_many_times_is_stored_once(make_emulator, make_stream):
    emu = await make_emulator("binance", rate=0.0)  # nothing moves
    stream = await make_stream(emu, SYMBOLS, mode="rest", **QUICK)
    # Polls are sequential (one request per poll): once the 9th request arrives, the answers
    # to the first 8 have been stored or dropped.
    await wait_until(lambda: emu.stats.rest_requests >= 9, 10, "nine polls")
    assert {s: stored(stream, s) for s in SYMBOLS} == dict.fromkeys(SYMBOLS, 1)
    assert all(s.received == 1 for s in stream.status().symbols)


@pytest.mark.asyncio
async def test_rest_fetches_do_not_reach_the_websocket_tap(make_emulator, make_stream):
    """A REST call on the stream's exchange cannot add ticks behind the websocket's back.

    Websocket frames that arrive after the REST calls are the barrier: once every frame the
    emulator wrote is stored, anything the calls had slipped in would show as extra rows.
    """
    emu = await make_emulator("binance", rate=30.0)
    stream = await make_stream(emu, SYMBOLS, mode="websocket", heartbeat_interval=60.0,
                               ccxt_options={"rateLimit": 5})
    await wait_until(lambda: all(stored(stream, s) > 0 for s in SYMBOLS), 10, "ticks")
    await emu.inject(Fault.STALL)  # websockets silent, REST still answers
    for _ in range(3):
        tickers = await stream.exchange.fetch_tickers(list(SYMBOLS))
        assert set(tickers) == set(SYMBOLS)
    emu.clear_faults()
    before = {s: sent(emu, stream, s) for s in SYMBOLS}
    await wait_until(lambda: all(sent(emu, stream, s) > before[s] for s in SYMBOLS), 10,
                     "websocket frames after the REST calls")
    await wait_until(lambda: {s: stored(stream, s) for s in SYMBOLS}
                     == {s: sent(emu, stream, s) for s in SYMBOLS}, 10,
                     "stored ticks to equal the websocket frames sent")


@pytest.mark.asyncio
@pytest.mark.parametrize("fault, error", [(Fault.REST_429, "DDoSProtection"),
                                          (Fault.REST_5XX, "")])
async def test_rest_429_and_5xx_back_off_and_recover(make_emulator, make_stream, fault, error):
    emu = await make_emulator("binance", rate=0.0)
    stream = await make_stream(emu, SYMBOLS, mode="rest", reconnect_delay=0.05,
                               max_reconnect_delay=0.2, **QUICK)
    await wait_until(lambda: all(stored(stream, s) == 1 for s in SYMBOLS), 5, "a first poll")
    await emu.inject(fault, count=3, retry_after=0.1)
    await wait_until(lambda: kinds(stream).count("error") == 3 and kinds(stream)[-1] == "reconnect",
                     10, "three failed polls and a recovery")
    errors = [e for e in stream.events.events() if e.kind == "error"]
    assert all(e.detail.startswith("poll failed: ") and error in e.detail
               and e.symbols == SYMBOLS for e in errors), errors
    assert stream.state is ConnectionState.CONNECTED
    assert error in stream.status().exchanges[0].last_error
    assert emu.stats.faults[fault] == 3


async def _first_429_and_the_next_good_poll(make_emulator: Any, make_stream: Any,
                                            retry_after: float,
                                            max_reconnect_delay: float) -> int:
    """Milliseconds from a failed (429) poll to the poll that succeeded after it.

    Both timestamps are the stream's own events: the ``error`` is recorded when the 429 has
    been handled, the ``reconnect`` after the next poll succeeded, so the gap is at least the
    delay the stream waited (lateness on a loaded machine only makes it longer).
    """
    emu = await make_emulator("binance", rate=0.0)
    stream = await make_stream(emu, SYMBOLS, mode="rest", reconnect_delay=0.001,
                               max_reconnect_delay=max_reconnect_delay, **QUICK)
    await wait_until(lambda: all(stored(stream, s) == 1 for s in SYMBOLS), 5, "a first poll")
    await emu.inject(Fault.REST_429, count=1, retry_after=retry_after)
    await wait_until(lambda: kinds(stream)[-2:] == ["error", "reconnect"], 10 + retry_after,
                     "a 429 and the next good poll")
    error, reconnect = stream.events.events(stream.exchange_id)[-2:]
    assert "DDoSProtection" in error.detail
    assert emu.stats.faults[Fault.REST_429] == 1
    return reconnect.timestamp - error.timestamp


@pytest.mark.asyncio
async def test_retry_after_below_the_cap_is_honoured(make_emulator, make_stream):
    """Retry-After 1 s, backoff 1 ms, cap 10 s: the next poll waits the whole second.

    Without the header the stream would retry after about 1 ms plus ccxt's 5 ms rate limit.
    """
    gap_ms = await _first_429_and_the_next_good_poll(make_emulator, make_stream,
                                                     retry_after=1.0, max_reconnect_delay=10.0)
    assert gap_ms >= 1000, f"the next poll came {gap_ms} ms after a Retry-After of 1 s"


@pytest.mark.asyncio
async def test_retry_after_above_the_cap_is_capped(make_emulator, make_stream):
    """Retry-After 5 s with max_reconnect_delay 0.5 s: the stream waits the cap, not 5 s.

    At least the cap (the header still counts, up to it); well under 5 s, which only a
    ~4.5 s stall of the machine would reach.
    """
    gap_ms = await _first_429_and_the_next_good_poll(make_emulator, make_stream,
                                                     retry_after=5.0, max_reconnect_delay=0.5)
    assert 500 <= gap_ms < 5000, f"the next poll came {gap_ms} ms after Retry-After 5 s, cap 0.5 s"


@pytest.mark.asyncio
async def test_auto_mode_falls_back_to_rest_and_returns_to_the_websocket(make_emulator, make_stream):
    emu = await make_emulator("binance", rate=200.0)
    stream = await make_stream(emu, SYMBOLS, heartbeat_interval=0.5 * MS, rest_fallback_after=2,
                               ws_probe_interval=0.3 * MS, **QUICK)
    await wait_until(lambda: all(stored(stream, s) >= 3 for s in SYMBOLS), 5, "ticks")
    # Websockets go silent (REST still answers): two stale sessions, then polling.
    await emu.inject(Fault.STALL, duration=2.5 * MS)
    await wait_until(lambda: stream.active_mode is Mode.REST, 10, "the fall back to REST")
    mode_events = [e for e in stream.events.events() if e.kind == "mode"]
    assert mode_events[0].detail.startswith("rest: websocket failed 2 times in a row")
    polled = {s: stored(stream, s) for s in SYMBOLS}
    await wait_until(lambda: stream.state is ConnectionState.CONNECTED, 5, "polling to succeed")
    assert stream.status().exchanges[0].mode == "rest"
    assert all(stored(stream, s) >= polled[s] for s in SYMBOLS)
    # The stall ends: a probe finds the websocket answering again and the stream goes back.
    await wait_until(lambda: stream.active_mode is Mode.WEBSOCKET, 10, "the return to websocket")
    assert [e.detail.split(":")[0] for e in stream.events.events() if e.kind == "mode"] == [
        "rest", "websocket"]
    await wait_until(lambda: emu.stats.subscriptions == len(SYMBOLS), 5, "the subscriptions")
    before = {s: stored(stream, s) for s in SYMBOLS}
    await wait_until(lambda: all(stored(stream, s) > before[s] + 3 for s in SYMBOLS), 5,
                     "websocket ticks again")
    assert stream.status().exchanges[0].mode == "websocket"


@pytest.mark.asyncio
async def test_an_exchange_without_the_websocket_method_polls_end_to_end(make_emulator, make_stream):
    emu = await make_emulator("bybit", rate=0.0)
    stream = await make_stream(emu, SYMBOLS, poll_interval=0.05,
                               ccxt_options={"has": {"watchTickers": False}, "rateLimit": 5})
    assert stream.active_mode is Mode.REST
    await wait_until(lambda: all(stored(stream, s) == 1 for s in SYMBOLS), 5, "polled ticks")
    assert emu.stats.connections_opened == 0  # never tried a websocket
    row = stream.buffer.get_latest_sync("BTC/USDT", 1, exchange="bybit").to_pylist()[0]
    # Bybit REST tickers carry no timestamp: the receive time stands in.
    assert row["timestamp"] == row["receive_timestamp"]
