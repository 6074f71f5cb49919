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

Each venue's ticker channel
    The same rule, search and baselines for every emulated venue
    (:func:`flight_md.venues.emulated`, or ``settings.venues``), on its own protocol: its
    emulator dialect over :func:`benchmarks.ticks.venue_symbols`, flight_md and the naive
    loop on the venue's ccxt method for the ``ticker`` channel (``watch_ticker`` per symbol
    where the venue's channel is per symbol), and its parse ceiling on frames its dialect
    renders. The ceiling child learns what to render and how the sinks must subscribe from
    the stream itself: it wraps the dialect's ``on_open`` and ``control`` in its own process
    and records the websocket paths, control messages and native channels the stream's
    subscriptions used (:class:`_Capture`). One goal per venue, ``ingest.venue.<id>``; a
    venue that fails is reported in its rows and goal, and the other venues still run.

Run as children: ``python -m benchmarks.ingest naive --url URL --symbols N --channel C
[--exchange ID]``, ``python -m benchmarks.ingest ceiling`` (requests ``prepare`` with venue,
symbols and channel, then ``run`` with frames and repetitions).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Final

import psutil

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.process import Child, serve, wait_until
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.servers import flight_md_server
from benchmarks.settings import Settings
from benchmarks.sink import sink

__all__ = ["TOLERANCE", "Ceiling", "Run", "VenueResult", "Window", "lossless_rate", "measure",
           "measure_venue", "next_rate", "one_run", "parse_ceiling", "run_of", "sample_window",
           "search", "selected_venues", "serve_rig", "shortfalls", "slope"]

