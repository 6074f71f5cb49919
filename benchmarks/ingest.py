"""Lossless ingest rate: emulator -> real ccxt -> flight_md, beside two baselines.

Per configuration (rate x symbols) the emulator runs in one process and the consumer in
another: flight_md (a ``MarketDataApp`` ingesting through ccxt.pro, with its Flight server)
or the naive design. After every symbol flows and a warm-up, a measured window samples the
emulator's sent counter and the consumer's stored counter every ``ingest_sample_s``.

Lossless means kept up
    An exchange does not hold a backlog for a slow consumer: what the consumer does not
    take as it comes is lost (or the connection is). A run *kept up* when, in the window,
    (1) the emulator delivered the target rate (TCP back-pressure from a consumer that
    falls behind slows it), (2) the consumer stored what was delivered, and (3) the
    backlog (sent - stored, least-squares slope over the samples) did not grow, each
    within :data:`TOLERANCE`. Draining a backlog after the emulator stops does not count.
    :func:`shortfalls` is that rule. The *lossless rate* is the highest rate found by
    search (:func:`next_rate`: doubling, then geometric bisection) at and below which
    every probed rate kept up.

Baselines, measured in the same run:

The product's parse ceiling
    No network: the emulator's own frame strings fed in a loop, one per call, to the
    message handler of the websocket clients of a real, subscribed
    :class:`~flight_md.ingest.stream.MarketDataStream` -- what ccxt's receive loop calls
    per frame -- so the measured path is the product's own hot path: flight_md's frame
    guard, ccxt's JSON decode and ``handle_message``, the tap, ``normalize.to_row`` and
    ``MarketDataBuffer.append_row``. (ccxt's parse alone, without flight_md, is shown
    beside it.) Meanwhile the emulator runs in its own process at the rate and symbols of
    the ingest run it is compared with, writing to a :mod:`benchmarks.sink`, so it
    competes for the CPU as it does in the ingest runs.
The naive design
    A process running one loop per symbol, ``while True: await
    exchange.watch_bids_asks([symbol])`` (``watch_tickers`` for the ticker channel), that
    stores each ticker it gets, against the same emulator configuration.

Run as children: ``python -m benchmarks.ingest naive --url URL --symbols N --channel C``,
``python -m benchmarks.ingest ceiling``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.process import Child, serve, wait_until
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.servers import flight_md_server
from benchmarks.settings import Settings
from benchmarks.sink import sink

__all__ = ["TOLERANCE", "Run", "lossless_rate", "measure", "next_rate", "shortfalls", "slope"]

GOAL_CEILING_FRACTION = 0.7
TOLERANCE = 0.02
"""How far below the target a kept-up run may deliver, store and let its backlog grow."""
DRAIN_TIMEOUT_S = 20.0
RATE_STEP = 500
"""Rates probed by the search are multiples of this."""
_CHANNELS = {"bidask": "bookTicker", "ticker": "ticker"}


# -- the rule and the search (pure) ------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points (NaN for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return math.nan
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def shortfalls(rate: float, delivered_per_s: float, stored_per_s: float,
               backlog_per_s: float, tolerance: float = TOLERANCE) -> list[str]:
    """Why a run did not keep up with ``rate`` (empty: it kept up).

    Args:
        rate: Target rate the emulator was asked for, msg/s.
        delivered_per_s: Frames the emulator wrote per second in the window.
        stored_per_s: Ticks the consumer stored per second in the same window.
        backlog_per_s: Growth of sent - stored per second (least-squares slope).
    """
    out = []
    if not delivered_per_s >= (1 - tolerance) * rate:
        out.append(f"delivered {show(delivered_per_s, '/s')} of {show(rate, '/s')}")
    if not stored_per_s >= (1 - tolerance) * delivered_per_s:
        out.append(f"stored {show(stored_per_s, '/s')} of {show(delivered_per_s, '/s')} "
                   "delivered")
    if not backlog_per_s <= tolerance * max(delivered_per_s, 0.0):
        out.append(f"backlog grew {show(backlog_per_s, '/s')}")
    return out


def lossless_rate(kept_up: Mapping[int, bool]) -> int | None:
    """The highest probed rate at and below which every probed rate kept up."""
    best = None
    for rate in sorted(kept_up):
        if not kept_up[rate]:
            break
        best = rate
    return best


def next_rate(kept_up: Mapping[int, bool], *, max_rate: int, resolution: float,
              step: int = RATE_STEP) -> int | None:
    """The next rate to probe, or ``None`` when the lossless rate is known well enough.

    Above the lossless rate ``lo`` it doubles until a rate fails (up to ``max_rate``), then
    bisects geometrically between ``lo`` and the lowest failed rate ``hi`` until ``hi <=
    lo * (1 + resolution)``. When even the lowest probed rate failed it halves.
    """
    if not kept_up:
        return None
    lo = lossless_rate(kept_up)
    failed = [rate for rate, ok in kept_up.items() if not ok]
    hi = min(failed) if failed else None
    if lo is None:
        assert hi is not None
        candidate = (hi // 2) // step * step
        return candidate if candidate >= step and candidate not in kept_up else None
    if hi is None:
        candidate = min(2 * lo, max_rate)
        return candidate if candidate > lo and candidate not in kept_up else None
    if hi <= lo * (1 + resolution):
        return None
    candidate = round(math.sqrt(lo * hi) / step) * step
    return candidate if lo < candidate < hi and candidate not in kept_up else None


@dataclass(frozen=True, slots=True)
class Run:
    """One ingest configuration's figures; rates are over the measured window."""

    design: str
    channel: str
    rate: int
    symbols: int
    seconds: float
    delivered_per_s: float
    stored_per_s: float
    backlog_per_s: float
    backlog_end: int
    sent_total: int
    stored_total: int
    cpu_us_per_tick: float
    consumer_cpu_pct: float
    emulator_cpu_pct: float

    @property
    def shortfalls(self) -> list[str]:
        return shortfalls(self.rate, self.delivered_per_s, self.stored_per_s,
                          self.backlog_per_s)

    @property
    def kept_up(self) -> bool:
        return not self.shortfalls

    @property
    def capture_after_drain(self) -> float:
        return 100.0 * self.stored_total / self.sent_total if self.sent_total else math.nan


