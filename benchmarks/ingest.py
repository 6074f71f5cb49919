"""Ingest capture and throughput: emulator -> real ccxt -> flight_md, beside two baselines.

Per configuration (rate x symbols) the emulator runs in one process and flight_md (a
``MarketDataApp`` ingesting through ccxt.pro, with its Flight server) in another. After the
subscriptions flow and a warm-up second, the measured window starts; at its end the
emulator *stalls* (stops producing and sending), flight_md drains, and both counters are
final: capture = ticks flight_md appended / data frames the emulator wrote to its sockets,
both since the start. CPU per tick is the flight_md process's user+system CPU over the
window (drain included) / ticks appended in it.

Baselines, measured in the same run:

ccxt's parse ceiling
    No network, no store: the emulator's own frame strings fed straight to
    ``client.handle_text_or_binary_message`` of a ccxt client from ``exchange.client(url)``
    (what ccxt's receive loop calls per frame: JSON decode, then ``handle_message``).
The naive design
    A process running one loop per symbol, ``while True: await
    exchange.watch_bids_asks([symbol])`` (``watch_tickers`` for the ticker channel), that
    stores each ticker it gets, against the same emulator configuration. (One loop over
    all symbols captures less still.)

Run as a child: ``python -m benchmarks.ingest naive --url URL --symbols N --channel C``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.process import Child, serve, wait_until
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.servers import flight_md_server
from benchmarks.settings import Settings

__all__ = ["Run", "measure", "parse_ceiling"]

GOAL_CEILING_FRACTION = 0.7
KEEP_UP = 0.95
"""A consumer keeps up when it stores at least this fraction of the target rate per second."""
DRAIN_TIMEOUT_S = 20.0
_CHANNELS = {"bidask": "bookTicker", "ticker": "ticker"}


@dataclass(frozen=True, slots=True)
class Run:
    """One ingest configuration's figures."""

    design: str
    channel: str
    rate: int
    symbols: int
    sent: int
    stored: int
    delivered_per_s: float
    stored_per_s: float
    cpu_us_per_tick: float
    consumer_cpu_pct: float
    emulator_cpu_pct: float

    @property
    def capture(self) -> float:
        return 100.0 * self.stored / self.sent if self.sent else math.nan

    @property
    def kept_up(self) -> bool:
        return self.stored_per_s >= KEEP_UP * self.rate

    @property
    def full(self) -> bool:
        return self.sent > 0 and self.stored >= self.sent


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


def _one(design: str, channel: str, rate: int, symbols: int, seconds: float,
         warmup: float) -> Run:
    wire = _CHANNELS[channel]
    with exchange(symbols=symbols, rate=rate) as emulator:
        url = emulator.hello["url"]
        consumer = (flight_md_server(exchange_url=url, ingest_symbols=symbols, channel=channel,
                                     name="flight_md-ingest")
                    if design == "flight_md"
                    else _naive(url, symbols, channel, per_symbol=True))
        with consumer:
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

            if not wait_until(flowing, 60.0, 0.2):
                raise RuntimeError(f"{design}: ingestion did not reach {symbols} symbols in 60 s")
            time.sleep(warmup)
            emu_pid = emulator.hello["pid"]
            cpu0, emu_cpu0 = _cpu(consumer.pid), _cpu(emu_pid)
            stored0 = stored()
            sent0 = emulator.call("sent")["by_channel"].get(wire, 0)
            t0 = time.perf_counter()
            time.sleep(seconds)
            final = emulator.call("stall")
            elapsed = time.perf_counter() - t0
            emu_cpu1 = _cpu(emu_pid)
            sent1 = final["by_channel"].get(wire, 0)
            last = [stored(), time.perf_counter()]

            def drained() -> bool:
                now = stored()
                if now >= sent1:
                    return True
                if now != last[0]:
                    last[:] = [now, time.perf_counter()]
                return time.perf_counter() - last[1] > 1.0

            wait_until(drained, DRAIN_TIMEOUT_S, 0.1)
            stored1 = stored()
            busy = (last[1] if stored1 < sent1 else time.perf_counter()) - t0
            cpu1 = _cpu(consumer.pid)
    window = max(stored1 - stored0, 1)
    return Run(design, channel, rate, symbols, sent1, stored1,
               (sent1 - sent0) / elapsed, window / busy, (cpu1 - cpu0) / window * 1e6,
               100.0 * (cpu1 - cpu0) / elapsed, 100.0 * (emu_cpu1 - emu_cpu0) / elapsed)


