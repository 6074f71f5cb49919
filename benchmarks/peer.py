"""Side by side with the peer: cryptofeed's lossless ingest rate beside flight_md's (issue 15).

The peer users would pick instead of flight_md for live crypto market data is cryptofeed
(``cryptofeed`` from the ``bench`` extra; this section reports itself "not measured" when it
is not installed). Both ingest the same Binance spot emulator (own process,
:func:`benchmarks.exchange.exchange`) in the same run, over the same symbols, one consumer
process at a time:

flight_md
    Bid/ask: :func:`benchmarks.ingest.one_run` (a ``MarketDataApp`` with its Flight server,
    ``watch_bids_asks`` on the ``bookTicker`` streams, default settings, persisting).
    Trades: :func:`benchmarks.channels.trade_run` (the same app on the ``trades`` channel,
    ``<symbol>@trade`` streams; kept up also requires 100 % capture by trade id).
cryptofeed
    A child process (:func:`_peer_child`) running cryptofeed's own ``FeedHandler`` in its
    main thread, as its users run it (its default configuration: uvloop), with one
    ``Binance`` feed: channel ``TICKER`` for bid/ask (cryptofeed subscribes Binance's
    ``bookTicker``) or ``TRADES`` (cryptofeed subscribes ``aggTrade``, which the emulator
    sends one trade per frame, as it sends ``trade``). Its callback counts each object
    cryptofeed hands it, per symbol, and does nothing else: cryptofeed's pipeline (decode,
    ``Decimal`` prices, the ``Ticker``/``Trade`` object, the callback) against flight_md's
    whole path into its columnar store. For trades, kept up also requires every trade the
    emulator sent to reach the callback (per symbol, count equal to frames sent).

cryptofeed refuses any address that is not ``wss://``. The harness adapts that, not the
product: a subclass of cryptofeed's ``Binance`` feed (:func:`_emulated_feed`) names the
emulator (``wss://127.0.0.1:PORT`` for its websocket endpoint, ``http://127.0.0.1:PORT`` for
its REST endpoint, from which cryptofeed reads ``exchangeInfo``), lets cryptofeed build its
connections, then points each one at ``ws://`` on the same loopback address before it opens.
So both consumers read plain websockets on 127.0.0.1: neither pays for TLS, as neither would
pay differently for it against the real venue.

The rule (kept up), the search and its figures are :mod:`benchmarks.ingest`'s
(:func:`~benchmarks.ingest.shortfalls`, :func:`~benchmarks.ingest.next_rate`,
:func:`~benchmarks.ingest.lossless_rate`), with this section's shorter window
(``peer_seconds``, ``peer_warmup``) and coarser resolution (``peer_resolution``) so that the
whole section stays within a few minutes. Per channel and symbol count, each repetition runs
one search per design, alternating which design goes first; a repetition after the first
starts from the previous repetition's bracket (the lossless rate and the lowest rate that did
not keep up) and searches on from there. The figure is the median over repetitions of each
design's lossless rate; the ratio is flight_md / cryptofeed.

Run as a child: ``python -m benchmarks.peer cryptofeed --url URL --names A/B,C/D --channel C``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from benchmarks.process import Child, serve, wait_until
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.settings import Settings

# The cryptofeed child runs this module: what only the parent uses (benchmarks.ingest,
# channels, exchange and ticks, which import flight_md, pandas and pyarrow) is imported in the
# parent's functions, so that the child starts in a fraction of the time.
if TYPE_CHECKING:
    from benchmarks.channels import ChannelSizes
    from benchmarks.ingest import Run

__all__ = ["GOAL_RATIO", "PEER", "STRETCH_RATIO", "Design", "PeerChannel", "Probe", "available",
           "measure", "measure_one"]

GOAL_RATIO = 1.0
STRETCH_RATIO = 1.5
PEER = "cryptofeed"
DRAIN_TIMEOUT_S = 20.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class Design(StrEnum):
    """The two consumers measured side by side."""

    FLIGHT_MD = "flight_md"
    CRYPTOFEED = "cryptofeed"


class PeerChannel(StrEnum):
    """The channels compared, by flight_md's name."""

    BIDASK = "bidask"
    TRADES = "trades"

    @property
    def peer_stream(self) -> str:
        """The Binance stream cryptofeed's feed subscribes for this channel (the emulator
        counts sent frames under it)."""
        return {PeerChannel.BIDASK: "bookTicker", PeerChannel.TRADES: "aggTrade"}[self]

    @property
    def flight_md_stream(self) -> str:
        """The Binance stream ccxt subscribes for flight_md's channel."""
        return {PeerChannel.BIDASK: "bookTicker", PeerChannel.TRADES: "trade"}[self]