# -- the naive design (child process) ----------------------------------------------------------


def _naive_child(args: argparse.Namespace) -> None:
    import ccxt.pro as ccxt_pro

    from flight_md.buffer import MarketDataBuffer
    from flight_md.ingest.endpoints import url_overrides
    from flight_md.normalize import to_tick
    from flight_md.schema import MarketTick, now_ms

    symbols = ticks.symbols(args.symbols)
    state: dict[str, Any] = {"ticks": 0, "error": None}
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def run() -> None:
        config = url_overrides("binance", args.url)
        config["options"]["watchTickers"] = {"name": "ticker"}
        exchange_ = ccxt_pro.binance(config)
        buffer = MarketDataBuffer()
        watch = exchange_.watch_bids_asks if args.channel == "bidask" else exchange_.watch_tickers

        async def follow(group: list[str]) -> None:
            while True:
                result = await watch(group)
                for ticker in result.values():
                    tick = to_tick(ticker, exchange="binance", channel=args.channel,
                                   receive_ms=now_ms())
                    if type(tick) is MarketTick:
                        buffer.append(tick)
                        state["ticks"] += 1

        try:
            await exchange_.load_markets()
            ready.set()
            if args.per_symbol:
                await asyncio.gather(*(follow([s]) for s in symbols))
            else:
                await follow(symbols)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported through the "count" request
            state["error"] = repr(exc)
            ready.set()
        finally:
            await exchange_.close()

    thread = threading.Thread(target=loop.run_forever, name="naive-loop", daemon=True)
    thread.start()
    task = asyncio.run_coroutine_threadsafe(run(), loop)
    ready.wait(60)

    def stop() -> None:
        task.cancel()
        time.sleep(0.2)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    serve({"ready": True}, {"count": lambda: dict(state)}, args.max_seconds, on_exit=stop)


def _naive(url: str, symbols: int, channel: str, per_symbol: bool) -> Child:
    flags = ["--per-symbol"] if per_symbol else []
    return Child("benchmarks.ingest", "naive", "--url", url, "--symbols", str(symbols),
                 "--channel", channel, *flags, name="naive-watch-loop")