# -- ccxt's parse ceiling ----------------------------------------------------------------------


def _frames(symbols: Sequence[str], count: int, channel: str) -> list[str]:
    """``count`` frames exactly as the emulator renders them, round-robin over symbols."""
    from flight_md.emulator.binance import BinanceDialect
    from flight_md.emulator.market import StreamKey, parse_symbols
    from flight_md.emulator.synthetic import PriceWalk

    markets = parse_symbols(tuple(symbols))
    walks = {m.symbol: PriceWalk(m, 7) for m in markets}
    dialect = BinanceDialect(markets, walks, None)
    wire = _CHANNELS[channel]
    now = ticks.START_MS
    return [dialect.render(StreamKey(wire, markets[i % len(markets)].symbol),
                           markets[i % len(markets)],
                           walks[markets[i % len(markets)].symbol].step(now + i), snapshot=False)
            for i in range(count)]


async def _ceiling_async(symbols: int, count: int, channel: str, repetitions: int
                         ) -> tuple[list[float], list[float]]:
    import ccxt.pro as ccxt_pro

    from flight_md.buffer import MarketDataBuffer
    from flight_md.emulator import Emulator
    from flight_md.ingest.endpoints import url_overrides
    from flight_md.normalize import to_tick

    names = ticks.symbols(symbols)
    emulator = Emulator(exchange="binance", symbols=tuple(names), rate=0)
    await emulator.start()
    exchange_ = ccxt_pro.binance(url_overrides("binance", emulator.url))
    try:
        await exchange_.load_markets()  # the only network use: markets, once
    finally:
        await emulator.stop()
    try:
        client = exchange_.client(exchange_.urls["api"]["ws"]["spot"] + "/0")
        frames = _frames(names, count, channel)
        handle = client.handle_text_or_binary_message
        cache = exchange_.bidsasks if channel == "bidask" else exchange_.tickers
        parse_only, with_store = [], []
        for _ in range(repetitions):
            start = time.perf_counter()
            for frame in frames:
                handle(frame)
            parse_only.append(count / (time.perf_counter() - start))
            buffer = MarketDataBuffer()
            cache = exchange_.bidsasks if channel == "bidask" else exchange_.tickers
            start = time.perf_counter()
            for i, frame in enumerate(frames):
                handle(frame)
                tick = to_tick(cache[names[i % symbols]], exchange="binance", channel=channel,
                               receive_ms=ticks.START_MS)
                buffer.append(tick)  # type: ignore[arg-type]
            with_store.append(count / (time.perf_counter() - start))
        return parse_only, with_store
    finally:
        await exchange_.close()


def parse_ceiling(symbols: int, count: int, channel: str = "bidask", repetitions: int = 3
                  ) -> tuple[list[float], list[float]]:
    """Per repetition: (ccxt parse-only, ccxt parse + to_tick + append) ticks/s."""
    return asyncio.run(_ceiling_async(symbols, count, channel, repetitions))


# -- the section -------------------------------------------------------------------------------


