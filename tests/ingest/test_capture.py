"""Every update ccxt parses becomes exactly one stored tick, at high rates and on replays.

The stream reads ticks from ccxt's ``tickers`` / ``bidsasks`` cache as ccxt writes it (see
:mod:`flight_md.ingest.stream`), so it does not depend on how often its watch loop runs.
These tests compare what the emulator wrote with what the buffer holds: counts per symbol,
and the exact values, in order, against an independent source (a replica of the emulator's
deterministic random walk, or the recorded frames of a real session).
"""

from __future__ import annotations

import asyncio
import json
import time

import ccxt.pro
import pytest

from flight_md.emulator import Fault, default_recording
from flight_md.emulator.market import parse_symbols
from flight_md.emulator.recording import Recording
from flight_md.emulator.synthetic import PriceWalk
from flight_md.ingest.endpoints import url_overrides

from .support import MS, kinds, sent, stored, wait_until

pytestmark = pytest.mark.timeout(90 * MS)

BASES = ("BTC", "ETH", "BNB", "SOL", "XRP", "DOGE", "ADA", "LTC", "DOT", "LINK")
TWENTY = tuple(f"{base}/{quote}" for quote in ("USDT", "USDC") for base in BASES)
RATE = 10_000.0
"""Updates per second the emulator is asked for, spread over the symbols."""
RUN_FRAMES = 3000
"""Updates the emulator writes before it is stalled (about 0.3 s at RATE)."""


def _f8(value: float) -> float:
    """A value as Binance prints it (8 decimals) and ccxt parses it back."""
    return float(f"{value:.8f}")


@pytest.mark.asyncio
async def test_every_tick_is_captured_at_a_high_rate_without_duplicates(emulator_process, make_stream):
    emu = emulator_process("binance", TWENTY, RATE)
    stream = await make_stream(emu, TWENTY, heartbeat_interval=60.0)
    start = time.monotonic()

    async def written() -> bool:
        return sum((await emu.frames()).values()) >= RUN_FRAMES

    await wait_until(written, 30, f"{RUN_FRAMES} updates written")
    await emu.inject("stall")  # the exchange stops writing; what it wrote is in flight
    elapsed = time.monotonic() - start
    frames = await emu.frames()
    expected = {s: frames.get(f"ticker {s}", 0) for s in TWENTY}
    total = sum(expected.values())
    print(f"{total} updates in {elapsed:.2f} s ({total / elapsed:,.0f}/s) over {len(TWENTY)} symbols")
    # Exactly what was written: a lost tick never reaches the count, a duplicate overshoots it.
    await wait_until(lambda: {s: stored(stream, s) for s in TWENTY} == expected, 30,
                     f"exactly the {total} ticks written to be stored")

    # The values, in order, are the emulator's random walk step by step.
    for market in parse_symbols(TWENTY):
        walk = PriceWalk(market, 0)
        quotes = [walk.step(0) for _ in range(expected[market.symbol])]
        table = stream.buffer.get_latest_sync(market.symbol, len(quotes), exchange="binance")
        rows = table.select(["price", "bid", "ask", "volume", "high", "low"]).to_pylist()
        want = [{"price": _f8(q.last), "bid": _f8(q.bid), "ask": _f8(q.ask),
                 "volume": _f8(q.volume), "high": _f8(q.high), "low": _f8(q.low)} for q in quotes]
        assert rows == want, market.symbol
    status = stream.status()
    assert status.exchanges[0].bad_frames == {} and status.exchanges[0].reconnects == 0
    assert sum(s.received for s in status.symbols) == total
    assert kinds(stream) == ["connect", "subscribe"]