# -- one run -----------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _one(design: str, channel: str, rate: int, symbols: int, settings: Settings) -> Run:
    wire = _CHANNELS[channel]
    with exchange(symbols=symbols, rate=rate) as emulator:
        url = emulator.hello["url"]
        consumer = (flight_md_server(exchange_url=url, ingest_symbols=symbols, channel=channel,
                                     name="flight_md-ingest")
                    if design == "flight_md"
                    else _naive(url, symbols, channel, per_symbol=True))
        with consumer:
            stored: Callable[[], int]
            if design == "flight_md":
                def stored() -> int:
                    return sum(consumer.call("counts")["appended"].values())

                def flowing() -> bool:
                    return len(consumer.call("counts")["appended"]) >= symbols
            else:
                def stored() -> int:
                    reply = consumer.call("count")
                    if reply["error"]:
                        raise RuntimeError(f"naive watch loop failed: {reply['error']}")
                    return int(reply["ticks"])

                def flowing() -> bool:
                    sent = emulator.call("sent")["per_symbol"].get(wire, {})
                    return len(sent) >= symbols and stored() > 0

            def sent() -> int:
                return int(emulator.call("counts")["by_channel"].get(wire, 0))

            if not wait_until(flowing, 60.0, 0.2):
                raise RuntimeError(f"{design}: ingestion did not reach {symbols} symbols in 60 s")
            time.sleep(settings.ingest_warmup)
            emu_pid = emulator.hello["pid"]
            samples: list[tuple[float, int, int]] = []  # (time, sent, stored)
            cpu0, emu_cpu0 = _cpu(consumer.pid), _cpu(emu_pid)
            end = time.perf_counter() + settings.ingest_seconds
            while True:
                now = time.perf_counter()
                # Same order every time: a constant skew between the two counters moves
                # the backlog, never its slope.
                samples.append((now, sent(), stored()))
                if now >= end:
                    break
                time.sleep(max(0.0, min(settings.ingest_sample_s, end - time.perf_counter())))
            cpu1, emu_cpu1 = _cpu(consumer.pid), _cpu(emu_pid)
            final = emulator.call("stall")["by_channel"].get(wire, 0)
            last = [stored(), time.perf_counter()]

            def drained() -> bool:
                now_stored = stored()
                if now_stored >= final:
                    return True
                if now_stored != last[0]:
                    last[:] = [now_stored, time.perf_counter()]
                return time.perf_counter() - last[1] > 1.0

            wait_until(drained, DRAIN_TIMEOUT_S, 0.1)
            stored_total = stored()
    (t0, sent0, stored0), (t1, sent1, stored1) = samples[0], samples[-1]
    elapsed = t1 - t0
    window = max(stored1 - stored0, 1)
    return Run(design, channel, rate, symbols, elapsed, (sent1 - sent0) / elapsed,
               (stored1 - stored0) / elapsed,
               slope([(t - t0, s - k) for t, s, k in samples]), sent1 - stored1, final,
               stored_total, (cpu1 - cpu0) / window * 1e6, 100.0 * (cpu1 - cpu0) / elapsed,
               100.0 * (emu_cpu1 - emu_cpu0) / elapsed)


# -- the product's parse ceiling ---------------------------------------------------------------


def _frames(symbols: Sequence[str], count: int, channel: str) -> list[tuple[str, str]]:
    """``count`` (symbol, frame) pairs exactly as the emulator renders them, round-robin."""
    from flight_md.emulator.dialects.binance import BinanceDialect
    from flight_md.emulator.market import StreamKey, parse_symbols
    from flight_md.emulator.synthetic import PriceWalk

    markets = parse_symbols(tuple(symbols))
    walks = {m.symbol: PriceWalk(m, 7) for m in markets}
    dialect = BinanceDialect(markets, walks, None)
    wire = _CHANNELS[channel]
    out = []
    for i in range(count):
        market = markets[i % len(markets)]
        out.append((market.symbol, dialect.render(StreamKey(wire, market.symbol), market,
                                                  walks[market.symbol].step(ticks.START_MS + i),
                                                  snapshot=False)))
    return out