def available() -> bool:
    """Whether cryptofeed is installed (the ``bench`` extra)."""
    return importlib.util.find_spec("cryptofeed") is not None


def _peer_version() -> str:
    try:
        return metadata.version("cryptofeed")
    except metadata.PackageNotFoundError:
        return "not installed"


# -- the cryptofeed consumer (child process) ---------------------------------------------------


def _emulated_feed(base_url: str) -> type[Any]:
    """cryptofeed's ``Binance`` feed pointed at the emulator at ``base_url`` (loopback only).

    cryptofeed's connection refuses a non-``wss://`` address when it is built, and opens
    ``self.address`` only later: the feed names ``wss://`` so that the connections are built,
    then each is pointed at plain ``ws://`` on the same host before it opens.

    Raises:
        ValueError: If ``base_url`` is not a loopback ``http://host:port`` address.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK or parts.port is None:
        raise ValueError(f"emulator url {base_url!r} is not a loopback http://host:port address")
    host = parts.netloc
    # Imported once the address is known good: the check holds without the bench extra.
    from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
    from cryptofeed.exchanges import Binance

    class EmulatedBinance(Binance):
        websocket_endpoints: ClassVar[list[Any]] = [WebsocketEndpoint(f"wss://{host}")]
        rest_endpoints: ClassVar[list[Any]] = [RestEndpoint(
            f"http://{host}", routes=Routes("/api/v3/exchangeInfo",
                                            l2book="/api/v3/depth?symbol={}&limit={}",
                                            authentication="/api/v3/userDataStream"))]

        def connect(self) -> list[tuple[Any, ...]]:
            connections: list[tuple[Any, ...]] = super().connect()
            for connection, *_ in connections:
                if hasattr(connection, "address") and connection.address.startswith("wss://"):
                    connection.address = "ws://" + connection.address.removeprefix("wss://")
            return connections

    return EmulatedBinance


class _Errors(logging.Handler):
    """The last error cryptofeed logged (its connection handler logs and reconnects)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()[:300]


def _peer_child(args: argparse.Namespace) -> None:
    from cryptofeed import FeedHandler
    from cryptofeed.defines import TICKER, TRADES

    channel = PeerChannel(args.channel)
    names = args.names.split(",")
    errors = _Errors()
    logging.getLogger("feedhandler").addHandler(errors)
    counts: dict[str, int] = {}

    async def count(update: Any, receipt_timestamp: float) -> None:
        symbol = update.symbol
        counts[symbol] = counts.get(symbol, 0) + 1

    # Its own default configuration (uvloop), with logging to stderr instead of a file in
    # the working directory.
    handler = FeedHandler(config={"uvloop": True, "log": {"disabled": True}})
    asyncio.set_event_loop(asyncio.new_event_loop())  # under the policy the handler chose
    loop = asyncio.get_event_loop()
    kind = TICKER if channel is PeerChannel.BIDASK else TRADES
    feed = _emulated_feed(args.url)(symbols=[name.replace("/", "-") for name in names],
                                    channels=[kind], callbacks={kind: count})
    handler.add_feed(feed)

    def reply() -> dict[str, Any]:
        snapshot = dict(counts)  # one copy under the GIL: the loop thread keeps counting
        return {"total": sum(snapshot.values()), "symbols": len(snapshot),
                "error": errors.last}

    def per_symbol() -> dict[str, Any]:
        return {name.replace("-", "/"): n for name, n in dict(counts).items()}

    def protocol() -> None:
        try:
            serve({"loop": type(loop).__module__}, {"count": reply, "per_symbol": per_symbol},
                  args.max_seconds)
        finally:
            loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=protocol, name="peer-protocol", daemon=True).start()
    # cryptofeed's own run(): its main-thread loop, signal handlers, shutdown on stop.
    handler.run()


