"""Resident bytes per stored tick at capacity, one fresh process per store and size.

Each child imports everything, builds the empty store, notes its resident set size, appends
``1.1 x capacity`` ticks per symbol round-robin (so eviction has happened), collects garbage
and notes the RSS again: (after - before) / ticks stored. For flight_md it also reports the
bytes Arrow's memory pool holds, which excludes allocator slack.

Run as a child: ``python -m benchmarks.memory`` (driven by :func:`measure`).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
from collections import deque
from dataclasses import asdict
from typing import Any

from benchmarks import ticks
from benchmarks.process import Child, serve
from benchmarks.report import Goal, Section, Table, ratio, show
from benchmarks.settings import Settings

__all__ = ["measure"]

GOAL_BYTES = 100.0
QUOTED_ORIGINAL_BYTES = 1000.0
"""The original design's own estimate per tick: *quoted*, never measured here, never a ratio."""
VARIANTS = ("flight_md", "deque-ticks", "deque-dicts")
_LABELS = {
    "flight_md": "flight_md MarketDataBuffer",
    "deque-ticks": "deque of MarketTick (slots)",
    "deque-dicts": "deque of dicts",
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill(variant: str, symbols: int, capacity: int) -> dict[str, Any]:
    import pyarrow as pa

    from flight_md.buffer import MEMORY_POOL, MarketDataBuffer

    def arrow_bytes() -> int:  # the default pool and the store's own (system) pool
        return int(pa.total_allocated_bytes()) + int(MEMORY_POOL.bytes_allocated())

    names = ticks.symbols(symbols)
    per_symbol = capacity + capacity // 10
    # Warm up allocators and import-time caches so the baseline RSS excludes them.
    warm = MarketDataBuffer(64)
    ticks.fill(warm, names[:1], 200, seed=9)
    warm.get_latest_sync(names[0], 10)
    del warm
    gc.collect()
    arrow_before = arrow_bytes()
    before = _rss()
    start = time.perf_counter()
    store: Any
    if variant == "flight_md":
        store = MarketDataBuffer(capacity)
        for tick in ticks.ticks(names, per_symbol):
            store.append(tick)
        stored = len(store)
    elif variant == "deque-ticks":
        store = {s: deque(maxlen=capacity) for s in names}
        for tick in ticks.ticks(names, per_symbol):
            store[tick.symbol].append(tick)
        stored = sum(len(d) for d in store.values())
    elif variant == "deque-dicts":
        store = {s: deque(maxlen=capacity) for s in names}
        for tick in ticks.ticks(names, per_symbol):
            store[tick.symbol].append(asdict(tick))
        stored = sum(len(d) for d in store.values())
    else:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    gc.collect()
    after = _rss()
    return {"variant": variant, "symbols": symbols, "stored": stored,
            "rss_delta": after - before, "arrow_bytes": arrow_bytes() - arrow_before,
            "seconds": time.perf_counter() - start}


def _child() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    serve({"ready": True}, {"fill": _fill}, args.max_seconds)


def measure(settings: Settings) -> Section:
    """Bytes per stored tick for each store and symbol count."""
    capacity = settings.memory_ticks
    section = Section(
        "memory", "Memory per stored tick at capacity",
        f"""
For each store and symbol count a **fresh process** imports everything, builds the empty store,
reads its resident set size (`/proc/self/statm`), appends {capacity + capacity // 10:,} full
24h-ticker ticks per symbol round-robin into rings of {capacity:,} (so every ring is at capacity and
has evicted), collects garbage and reads RSS again; bytes per tick = RSS delta / ticks stored.
"Arrow pools" is what pyarrow's allocators hold for flight_md (its default pool and the system
pool the store allocates segments from); the RSS figure adds allocator slack, Python and Arrow
objects, rows not yet sealed and the newest segments, which are numpy-owned. **Baselines**,
measured the same way in their own fresh processes: a `deque(maxlen={capacity:,})` per symbol of
`MarketTick` objects, and of dicts (`dataclasses.asdict`, the shape ccxt hands out); ratios are
flight_md's RSS figure / theirs. For context only (*quoted*, not measured here): the original
design estimated ~{QUOTED_ORIGINAL_BYTES:,.0f} bytes per tick for its store.
""")
    table = Table(("Symbols", "Ticks stored", "flight_md RSS B/tick", "Arrow pools B/tick",
                   "deque of MarketTick B/tick", "deque of dicts B/tick",
                   "Ratio to MarketTick deque", "Ratio to dict deque"))
    worst = 0.0
    skipped = []
    for symbols in settings.memory_symbols:
        results: dict[str, dict[str, Any]] = {}
        for variant in VARIANTS:
            if variant != "flight_md" and symbols * capacity > settings.memory_naive_max_ticks:
                skipped.append(symbols)
                continue
            with Child("benchmarks.memory", name=f"memory-{variant}-{symbols}") as child:
                results[variant] = child.call("fill", timeout=600, variant=variant,
                                              symbols=symbols, capacity=capacity)
        fm = results["flight_md"]
        per_tick = fm["rss_delta"] / fm["stored"]
        worst = max(worst, per_tick)
        naive = {v: r["rss_delta"] / r["stored"] for v, r in results.items() if v != "flight_md"}
        table.add(f"{symbols:,}", f"{fm['stored']:,}", show(per_tick, "B"),
                  show(fm["arrow_bytes"] / fm["stored"], "B"),
                  show(naive.get("deque-ticks"), "B"), show(naive.get("deque-dicts"), "B"),
                  show(ratio(per_tick, naive.get("deque-ticks", math.nan)), "x"),
                  show(ratio(per_tick, naive.get("deque-dicts", math.nan)), "x"))
    section.tables.append(table)
    if skipped:
        section.notes.append(
            f"The naive stores are not run at {', '.join(f'{s:,}' for s in sorted(set(skipped)))} "
            f"symbols: above {settings.memory_naive_max_ticks:,} ticks they would need gigabytes, "
            "and their cost per tick does not depend on the symbol count (see the smaller sizes).")
    section.goals.append(Goal.judge(
        "memory.per_tick", "Resident bytes per stored tick (worst symbol count)",
        worst, "<=", GOAL_BYTES, "B"))
    return section


if __name__ == "__main__":
    _child()