async def _ceiling_async(symbols: int, count: int, channel: str, repetitions: int
                         ) -> dict[str, Any]:
    import ccxt.pro as ccxt_pro
    from aiohttp import WSMessage, WSMsgType

    from flight_md.buffer import MarketDataBuffer
    from flight_md.emulator import Emulator
    from flight_md.ingest.endpoints import url_overrides
    from flight_md.ingest.stream import MarketDataStream

    names = ticks.symbols(symbols)
    # A silent emulator of this process: it only lets the stream load markets and subscribe.
    emulator = Emulator(exchange="binance", symbols=tuple(names), rate=0)
    await emulator.start()
    buffer = MarketDataBuffer()
    stream = MarketDataStream("binance", buffer=buffer, channel=channel, mode="websocket",
                              url=emulator.url, heartbeat_interval=60.0)
    config = url_overrides("binance", emulator.url)
    config["options"]["watchTickers"] = {"name": "ticker"}
    plain = ccxt_pro.binance(config)
    try:
        await stream.connect()
        await stream.subscribe(names)
        await plain.load_markets()
        for _ in range(600):
            if emulator.stats.subscriptions >= len(names):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"the stream did not subscribe {len(names)} symbols in 30 s")
        await asyncio.sleep(0.3)
        route: dict[str, Any] = {}
        for client in stream.exchange.clients.values():
            for key in client.subscriptions:
                route[str(key).rsplit("@", 1)[-1]] = client
        missing = [s for s in names if s not in route]
        if missing:
            raise RuntimeError(f"no websocket client subscribed {missing[:3]}")
        frames = _frames(names, count, channel)
        # What ccxt's receive loop hands each client: aiohttp messages, to the client's
        # handle_message (flight_md's frame guard, then ccxt's own).
        messages = [(route[symbol].handle_message, WSMessage(WSMsgType.TEXT, text, None))
                    for symbol, text in frames]
        texts = [text for _, text in frames]
        parse = plain.client(plain.urls["api"]["ws"]["spot"] + "/0").handle_text_or_binary_message

        def appended() -> int:
            return sum(s.appended for s in buffer.stats())

        def run_hot_path(batch: Sequence[tuple[Any, Any]]) -> float:
            before = appended()
            start = time.perf_counter()
            for handle, message in batch:
                handle(message)
            elapsed = time.perf_counter() - start
            if appended() - before != len(batch):
                raise RuntimeError(f"the hot path stored {appended() - before} of {len(batch)} "
                                   "frames: it is not the ingest path")
            return len(batch) / elapsed

        def run_parse(batch: Sequence[str]) -> float:
            start = time.perf_counter()
            for text in batch:
                parse(text)
            return len(batch) / (time.perf_counter() - start)

        warm = max(1, count // 10)  # untimed: first calls fill caches and create the rings
        run_hot_path(messages[:warm])
        run_parse(texts[:warm])
        hot_path: list[float] = []
        parse_only: list[float] = []
        for rep in range(repetitions):
            for which in (("hot", "parse") if rep % 2 == 0 else ("parse", "hot")):
                if which == "hot":
                    hot_path.append(run_hot_path(messages))
                else:
                    parse_only.append(run_parse(texts))
            await asyncio.sleep(0.05)  # let the watchers re-arm, as between live frames
        return {"hot_path": hot_path, "parse_only": parse_only}
    finally:
        await stream.disconnect()
        await plain.close()
        await emulator.stop()


def _ceiling_child(args: argparse.Namespace) -> None:
    import ccxt.pro  # noqa: F401 - imported before the hello, not inside the timing

    def run(symbols: int, channel: str, frames: int, repetitions: int) -> dict[str, Any]:
        return asyncio.run(_ceiling_async(symbols, frames, channel, repetitions))

    serve({"ready": True}, {"run": run}, args.max_seconds)


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The parse ceiling of one channel and symbol count, with the emulator competing."""

    channel: str
    symbols: int
    emulator_rate: int
    hot_path: float
    parse_only: float
    emulator_delivered_per_s: float


def parse_ceiling(channel: str, symbols: int, rate: int, settings: Settings) -> Ceiling:
    """Median ticks/s of the product's hot path (and of ccxt's parse alone), measured in a
    child process while the emulator sends ``rate`` msg/s over ``symbols`` to a sink."""
    wire = _CHANNELS[channel]
    with ExitStack() as stack:
        emulator = stack.enter_context(exchange(symbols=symbols, rate=rate))
        children = [sink(emulator.hello["url"], symbols, wire),
                    Child("benchmarks.ingest", "ceiling", name=f"ceiling-{symbols}")]
        for child in children:
            stack.callback(child.close)
            child.launch()
        for child in children:
            child.wait_ready()
        drain, measurer = children
        if not wait_until(lambda: drain.call("count")["bytes"] > 0, 30.0, 0.1):
            raise RuntimeError("the sink received nothing from the emulator in 30 s")

        def sent() -> tuple[float, int]:
            return time.perf_counter(), int(emulator.call("counts")["by_channel"].get(wire, 0))

        t0, sent0 = sent()
        reply = measurer.call("run", timeout=600, symbols=symbols, channel=channel,
                              frames=settings.ceiling_frames,
                              repetitions=settings.ceiling_repetitions)
        t1, sent1 = sent()
    return Ceiling(channel, symbols, rate, median(reply["hot_path"]),
                   median(reply["parse_only"]), (sent1 - sent0) / (t1 - t0))


# -- the section -------------------------------------------------------------------------------


def _search(symbols: int, settings: Settings, runs: list[Run]) -> dict[int, bool]:
    """Run flight_md at the fixed rates, then search; every run is appended to ``runs``."""
    kept_up: dict[int, bool] = {}
    for rate in settings.ingest_rates:
        run = _one("flight_md", "bidask", rate, symbols, settings)
        runs.append(run)
        kept_up[rate] = run.kept_up
    for _ in range(settings.ingest_search_steps):
        probe = next_rate(kept_up, max_rate=settings.ingest_max_rate,
                          resolution=settings.ingest_resolution)
        if probe is None:
            break
        run = _one("flight_md", "bidask", probe, symbols, settings)
        runs.append(run)
        kept_up[probe] = run.kept_up
    return kept_up


def measure(settings: Settings) -> Section:
    """Lossless rate (kept up, by search) of flight_md; the naive loop; the parse ceiling."""
    section = Section(
        "ingest", "Ingest: lossless rate through real ccxt",
        f"""