@pytest.mark.asyncio
async def test_a_naive_watch_loop_would_miss_updates(make_emulator):
    """Why the tap exists: awaiting watch_tickers() sees only the latest value per wake-up."""
    emu = await make_emulator("binance", symbols=TWENTY, rate=RATE)
    config = url_overrides("binance", emu.url)
    config["options"]["watchTickers"] = {"name": "ticker"}
    exchange = ccxt.pro.binance(config)
    seen = 0

    async def naive() -> None:
        nonlocal seen
        while True:
            seen += len(await exchange.watch_tickers(list(TWENTY)))

    try:
        await exchange.load_markets()
        task = asyncio.create_task(naive())
        await wait_until(lambda: seen > 0 and emu.stats.frames_total >= RUN_FRAMES, 30,
                         f"{RUN_FRAMES} updates written and the loop awake")
        await emu.inject(Fault.STALL)
        # What was in flight is read once the loop, woken at every delivery, stops waking.
        last = -1

        def settled() -> bool:
            nonlocal last
            done, last = seen == last, seen
            return done

        await wait_until(settled, 30, "the naive loop to read what was in flight", interval=0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        emu.clear_faults()
        await exchange.close()
    total = sum(emu.sent("ticker", s) for s in TWENTY)
    print(f"naive loop saw {seen} of {total} updates")
    assert 0 < seen < total, f"naive loop saw {seen} of {total}"


def _recorded(exchange: str, path: str, topic_prefix: str) -> list[tuple[str, dict]]:
    """(market id, payload) of the recorded frames of one channel, in recorded order."""
    out = []
    for message in Recording.load(default_recording(exchange)).messages:
        if message.path != path:
            continue
        frame = json.loads(message.text)
        if exchange == "binance":
            if frame.get("stream", "").endswith("@" + topic_prefix):
                out.append((frame["data"]["s"], frame["data"]))
        elif str(frame.get("topic", "")).startswith(topic_prefix + "."):
            out.append((frame["topic"].split(".")[-1], frame))
    return out


@pytest.mark.asyncio
async def test_replayed_binance_book_tickers_come_out_exactly(make_emulator, make_stream):
    frames = _recorded("binance", "/stream", "bookTicker")
    symbols = {"NKNUSDT": "NKN/USDT", "LRCBTC": "LRC/BTC", "BLZETH": "BLZ/ETH"}
    want: dict[str, list[tuple[float, float]]] = {s: [] for s in symbols.values()}
    for market_id, data in frames:
        want[symbols[market_id]].append((float(data["b"]), float(data["a"])))
    emu = await make_emulator("binance", replay=default_recording("binance"), speed=0)
    stream = await make_stream(emu, tuple(want), channel="bidask")
    await wait_until(lambda: all(sent(emu, stream, s) == len(want[s]) for s in want), 20,
                     "the whole replay to be sent")
    await wait_until(lambda: all(stored(stream, s) == len(want[s]) for s in want), 20,
                     "exactly the replayed ticks to be stored")
    for symbol, quotes in want.items():
        rows = stream.buffer.get_latest_sync(symbol, 1000, exchange="binance").to_pylist()
        assert [(r["bid"], r["ask"]) for r in rows] == quotes, symbol
        assert all(r["price"] == (r["bid"] + r["ask"]) / 2 for r in rows)
        assert sent(emu, stream, symbol) == len(quotes)


@pytest.mark.asyncio
async def test_replayed_bybit_ticker_deltas_come_out_exactly(make_emulator, make_stream):
    """Bybit linear tickers are a snapshot then deltas: each delta is one merged tick."""
    frames = _recorded("bybit", "/v5/public/linear", "tickers")
    state: dict[str, dict] = {}
    want: dict[str, list[tuple]] = {}
    for market_id, frame in frames:
        symbol = f"{market_id[:-4]}/USDT:USDT"
        merged = state.setdefault(symbol, {})
        if frame["type"] == "snapshot":
            merged.clear()
        merged.update(frame["data"])
        want.setdefault(symbol, []).append((float(merged["lastPrice"]), float(merged["bid1Price"]),
                                            float(merged["ask1Price"]), float(merged["volume24h"]),
                                            frame["ts"]))
    emu = await make_emulator("bybit", replay=default_recording("bybit"), speed=0)
    stream = await make_stream(emu, tuple(want))
    await wait_until(lambda: all(stored(stream, s) == len(want[s]) for s in want), 30,
                     "exactly the replayed ticks to be stored")
    for symbol, ticks in want.items():
        rows = stream.buffer.get_latest_sync(symbol, 10_000, exchange="bybit").to_pylist()
        got = [(r["price"], r["bid"], r["ask"], r["volume"], r["timestamp"]) for r in rows]
        assert got == ticks, symbol
    assert stream.status().exchanges[0].bad_frames == {}
