"""Trades, books and bars (issue 12): four measurements, each beside its baseline.

Lossless trades ingest vs ccxt's trade-parse ceiling
    The Binance emulator (own process) serves synthetic ``trade`` frames (consecutive ids
    ``t`` per market) at a target rate spread over the symbols; a ``MarketDataApp`` (own
    process, :func:`_server_child`, persisting as by default) ingests the ``trades`` channel
    through real ccxt.pro. The rule and the search are :mod:`benchmarks.ingest`'s
    (:func:`~benchmarks.ingest.shortfalls`, :func:`~benchmarks.ingest.next_rate`), with one
    more condition: **100 % capture**. After the window the emulator stalls, the server
    drains, and every symbol's stored trade ids must be exactly the ids the emulator sent
    (as many rows as frames sent, each id once, no hole). The ceiling (the goal's
    baseline) is measured as the ticker ceiling is: the emulator's own ``trade`` frames fed
    one per call to the message handler of the websocket client of a real, subscribed
    ``MarketDataStream(channel="trades")`` (frame guard, ccxt's decode and ``handle_trade``,
    flight_md's trade tap, duplicate and gap checks, ``append_trade``), while the emulator
    sends at the lossless rate to a sink; ccxt's parse alone (a plain ccxt client's
    ``handle_text_or_binary_message``) is shown beside it.

Memory per stored trade and per stored top-10 book
    One fresh process per store (:func:`_memory_fill`): a real ``MarketDataBuffer`` of the
    channel filled to 1.1 x its capacity (so it has evicted), the bytes held by Arrow's pools
    (the store allocates from the system pool) before and after, per stored row; the RSS
    delta beside it. Trades with a 10-digit numeric id (Binance-like) and, separately, with a
    UUID id (Bybit); top-10 books with every level filled. Baseline: a ``deque`` of the
    dicts ccxt hands out (``watch_trades`` / ``watch_order_book`` shape), RSS per row.

1-day 1m bars over 10 M stored trades
    A server process (:func:`_bars_child`) holds 10 M trades of one symbol spread over one
    UTC day in one ``MarketDataBuffer(10_000_000, channel="trades")``, filled through the
    ring's restore path; the client times ``DoGet SYMBOL?channel=trades&bars=1m`` (1,440
    bars). Baseline: DuckDB in this process on the same trades as one Arrow table (built by
    the same function), ``GROUP BY`` minute with ``arg_min``/``arg_max``/``sum``, result to
    Arrow. Both answers are compared (bar starts, open, high, low, close and counts equal)
    before anything is timed. Medians over ``settings.repetitions``.

Freshness of trades through a live tail
    The emulator at 1,000 trades/s, the trades server ingesting, and one live tail
    (``SYMBOL?channel=trades&follow=true&latest=0``) per symbol in this process, each stamping
    its batches on arrival. Latency per trade = arrival time - the row's
    ``receive_timestamp`` (ms, floored: the figure is at most 1 ms above the true one);
    beside it the whole path from the emulator's trade time (``T``, stamped as it renders),
    and, as the baseline of that, a raw aiohttp websocket client (own process) of the same
    ``@trade`` streams: trade time -> its arrival. Every trade stored in the window must
    reach its tail once.

Run as children: ``python -m benchmarks.channels server|ceiling|memory|bars|raw ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import flight

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.ingest import (
    TOLERANCE,
    lossless_rate,
    sample_window,
    search,
    serve_rig,
    shortfalls,
)
from benchmarks.ingest import _CeilingRig as IngestCeilingRig
from benchmarks.process import Child, serve, wait_until
from benchmarks.report import Goal, Section, Table, median, percentile, ratio, run_parts, show
from benchmarks.settings import Settings
from benchmarks.sink import sink
from flight_md.core.decode import DecoderKind

__all__ = ["ChannelSizes", "TradeRun", "bars_table", "duckdb_over", "measure", "sizes",
           "trade_run", "trades_table"]

GOAL_CEILING_FRACTION = 0.7
GOAL_TRADE_BYTES = 64.0
GOAL_BOOK_BYTES = 400.0
GOAL_BARS_RATIO = 1.5
GOAL_P99_MS = 5.0
GOAL_FRESHNESS_RATE = 1_000
VENUE = "binance"
TRADE_STREAM = "trade"
"""The Binance stream ccxt's ``watch_trades`` subscribes (``<symbol>@trade``)."""
DRAIN_TIMEOUT_S = 20.0
DAY_MS = 86_400_000
BAR_SQL = """
SELECT (timestamp // 60000) * 60000 AS bar_start,
       arg_min(price, timestamp) AS open, max(price) AS high, min(price) AS low,
       arg_max(price, timestamp) AS close, sum(amount) AS volume,
       sum(price * amount) / sum(amount) AS vwap, count(*) AS trades
FROM trades GROUP BY 1 ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class ChannelSizes:
    """This section's sizes (kept here: :class:`~benchmarks.settings.Settings` is shared).

    Attributes:
        symbols: Symbols of the trades ingest runs.
        rates: Rates the trades search starts from.
        search_steps: Runs the search may add.
        max_rate: Highest rate the search probes.
        ceiling_frames: Frames per repetition of the trade-parse ceiling.
        ceiling_repetitions: Repetitions of the ceiling (median).
        memory_trades: Capacity of the trades buffer of the memory figures.
        memory_books: Capacity of the book buffer of the memory figures.
        memory_naive_rows: Rows of the dict-deque baselines.
        bars_trades: Stored trades of the bars query.
        fresh_symbols: Symbols (one live tail each) of the freshness run.
        fresh_seconds: Seconds of the freshness window.
    """

    symbols: int
    rates: tuple[int, ...]
    search_steps: int
    max_rate: int
    ceiling_frames: int
    ceiling_repetitions: int
    memory_trades: int
    memory_books: int
    memory_naive_rows: int
    bars_trades: int
    fresh_symbols: int
    fresh_seconds: float


FULL_SIZES = ChannelSizes(symbols=20, rates=(4_000, 8_000), search_steps=4, max_rate=32_000,
                          ceiling_frames=20_000, ceiling_repetitions=5,
                          memory_trades=1_000_000, memory_books=200_000,
                          memory_naive_rows=200_000, bars_trades=10_000_000,
                          fresh_symbols=8, fresh_seconds=10.0)
SMOKE_SIZES = ChannelSizes(symbols=3, rates=(500,), search_steps=0, max_rate=1_000,
                           ceiling_frames=1_000, ceiling_repetitions=1,
                           memory_trades=20_000, memory_books=4_000, memory_naive_rows=5_000,
                           bars_trades=200_000, fresh_symbols=2, fresh_seconds=1.0)


def sizes(settings: Settings) -> ChannelSizes:
    """The sizes of this section for ``settings`` (full or smoke)."""
    return SMOKE_SIZES if settings.smoke else FULL_SIZES


# -- the trades server (child) ----------------------------------------------------------------


def _trade_ids(buffer: Any, symbol: str) -> dict[str, Any]:
    """What the buffer holds of one symbol's trades: rows, distinct ids, lowest and highest."""
    import pyarrow.compute as pc

    table = buffer.get_range_sync(symbol, columns=["trade_id"])
    ids = pc.cast(table.column("trade_id"), pa.int64())
    rows = table.num_rows
    if not rows:
        return {"rows": 0, "distinct": 0, "low": None, "high": None}
    low, high = pc.min_max(ids).values()
    return {"rows": rows, "distinct": pc.count_distinct(ids).as_py(), "low": low.as_py(),
            "high": high.as_py()}