def _peer(url: str, names: Sequence[str], channel: PeerChannel) -> Child:
    return Child("benchmarks.peer", "cryptofeed", "--url", url, "--names", ",".join(names),
                 "--channel", str(channel), name=f"cryptofeed-{channel}-{len(names)}")


# -- one run of either design ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """One run of one design at one rate; rates are over the measured window."""

    design: Design
    channel: PeerChannel
    symbols: int
    rate: int
    repetition: int
    delivered_per_s: float
    stored_per_s: float
    backlog_per_s: float
    cpu_us_per_msg: float
    consumer_cpu_pct: float
    failures: tuple[str, ...]

    @property
    def kept_up(self) -> bool:
        return not self.failures


def _cryptofeed_run(channel: PeerChannel, rate: int, symbols: int, settings: Settings
                    ) -> tuple[Run, list[str]]:
    """One cryptofeed run: its figures as an ingest :class:`~benchmarks.ingest.Run` (the same
    window and counters as ingest's runs) and, for trades, why capture was not complete."""
    from benchmarks import ticks
    from benchmarks.exchange import exchange
    from benchmarks.ingest import run_of, sample_window

    names = ticks.venue_symbols("binance", symbols)
    with exchange(symbols=symbols, rate=rate) as emulator, \
            _peer(emulator.hello["url"], names, channel) as consumer:
        def counted() -> dict[str, Any]:
            reply = consumer.call("count")
            if reply["error"] and not reply["total"]:
                raise RuntimeError(f"cryptofeed failed: {reply['error']}")
            return reply

        def stored() -> int:
            return int(counted()["total"])

        def sent() -> int:
            return sum(emulator.call("counts")["by_channel"].values())

        if not wait_until(lambda: counted()["symbols"] >= symbols, 60.0, 0.2):
            raise RuntimeError(f"cryptofeed: {symbols} symbols did not flow in 60 s "
                               f"(last error: {consumer.call('count')['error']})")
        time.sleep(settings.peer_warmup)
        window = sample_window(sent, stored, seconds=settings.peer_seconds,
                               every=settings.ingest_sample_s,
                               pids=(consumer.pid, emulator.hello["pid"]))
        final = emulator.call("stall")
        total = sum(final["by_channel"].values())
        wait_until(lambda: stored() >= total, DRAIN_TIMEOUT_S, 0.1)
        stored_total = stored()
        failures: list[str] = []
        if channel is PeerChannel.TRADES:
            got = consumer.call("per_symbol")
            want = final["per_symbol"].get(channel.peer_stream, {})
            short = [f"{s}: {got.get(s, 0):,} of {want.get(s, 0):,} sent" for s in names
                     if got.get(s, 0) != want.get(s, 0)]
            failures = short[:3] + ([f"and {len(short) - 3} more symbols"] if len(short) > 3
                                    else [])
    run = run_of(Design.CRYPTOFEED, str(channel), rate, symbols, window, total, stored_total)
    return run, failures


def _window(settings: Settings) -> Settings:
    """``settings`` with this section's window, for the ingest and trades runs reused."""
    return dataclasses.replace(settings, ingest_seconds=settings.peer_seconds,
                               ingest_warmup=settings.peer_warmup)