The emulator (own process) sends Binance spot frames over websockets on loopback at each target
rate, spread round-robin over the symbols; the consumer (own process) ingests through real
`ccxt.pro` pointed at it. **flight_md**: a `MarketDataApp` (ingestion loop + Flight server).
**Naive**: one asyncio task per symbol looping on `await exchange.watch_bids_asks([symbol])` (or
`watch_tickers([symbol])`), storing each ticker it returns in a `MarketDataBuffer`. Each run:
wait until every symbol flows, {settings.ingest_warmup:g} s warm-up, then a {settings.ingest_seconds:g} s
window in which the emulator's sent counter and the consumer's stored counter are read every
{settings.ingest_sample_s:g} s. *Delivered/s* and *stored/s* are over that window; *backlog* = sent -
stored, its growth the least-squares slope over the samples. **A run kept up** when, within
{TOLERANCE:.0%}, the emulator delivered the target rate (a consumer that falls behind slows it by
TCP back-pressure), the consumer stored what was delivered, and the backlog did not grow: an
exchange does not wait, so a consumer that only catches up later has lost ticks. **Lossless
rate** = the highest rate at and below which every probed rate kept up, found by search: the
fixed rates {', '.join(f'{r:,}' for r in settings.ingest_rates)} msg/s, then doubling and geometric
bisection (multiples of {RATE_STEP}) until the rate that failed is within {settings.ingest_resolution:.0%}
of the one that kept up, at most {settings.ingest_search_steps} more runs. After the window the emulator
stalls and the consumer drains; *capture after drain* (stored / sent since the start) shows
whether anything was lost between ccxt and the store, and does not count towards lossless.
*CPU µs/tick* = the consumer process's CPU time in the window / ticks stored in it; *CPU %* is
of one core. **Parse ceiling** (the goal's baseline): the emulator's own frames fed one per call
to the message handler of the websocket clients of a real, subscribed `MarketDataStream` in a
child process -- flight_md's frame guard, ccxt's JSON decode and `handle_message`, the tap,
`normalize.to_row`, `MarketDataBuffer.append_row`: the product's hot path without the network
({settings.ceiling_frames:,} frames x {settings.ceiling_repetitions} repetitions after an untimed tenth, median), while the emulator sends
at the rate the verdict is about (the lossless rate found) over the same symbols to a sink that
discards the bytes, so that it competes for the CPU as in the ingest runs. *ccxt parse only* is
the same frames through a plain ccxt client's `handle_text_or_binary_message`, for reference.
""")
    runs: list[Run] = []
    found: dict[int, tuple[dict[int, bool], Ceiling]] = {}
    for symbols in settings.ingest_symbols:
        kept_up = _search(symbols, settings, runs)
        for rate in settings.ingest_rates:
            runs.append(_one("naive", "bidask", rate, symbols, settings))
        lossless = lossless_rate(kept_up)
        found[symbols] = (kept_up, parse_ceiling("bidask", symbols, lossless or min(kept_up),
                                                 settings))
    ceilings = [c for _, c in found.values()]
    if settings.ingest_ticker:
        symbols0 = settings.ingest_symbols[0]
        ticker_rate = settings.ingest_rates[0]
        for design in ("flight_md", "naive"):
            runs.append(_one(design, "ticker", ticker_rate, symbols0, settings))
        ceilings.append(parse_ceiling("ticker", symbols0, ticker_rate, settings))

    ceiling_table = Table(("Channel", "Symbols", "Emulator competing at msg/s",
                           "Emulator delivered meanwhile", "Product hot path, ticks/s",
                           "ccxt parse only, ticks/s",
                           f"{GOAL_CEILING_FRACTION:g} x hot path"))
    for c in ceilings:
        ceiling_table.add(f"{_CHANNELS[c.channel]} ({c.channel})", str(c.symbols),
                          f"{c.emulator_rate:,}", show(c.emulator_delivered_per_s, "/s"),
                          show(c.hot_path, "/s"), show(c.parse_only, "/s"),
                          show(GOAL_CEILING_FRACTION * c.hot_path, "/s"))
    table = Table(("Channel", "Symbols", "Target msg/s", "Design", "Delivered/s", "Stored/s",
                   "Backlog growth", "Backlog at end", "Kept up", "Capture after drain",
                   "CPU µs/tick", "Consumer CPU %", "Emulator CPU %"))
    for run in runs:
        table.add(_CHANNELS[run.channel], str(run.symbols), f"{run.rate:,}", run.design,
                  show(run.delivered_per_s, "/s"), show(run.stored_per_s, "/s"),
                  show(run.backlog_per_s, "/s"), f"{run.backlog_end:,}",
                  "yes" if run.kept_up else "no: " + "; ".join(run.shortfalls),
                  show(run.capture_after_drain, "%"), show(run.cpu_us_per_tick, "µs"),
                  show(run.consumer_cpu_pct, "%"), show(run.emulator_cpu_pct, "%"))
    summary = Table(("Symbols", "Lossless rate (kept up)", "Lowest rate that did not keep up",
                     "Parse ceiling (hot path)", "Ratio to ceiling",
                     "flight_md CPU µs/tick there", "Hot path µs/tick",
                     "Naive kept up at"))
    for symbols, (kept_up, ceiling) in found.items():
        lossless = lossless_rate(kept_up)
        failed = [r for r, ok in kept_up.items() if not ok]
        at = next((r for r in runs if r.design == "flight_md" and r.channel == "bidask"
                   and r.symbols == symbols and r.rate == lossless), None)
        naive = sorted(r.rate for r in runs if r.design == "naive" and r.channel == "bidask"
                       and r.symbols == symbols and r.kept_up)
        value = float(lossless) if lossless is not None else math.nan
        frac = ratio(value, ceiling.hot_path)
        summary.add(str(symbols), f"{lossless:,} msg/s" if lossless is not None else
                    f"below {min(kept_up):,} msg/s",
                    f"{min(failed):,} msg/s" if failed else "none probed",
                    show(ceiling.hot_path, "/s"), show(frac, "x"),
                    show(at.cpu_us_per_tick if at else None, "µs"),
                    show(1e6 / ceiling.hot_path if ceiling.hot_path else None, "µs"),
                    ", ".join(f"{r:,}" for r in naive) + " msg/s" if naive else "none")
        section.goals.append(Goal.judge(
            f"ingest.lossless.{symbols}",
            f"Lossless (kept-up) ingest rate vs the product's parse ceiling, {symbols} symbols",
            frac, ">=", GOAL_CEILING_FRACTION, "x",
            target_note=show(GOAL_CEILING_FRACTION * ceiling.hot_path, "/s"),
            measured_note=f"{lossless:,} msg/s" if lossless is not None else "none",
            failures=() if lossless is not None else
            [f"did not keep up at {min(kept_up):,} msg/s"]))
        if not failed:
            section.notes.append(
                f"{symbols} symbols: flight_md kept up with every rate probed, up to "
                f"{max(kept_up):,} msg/s (the search's cap): the lossless rate is at least that.")
    section.tables += [summary, table, ceiling_table]
    section.notes.append(
        "Rates between the lossless rate and the lowest one that did not keep up were not "
        "probed (search resolution); a run that did not keep up lists what failed.")
    return section


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest")
    parser.add_argument("role", choices=("naive", "ceiling"))
    parser.add_argument("--url")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--channel", default="bidask", choices=("bidask", "ticker"))
    parser.add_argument("--per-symbol", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    if args.role == "naive":
        if not args.url:
            parser.error("naive needs --url")
        _naive_child(args)
    else:
        _ceiling_child(args)


if __name__ == "__main__":
    _main()