def _server_child(args: argparse.Namespace) -> None:
    from flight_md.app import MarketDataApp
    from flight_md.config import ServerConfig, StreamConfig

    names = tuple(ticks.venue_symbols(VENUE, args.symbols))
    scratch = Path(tempfile.mkdtemp(prefix="flight_md-bench-trades-"))
    stream = StreamConfig(VENUE, names, channel="trades", mode="websocket", url=args.url,
                          buffer_size=args.buffer_size, heartbeat_interval=30.0,
                          reconnect_delay=0.5, max_reconnect_delay=5.0, decoder=args.decoder)
    persist: dict[str, Any] = {"memory_only": True} if args.memory_only else {"data_dir": scratch}
    app = MarketDataApp(ServerConfig(port=0, buffer_size=args.buffer_size, streams=(stream,),
                                     **persist))
    app.start()
    trades = app.store.buffer("trades")

    def counts() -> dict[str, Any]:
        return {"appended": {s.symbol: s.appended for s in trades.stats()}}

    def ids() -> dict[str, Any]:
        return {s.symbol: _trade_ids(trades, s.symbol) for s in trades.stats()}

    def stop() -> None:
        try:
            app.stop(grace=0.5)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    serve({"location": app.location}, {"counts": counts, "ids": ids}, args.max_seconds,
          on_exit=stop)


def _server(url: str, symbols: int, buffer_size: int, *, memory_only: bool = False,
            decoder: str = DecoderKind.FAST.value) -> Child:
    """A trades server child (``MarketDataApp``, persisting unless ``memory_only``; its
    stream's ``decoder`` as ``--decoder`` names it)."""
    return Child("benchmarks.channels", "server", "--url", url, "--symbols", str(symbols),
                 "--buffer-size", str(buffer_size), *(["--memory-only"] if memory_only else []),
                 "--decoder", DecoderKind(decoder).value,
                 name="flight_md-trades", start_timeout=120.0)


# -- one ingest run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeRun:
    """One trades ingest run; rates are over the measured window."""

    rate: int
    delivered_per_s: float
    stored_per_s: float
    backlog_per_s: float
    sent_total: int
    stored_total: int
    capture_failures: tuple[str, ...]
    cpu_us_per_trade: float
    consumer_cpu_pct: float

    @property
    def shortfalls(self) -> list[str]:
        return [*shortfalls(self.rate, self.delivered_per_s, self.stored_per_s,
                            self.backlog_per_s), *self.capture_failures]

    @property
    def kept_up(self) -> bool:
        return not self.shortfalls


def _capture(sent: Mapping[str, int], held: Mapping[str, Mapping[str, Any]],
             symbols: Sequence[str]) -> list[str]:
    """Why the stored trades are not every sent trade exactly once (empty: they are).

    ``sent``: trade frames the emulator wrote per symbol; ``held``: :func:`_trade_ids` per
    symbol."""
    out = []
    for symbol in symbols:
        want = sent.get(symbol, 0)
        got = held.get(symbol, {"rows": 0, "distinct": 0, "low": None, "high": None})
        if got["rows"] != want or got["distinct"] != want:
            out.append(f"{symbol}: {got['rows']:,} rows, {got['distinct']:,} ids, "
                       f"{want:,} sent")
        elif want and got["high"] - got["low"] + 1 != want:
            out.append(f"{symbol}: ids {got['low']}..{got['high']} have holes")
    return out[:3] + ([f"and {len(out) - 3} more symbols"] if len(out) > 3 else [])