GOAL_CEILING_FRACTION = 0.7
GOAL_CCXT_FRACTION = 0.8
"""Issue 15: lossless ingest with ``--decoder ccxt`` >= this x ccxt's parse ceiling."""
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
    venue: str = "binance"
    decoder: str = "fast"
    """The flight_md design's ``--decoder`` (the naive design has none: ccxt parses)."""

    @property
    def label(self) -> str:
        """The design as the tables name it (with its decoder where it is not the default)."""
        return (f"{self.design} --decoder {self.decoder}"
                if self.design == "flight_md" and self.decoder != "fast" else self.design)

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


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` deep-merged with ``extra``, as plain dicts (ccxt's constructor takes dicts)."""
    out = {key: _merged(value, {}) if isinstance(value, Mapping) else value
           for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, Mapping):
            out[key] = _merged(out[key] if isinstance(out.get(key), Mapping) else {}, value)
        else:
            out[key] = value
    return out


def _ccxt_config(venue_id: str, url: str) -> dict[str, Any]:
    """What flight_md passes a venue's ccxt constructor against the emulator at ``url``
    (the venue's own options, then its URL overrides)."""
    from flight_md.ingest.endpoints import url_overrides
    from flight_md.venues import venue

    return _merged(venue(venue_id).ccxt_config, url_overrides(venue_id, url))


def _naive_child(args: argparse.Namespace) -> None:
    import ccxt.pro as ccxt_pro

    from flight_md.buffer import MarketDataBuffer
    from flight_md.normalize import Channel, to_tick
    from flight_md.schema import MarketTick, now_ms
    from flight_md.venues import venue

    symbols = ticks.venue_symbols(args.exchange, args.symbols)
    methods = venue(args.exchange).channels[Channel(args.channel)]
    state: dict[str, Any] = {"ticks": 0, "error": None}
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def run() -> None:
        exchange_ = getattr(ccxt_pro, args.exchange)(_ccxt_config(args.exchange, args.url))
        buffer = MarketDataBuffer()
        watch = getattr(exchange_, methods.watch)
        params = dict(methods.params)

        async def follow(group: list[str]) -> None:
            while True:
                if methods.per_symbol:  # watch_ticker(symbol): one ticker per call
                    results = [await watch(group[0], params)]
                else:
                    results = list((await watch(group, params)).values())
                for ticker in results:
                    tick = to_tick(ticker, exchange=args.exchange, channel=args.channel,
                                   receive_ms=now_ms())
                    if type(tick) is MarketTick:
                        buffer.append(tick)
                        state["ticks"] += 1

        try:
            await exchange_.load_markets()
            ready.set()
            if args.per_symbol or methods.per_symbol:
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


def _naive(url: str, symbols: int, channel: str, per_symbol: bool, venue: str = "binance"
           ) -> Child:
    flags = ["--per-symbol"] if per_symbol else []
    return Child("benchmarks.ingest", "naive", "--url", url, "--symbols", str(symbols),
                 "--channel", channel, "--exchange", venue, *flags,
                 name=f"naive-watch-loop-{venue}")


# -- one run -----------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True, slots=True)
class Window:
    """The measured window of one run: ``(time, sent, stored)`` samples and the CPU seconds
    each watched process spent in it."""

    samples: Sequence[tuple[float, int, int]]
    cpu_s: Sequence[float]

    @property
    def seconds(self) -> float:
        return self.samples[-1][0] - self.samples[0][0]

    @property
    def delivered_per_s(self) -> float:
        return (self.samples[-1][1] - self.samples[0][1]) / self.seconds

    @property
    def stored(self) -> int:
        """Stored in the window (at least 1, a divisor)."""
        return max(self.samples[-1][2] - self.samples[0][2], 1)

    @property
    def stored_per_s(self) -> float:
        return (self.samples[-1][2] - self.samples[0][2]) / self.seconds

    @property
    def backlog_per_s(self) -> float:
        t0 = self.samples[0][0]
        return slope([(t - t0, sent - stored) for t, sent, stored in self.samples])

    @property
    def backlog_end(self) -> int:
        return self.samples[-1][1] - self.samples[-1][2]

    @property
    def sent_end(self) -> int:
        return self.samples[-1][1]

    @property
    def stored_end(self) -> int:
        return self.samples[-1][2]


def sample_window(sent: Callable[[], int], stored: Callable[[], int], *, seconds: float,
                  every: float, pids: Sequence[int]) -> Window:
    """Sample ``sent`` and ``stored`` every ``every`` s for ``seconds``, and the CPU time of
    ``pids`` over the same window (the consumer first, then e.g. the emulator)."""
    samples: list[tuple[float, int, int]] = []
    cpu0 = [_cpu(pid) for pid in pids]
    end = time.perf_counter() + seconds
    while True:
        now = time.perf_counter()
        # Same order every time: a constant skew between the two counters moves the
        # backlog, never its slope.
        samples.append((now, sent(), stored()))
        if now >= end:
            break
        time.sleep(max(0.0, min(every, end - time.perf_counter())))
    return Window(samples, [_cpu(pid) - c for pid, c in zip(pids, cpu0, strict=True)])


def run_of(design: str, channel: str, rate: int, symbols: int, window: Window, final: int,
           stored_total: int, venue: str = "binance", decoder: str = "fast") -> Run:
    """A :class:`Run` of the window's figures (the consumer's CPU is ``window.cpu_s[0]``,
    the emulator's ``[1]``)."""
    elapsed = window.seconds
    return Run(design, channel, rate, symbols, elapsed, window.delivered_per_s,
               window.stored_per_s, window.backlog_per_s, window.backlog_end, final,
               stored_total, window.cpu_s[0] / window.stored * 1e6,
               100.0 * window.cpu_s[0] / elapsed, 100.0 * window.cpu_s[1] / elapsed, venue,
               decoder)


def one_run(design: str, channel: str, rate: int, symbols: int, settings: Settings,
            venue: str = "binance", server: Mapping[str, Any] | None = None) -> Run:
    """One run; ``server``: options of :func:`~benchmarks.servers.flight_md_server` (e.g.
    ``memory_only``) for the flight_md design (default: the server's defaults)."""
    with exchange(symbols=symbols, rate=rate, venue=venue) as emulator:
        url = emulator.hello["url"]
        consumer = (flight_md_server(exchange_url=url, ingest_symbols=symbols, channel=channel,
                                     name=f"flight_md-ingest-{venue}", exchange=venue,
                                     **(server or {}))
                    if design == "flight_md"
                    else _naive(url, symbols, channel, per_symbol=True, venue=venue))
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
                    per_channel = emulator.call("sent")["per_symbol"].values()
                    streamed = {symbol for counts in per_channel for symbol in counts}
                    return len(streamed) >= symbols and stored() > 0

            # Only the run's channel is subscribed, so every data frame the emulator counts
            # is one of its frames, whatever the venue calls the channel.
            def sent() -> int:
                return sum(emulator.call("counts")["by_channel"].values())

            if not wait_until(flowing, 60.0, 0.2):
                raise RuntimeError(f"{design}: ingestion did not reach {symbols} symbols in 60 s")
            time.sleep(settings.ingest_warmup)
            window = sample_window(sent, stored, seconds=settings.ingest_seconds,
                                   every=settings.ingest_sample_s,
                                   pids=(consumer.pid, emulator.hello["pid"]))
            final = sum(emulator.call("stall")["by_channel"].values())
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
    return run_of(design, channel, rate, symbols, window, final, stored_total, venue,
                  str((server or {}).get("decoder", "fast")) if design == "flight_md"
                  else "ccxt")


# -- the product's parse ceiling ---------------------------------------------------------------


def _route(clients: Sequence[Any], symbols: Sequence[str]) -> dict[str, Any]:
    """The websocket client of a subscribed stream that carries each symbol's frames.

    ccxt names a client's subscriptions by message hashes that hold the unified symbol
    (``ticker:BTC/USDT:USDT``, ``bidsasks@BTC/USDT``): a symbol belongs to the client with
    a hash naming it, as a whole word.

    Raises:
        RuntimeError: If a symbol has no client.
    """
    route: dict[str, Any] = {}
    for symbol in symbols:
        word = re.compile(rf"(?<![\w/:]){re.escape(symbol)}(?![\w/:])")
        owner = next((client for client in clients
                      if any(word.search(str(key)) for key in client.subscriptions)), None)
        if owner is None and len(clients) == 1:
            owner = clients[0]
        if owner is not None:
            route[symbol] = owner
    missing = [s for s in symbols if s not in route]
    if missing:
        raise RuntimeError(f"no websocket client subscribed {missing[:3]}")
    return route


class _Capture:
    """What the venue's clients asked an in-process emulator for: per websocket path, the
    query it opened with, the control messages that subscribed, the streams they added and
    whether data frames come wrapped. It wraps the dialect's ``on_open`` and ``control`` (the
    emulator's ``Dialect`` contract) in this process only."""

    def __init__(self, venue_id: str) -> None:
        from flight_md.emulator.dialects import dialect_class

        self.cls = dialect_class(venue_id)
        self.queries: dict[str, str] = {}
        self.combined: dict[str, bool] = {}
        self.messages: dict[str, list[str]] = {}
        self.streams: dict[str, tuple[str, str]] = {}  # symbol -> (path, native channel)
        self._originals = (self.cls.on_open, self.cls.control)

    def install(self) -> None:
        from urllib.parse import urlencode

        on_open, control = self._originals
        capture = self

        def opened(self: Any, path: str, query: Mapping[str, str]) -> Any:
            subscriptions, combined = on_open(self, path, query)
            capture.queries[path] = "?" + urlencode(dict(query)) if query else ""
            capture.combined[path] = combined
            for sub in subscriptions:
                capture.streams[sub.key.symbol] = (path, sub.key.channel)
            return subscriptions, combined

        def controlled(self: Any, connection: Any, text: str) -> Any:
            result = control(self, connection, text)
            if result.subscribe:
                capture.messages.setdefault(connection.path, []).append(text)
                for sub in result.subscribe:
                    capture.streams[sub.key.symbol] = (connection.path, sub.key.channel)
            return result

        self.cls.on_open = opened  # type: ignore[method-assign]
        self.cls.control = controlled  # type: ignore[method-assign]

    def uninstall(self) -> None:
        self.cls.on_open, self.cls.control = self._originals  # type: ignore[method-assign]

    def plan(self) -> list[tuple[str, list[str]]]:
        """``(path with query, control messages)`` per websocket: a sink's subscriptions."""
        paths = {path for path, _ in self.streams.values()}
        return [(path + self.queries.get(path, ""), self.messages.get(path, []))
                for path in sorted(paths)]


FRAME_SEED: Final = 7
"""The seed of :func:`_frames`' walks (an emulator started with it walks the same markets)."""


def _frames(venue_id: str, symbols: Sequence[str], count: int,
            streams: Mapping[str, tuple[str, bool]], *, snapshot: bool = False,
            trades_after: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """``count`` (symbol, frame) pairs exactly as the venue's emulator renders them,
    round-robin; ``streams`` gives each symbol's native channel and whether its connection
    wraps frames. ``trades_after``: per symbol, the last trade id a consumer holds (of an
    emulator seeded :data:`FRAME_SEED`: its subscription's snapshot); that symbol's walk
    first steps past it, unrendered, so that the rendered trades' ids follow on from it
    rather than jump (a gap the consumer would backfill) or repeat (duplicates it drops)."""
    from flight_md.emulator.dialects import dialect_class
    from flight_md.emulator.market import StreamKey, parse_symbols
    from flight_md.emulator.synthetic import PriceWalk

    markets = parse_symbols(tuple(symbols))
    walks = {m.symbol: PriceWalk(m, FRAME_SEED) for m in markets}
    for symbol, last in (trades_after or {}).items():
        walk = walks[symbol]
        if walk.quote.trade_id > last:
            raise ValueError(f"{symbol}: the consumer's last trade id {last} is older than "
                             f"the walk's first ({walk.quote.trade_id}): not seeded "
                             f"{FRAME_SEED}?")
        while walk.quote.trade_id < last:
            walk.step(ticks.START_MS)
    dialect = dialect_class(venue_id)(markets, walks, None)
    out = []
    for i in range(count):
        market = markets[i % len(markets)]
        channel, wrapped = streams[market.symbol]
        key = StreamKey(channel, market.symbol)
        text = dialect.render(key, market, walks[market.symbol].step(ticks.START_MS + i),
                              snapshot=snapshot)
        out.append((market.symbol, dialect.wrap(key.channel, text) if wrapped else text))
    return out


class _CeilingRig:
    """The ceiling child's state: a silent in-process emulator, a real subscribed
    ``MarketDataStream`` of one venue and a plain ccxt client of it, on an event loop of
    their own thread, between the ``prepare`` and ``run`` requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ceiling-loop",
                                       daemon=True)
        self.thread.start()
        self.state: dict[str, Any] = {}

    def call(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def prepare(self, venue_id: str, symbols: int, channel: str,
                      decoder: str = "fast", capacity: int | None = None) -> dict[str, Any]:
        """Subscribe a stream of ``venue_id``'s ``channel`` (its rings ``capacity`` rows;
        default: the buffer's) to ``symbols`` symbols of a silent emulator."""
        import ccxt.pro as ccxt_pro

        from flight_md.buffer import MarketDataBuffer
        from flight_md.emulator import Emulator
        from flight_md.ingest.stream import MarketDataStream

        await self.close()
        names = ticks.venue_symbols(venue_id, symbols)
        capture = _Capture(venue_id)
        capture.install()
        # A silent emulator of this process: it only lets the stream load markets and
        # subscribe (and sends the venue's snapshot on subscribe, where it has one).
        emulator = Emulator(exchange=venue_id, symbols=tuple(names), rate=0)
        await emulator.start()
        buffer = (MarketDataBuffer() if capacity is None
                  else MarketDataBuffer(capacity, channel=channel))
        stream = MarketDataStream(venue_id, buffer=buffer, channel=channel, mode="websocket",
                                  url=emulator.url, heartbeat_interval=60.0, decoder=decoder)
        plain = getattr(ccxt_pro, venue_id)(_ccxt_config(venue_id, emulator.url))
        self.state = {"emulator": emulator, "stream": stream, "plain": plain,
                      "buffer": buffer, "capture": capture, "names": names, "venue": venue_id}
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
        capture.uninstall()
        missing = [s for s in names if s not in capture.streams]
        if missing:
            raise RuntimeError(f"the emulator saw no subscription of {missing[:3]}")
        return {"plan": capture.plan(),
                "channels": sorted({c for _, c in capture.streams.values()})}

    async def run(self, frames: int, repetitions: int) -> dict[str, Any]:
        from aiohttp import WSMessage, WSMsgType

        state = self.state
        if not state:
            raise RuntimeError("run before prepare")
        capture: _Capture = state["capture"]
        names, venue_id, plain = state["names"], state["venue"], state["plain"]
        buffer = state["buffer"]
        route = _route(list(state["stream"].exchange.clients.values()), names)
        streams = {symbol: (channel, capture.combined.get(path, False))
                   for symbol, (path, channel) in capture.streams.items()}
        pairs = _frames(venue_id, names, frames, streams)
        # What ccxt's receive loop hands each client: aiohttp messages, to the client's
        # handle_message (flight_md's frame guard, then ccxt's own).
        messages = [(route[symbol].handle_message, WSMessage(WSMsgType.TEXT, text, None))
                    for symbol, text in pairs]
        # The plain client of the same URL parses the same text (no flight_md in between).
        parsers = {symbol: plain.client(route[symbol].url).handle_text_or_binary_message
                   for symbol in names}
        texts = [(parsers[symbol], text) for symbol, text in pairs]
        # Where a channel sends deltas, the plain client needs the snapshot the stream got.
        for symbol, text in _frames(venue_id, names, len(names), streams, snapshot=True):
            parsers[symbol](text)

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

        def run_parse(batch: Sequence[tuple[Any, str]]) -> float:
            start = time.perf_counter()
            for parse, text in batch:
                parse(text)
            return len(batch) / (time.perf_counter() - start)

        warm = max(1, frames // 10)  # untimed: first calls fill caches and create the rings
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

    async def close(self) -> None:
        state, self.state = self.state, {}
        if state:
            state["capture"].uninstall()
            await state["stream"].disconnect()
            await state["plain"].close()
            await state["emulator"].stop()


def serve_rig(rig: Any, max_seconds: float) -> None:
    """Serve a ceiling rig's ``prepare`` (its own keyword arguments) and ``run`` requests on
    its loop, closing it on exit (this ceiling child's and the trades section's)."""
    import ccxt.pro  # noqa: F401 - imported before the hello, not inside the timing

    def prepare(**kwargs: Any) -> dict[str, Any]:
        return dict(rig.call(rig.prepare(**kwargs), 120.0))

    def run(frames: int, repetitions: int) -> dict[str, Any]:
        return dict(rig.call(rig.run(frames, repetitions), 600.0))

    def stop() -> None:
        try:
            rig.call(rig.close(), 30.0)
        finally:
            rig.loop.call_soon_threadsafe(rig.loop.stop)
            rig.thread.join(5)

    serve({"ready": True}, {"prepare": prepare, "run": run}, max_seconds, on_exit=stop)


def _ceiling_child(args: argparse.Namespace) -> None:
    serve_rig(_CeilingRig(), args.max_seconds)


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The parse ceiling of one venue's channel and symbol count, with the emulator
    competing."""

    channel: str
    symbols: int
    emulator_rate: int
    hot_path: float
    parse_only: float
    emulator_delivered_per_s: float
    venue: str = "binance"
    decoder: str = "fast"
    """The stream's decoder on the hot path (``ccxt``: ccxt's parse ceiling)."""


def parse_ceiling(channel: str, symbols: int, rate: int, settings: Settings,
                  venue: str = "binance", decoder: str = "fast") -> Ceiling:
    """Median ticks/s of the product's hot path (and of ccxt's parse alone) for ``venue``'s
    frames, measured in a child process while the venue's emulator sends ``rate`` msg/s
    over ``symbols`` to sinks that discard the bytes.

    The Binance bidask search (``settings.ingest_binance_search``) uses Binance's sink with
    ``ceiling_frames``; a venue's ticker uses sinks that send the very subscriptions the
    stream sent, with ``venue_ceiling_frames``.
    """
    legacy = venue == "binance" and channel == "bidask"
    frames, repetitions = ((settings.ceiling_frames, settings.ceiling_repetitions) if legacy
                           else (settings.venue_ceiling_frames,
                                 settings.venue_ceiling_repetitions))
    with ExitStack() as stack:
        emulator = stack.enter_context(exchange(symbols=symbols, rate=rate, venue=venue))
        url = emulator.hello["url"]
        measurer = Child("benchmarks.ingest", "ceiling", name=f"ceiling-{venue}-{symbols}")
        stack.callback(measurer.close)
        drains: list[Child] = []
        if legacy:
            drains.append(sink(url, symbols, _CHANNELS[channel]))
            drains[0].launch()
        measurer.start()
        prepared = measurer.call("prepare", timeout=150, venue_id=venue, symbols=symbols,
                                 channel=channel, decoder=decoder)
        if not legacy:
            drains += [sink(url, symbols, path=path, messages=messages)
                       for path, messages in prepared["plan"]]
            for drain in drains:
                drain.launch()
        for drain in drains:
            stack.callback(drain.close)
            drain.wait_ready()
        def receiving() -> bool:
            return all(drain.call("count")["bytes"] > 0 for drain in drains)

        if not wait_until(receiving, 30.0, 0.1):
            raise RuntimeError(f"a {venue} sink received nothing from the emulator in 30 s")

        def sent() -> tuple[float, int]:
            counts = emulator.call("counts")["by_channel"]
            return time.perf_counter(), sum(counts.values())

        t0, sent0 = sent()
        reply = measurer.call("run", timeout=600, frames=frames, repetitions=repetitions)
        t1, sent1 = sent()
    return Ceiling(channel, symbols, rate, median(reply["hot_path"]),
                   median(reply["parse_only"]), (sent1 - sent0) / (t1 - t0), venue, decoder)


# -- the section -------------------------------------------------------------------------------


def _search(symbols: int, settings: Settings, runs: list[Run], *, venue: str = "binance",
            channel: str = "bidask", rates: Sequence[int] | None = None,
            steps: int | None = None, max_rate: int | None = None,
            server: Mapping[str, Any] | None = None) -> dict[int, bool]:
    """Run flight_md at the fixed rates, then search; every run is appended to ``runs``.

    The defaults are the Binance bidask search's settings (``ingest_*``); ``server`` as for
    :func:`one_run`.
    """
    def probe(rate: int) -> bool:
        run = one_run("flight_md", channel, rate, symbols, settings, venue, server)
        runs.append(run)
        return run.kept_up

    return search(probe, rates=settings.ingest_rates if rates is None else rates,
                  steps=settings.ingest_search_steps if steps is None else steps,
                  max_rate=settings.ingest_max_rate if max_rate is None else max_rate,
                  resolution=settings.ingest_resolution)


def search(probe: Callable[[int], bool], *, rates: Sequence[int], steps: int, max_rate: int,
           resolution: float) -> dict[int, bool]:
    """Whether each probed rate kept up: ``probe`` at the fixed ``rates``, then at most
    ``steps`` more rates :func:`next_rate` asks for."""
    kept_up: dict[int, bool] = {}
    for rate in rates:
        kept_up[rate] = probe(rate)
    for _ in range(steps):
        rate_ = next_rate(kept_up, max_rate=max_rate, resolution=resolution)
        if rate_ is None:
            break
        kept_up[rate_] = probe(rate_)
    return kept_up


def selected_venues(settings: Settings) -> tuple[str, ...]:
    """The emulated venues whose ticker channel the section measures, in registry order.

    Raises:
        ValueError: If ``settings.venues`` names a venue the emulator does not speak.
    """
    from flight_md.venues import emulated

    known = emulated()
    if settings.venues is None:
        return known
    unknown = [v for v in settings.venues if v not in known]
    if unknown:
        raise ValueError(f"unknown venue {unknown[0]!r}; the emulator speaks: {', '.join(known)}")
    return tuple(v for v in known if v in settings.venues)


@dataclass(frozen=True, slots=True)
class VenueResult:
    """One venue's ticker figures: its search, the naive loop and its parse ceiling.

    ``error`` is set (and the rest may be partial) when a run of the venue failed.
    """

    venue: str
    kept_up: Mapping[int, bool]
    runs: Sequence[Run]
    ceiling: Ceiling | None
    error: str | None = None


def measure_venue(venue: str, settings: Settings) -> VenueResult:
    """``venue``'s ticker channel: lossless rate by search, the naive loop at the start
    rates, and its parse ceiling at the lossless rate. A failure is returned, not raised."""
    runs: list[Run] = []
    kept_up: dict[int, bool] = {}
    try:
        kept_up = _search(settings.venue_symbols, settings, runs, venue=venue, channel="ticker",
                          rates=settings.venue_rates, steps=settings.venue_search_steps,
                          max_rate=settings.venue_max_rate)
        for rate in settings.venue_rates:
            runs.append(one_run("naive", "ticker", rate, settings.venue_symbols, settings,
                                venue))
        lossless = lossless_rate(kept_up)
        ceiling = parse_ceiling("ticker", settings.venue_symbols,
                                lossless if lossless is not None else min(kept_up), settings,
                                venue)
    except Exception as exc:  # noqa: BLE001 - one venue's failure is reported in its rows
        print(f"ingest: venue {venue} failed:\n{traceback.format_exc(limit=12)}",
              file=sys.stderr, flush=True)
        return VenueResult(venue, kept_up, runs, None, _one_line(exc))
    return VenueResult(venue, kept_up, runs, ceiling)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one table-safe line: its type and the last line of its message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}".replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


_RUN_HEADERS = ("Target msg/s", "Design", "Delivered/s", "Stored/s", "Backlog growth",
                "Backlog at end", "Kept up", "Capture after drain", "CPU µs/tick",
                "Consumer CPU %", "Emulator CPU %")


def _run_cells(run: Run) -> tuple[str, ...]:
    return (f"{run.rate:,}", run.label, show(run.delivered_per_s, "/s"),
            show(run.stored_per_s, "/s"), show(run.backlog_per_s, "/s"), f"{run.backlog_end:,}",
            "yes" if run.kept_up else "no: " + "; ".join(run.shortfalls),
            show(run.capture_after_drain, "%"), show(run.cpu_us_per_tick, "µs"),
            show(run.consumer_cpu_pct, "%"), show(run.emulator_cpu_pct, "%"))


def _lossless_cell(kept_up: Mapping[int, bool]) -> str:
    lossless = lossless_rate(kept_up)
    if lossless is not None:
        return f"{lossless:,} msg/s"
    return f"below {min(kept_up):,} msg/s" if kept_up else "not measured"


def _venue_tables(results: Sequence[VenueResult], settings: Settings, section: Section) -> None:
    """The venues' summary, their goals and one runs table per venue, into ``section``."""
    from flight_md.normalize import Channel
    from flight_md.venues import venue as venue_of

    summary = Table(("Venue", "Channel (ccxt)", "Symbols", "Lossless rate (kept up)",
                     "Lowest rate that did not keep up", "Parse ceiling (hot path)",
                     "ccxt parse only", "Emulator competing at msg/s",
                     "Emulator delivered meanwhile", "Ratio to ceiling",
                     "flight_md CPU µs/tick there", "Hot path µs/tick", "Naive kept up at"))
    tables: list[Table] = []
    for result in results:
        methods = venue_of(result.venue).channels[Channel.TICKER]
        lossless = lossless_rate(result.kept_up)
        failed = [r for r, ok in result.kept_up.items() if not ok]
        ceiling = result.ceiling
        hot = ceiling.hot_path if ceiling is not None else math.nan
        value = float(lossless) if lossless is not None else math.nan
        frac = ratio(value, hot)
        at = next((r for r in result.runs if r.design == "flight_md" and r.rate == lossless),
                  None)
        naive = sorted(r.rate for r in result.runs if r.design == "naive" and r.kept_up)
        summary.add(result.venue, f"ticker ({methods.watch})", str(settings.venue_symbols),
                    _lossless_cell(result.kept_up),
                    f"{min(failed):,} msg/s" if failed else "none probed",
                    show(hot, "/s"),
                    show(ceiling.parse_only if ceiling is not None else None, "/s"),
                    f"{ceiling.emulator_rate:,}" if ceiling is not None else "n/a",
                    show(ceiling.emulator_delivered_per_s if ceiling is not None else None, "/s"),
                    show(frac, "x"), show(at.cpu_us_per_tick if at else None, "µs"),
                    show(1e6 / hot if hot else None, "µs"),
                    ", ".join(f"{r:,}" for r in naive) + " msg/s" if naive else "none")
        failures = []
        if result.error is not None:
            failures.append(f"failed to run: {result.error}")
        elif lossless is None:
            failures.append(f"did not keep up at {min(result.kept_up):,} msg/s")
        section.goals.append(Goal.judge(
            f"ingest.venue.{result.venue}",
            f"Lossless ticker ingest vs {result.venue}'s parse ceiling",
            frac, ">=", GOAL_CEILING_FRACTION, "x",
            target_note=show(GOAL_CEILING_FRACTION * hot, "/s") if ceiling is not None else "",
            measured_note=f"{lossless:,} msg/s" if lossless is not None else "none",
            failures=failures))
        table = Table(("Venue", "Channel", "Symbols", *_RUN_HEADERS))
        for run in result.runs:
            table.add(run.venue, run.channel, str(run.symbols), *_run_cells(run))
        tables.append(table)
        if result.error is not None:
            section.notes.append(f"{result.venue}: the measurement failed: {result.error} "
                                 "(figures before the failure are shown).")
        elif not failed and result.kept_up:
            section.notes.append(
                f"{result.venue}: flight_md kept up with every ticker rate probed, up to "
                f"{max(result.kept_up):,} msg/s: the lossless rate is at least that.")
    section.tables += [summary, *tables]


def _binance_search(settings: Settings, section: Section) -> None:
    """The Binance bidask search (and its ticker run) with its tables and goals."""
    runs: list[Run] = []
    found: dict[int, tuple[dict[int, bool], Ceiling]] = {}
    for symbols in settings.ingest_symbols:
        kept_up = _search(symbols, settings, runs)
        for rate in settings.ingest_rates:
            runs.append(one_run("naive", "bidask", rate, symbols, settings))
        lossless = lossless_rate(kept_up)
        found[symbols] = (kept_up, parse_ceiling("bidask", symbols, lossless or min(kept_up),
                                                 settings))
    ceilings = [c for _, c in found.values()]
    if settings.ingest_ticker:
        symbols0 = settings.ingest_symbols[0]
        ticker_rate = settings.ingest_rates[0]
        for design in ("flight_md", "naive"):
            runs.append(one_run(design, "ticker", ticker_rate, symbols0, settings))
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
    table = Table(("Channel", "Symbols", *_RUN_HEADERS))
    for run in runs:
        table.add(_CHANNELS[run.channel], str(run.symbols), *_run_cells(run))
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
        summary.add(str(symbols), _lossless_cell(kept_up),
                    f"{min(failed):,} msg/s" if failed else "none probed",
                    show(ceiling.hot_path, "/s"), show(frac, "x"),
                    show(at.cpu_us_per_tick if at else None, "µs"),
                    show(1e6 / ceiling.hot_path if ceiling.hot_path else None, "µs"),
                    ", ".join(f"{r:,}" for r in naive) + " msg/s" if naive else "none")
        _ceiling_goal(section, f"ingest.lossless.{symbols}",
                      f"Lossless (kept-up) ingest rate vs the product's parse ceiling, "
                      f"{symbols} symbols", kept_up, ceiling, GOAL_CEILING_FRACTION,
                      f"{symbols} symbols")
    section.tables += [summary, table, ceiling_table]
    if settings.ingest_ccxt_decoder:
        _ccxt_decoder_search(settings, section, runs, table,
                             {symbols: kept_up for symbols, (kept_up, _) in found.items()})
    section.notes.append(
        "Rates between the lossless rate and the lowest one that did not keep up were not "
        "probed (search resolution); a run that did not keep up lists what failed.")
    section.notes.append(
        "Decoders: every flight_md row above runs the default `--decoder fast` (the venue's "
        "decoder reads the frames it claims, ccxt the rest), and so does the parse ceiling its "
        "goals are judged against, except the rows marked `--decoder ccxt` (ccxt parses every "
        "frame), whose goal is judged against ccxt's parse ceiling: the same hot path with "
        "`--decoder ccxt`. The naive design always parses with ccxt.")


def _ccxt_decoder_search(settings: Settings, section: Section, runs: list[Run], table: Table,
                         fast: Mapping[int, Mapping[int, bool]]) -> None:
    """The Binance bidask search again with ``--decoder ccxt``, judged against ccxt's parse
    ceiling (the hot path with ``--decoder ccxt``); its runs are added to ``table``."""
    summary = Table(("Symbols", "Lossless rate, --decoder ccxt",
                     "Lowest rate that did not keep up",
                     "ccxt's parse ceiling (hot path, --decoder ccxt)", "Ratio to ceiling",
                     "Lossless rate, --decoder fast (above)", "fast / ccxt"))
    for symbols in settings.ingest_symbols:
        ccxt_runs: list[Run] = []
        kept_up = _search(symbols, settings, ccxt_runs, server={"decoder": "ccxt"})
        for run in ccxt_runs:
            table.add(_CHANNELS[run.channel], str(run.symbols), *_run_cells(run))
        runs += ccxt_runs
        lossless = lossless_rate(kept_up)
        ceiling = parse_ceiling("bidask", symbols, lossless or min(kept_up), settings,
                                decoder="ccxt")
        failed = [r for r, ok in kept_up.items() if not ok]
        value = float(lossless) if lossless is not None else math.nan
        frac = ratio(value, ceiling.hot_path)
        fast_rate = lossless_rate(fast.get(symbols, {}))
        summary.add(str(symbols), _lossless_cell(kept_up),
                    f"{min(failed):,} msg/s" if failed else "none probed",
                    show(ceiling.hot_path, "/s"), show(frac, "x"),
                    _lossless_cell(fast.get(symbols, {})),
                    show(ratio(float(fast_rate), value) if fast_rate is not None else None, "x"))
        _ceiling_goal(section, f"ingest.ccxt.{symbols}",
                      f"Lossless ingest rate with --decoder ccxt vs ccxt's parse ceiling, "
                      f"{symbols} symbols", kept_up, ceiling, GOAL_CCXT_FRACTION,
                      f"{symbols} symbols, --decoder ccxt")
    section.tables.append(summary)


def _ceiling_goal(section: Section, key: str, what: str, kept_up: Mapping[int, bool],
                  ceiling: Ceiling, fraction: float, who: str) -> None:
    """The goal ``lossless rate >= fraction x ceiling``, and the note when no probed rate
    failed (the lossless rate is then a lower bound)."""
    lossless = lossless_rate(kept_up)
    value = float(lossless) if lossless is not None else math.nan
    section.goals.append(Goal.judge(
        key, what, ratio(value, ceiling.hot_path), ">=", fraction, "x",
        target_note=show(fraction * ceiling.hot_path, "/s"),
        measured_note=f"{lossless:,} msg/s" if lossless is not None else "none",
        failures=() if lossless is not None else
        [f"did not keep up at {min(kept_up):,} msg/s"]))
    if all(kept_up.values()):
        section.notes.append(
            f"{who}: flight_md kept up with every rate probed, up to {max(kept_up):,} msg/s "
            "(the search's cap): the lossless rate is at least that.")


def measure(settings: Settings) -> Section:
    """Lossless rate (kept up, by search) of flight_md; the naive loop; the parse ceiling:
    Binance's bidask search, then each selected venue's ticker channel."""
    venues = selected_venues(settings)
    ccxt_search = (
        "The Binance bid/ask search runs again with `--decoder ccxt` (ccxt parses every "
        "frame), judged against ccxt's parse ceiling: the same hot path with `--decoder "
        f"ccxt`; goal >= {GOAL_CCXT_FRACTION:g}x." if settings.ingest_ccxt_decoder else "")
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

