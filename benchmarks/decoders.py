"""Per-frame cost of the stream path with each decoder: ``--decoder fast`` vs ``--decoder ccxt``.

For each emulated venue and each hot channel the venue has a fast decoder for (bid/ask,
ticker, trades: :attr:`flight_md.venues.Venue.decoders`), two real, subscribed
:class:`~flight_md.ingest.stream.MarketDataStream` objects of that venue and channel, one
with ``decoder="fast"`` and one with ``decoder="ccxt"``, stand on one silent in-process
emulator. The venue's own frames (its dialect's ``render``, as
:func:`benchmarks.ingest._frames` renders them for the parse ceiling) are fed one per call,
as aiohttp TEXT messages, to the ``handle_message`` of the websocket client that carries
each symbol -- what ccxt's receive loop calls per frame -- so the measured path is the whole
stream path: flight_md's frame guard, then the venue's decoder (fast) or ccxt's JSON decode,
``handle_message``, the tap and ``to_row``/``to_trade`` (ccxt), then the fan-out and the ring.

Both streams get the same frames in the same run, alternating which goes first in each
repetition (each repetition a fresh batch: a trade fed twice is a duplicate, dropped); each
batch is timed in CPU time of the loop's thread (``time.thread_time``), so another process's
load moves it less than wall time would. The figure is the median over repetitions of CPU
µs per frame, and the ratio ccxt / fast says how many times cheaper the fast path is. A
batch that did not store one row per frame fails the measurement: it would not be the
ingest path.

This runs in the benchmark's own process (no emulator sends meanwhile): it is the cost per
frame, not a rate under load; the ingest section gives the rates.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks import ticks
from benchmarks.report import Section, Table, median, ratio, show
from benchmarks.settings import Settings

__all__ = ["DecoderCost", "measure", "measure_pair"]

_HOT = ("bidask", "ticker", "trades")
_DECODERS = ("fast", "ccxt")


@dataclass(frozen=True, slots=True)
class DecoderCost:
    """CPU µs per frame of one venue's channel through each decoder's stream path."""

    venue: str
    channel: str
    native: str
    symbols: int
    frames: int
    fast_us: Sequence[float]
    ccxt_us: Sequence[float]

    @property
    def ratio(self) -> float:
        """ccxt / fast of the medians (how many times cheaper the fast path is)."""
        return ratio(median(self.ccxt_us), median(self.fast_us))


class _Rig:
    """A silent emulator and one subscribed stream per decoder, on a loop of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="decoder-bench",
                                       daemon=True)
        self.thread.start()

    def call(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def measure(self, venue_id: str, channel: str, symbols: int, frames: int,
                      repetitions: int) -> DecoderCost:
        from aiohttp import WSMessage, WSMsgType

        from benchmarks.ingest import FRAME_SEED, _Capture, _frames, _route
        from flight_md.buffer import MarketDataBuffer
        from flight_md.emulator import Emulator
        from flight_md.ingest.stream import MarketDataStream

        names = ticks.venue_symbols(venue_id, symbols)
        warm = max(1, frames // 10)
        total = warm + frames * repetitions
        capture = _Capture(venue_id)
        capture.install()
        # Seeded as the fed frames' walks are: a venue whose subscription answers with its
        # recent trades (Coinbase's market_trades snapshot) gives the streams ids of the same
        # walks, which the fed trades then continue (see below).
        emulator = Emulator(exchange=venue_id, symbols=tuple(names), rate=0, seed=FRAME_SEED)
        await emulator.start()
        streams: dict[str, tuple[MarketDataStream, MarketDataBuffer]] = {}
        try:
            for decoder in _DECODERS:
                # Every row of the run stays in its ring: the count check reads appended.
                buffer = MarketDataBuffer(total // symbols + 1_000, channel=channel)
                stream = MarketDataStream(venue_id, buffer=buffer, channel=channel,
                                          mode="websocket", url=emulator.url,
                                          heartbeat_interval=60.0, decoder=decoder)
                streams[decoder] = (stream, buffer)
                await stream.connect()
                await stream.subscribe(names)
            for _ in range(600):
                if emulator.stats.subscriptions >= len(_DECODERS) * len(names):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{venue_id} {channel}: the streams did not subscribe "
                                   f"{len(names)} symbols each in 30 s")
            await asyncio.sleep(0.3)
            capture.uninstall()
            native = {symbol: (ch, capture.combined.get(path, False))
                      for symbol, (path, ch) in capture.streams.items()}
            missing = [s for s in names if s not in native]
            if missing:
                raise RuntimeError(f"{venue_id}: the emulator saw no subscription of "
                                   f"{missing[:3]}")
            held = _held_trade_ids(channel, names, [b for _, b in streams.values()])
            pairs = _frames(venue_id, names, total, native, trades_after=held)
            feeds = {}
            for decoder, (stream, buffer) in streams.items():
                route = _route(list(stream.exchange.clients.values()), names)
                feeds[decoder] = ([(route[symbol].handle_message,
                                    WSMessage(WSMsgType.TEXT, text, None))
                                   for symbol, text in pairs], buffer)

            def cost(decoder: str, lo: int, hi: int) -> float:
                messages, buffer = feeds[decoder]
                before = sum(s.appended for s in buffer.stats())
                start = time.thread_time()
                for handle, message in messages[lo:hi]:
                    handle(message)
                elapsed = time.thread_time() - start
                stored = sum(s.appended for s in buffer.stats()) - before
                if stored != hi - lo:
                    raise RuntimeError(f"{venue_id} {channel} --decoder {decoder} stored "
                                       f"{stored} of {hi - lo} frames: it is not the ingest "
                                       "path")
                return elapsed / (hi - lo) * 1e6

            for decoder in _DECODERS:  # untimed: the first calls fill caches, create rings
                cost(decoder, 0, warm)
            us: dict[str, list[float]] = {d: [] for d in _DECODERS}
            for rep in range(repetitions):
                lo = warm + rep * frames
                for decoder in (_DECODERS if rep % 2 == 0 else _DECODERS[::-1]):
                    us[decoder].append(cost(decoder, lo, lo + frames))
                await asyncio.sleep(0.05)  # let the watchers re-arm, as between live frames
            return DecoderCost(venue_id, channel, ", ".join(sorted({c for c, _ in
                                                                    native.values()})),
                               symbols, frames, us["fast"], us["ccxt"])
        finally:
            capture.uninstall()
            for stream, _ in streams.values():
                await stream.disconnect()
            await emulator.stop()


def _held_trade_ids(channel: str, names: Sequence[str], buffers: Sequence[Any]
                    ) -> dict[str, int]:
    """Per symbol, the last trade id the streams stored before any frame was fed (a
    subscription's snapshot of recent trades), so that the fed trades follow on from it: a
    jump from it is a gap the stream backfills, which is not the per-frame path measured.

    Raises:
        RuntimeError: The streams hold different last ids for a symbol (no one sequence of
            frames can follow on from both).
    """
    if channel != "trades":
        return {}
    held: dict[str, int] = {}
    for name in names:
        last = set()
        for buffer in buffers:
            ids = [int(i) for i in buffer.get_latest_sync(name, 1, columns=["trade_id"])
                   .column("trade_id").to_pylist() if i is not None and i.isdigit()] \
                if any(s.symbol == name for s in buffer.stats()) else []
            last.add(ids[-1] if ids else None)
        if len(last) != 1:
            raise RuntimeError(f"{name}: the streams' snapshots ended at different trade ids "
                               f"{sorted(last, key=str)}")
        (value,) = last
        if value is not None:
            held[name] = value
    return held


def pairs(venues: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(venue, channel) of every emulated venue's hot channels that have a fast decoder."""
    from flight_md.normalize import Channel
    from flight_md.venues import emulated, venue

    return [(v, channel) for v in emulated() if venues is None or v in venues
            for channel in _HOT
            if Channel(channel) in venue(v).decoders and Channel(channel) in venue(v).channels]


def measure_pair(venue_id: str, channel: str, settings: Settings) -> DecoderCost:
    """One venue's channel, both decoders, in this process."""
    rig = _Rig()
    try:
        return rig.call(rig.measure(venue_id, channel, settings.decoder_symbols,  # type: ignore[no-any-return]
                                    settings.decoder_frames, settings.decoder_repetitions),
                        600.0)
    finally:
        rig.close()


def measure(settings: Settings) -> Section:
    """CPU per frame of the stream path, ``--decoder fast`` vs ``--decoder ccxt``, for every
    venue's hot channels."""
    section = Section(
        "decoders", "Decoders: CPU per frame, --decoder fast vs ccxt",
        f"""
For each emulated venue and each hot channel it has a fast decoder for, two real subscribed
`MarketDataStream`s of that venue and channel (one `decoder="fast"`, the default, one
`decoder="ccxt"`) on one silent emulator in this process. The venue's own frames (its emulator
dialect's, {settings.decoder_symbols} symbols round-robin) are fed one per call as aiohttp TEXT
messages to the `handle_message` of the websocket client carrying each symbol, as ccxt's receive
loop does: the whole stream path, flight_md's frame guard, then the venue's decoder or ccxt's
JSON decode + `handle_message` + tap + `to_row`/`to_trade`, then the fan-out into the ring.
Both streams get the same {settings.decoder_frames:,} fresh frames per repetition, in the same run,
alternating which goes first; {settings.decoder_repetitions} repetitions after an untimed tenth.
Figures: CPU time of the loop's thread per frame (medians), and ccxt / fast. Each batch must store
one row per frame. No load generator runs meanwhile: this is the cost per frame, the ingest
section gives the rates under load.
""")
    table = Table(("Venue", "Channel", "Native channel", "fast µs/frame (median)",
                   "ccxt µs/frame (median)", "ccxt / fast", "fast runs µs", "ccxt runs µs"))
    # A smoke run checks the harness on Binance and the smoke venues, not on every venue.
    for venue_id, channel in pairs(("binance", *(settings.venues or ())) if settings.smoke
                                   else None):
        try:
            result = measure_pair(venue_id, channel, settings)
        except Exception as exc:  # noqa: BLE001 - one pair's failure is reported in its row
            text = f"{type(exc).__name__}: {exc}".splitlines()[0].replace("|", "/")
            table.add(venue_id, channel, "-", "failed", "failed", "n/a", text[:200], "")
            section.notes.append(f"{venue_id} {channel}: the measurement failed: {text[:300]}")
            continue
        table.add(venue_id, channel, result.native, show(median(result.fast_us), "µs"),
                  show(median(result.ccxt_us), "µs"), show(result.ratio, "x"),
                  ", ".join(f"{x:.1f}" for x in result.fast_us),
                  ", ".join(f"{x:.1f}" for x in result.ccxt_us))
    section.tables.append(table)
    section.notes.append(
        "A hot channel absent from the table has no fast decoder in its venue: ccxt parses "
        "its frames with either setting."
        + (" This smoke run measures Binance and the smoke venues only." if settings.smoke
           else ""))
    return section