def trade_run(rate: int, settings: Settings, size: ChannelSizes, *,
              memory_only: bool = False, decoder: str = DecoderKind.FAST.value) -> TradeRun:
    """One trades run of flight_md (Binance trades, a ``MarketDataApp``): the ingest
    section's window and rule, plus capture checked by trade id."""
    names = ticks.venue_symbols(VENUE, size.symbols)
    # Every trade of the run stays in its ring, so that capture can be checked by id.
    budget = int(rate * (settings.ingest_seconds + settings.ingest_warmup + 30) / size.symbols)
    with exchange(symbols=size.symbols, rate=rate, venue=VENUE) as emulator, \
            _server(emulator.hello["url"], size.symbols, max(budget, 10_000),
                    memory_only=memory_only, decoder=decoder) as server:
        def stored() -> int:
            return sum(server.call("counts")["appended"].values())

        def sent() -> int:
            return sum(emulator.call("counts")["by_channel"].values())

        if not wait_until(lambda: len(server.call("counts")["appended"]) >= size.symbols,
                          60.0, 0.2):
            raise RuntimeError(f"trades of {size.symbols} symbols did not flow in 60 s")
        time.sleep(settings.ingest_warmup)
        window = sample_window(sent, stored, seconds=settings.ingest_seconds,
                               every=settings.ingest_sample_s, pids=(server.pid,))
        final = emulator.call("stall")
        total = sum(final["by_channel"].values())
        wait_until(lambda: stored() >= total, DRAIN_TIMEOUT_S, 0.1)
        per_market = final["per_symbol"].get(TRADE_STREAM, {})
        failures = _capture(per_market, server.call("ids"), names)
        stored_total = stored()
    return TradeRun(rate, window.delivered_per_s, window.stored_per_s, window.backlog_per_s,
                    total, stored_total, tuple(failures), window.cpu_s[0] / window.stored * 1e6,
                    100.0 * window.cpu_s[0] / window.seconds)


def _search(settings: Settings, size: ChannelSizes) -> tuple[dict[int, bool], list[TradeRun]]:
    runs: list[TradeRun] = []

    def probe(rate: int) -> bool:
        run = trade_run(rate, settings, size)
        print(f"channels: trades at {rate:,}/s: "
              f"{'kept up' if run.kept_up else '; '.join(run.shortfalls)} (run {len(runs) + 1})",
              flush=True)
        runs.append(run)
        return run.kept_up

    kept_up = search(probe, rates=size.rates, steps=size.search_steps, max_rate=size.max_rate,
                     resolution=settings.ingest_resolution)
    return kept_up, runs


# -- the trade-parse ceiling (child) ----------------------------------------------------------