**Each venue's ticker channel** ({', '.join(venues) or 'none in this run'}): the same rule,
search and baselines in each emulated venue's own protocol. Its emulator (synthetic) lists
{settings.venue_symbols} symbols of the venue's market type (`BTC/USDT:USDT`, `X0001/USDT:USDT`, ...
on Bybit); flight_md ingests the `ticker` channel through the venue's ccxt method; the naive
loop runs one task per symbol on that method. The search starts at {', '.join(f'{r:,}' for r in settings.venue_rates)} msg/s and adds
at most {settings.venue_search_steps} runs (up to {settings.venue_max_rate:,} msg/s), so a venue's lossless rate is coarser than
Binance's above. The venue's parse ceiling is measured as above, on the venue's own frames
(its dialect's `render`, deltas where the venue sends deltas after a snapshot) through the
hot path of a real `MarketDataStream` of that venue ({settings.venue_ceiling_frames:,} frames x
{settings.venue_ceiling_repetitions} repetitions), while its emulator sends at the lossless rate found to sinks that
subscribe with the very control messages the stream sent. One goal per venue: its lossless
ticker rate >= {GOAL_CEILING_FRACTION:g}x its own parse ceiling.

**Decoders**: flight_md runs the default `--decoder fast` above (the venue's decoder reads the frames
it claims), and so does the parse ceiling of those goals. {ccxt_search}
""")
    if settings.ingest_binance_search:
        _binance_search(settings, section)
    if venues:
        _venue_tables([measure_venue(v, settings) for v in venues], settings, section)
    return section


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest")
    parser.add_argument("role", choices=("naive", "ceiling"))
    parser.add_argument("--url")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--channel", default="bidask", choices=("bidask", "ticker"))
    parser.add_argument("--exchange", default="binance")
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