def measure(settings: Settings) -> Section:
    """Capture, throughput and CPU per tick of flight_md and the naive loop; ccxt's ceiling."""
    seconds = settings.ingest_seconds
    probe = (f"A flight_md-only run at {settings.ingest_probe_rate:,} msg/s per symbol count "
             "probes the rate at which it saturates." if settings.ingest_probe_rate else "")
    section = Section(
        "ingest", "Ingest: capture and throughput through real ccxt",
        f"""
The emulator (own process) sends Binance spot frames over websockets on loopback at each target
rate, spread round-robin over the symbols; the consumer (own process) ingests through real
`ccxt.pro` pointed at it. **flight_md**: a `MarketDataApp` (ingestion loop + Flight server).
**Naive**: one asyncio task per symbol looping on `await exchange.watch_bids_asks([symbol])` (or
`watch_tickers([symbol])`), storing each ticker it returns in a `MarketDataBuffer` (one loop over
all symbols captures even less). Each run: wait until every symbol flows,
{settings.ingest_warmup:g} s warm-up, {seconds:g} s measured, then the emulator stalls and the consumer drains.
*Sent* = data frames the emulator wrote to its sockets (its own counter), *stored* = ticks
the consumer appended, both since the start; *capture* = stored / sent. *Delivered/s* = frames
sent per second in the window (below the target when the emulator or the consumer cannot keep
up: TCP back-pressure slows the sender, it never drops); *stored/s* = ticks stored from the
start of the window until the consumer had drained, per second of that time: what it sustains. *CPU µs/tick* = the consumer process's
CPU time in the window / ticks stored in it; *CPU %* is of one core. **ccxt's parse ceiling**:
the emulator's own frame strings fed in a loop straight to `client.handle_text_or_binary_message`
of a client from `exchange.client(url)` (JSON decode + `binance.handle_message`), no network and
no store; {settings.ceiling_frames:,} frames x {min(settings.repetitions, 3)} repetitions, before and
again after the runs, median of all. {probe}
""")
    # The ceiling is measured before and after the runs; its median is used, so that
    # machine noise in one moment does not set it.
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    repetitions = min(settings.repetitions, 3)
    symbols0 = settings.ingest_symbols[0]
    keys = [("bidask", n) for n in settings.ingest_symbols]
    if settings.ingest_ticker:
        keys.append(("ticker", symbols0))

    def ceiling_pass() -> None:
        for channel, n in keys:
            parse_only, with_store = parse_ceiling(n, settings.ceiling_frames, channel,
                                                   repetitions)
            entry = samples.setdefault((channel, n), ([], []))
            entry[0].extend(parse_only)
            entry[1].extend(with_store)

    ceiling_pass()
    runs: list[Run] = []
    for symbols in settings.ingest_symbols:
        for rate in settings.ingest_rates:
            for design in ("flight_md", "naive"):
                runs.append(_one(design, "bidask", rate, symbols, seconds,
                                 settings.ingest_warmup))
        if settings.ingest_probe_rate:
            runs.append(_one("flight_md", "bidask", settings.ingest_probe_rate, symbols, seconds,
                             settings.ingest_warmup))
    if settings.ingest_ticker:
        ticker_rate = settings.ingest_rates[min(1, len(settings.ingest_rates) - 1)]
        for design in ("flight_md", "naive"):
            runs.append(_one(design, "ticker", ticker_rate, symbols0, seconds,
                             settings.ingest_warmup))
    ceiling_pass()
    ceilings = {key: (median(a), median(b)) for key, (a, b) in samples.items()}

    ceiling_table = Table(("Channel", "Symbols", "ccxt parse only, ticks/s",
                           "ccxt parse + to_tick + append, ticks/s", f"{GOAL_CEILING_FRACTION:g} x ccxt ceiling"))
    for (channel, symbols), (parse_only, with_store) in ceilings.items():
        ceiling_table.add(f"{_CHANNELS[channel]} ({channel})", str(symbols),
                          show(parse_only, "/s"), show(with_store, "/s"),
                          show(GOAL_CEILING_FRACTION * parse_only, "/s"))
    table = Table(("Channel", "Symbols", "Target msg/s", "Design", "Delivered/s", "Stored/s",
                   "Sent", "Stored", "Capture", "CPU µs/tick", "Consumer CPU %",
                   "Emulator CPU %"))
    for run in runs:
        table.add(_CHANNELS[run.channel], str(run.symbols), f"{run.rate:,}", run.design,
                  show(run.delivered_per_s, "/s"), show(run.stored_per_s, "/s"),
                  f"{run.sent:,}", f"{run.stored:,}",
                  show(run.capture, "%"), show(run.cpu_us_per_tick, "µs"),
                  show(run.consumer_cpu_pct, "%"), show(run.emulator_cpu_pct, "%"))
    summary = Table(("Symbols", "Highest lossless rate (stored/s, 100 % capture)",
                     "at target msg/s", "ccxt parse ceiling", "Ratio to ceiling",
                     "flight_md CPU µs/tick there", "ccxt parse µs/frame",
                     "Naive capture by target rate"))
    verdicts = []
    for symbols in settings.ingest_symbols:
        fm = [r for r in runs if r.design == "flight_md" and r.channel == "bidask"
              and r.symbols == symbols]
        naive = {r.rate: r for r in runs if r.design == "naive" and r.channel == "bidask"
                 and r.symbols == symbols}
        best = max((r for r in fm if r.full), key=lambda r: r.stored_per_s, default=None)
        ceiling = ceilings[("bidask", symbols)][0]
        best_rate = best.stored_per_s if best else 0.0
        summary.add(str(symbols), show(best_rate, "/s"), f"{best.rate:,}" if best else "none",
                    show(ceiling, "/s"), show(ratio(best_rate, ceiling), "x"),
                    show(best.cpu_us_per_tick if best else None, "µs"),
                    show(1e6 / ceiling if ceiling else None, "µs"),
                    ", ".join(f"{rate:,}: {show(r.capture, '%')}"
                              for rate, r in sorted(naive.items())))
        verdicts.append((symbols, best, best_rate, ceiling, fm))
    section.tables += [ceiling_table, table, summary]
    for symbols, best, best_rate, ceiling, fm in verdicts:
        frac = ratio(best_rate, ceiling)
        section.goals.append(Goal(
            f"ingest.capture.{symbols}",
            f"Lossless (100 % capture) ingest rate vs ccxt's parse ceiling, {symbols} symbols",
            f">= {GOAL_CEILING_FRACTION:g}x ({show(GOAL_CEILING_FRACTION * ceiling, '/s')})",
            f"{show(frac, 'x')} ({show(best_rate, '/s')})", frac >= GOAL_CEILING_FRACTION))
        lossy = [r for r in fm if not r.full]
        if lossy:
            section.notes.append(
                f"{symbols} symbols: flight_md stored fewer ticks than were sent at "
                + ", ".join(f"{r.rate:,} msg/s ({show(r.capture, '%')})" for r in lossy) + ".")
        if best is not None and best.kept_up:
            section.notes.append(
                f"{symbols} symbols: flight_md kept up with every rate offered up to "
                f"{best.rate:,} msg/s, so {show(best_rate, '/s')} is a lower bound of what it "
                "can ingest losslessly.")
        short = [r for r in fm if not r.kept_up]
        if short:
            section.notes.append(
                f"{symbols} symbols: flight_md could not keep up at "
                + ", ".join(f"{r.rate:,} msg/s (stored {show(r.stored_per_s, '/s')} of "
                            f"{show(r.delivered_per_s, '/s')} delivered; flight_md process CPU "
                            f"{show(r.consumer_cpu_pct, '%')}, emulator "
                            f"{show(r.emulator_cpu_pct, '%')})" for r in short)
                + ": the backlog queued in socket buffers and ccxt's reader and was drained "
                  "after the stall (nothing was dropped), so stored/s is what it sustains.")
    section.notes.append(
        "Capture is 100 % whenever nothing is lost between ccxt and the store; the throughput a "
        "consumer sustains without loss is its *stored/s* in the run that saturates it. On an "
        "exchange, which does not wait, a consumer slower than the feed loses ticks (or the "
        "connection) instead.")
    return section


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest")
    parser.add_argument("role", choices=("naive",))
    parser.add_argument("--url", required=True)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--channel", default="bidask", choices=("bidask", "ticker"))
    parser.add_argument("--per-symbol", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=900)
    _naive_child(parser.parse_args(argv))


if __name__ == "__main__":
    _main()