class _CeilingRig(IngestCeilingRig):
    """The ingest ceiling's rig on Binance's ``trades`` channel: a silent in-process
    emulator, a subscribed ``MarketDataStream(channel="trades")`` and a plain ccxt client,
    on an event loop of their own thread; fresh trades every run."""

    # The trades child's own request (symbols and rows): the venue and channel are fixed.
    async def prepare(self, symbols: int, rows: int,  # type: ignore[override]
                      decoder: str = "fast", capacity: int | None = None,
                      ) -> dict[str, Any]:
        return await super().prepare(VENUE, symbols, "trades", decoder,
                                     capacity or max(rows // symbols + 1, 1_000))

    async def run(self, frames: int, repetitions: int) -> dict[str, Any]:
        from aiohttp import WSMessage, WSMsgType

        from benchmarks.ingest import _frames, _route

        state = self.state
        capture, names, buffer = state["capture"], state["names"], state["buffer"]
        route = _route(list(state["stream"].exchange.clients.values()), names)
        streams = {symbol: (channel, capture.combined.get(path, False))
                   for symbol, (path, channel) in capture.streams.items()}
        warm = max(1, frames // 10)
        # Fresh trades for every call: a trade fed twice is a duplicate, dropped, not stored.
        pairs = _frames(VENUE, names, warm + frames * repetitions, streams)
        parsers = {symbol: state["plain"].client(route[symbol].url).handle_text_or_binary_message
                   for symbol in names}

        def appended() -> int:
            return sum(s.appended for s in buffer.stats())

        def hot(batch: Sequence[tuple[str, str]]) -> float:
            messages = [(route[symbol].handle_message, WSMessage(WSMsgType.TEXT, text, None))
                        for symbol, text in batch]
            before = appended()
            start = time.perf_counter()
            for handle, message in messages:
                handle(message)
            elapsed = time.perf_counter() - start
            if appended() - before != len(batch):
                raise RuntimeError(f"the hot path stored {appended() - before} of {len(batch)} "
                                   "trades: it is not the ingest path")
            return len(batch) / elapsed

        def parse(batch: Sequence[tuple[str, str]]) -> float:
            texts = [(parsers[symbol], text) for symbol, text in batch]
            start = time.perf_counter()
            for handle, text in texts:
                handle(text)
            return len(batch) / (time.perf_counter() - start)

        hot(pairs[:warm])
        parse(pairs[:warm])
        hot_path: list[float] = []
        parse_only: list[float] = []
        for rep in range(repetitions):
            batch = pairs[warm + rep * frames:warm + (rep + 1) * frames]
            for which in (("hot", "parse") if rep % 2 == 0 else ("parse", "hot")):
                (hot_path.append(hot(batch)) if which == "hot"
                 else parse_only.append(parse(batch)))
            await asyncio.sleep(0.05)  # let the watchers re-arm, as between live frames
        return {"hot_path": hot_path, "parse_only": parse_only}

def _ceiling_child(args: argparse.Namespace) -> None:
    serve_rig(_CeilingRig(), args.max_seconds)


@dataclass(frozen=True, slots=True)
class _Ceiling:
    emulator_rate: int
    hot_path: float
    parse_only: float
    emulator_delivered_per_s: float


def _parse_ceiling(rate: int, size: ChannelSizes) -> _Ceiling:
    """Median trades/s of the product's trade hot path and of ccxt's parse alone, while the
    emulator sends ``rate`` trades/s to a sink."""
    frames, repetitions = size.ceiling_frames, size.ceiling_repetitions
    with ExitStack() as stack:
        emulator = stack.enter_context(exchange(symbols=size.symbols, rate=rate, venue=VENUE))
        drain = stack.enter_context(sink(emulator.hello["url"], size.symbols, TRADE_STREAM))
        measurer = stack.enter_context(Child("benchmarks.channels", "ceiling",
                                             name="ceiling-trades"))
        measurer.call("prepare", timeout=150, symbols=size.symbols,
                      rows=frames * (repetitions + 1))
        if not wait_until(lambda: drain.call("count")["bytes"] > 0, 30.0, 0.1):
            raise RuntimeError("the trades sink received nothing from the emulator in 30 s")

        def sent() -> tuple[float, int]:
            return time.perf_counter(), sum(emulator.call("counts")["by_channel"].values())

        t0, sent0 = sent()
        reply = measurer.call("run", timeout=600, frames=frames, repetitions=repetitions)
        t1, sent1 = sent()
    return _Ceiling(rate, median(reply["hot_path"]), median(reply["parse_only"]),
                    (sent1 - sent0) / (t1 - t0))


def _ingest(settings: Settings, section: Section) -> None:
    size = sizes(settings)
    kept_up, runs = _search(settings, size)
    lossless = lossless_rate(kept_up)
    ceiling = _parse_ceiling(lossless if lossless is not None else min(kept_up), size)
    value = float(lossless) if lossless is not None else math.nan
    frac = ratio(value, ceiling.hot_path)
    failed = [r for r, ok in kept_up.items() if not ok]
    summary = Table(("Symbols", "Lossless rate (kept up, 100 % capture)",
                     "Lowest rate that did not", "Trade-parse ceiling (hot path)",
                     "ccxt parse only", "Emulator competing at /s",
                     "Emulator delivered meanwhile", "Ratio to ceiling", "Hot path µs/trade"))
    summary.add(str(size.symbols),
                f"{lossless:,} trades/s" if lossless is not None else
                f"below {min(kept_up):,} trades/s",
                f"{min(failed):,} trades/s" if failed else "none probed",
                show(ceiling.hot_path, "/s"), show(ceiling.parse_only, "/s"),
                f"{ceiling.emulator_rate:,}", show(ceiling.emulator_delivered_per_s, "/s"),
                show(frac, "x"), show(1e6 / ceiling.hot_path if ceiling.hot_path else None,
                                      "µs"))
    table = Table(("Target trades/s", "Delivered/s", "Stored/s", "Backlog growth",
                   "Sent in all", "Stored in all", "Kept up (and every id once)",
                   "CPU µs/trade", "Consumer CPU %"))
    for run in runs:
        table.add(f"{run.rate:,}", show(run.delivered_per_s, "/s"), show(run.stored_per_s, "/s"),
                  show(run.backlog_per_s, "/s"), f"{run.sent_total:,}", f"{run.stored_total:,}",
                  "yes" if run.kept_up else "no: " + "; ".join(run.shortfalls),
                  show(run.cpu_us_per_trade, "µs"), show(run.consumer_cpu_pct, "%"))
    section.tables += [summary, table]
    section.goals.append(Goal.judge(
        "channels.trades.lossless", "Lossless trades ingest vs ccxt's trade-parse ceiling",
        frac, ">=", GOAL_CEILING_FRACTION, "x",
        target_note=show(GOAL_CEILING_FRACTION * ceiling.hot_path, "/s"),
        measured_note=f"{lossless:,} trades/s" if lossless is not None else "none",
        conditions="every trade id stored once",
        failures=() if lossless is not None else [f"did not keep up at {min(kept_up):,}/s"]))
    if not failed:
        section.notes.append(f"Trades: flight_md kept up with every rate probed, up to "
                             f"{max(kept_up):,} trades/s: the lossless rate is at least that.")


# -- memory (child) ---------------------------------------------------------------------------


def _rss() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _book_levels(mid: float, n: int, step: float) -> list[list[float]]:
    return [[mid - (k + 1) * step, 0.5 + k * 0.01] for k in range(n)]


def _memory_fill(kind: str, capacity: int) -> dict[str, Any]:
    """Fill one store of ``kind`` with ``1.1 x capacity`` rows; bytes held before and after.

    Kinds: ``trades-numeric``, ``trades-uuid``, ``book`` (flight_md); ``dicts-trades``,
    ``dicts-book`` (a ``deque(maxlen=capacity)`` of ccxt-shaped dicts)."""
    import gc
    import uuid
    from collections import deque

    from flight_md.buffer import MEMORY_POOL, MarketDataBuffer

    def pools() -> int:
        return int(pa.total_allocated_bytes()) + int(MEMORY_POOL.bytes_allocated())

    rows = capacity + capacity // 10
    symbol, now = "BTC/USDT", ticks.START_MS
    rng = uuid.UUID(int=7).int
    warm = MarketDataBuffer(64, channel="trades")
    for i in range(200):
        warm.append_trade(VENUE, symbol, now + i, str(i), 1.0, 1.0, "buy", now + i)
    warm.get_latest_sync(symbol, 10)
    del warm
    gc.collect()
    pools0, rss0 = pools(), _rss()
    store: Any
    if kind in ("trades-numeric", "trades-uuid"):
        store = MarketDataBuffer(capacity, channel="trades")
        numeric = kind == "trades-numeric"
        for i in range(rows):
            # Binance ids are 10 digits today; a UUID is what Bybit sends.
            trade_id = str(3_000_000_000 + i) if numeric else str(
                uuid.UUID(int=(rng * (i + 1)) & ((1 << 128) - 1)))
            store.append_trade(VENUE, symbol, now + i, trade_id, 60_000.0 + (i % 97) * 0.01,
                               0.001 * (1 + i % 13), "buy" if i % 2 else "sell", now + i + 3)
        stored = len(store)
    elif kind == "book":
        store = MarketDataBuffer(capacity, channel="book", book_depth=10)
        for i in range(rows):
            mid = 60_000.0 + (i % 101) * 0.01
            asks = [[mid + (k + 1) * 0.01, 0.5 + k * 0.01] for k in range(10)]
            store.append_book(VENUE, symbol, now + i, _book_levels(mid, 10, 0.01), asks,
                              1_000_000 + i, now + i + 3)
        stored = len(store)
    elif kind == "dicts-trades":
        store = deque(maxlen=capacity)
        for i in range(rows):
            store.append({"info": {}, "timestamp": now + i, "datetime": None, "symbol": symbol,
                          "id": str(3_000_000_000 + i), "order": None, "type": None,
                          "side": "buy" if i % 2 else "sell", "takerOrMaker": None,
                          "price": 60_000.0 + (i % 97) * 0.01, "amount": 0.001 * (1 + i % 13),
                          "cost": None, "fee": None, "fees": []})
        stored = len(store)
    elif kind == "dicts-book":
        store = deque(maxlen=capacity)
        for i in range(rows):
            mid = 60_000.0 + (i % 101) * 0.01
            store.append({"symbol": symbol, "timestamp": now + i, "datetime": None,
                          "nonce": 1_000_000 + i, "bids": _book_levels(mid, 10, 0.01),
                          "asks": [[mid + (k + 1) * 0.01, 0.5 + k * 0.01] for k in range(10)]})
        stored = len(store)
    else:
        raise ValueError(f"unknown store {kind!r}")
    gc.collect()
    return {"kind": kind, "stored": stored, "pool_bytes": pools() - pools0,
            "rss_delta": _rss() - rss0}


def _memory(settings: Settings, section: Section) -> None:
    size = sizes(settings)
    plan = (("trades-numeric", size.memory_trades), ("trades-uuid", size.memory_trades),
            ("book", size.memory_books), ("dicts-trades", size.memory_naive_rows),
            ("dicts-book", size.memory_naive_rows // 10))
    got: dict[str, dict[str, Any]] = {}
    for kind, capacity in plan:
        with Child("benchmarks.channels", "memory", name=f"memory-{kind}") as child:
            got[kind] = child.call("fill", timeout=600, kind=kind, capacity=capacity)

    def per(kind: str, key: str) -> float:
        return float(got[kind][key]) / int(got[kind]["stored"])

    table = Table(("Row", "Rows stored", "flight_md Arrow pools B/row", "flight_md RSS B/row",
                   "Baseline", "Baseline rows", "Baseline RSS B/row", "Ratio (pools / baseline)"))
    for kind, label, base in (("trades-numeric", "trade, 10-digit id (Binance)", "dicts-trades"),
                              ("trades-uuid", "trade, UUID id (Bybit)", "dicts-trades"),
                              ("book", "top-10 book", "dicts-book")):
        table.add(label, f"{got[kind]['stored']:,}", show(per(kind, "pool_bytes"), "B"),
                  show(per(kind, "rss_delta"), "B"), f"deque of ccxt {base[6:]} dicts",
                  f"{got[base]['stored']:,}", show(per(base, "rss_delta"), "B"),
                  show(ratio(per(kind, "pool_bytes"), per(base, "rss_delta")), "x"))
    section.tables.append(table)
    section.goals.append(Goal.judge(
        "channels.memory.trade", "Bytes per stored trade, numeric id (Arrow pools)",
        per("trades-numeric", "pool_bytes"), "<=", GOAL_TRADE_BYTES, "B",
        measured_note=f"UUID id: {show(per('trades-uuid', 'pool_bytes'), 'B')}, reported apart"))
    section.goals.append(Goal.judge(
        "channels.memory.book", "Bytes per stored top-10 book (Arrow pools)",
        per("book", "pool_bytes"), "<=", GOAL_BOOK_BYTES, "B"))


# -- bars over 10 M trades ---------------------------------------------------------------------


def trades_table(rows: int, seed: int = 11) -> pa.Table:
    """``rows`` trades of one symbol spread evenly over the UTC day :data:`ticks.START_MS`
    starts, in the ring's stored schema (ids ``"1000000000"``, ... as strings)."""
    import numpy as np

    from flight_md.core.channels import spec_for

    rng = np.random.default_rng(seed)
    timestamps = ticks.START_MS + (np.arange(rows, dtype=np.int64) * DAY_MS) // max(rows, 1)
    price = 60_000.0 + np.cumsum(rng.normal(0.0, 0.5, rows))
    amount = rng.exponential(0.05, rows)
    ids = pa.array((np.arange(rows, dtype=np.int64) + 1_000_000_000).astype(str))
    side = pa.array(np.where(rng.random(rows) < 0.5, "buy", "sell"))
    stored = spec_for("trades").stored
    return pa.Table.from_arrays([pa.array(timestamps), ids, pa.array(price), pa.array(amount),
                                 side, pa.array(timestamps + 5)], schema=stored)


def duckdb_over(table: pa.Table) -> Any:
    """An in-process DuckDB connection with ``table`` registered as ``trades`` (zero copy)."""
    import duckdb

    con = duckdb.connect()
    con.register("trades", table)
    return con


def bars_table(con: Any) -> pa.Table:
    """DuckDB's 1m bars of the ``trades`` of ``con`` (the baseline's query, as Arrow)."""
    return con.sql(BAR_SQL).to_arrow_table()


def _bars_child(args: argparse.Namespace) -> None:
    from flight_md.buffer import MarketDataBuffer, Store
    from flight_md.service import FlightMarketDataServer

    table = trades_table(args.rows)
    buffer = MarketDataBuffer(args.rows, channel="trades")
    buffer.restore(VENUE, "BTC/USDT", table, next_seq=args.rows)
    del table
    server = FlightMarketDataServer("grpc://127.0.0.1:0",
                                    store=Store(args.rows, buffers={"trades": buffer}))
    serve({"location": f"grpc://127.0.0.1:{server.port}", "rows": len(buffer)}, {},
          args.max_seconds, on_exit=partial(server.shutdown))


def _same_bars(ours: pa.Table, duck: pa.Table) -> None:
    """Raise unless both answers have the same bars (starts, OHLC and counts equal)."""
    import pyarrow.compute as pc

    if ours.num_rows != duck.num_rows:
        raise RuntimeError(f"flight_md answered {ours.num_rows} bars, DuckDB {duck.num_rows}")
    for name in ("bar_start", "open", "high", "low", "close", "trades"):
        a = ours.column(name).cast(pa.float64())
        b = duck.column(name).cast(pa.float64())
        if not pc.all(pc.equal(a, b)).as_py():
            raise RuntimeError(f"flight_md and DuckDB disagree on {name}: not the same query")
    for name in ("volume", "vwap"):
        a, b = ours.column(name).cast(pa.float64()), duck.column(name).cast(pa.float64())
        worst = pc.max(pc.abs(pc.divide(pc.subtract(a, b), b))).as_py()
        if worst > 1e-9:
            raise RuntimeError(f"flight_md and DuckDB disagree on {name} (relative {worst:g})")


def _bars(settings: Settings, section: Section) -> None:
    rows = sizes(settings).bars_trades
    ticket = flight.Ticket(b"BTC/USDT?channel=trades&bars=1m")
    with ExitStack() as stack:
        server = stack.enter_context(Child("benchmarks.channels", "bars", "--rows", str(rows),
                                           name="flight_md-bars", start_timeout=300.0))
        client = stack.enter_context(closing(flight.connect(server.hello["location"])))
        con = stack.enter_context(closing(duckdb_over(trades_table(rows))))
        ours = client.do_get(ticket).read_all()
        duck = bars_table(con)
        _same_bars(ours, duck)
        flight_s: list[float] = []
        duck_s: list[float] = []
        for rep in range(max(settings.repetitions, 3)):
            for which in (("flight", "duck") if rep % 2 == 0 else ("duck", "flight")):
                start = time.perf_counter()
                if which == "flight":
                    client.do_get(ticket).read_all()
                    flight_s.append(time.perf_counter() - start)
                else:
                    bars_table(con)
                    duck_s.append(time.perf_counter() - start)
    ours_ms, duck_ms = 1e3 * median(flight_s), 1e3 * median(duck_s)
    out = Table(("Stored trades", "Bars", "flight_md DoGet bars=1m (ms)",
                 "DuckDB in-process GROUP BY (ms)", "Ratio", "flight_md trades/s reduced"))
    out.add(f"{rows:,}", f"{ours.num_rows:,}", show(ours_ms), show(duck_ms),
            show(ratio(ours_ms, duck_ms), "x"), show(rows / (ours_ms / 1e3), "/s"))
    section.tables.append(out)
    section.goals.append(Goal.judge(
        "channels.bars", f"1-day 1m bars over {rows:,} stored trades vs DuckDB in-process",
        ratio(ours_ms, duck_ms), "<=", GOAL_BARS_RATIO, "x",
        measured_note=f"{show(ours_ms, 'ms')} vs {show(duck_ms, 'ms')}"))


# -- freshness through a live trades tail ----------------------------------------------------


@dataclass(slots=True)
class _TradeTail:
    """One ``follow=true`` trades tail on its own thread: (trade id, row receive ms, trade
    time ms, arrival ns) per trade."""

    location: str
    symbol: str
    got: list[tuple[int, int, int, int]] = field(default_factory=list)
    error: str | None = None
    live: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    client: Any = None
    reader: Any = None
    closing: bool = False

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"tail-{self.symbol}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ticket = f"{self.symbol}?channel=trades&follow=true&latest=0".encode()
        self.client = flight.connect(self.location)
        try:
            self.reader = self.client.do_get(flight.Ticket(ticket))
            self.live.set()
            for chunk in self.reader:
                arrived = time.time_ns()
                batch = chunk.data
                ids = batch.column("trade_id").to_pylist()
                recv = batch.column("receive_timestamp").to_pylist()
                traded = batch.column("timestamp").to_pylist()
                self.got += [(int(i), r, t, arrived) for i, r, t in zip(ids, recv, traded,
                                                                         strict=True)]
        except Exception as exc:  # noqa: BLE001 - reported in the section
            if not self.closing:  # cancelling the stream ends it with an error: not one
                self.error = repr(exc)

    def close(self) -> None:
        self.closing = True
        if self.reader is not None:
            self.reader.cancel()
        if self.thread is not None:
            self.thread.join(5)
        if self.client is not None:
            self.client.close()


def _raw_child(args: argparse.Namespace) -> None:
    """A raw aiohttp websocket client of the emulator's ``<symbol>@trade`` streams: (trade
    id, trade time ms, arrival ns) per trade; no ccxt, no store, no Flight."""
    from benchmarks.freshness import raw_client

    def trade(frame: Any, now: int) -> tuple[int, int, int] | None:
        if isinstance(frame, dict) and frame.get("e") == "trade":
            return (int(frame["t"]), int(frame["T"]), now)
        return None

    raw_client(args.url, [f"{s.replace('/', '').lower()}@{TRADE_STREAM}"
                          for s in ticks.venue_symbols(VENUE, args.symbols)], trade,
               args.max_seconds)


def _freshness(settings: Settings, section: Section) -> None:
    size = sizes(settings)
    names = ticks.venue_symbols(VENUE, size.fresh_symbols)
    rate = GOAL_FRESHNESS_RATE
    with exchange(symbols=size.fresh_symbols, rate=rate, venue=VENUE) as emulator, \
            _server(emulator.hello["url"], size.fresh_symbols, 1_000_000) as server, \
            Child("benchmarks.channels", "raw", "--url", emulator.hello["url"], "--symbols",
                  str(size.fresh_symbols), name="raw-trades") as raw:
        if not wait_until(lambda: len(server.call("counts")["appended"]) >= len(names),
                          60.0, 0.2):
            raise RuntimeError("trades did not flow in 60 s")
        tails = [_TradeTail(server.hello["location"], s) for s in names]
        try:
            for tail in tails:
                tail.start()
            if not all(t.live.wait(30) for t in tails):
                raise RuntimeError("a live tail did not open in 30 s")
            time.sleep(0.3)  # the tails' first batches are in
            begin = time.time_ns()
            time.sleep(size.fresh_seconds)
            end = time.time_ns()
            emulator.call("stall")
            counts = [0]

            def quiet() -> bool:
                now = sum(len(t.got) for t in tails)
                done = now == counts[0]
                counts[0] = now
                return done

            wait_until(quiet, 10.0, 0.5)
            held = server.call("ids")  # after the drain: what the tails must have got
            baseline = raw.call("take")
        finally:
            for tail in tails:
                tail.close()
    lat: list[float] = []
    whole: list[float] = []
    problems: list[str] = []
    for tail in tails:
        if tail.error is not None:
            problems.append(f"{tail.symbol}: {tail.error}")
        ids = [g[0] for g in tail.got]
        if len(set(ids)) != len(ids):
            problems.append(f"{tail.symbol}: {len(ids) - len(set(ids))} trades twice")
        info = held.get(tail.symbol)
        if ids and info and info["high"] is not None and max(ids) - min(ids) + 1 != len(set(ids)):
            problems.append(f"{tail.symbol}: {max(ids) - min(ids) + 1 - len(set(ids))} missing")
        if ids and info and info["high"] != max(ids):
            problems.append(f"{tail.symbol}: the tail ended at id {max(ids)}, the ring at "
                            f"{info['high']}")
        for _, recv_ms, trade_ms, arrived in tail.got:
            if begin <= arrived <= end:
                lat.append((arrived - recv_ms * 1_000_000) / 1e6)
                whole.append((arrived - trade_ms * 1_000_000) / 1e6)
    raw_ms = [(arrived - trade_ms * 1_000_000) / 1e6
              for _, trade_ms, arrived in baseline["entries"] if begin <= arrived <= end]
    raw_ids = [entry[0] for entry in baseline["entries"]]
    raw_note = baseline["error"] or (
        f"{len(raw_ids) - len(set(raw_ids))} trades twice" if len(set(raw_ids)) != len(raw_ids)
        else "")
    out = Table(("Trades/s", "Path", "Trades judged", "p50 (ms)", "p99 (ms)", "max (ms)",
                 "p50 ratio to raw", "p99 ratio to raw"))
    raw50, raw99 = percentile(raw_ms, 50), percentile(raw_ms, 99)
    out.add(f"{rate:,}", f"flight_md, {len(tails)} live tails: row receive_timestamp -> tail",
            f"{len(lat):,}", show(percentile(lat, 50)), show(percentile(lat, 99)),
            show(max(lat) if lat else None), "-", "-")
    out.add(f"{rate:,}", "flight_md: emulator trade time -> tail", f"{len(whole):,}",
            show(percentile(whole, 50)), show(percentile(whole, 99)),
            show(max(whole) if whole else None),
            show(ratio(percentile(whole, 50), raw50), "x"),
            show(ratio(percentile(whole, 99), raw99), "x"))
    out.add(f"{rate:,}", "raw websocket (baseline): emulator trade time -> client"
            + (f" ({raw_note})" if raw_note else ""), f"{len(raw_ms):,}", show(raw50),
            show(raw99), show(max(raw_ms) if raw_ms else None), "1x", "1x")
    section.tables.append(out)
    if not lat:
        problems.append("no trade reached a tail in the window")
    section.goals.append(Goal.judge(
        "channels.freshness", f"Trades freshness through a live tail at {rate:,} trades/s (p99)",
        percentile(lat, 99), "<", GOAL_P99_MS, "ms", conditions="every trade delivered once",
        failures=problems))


# -- the section -------------------------------------------------------------------------------


def measure(settings: Settings) -> Section:
    """The four issue-12 measurements; one that fails is reported and the others still run."""
    size = sizes(settings)
    section = Section(
        "channels", "Trades, books and bars",
        f"""
**Lossless trades ingest.** The Binance emulator (own process) sends synthetic `trade` frames
(consecutive ids per market) spread over {size.symbols} symbols; a `MarketDataApp` (own process,
persisting as by default) ingests the `trades` channel through real `ccxt.pro`. A run follows
the ingest section's rule (within {TOLERANCE:.0%}: delivered the target rate, stored what was
delivered, backlog not growing over a {settings.ingest_seconds:g} s window after a {settings.ingest_warmup:g} s warm-up)
**and** captures 100 %: after the emulator stalls and the server drains, each symbol's stored
ids are exactly the ids sent, each once, no hole. Search from {', '.join(f'{r:,}' for r in size.rates)}
trades/s, then doubling and geometric bisection (at most {size.search_steps} more runs, up to
{size.max_rate:,}/s). **Baseline**, the trade-parse ceiling: the emulator's own `trade` frames fed one per call
to the message handler of the websocket client of a real subscribed `MarketDataStream(channel="trades")`
(frame guard, ccxt's decode and `handle_trade`, flight_md's trade tap, duplicate/gap checks,
`append_trade`; {size.ceiling_frames:,} fresh trades x {size.ceiling_repetitions}, median) while the emulator
sends at the lossless rate to a sink; *ccxt parse only* is a plain ccxt client's
`handle_text_or_binary_message` on the same frames.

**Memory.** One fresh process per store: a real `MarketDataBuffer(channel="trades")` of
{size.memory_trades:,} rows and a `MarketDataBuffer(channel="book")` (top 10, every level filled) of
{size.memory_books:,} rows, each filled to 1.1 x capacity (so it has evicted); bytes per stored
row = growth of Arrow's pools (the store allocates from the system pool) / rows stored; RSS
growth beside it. Trades with a 10-digit numeric id (the goal) and with a UUID (Bybit's ids,
reported apart). Baseline: a `deque(maxlen=...)` of the dicts ccxt returns, RSS per row.

**Bars.** A server process holds {size.bars_trades:,} trades of one symbol over one UTC day in one
`MarketDataBuffer({size.bars_trades:,}, channel="trades")` (filled through the ring's restore
path); the client times `DoGet BTC/USDT?channel=trades&bars=1m` (1,440 bars). Baseline: DuckDB in
this process over the same trades as one Arrow table, `GROUP BY` minute with `arg_min`/`arg_max`/`sum`,
result fetched as Arrow (DuckDB uses every core). The answers are checked equal first; median
of {max(settings.repetitions, 3)} alternating repetitions.

**Freshness.** The emulator at {GOAL_FRESHNESS_RATE:,} trades/s over {size.fresh_symbols} symbols, the trades server
ingesting, one `follow=true` trades tail per symbol in this process ({size.fresh_seconds:g} s window);
latency = arrival - the row's `receive_timestamp` (whole ms, floored: at most 1 ms above the
true figure). The emulator's trade time (`T`, ms, stamped as it renders) -> arrival, the whole
path, is shown beside it, with its **baseline**: a raw aiohttp websocket client in its own process
subscribed to the same `@trade` streams straight from the emulator (no ccxt, no store, no
Flight), trade time -> its arrival over the same window. Every trade the ring holds must reach
its tail once.
""")
    parts = (("trades ingest", _ingest), ("memory", _memory), ("bars", _bars),
             ("freshness", _freshness))
    return run_parts(section, [(name, partial(part, settings, section)) for name, part in parts],
                     log="channels")


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.channels")
    parser.add_argument("role", choices=("server", "ceiling", "memory", "bars", "raw"))
    parser.add_argument("--url")
    parser.add_argument("--symbols", type=int, default=3)
    parser.add_argument("--buffer-size", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--memory-only", action="store_true",
                        help="server: no persistence (for comparisons with the default)")
    parser.add_argument("--decoder", default=DecoderKind.FAST.value,
                        choices=[kind.value for kind in DecoderKind],
                        help="server: the stream's decoder (default: the product's)")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    if args.role == "server":
        if not args.url:
            parser.error("server needs --url")
        _server_child(args)
    elif args.role == "ceiling":
        _ceiling_child(args)
    elif args.role == "memory":
        serve({"ready": True}, {"fill": _memory_fill}, args.max_seconds)
    elif args.role == "raw":
        if not args.url:
            parser.error("raw needs --url")
        _raw_child(args)
    else:
        _bars_child(args)


if __name__ == "__main__":
    _main()
