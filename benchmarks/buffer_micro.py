"""The buffer's own figures: append cost per tick and in-process latest-N reads.

Baseline: the original design, a ``deque(maxlen=capacity)`` of :class:`MarketTick` per
symbol whose reads build a table with ``pa.Table.from_pylist``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from dataclasses import asdict
from itertools import islice

import pyarrow as pa

from benchmarks import ticks
from benchmarks.report import Goal, Section, Table, median, percentile, ratio, show
from benchmarks.settings import Settings
from flight_md.buffer import MarketDataBuffer
from flight_md.schema import SCHEMA, MarketTick

__all__ = ["measure"]

CAPACITY = 10_000
APPEND_GOAL_US = 2.0
LATEST_GOAL_US = 50.0


def _append_us(tick_list: list[MarketTick], symbols: list[str]) -> tuple[float, float, float]:
    """(buffer.append, buffer.extend, deque.append) microseconds per tick."""
    buffer = MarketDataBuffer(CAPACITY)
    gc.collect()
    start = time.perf_counter()
    for tick in tick_list:
        buffer.append(tick)
    append = (time.perf_counter() - start) / len(tick_list) * 1e6
    buffer = MarketDataBuffer(CAPACITY)
    start = time.perf_counter()
    buffer.extend(tick_list)
    extend = (time.perf_counter() - start) / len(tick_list) * 1e6
    deques: dict[str, deque[MarketTick]] = {s: deque(maxlen=CAPACITY) for s in symbols}
    start = time.perf_counter()
    for tick in tick_list:
        deques[tick.symbol].append(tick)
    naive = (time.perf_counter() - start) / len(tick_list) * 1e6
    return append, extend, naive


def _timed(call: object, count: int) -> list[float]:
    """Per-call microseconds of ``count`` calls of ``call()``."""
    assert callable(call)
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        out.append((clock() - start) / 1000)
    return out


async def _timed_async(buffer: MarketDataBuffer, symbol: str, count: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        await buffer.get_latest(symbol, 100)
        out.append((clock() - start) / 1000)
    return out


def _naive_latest(store: deque[MarketTick], n: int) -> pa.Table:
    rows = list(islice(store, max(0, len(store) - n), None))
    return pa.Table.from_pylist([asdict(t) for t in rows], schema=SCHEMA)


def measure(settings: Settings) -> Section:
    """Append and in-process read figures of the buffer against the deque design."""
    section = Section(
        "buffer", "Buffer micro figures (in-process)",
        f"""
One process, no I/O. **Append**: {settings.micro_ticks:,} pre-built `MarketTick`s spread
round-robin over 10 symbols, appended one by one to a `MarketDataBuffer(buffer_size={CAPACITY:,})`
(past capacity, so sealing, merging and eviction are included), time / ticks; `extend()` is the
batched form. **Reads**: `get_latest` on a full ring of {CAPACITY:,} ticks, {settings.micro_reads:,}
calls per repetition, each timed; `await buffer.get_latest(...)` is the async API the goal names,
`get_latest_sync` is what Flight handlers call. **Baseline**: the original design, a
`deque(maxlen={CAPACITY:,})` of `MarketTick` per symbol whose reads convert the newest rows with
`pa.Table.from_pylist`. {settings.repetitions} repetitions, medians.
""")
    symbols = ticks.symbols(10)
    per_symbol = max(1, settings.micro_ticks // len(symbols))
    tick_list = list(ticks.ticks(symbols, per_symbol))
    appends, extends, naives = [], [], []
    for _ in range(settings.repetitions):
        a, e, n = _append_us(tick_list, symbols)
        appends.append(a)
        extends.append(e)
        naives.append(n)
    buffer = MarketDataBuffer(CAPACITY)
    store: deque[MarketTick] = deque(maxlen=CAPACITY)
    for tick in ticks.ticks(symbols[:1], CAPACITY + CAPACITY // 3, seed=1):
        buffer.append(tick)
        store.append(tick)
    symbol = symbols[0]
    reads = settings.micro_reads
    sync_p50: list[float] = []
    sync_p99: list[float] = []
    async_p50: list[float] = []
    async_p99: list[float] = []
    big_p50: list[float] = []
    naive_p50: list[float] = []
    naive_big_p50: list[float] = []
    for _ in range(settings.repetitions):
        sync = _timed(lambda: buffer.get_latest_sync(symbol, 100), reads)
        sync_p50.append(median(sync))
        sync_p99.append(percentile(sync, 99))
        awaited = asyncio.run(_timed_async(buffer, symbol, reads))
        async_p50.append(median(awaited))
        async_p99.append(percentile(awaited, 99))
        big_p50.append(median(_timed(lambda: buffer.get_latest_sync(symbol, CAPACITY),
                                     max(10, reads // 20))))
        # The baseline is ~100-1,000x slower: fewer calls keep the run short.
        naive_p50.append(median(_timed(lambda: _naive_latest(store, 100), max(10, reads // 50))))
        naive_big_p50.append(median(_timed(lambda: _naive_latest(store, CAPACITY), 3)))
    table = Table(("Figure", "flight_md", "deque + from_pylist", "Ratio"))
    append, naive = median(appends), median(naives)
    table.add("append, µs/tick (amortised)", show(append, "µs"), show(naive, "µs"),
              show(ratio(append, naive), "x"))
    table.add("extend, µs/tick", show(median(extends), "µs"), "", "")
    latest = median(async_p50)
    naive_latest = median(naive_p50)
    table.add("await get_latest(100), p50", show(latest, "µs"), show(naive_latest, "µs"),
              show(ratio(latest, naive_latest), "x"))
    table.add("await get_latest(100), p99", show(median(async_p99), "µs"), "", "")
    table.add("get_latest_sync(100), p50", show(median(sync_p50), "µs"),
              show(naive_latest, "µs"), show(ratio(median(sync_p50), naive_latest), "x"))
    table.add("get_latest_sync(100), p99", show(median(sync_p99), "µs"), "", "")
    table.add(f"get_latest_sync({CAPACITY:,}), p50", show(median(big_p50), "µs"),
              show(median(naive_big_p50), "µs"),
              show(ratio(median(big_p50), median(naive_big_p50)), "x"))
    section.tables.append(table)
    section.goals += [
        Goal.judge("buffer.append", "Buffer append, amortised, µs/tick", append, "<=",
                   APPEND_GOAL_US, "µs"),
        Goal.judge("buffer.get_latest", "In-process get_latest(100), p50", latest, "<=",
                   LATEST_GOAL_US, "µs"),
    ]
    return section