def measure_one(design: Design, channel: PeerChannel, rate: int, symbols: int,
                settings: Settings, repetition: int = 1) -> Probe:
    """One run of ``design`` on ``channel`` at ``rate`` msg/s over ``symbols`` symbols."""
    # Reused rather than copied: ingest's one bid/ask run and the trades section's one
    # trades run of flight_md (the same emulator, window and rule).
    from benchmarks.channels import trade_run as flight_md_trades_run
    from benchmarks.ingest import one_run as flight_md_bidask_run

    if design is Design.CRYPTOFEED:
        run, capture = _cryptofeed_run(channel, rate, symbols, settings)
        return Probe(design, channel, symbols, rate, repetition, run.delivered_per_s,
                     run.stored_per_s, run.backlog_per_s, run.cpu_us_per_tick,
                     run.consumer_cpu_pct, (*run.shortfalls, *capture))
    if channel is PeerChannel.BIDASK:
        run = flight_md_bidask_run("flight_md", "bidask", rate, symbols, _window(settings))
        return Probe(design, channel, symbols, rate, repetition, run.delivered_per_s,
                     run.stored_per_s, run.backlog_per_s, run.cpu_us_per_tick,
                     run.consumer_cpu_pct, tuple(run.shortfalls))
    trades = flight_md_trades_run(rate, _window(settings), _trade_sizes(symbols))
    return Probe(design, channel, symbols, rate, repetition, trades.delivered_per_s,
                 trades.stored_per_s, trades.backlog_per_s, trades.cpu_us_per_trade,
                 trades.consumer_cpu_pct, tuple(trades.shortfalls))


def _trade_sizes(symbols: int) -> ChannelSizes:
    """The trades run's sizes: only ``symbols`` is read by a run; the rest are unused here."""
    from benchmarks.channels import ChannelSizes

    return ChannelSizes(symbols=symbols, rates=(), search_steps=0, max_rate=0,
                        ceiling_frames=0, ceiling_repetitions=0, memory_trades=0,
                        memory_books=0, memory_naive_rows=0, bars_trades=0, fresh_symbols=0,
                        fresh_seconds=0.0)


# -- the search, repetitions and the section ---------------------------------------------------


def _bracket(kept_up: Mapping[int, bool]) -> list[int]:
    """The lossless rate and the lowest rate above it that did not keep up (what a later
    repetition starts from)."""
    from benchmarks.ingest import lossless_rate

    lo = lossless_rate(kept_up)
    above = [r for r, ok in kept_up.items() if not ok and (lo is None or r > lo)]
    return [r for r in (lo, min(above) if above else None) if r is not None]


def _search(design: Design, channel: PeerChannel, symbols: int, settings: Settings,
            start: Sequence[int], repetition: int, probes: list[Probe],
            log: Callable[[str], None]) -> dict[int, bool]:
    """Probe ``start``, then :func:`~benchmarks.ingest.next_rate` on, within the budget of
    runs of a first or a later repetition; every run is appended to ``probes``."""
    from benchmarks.ingest import next_rate

    kept_up: dict[int, bool] = {}
    pending = list(start)
    budget = settings.peer_max_runs if repetition == 1 else settings.peer_repeat_runs
    while len(kept_up) < budget:
        rate = pending.pop(0) if pending else next_rate(
            kept_up, max_rate=settings.peer_max_rate, resolution=settings.peer_resolution)
        if rate is None:
            break
        if rate in kept_up:
            continue
        began = time.perf_counter()
        probe = measure_one(design, channel, rate, symbols, settings, repetition)
        probes.append(probe)
        kept_up[rate] = probe.kept_up
        log(f"peer: {design} {channel} x{symbols} at {rate:,}/s: "
            f"{'kept up' if probe.kept_up else '; '.join(probe.failures)} "
            f"(repetition {repetition}, {time.perf_counter() - began:.0f} s)")
    return kept_up


@dataclass(frozen=True, slots=True)
class _Config:
    """One channel and symbol count: each design's lossless rate per repetition."""

    channel: PeerChannel
    symbols: int
    lossless: dict[Design, list[float]]
    lowest_failed: dict[Design, list[int | None]]


def _measure_config(channel: PeerChannel, symbols: int, settings: Settings,
                    probes: list[Probe], log: Callable[[str], None]) -> _Config:
    from benchmarks.ingest import lossless_rate

    lossless: dict[Design, list[float]] = {d: [] for d in Design}
    lowest_failed: dict[Design, list[int | None]] = {d: [] for d in Design}
    start: dict[Design, list[int]] = {d: list(settings.peer_rates) for d in Design}
    for repetition in range(1, settings.peer_repetitions + 1):
        # Alternate which design goes first, so that neither always meets a warmer machine.
        order = list(Design) if repetition % 2 else list(reversed(Design))
        for design in order:
            kept_up = _search(design, channel, symbols, settings, start[design], repetition,
                              probes, log)
            found = lossless_rate(kept_up)
            lossless[design].append(float(found) if found is not None else math.nan)
            failed = [r for r, ok in kept_up.items() if not ok and (found is None or r > found)]
            lowest_failed[design].append(min(failed) if failed else None)
            start[design] = _bracket(kept_up) or list(settings.peer_rates)
    return _Config(channel, symbols, lossless, lowest_failed)


def _median_rate(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return median(finite) if len(finite) == len(values) else math.nan


def _rates_cell(values: Sequence[float], lowest_failed: Sequence[int | None]) -> str:
    cells = []
    for value, failed in zip(values, lowest_failed, strict=True):
        text = f"{value:,.0f}" if math.isfinite(value) else "none"
        cells.append(text + (f" (<{failed:,})" if failed is not None else " (none failed)"))
    return ", ".join(cells)


def _not_measured(section: Section, settings: Settings, why: str) -> Section:
    """The section when the peer cannot run: a note per goal case, and no verdict (the goals
    table lists only what was measured)."""
    cases = ", ".join(f"{channel} x{symbols}" for channel in settings.peer_channels
                      for symbols in settings.peer_symbols)
    section.notes.append(f"Not measured in this run ({cases}): {why}.")
    return section


def measure(settings: Settings, log: Callable[[str], None] | None = None) -> Section:
    """flight_md's lossless ingest rate beside cryptofeed's, per channel and symbol count."""
    from benchmarks.ingest import TOLERANCE

    say = log or (lambda line: print(line, flush=True))
    section = Section(
        "peer", f"Side by side with {PEER}: lossless ingest",
        f"""
The same Binance spot emulator (own process) feeds one consumer process at a time over plain
websockets on 127.0.0.1: **flight_md** (a `MarketDataApp` ingesting through ccxt.pro with its
default settings, persisting; bid/ask through `watch_bids_asks` on `bookTicker`, trades through
`watch_trades` on `trade`) or **{PEER}** {_peer_version()} (its `FeedHandler` in its own process
with its default configuration, uvloop; one `Binance` feed, channel `TICKER` on `bookTicker` or
`TRADES` on `aggTrade`, one trade per frame as `trade`; a callback that counts what it is
handed). {PEER} accepts only `wss://` addresses: a subclass of its `Binance` feed, in this
harness only, names the emulator and points each connection it builds at `ws://` on the same
loopback address, so neither consumer pays for TLS. The rule is the ingest section's (the
emulator delivered the target rate, the consumer stored what was delivered, the backlog did not
grow, each within {TOLERANCE:.0%}); for trades every trade sent must also
arrive (flight_md: by trade id; {PEER}: per symbol, as many as sent). Each run: every symbol
flowing, {settings.peer_warmup:g} s warm-up, a {settings.peer_seconds:g} s window sampled every
{settings.ingest_sample_s:g} s. Per channel and symbol count, {settings.peer_repetitions}
repetitions; in each, one search per design, alternating which goes first (start
{', '.join(f'{r:,}' for r in settings.peer_rates)} msg/s, doubling, then geometric bisection to
{settings.peer_resolution:.0%}, at most {settings.peer_max_runs} runs, cap
{settings.peer_max_rate:,} msg/s); a later repetition re-probes the previous one's bracket
(its lossless rate and the lowest rate that failed) and searches on from there, at most
{settings.peer_repeat_runs} runs. The figure is each design's median lossless rate; the ratio
flight_md / {PEER}; the goal >= {GOAL_RATIO:g}x (stretch {STRETCH_RATIO:g}x). A run in which the
emulator did not deliver the target rate (it shares the cores) did not keep up, whichever
consumer was reading: on a loaded machine that bounds both designs alike.
""")
    if not available():
        return _not_measured(section, settings,
                             f"{PEER} is not installed (pip install '.[bench]')")
    probes: list[Probe] = []
    configs = [_measure_config(PeerChannel(channel), symbols, settings, probes, say)
               for channel in settings.peer_channels for symbols in settings.peer_symbols]
    summary = Table(("Channel", "Symbols", "flight_md lossless (median)",
                     f"{PEER} lossless (median)", "flight_md / " + PEER,
                     "flight_md per repetition (lowest failed)",
                     f"{PEER} per repetition (lowest failed)", "Verdict vs stretch"))
    for config in configs:
        ours = _median_rate(config.lossless[Design.FLIGHT_MD])
        theirs = _median_rate(config.lossless[Design.CRYPTOFEED])
        frac = ratio(ours, theirs)
        summary.add(str(config.channel), str(config.symbols), show(ours, "/s"),
                    show(theirs, "/s"), show(frac, "x"),
                    _rates_cell(config.lossless[Design.FLIGHT_MD],
                                config.lowest_failed[Design.FLIGHT_MD]),
                    _rates_cell(config.lossless[Design.CRYPTOFEED],
                                config.lowest_failed[Design.CRYPTOFEED]),
                    "stretch met" if math.isfinite(frac) and frac >= STRETCH_RATIO
                    else "stretch missed")
        failures = [f"{design} kept up at no rate probed in repetition {i} (lowest {low:,} msg/s)"
                    for design in Design
                    for i, (value, low) in enumerate(zip(config.lossless[design],
                                                         config.lowest_failed[design],
                                                         strict=True), 1)
                    if not math.isfinite(value) and low is not None]
        section.goals.append(Goal.judge(
            f"peer.{config.channel}.{config.symbols}",
            f"Lossless {config.channel} ingest vs {PEER}, {config.symbols} symbols",
            frac, ">=", GOAL_RATIO, "x", target_note=f"stretch {STRETCH_RATIO:g}x",
            measured_note=f"{show(ours, '/s')} vs {show(theirs, '/s')}", failures=failures))
        capped = [d for d in Design if None in config.lowest_failed[d]]
        for design in capped:
            section.notes.append(
                f"{config.channel}, {config.symbols} symbols: {design} kept up with every rate "
                "probed in a repetition (marked 'none failed'): its lossless rate is at least that.")
    runs = Table(("Channel", "Symbols", "Repetition", "Design", "Target msg/s", "Delivered/s",
                  "Stored/s", "Backlog growth", "Kept up", "CPU µs/msg", "Consumer CPU %"))
    for probe in probes:
        runs.add(str(probe.channel), str(probe.symbols), str(probe.repetition),
                 str(probe.design), f"{probe.rate:,}", show(probe.delivered_per_s, "/s"),
                 show(probe.stored_per_s, "/s"), show(probe.backlog_per_s, "/s"),
                 "yes" if probe.kept_up else "no: " + "; ".join(probe.failures),
                 show(probe.cpu_us_per_msg, "µs"), show(probe.consumer_cpu_pct, "%"))
    section.tables += [summary, runs]
    section.notes.append(
        f"{PEER}'s callback only counts; flight_md's figure includes its whole path into the "
        "columnar store and its journal. Both share the machine's cores with the emulator.")
    return section


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer")
    parser.add_argument("role", choices=("cryptofeed",))
    parser.add_argument("--url", required=True)
    parser.add_argument("--names", required=True, help="unified symbols, comma-separated")
    parser.add_argument("--channel", default="bidask", choices=[str(c) for c in PeerChannel])
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _peer_child(args)


if __name__ == "__main__":
    _main()
