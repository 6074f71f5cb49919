"""The differential test of a venue's fast decoders (:mod:`flight_md.core.decode`) against ccxt.

:func:`assert_decoder_matches_ccxt` feeds the same frames, one by one, to two real streams of
one venue and channel (``MarketDataStream``'s channel engine, never connected): one with
``decoder="ccxt"``, one with ``decoder="fast"``. Each frame goes in as aiohttp hands it to a
ccxt client (a ``TEXT`` ``WSMessage`` to the client's ``handle_message``, which is the
product's :class:`~flight_md.ingest.ccxt_compat.FrameGuard`): on the ccxt side ccxt parses it
and the stream's cache tap stores what ccxt stored; on the fast side the frame guard offers it
to the decoder first. Both streams have the same markets loaded (from the emulator, real
ccxt ``load_markets``), the same subscribed symbols (one listed symbol left out, to check that
neither side stores it) and one fixed receive clock. After every frame the harness asserts
that both stored the same updates in the same order (the updates every callback receives,
NaN-equal: ``None`` in both), the same drop reasons and counts, the same per-symbol counters;
at the end, the same rows in their buffers. A second decoder of the same venue, fed the same
frames into a recording sink, checks that a frame it declines delivers nothing.

A case's ``probe_only`` frames (the bulk of a recording's order-book frames, which no decoder
of these channels claims) go to that second decoder only: each must be declined and deliver
nothing, and so would reach ccxt as if there were no decoder; ccxt's own order-book work on
thousands of them, twice, proves nothing about a decoder and was most of the suite's time.
Every recorded frame thus meets the decoder once.

Books (:class:`BookPair`, :func:`book_pair`) are compared the same way, frame by frame, but
as kept books: what the book capture stored after each frame, its counters, its
``book_resync`` events, each symbol's counts and the drops (see ``tests/ingest/test_decode_books.py``).

Registering a venue's decoders is enough to run it (``/tmp/flags/decoder-framework.md``)::

    @pytest.mark.parametrize("case", recording_cases("okx"), ids=str)
    async def test_okx(case, monkeypatch): await assert_decoder_matches_ccxt(case, monkeypatch)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import WSMessage, WSMsgType

from flight_md.core.decode import DecoderContext
from flight_md.emulator import Emulator, default_recording
from flight_md.errors import NotFound
from flight_md.events import EventKind
from flight_md.ingest import ccxt_compat, session
from flight_md.ingest.stream import MarketDataStream, _ChannelStream
from flight_md.normalize import Channel, DropReason, TradeFields
from flight_md.venues import venue

__all__ = ["BOOK_FRAMES_KEPT", "BOOK_FRAME_CHARS", "FIXED_MS", "BookOutcome", "BookPair", "Case",
           "Outcome", "RecordingSink", "assert_decoder_matches_ccxt", "book_pair", "book_stream",
           "emulator_frames", "fast_and_ccxt_streams", "fast_book_path", "fix_book_clocks",
           "load_markets", "mutations", "recording_cases", "split_books", "stored_rows"]

FIXED_MS: Final = 1_900_000_000_000
"""The one receive time of every frame (2030: after every recorded and synthetic timestamp,
within a day of none of them but the synthetic ones, which the emulator stamps now)."""
_DEAD_URL: Final = "http://127.0.0.1:9"
"""Where the streams' ccxt points (nothing connects: frames are handed in)."""


@dataclass(frozen=True, slots=True)
class Case:
    """Frames of one venue's channel, as they arrive on one websocket path.

    Attributes:
        venue: The venue id.
        channel: The stream's channel.
        path: The websocket URL path they arrive on (Bybit: ``/v5/public/linear``).
        frames: The frames' text, in order.
        symbols: Symbols the streams subscribe.
        label: What the frames are (the test id).
        replay: Markets from the venue's recording (else the synthetic emulator's).
        probe_only: Frames the decoder must decline, offered to it alone (not to ccxt's
            streams: see the module docstring).
    """

    venue: str
    channel: Channel
    path: str
    frames: tuple[str, ...]
    symbols: tuple[str, ...]
    label: str
    replay: bool = True
    probe_only: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.venue}-{self.channel}-{self.label}"


@dataclass(slots=True)
class Outcome:
    """What the harness saw: frames the decoder claimed and declined, updates stored, drops
    and (trades) the trade path's counters, equal on both sides."""

    claimed: int = 0
    declined: int = 0
    stored: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class RecordingSink:
    """A :class:`~flight_md.core.decode.DecodeSink` that keeps what it is given."""

    def __init__(self) -> None:
        self.out: list[tuple[Any, ...]] = []

    def tick(self, symbol: str, row: Sequence[float], stamped: bool,
             key: str | None = None) -> None:
        self.out.append(("tick", symbol, tuple(row), stamped, key))

    def trade(self, fields: TradeFields, stamped: bool = True, span: int = 1) -> None:
        self.out.append(("trade", fields, stamped, span))

    def drop(self, symbol: str | None, reason: DropReason) -> None:
        self.out.append(("drop", symbol, reason))


# -- inputs -----------------------------------------------------------------------------------------

_MARKETS: dict[tuple[str, bool], list[dict[str, Any]]] = {}


async def load_markets(venue_id: str, replay: bool) -> list[dict[str, Any]]:
    """ccxt's markets of the venue, loaded by a real ccxt from the emulator (the recording's
    when ``replay``, else the synthetic test symbols'); loaded once per run."""
    key = (venue_id, replay)
    if key not in _MARKETS:
        item = venue(venue_id)
        options: dict[str, Any] = {"replay": default_recording(venue_id), "speed": 0} if replay \
            else {"symbols": item.test_symbols}
        async with Emulator(venue_id, **options) as emulator:
            stream = _ChannelStream(venue_id, url=emulator.url, mode="websocket")
            try:
                await stream.exchange.load_markets()
                _MARKETS[key] = list(stream.exchange.markets.values())
            finally:
                await stream.exchange.close()
    return _MARKETS[key]


def recorded(venue_id: str) -> list[tuple[str, str]]:
    """``(websocket path, frame)`` of every frame the venue's recording received, read from
    the file."""
    path = default_recording(venue_id)
    if not Path(path).is_file():
        pytest.fail(f"recording of {venue_id!r} missing: expected {path}", pytrace=False)
    frames: list[tuple[str, str]] = []
    paths: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "connect":
                # wss://ws.kraken.com has no path: the root
                _host, _slash, rest = record["addr"].split("://", 1)[1].partition("/")
                paths[record["conn"]] = "/" + rest.split("?")[0]
            elif record["t"] == "recv":
                frames.append((paths.get(record["conn"], ""), record["data"]))
    return frames


BOOK_FRAMES_KEPT: Final = 8
"""Order-book frames of a case that go through both streams; the rest are ``probe_only``."""
BOOK_FRAME_CHARS: Final = 4_000
"""Longer order-book frames (snapshots: Coinbase's hold tens of thousands of levels, which
ccxt's book code takes a second each to store) are ``probe_only`` too."""


def split_books(frames: Sequence[str], is_book: Callable[[str], bool] | None
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(frames, probe_only)``: every frame in order but the order-book ones (``is_book``)
    after the first :data:`BOOK_FRAMES_KEPT` of at most :data:`BOOK_FRAME_CHARS`, and those."""
    if is_book is None:
        return tuple(frames), ()
    kept: list[str] = []
    probe: list[str] = []
    books = 0
    for text in frames:
        if is_book(text):
            if books >= BOOK_FRAMES_KEPT or len(text) > BOOK_FRAME_CHARS:
                probe.append(text)
                continue
            books += 1
        kept.append(text)
    return tuple(kept), tuple(probe)


def recording_cases(venue_id: str, symbols: Sequence[str], *,
                    ws_path: dict[str, str] | None = None,
                    unwrap: bool = False,
                    is_book: Callable[[str], bool] | None = None) -> list[Case]:
    """One case per registered decoder channel and websocket path: every frame of the venue's
    recording on that path (every channel's: a decoder must decline the others). ``ws_path``
    maps a recorded path to the one ccxt's client would have (Binance's combined
    ``/stream`` is ccxt's ``/ws/<n>``); ``unwrap`` follows the recorded frames with the same
    combined-stream frames unwrapped to their ``data``, as a raw ``/ws`` connection receives
    them; ``is_book`` tells the order-book frames, of which all but the first
    :data:`BOOK_FRAMES_KEPT` are ``probe_only``."""
    by_path: dict[str, list[str]] = {}
    for path, text in recorded(venue_id):
        by_path.setdefault((ws_path or {}).get(path, path), []).append(text)
    cases = []
    for channel in venue(venue_id).decoders:
        if channel is Channel.BOOK:  # a kept book, not a parse: BookPair compares it
            continue
        for path, frames in by_path.items():
            if unwrap:  # the recorded frames, then the same unwrapped: one stream pair for both
                frames = frames + [_unwrapped(text) for text in frames]
            kept, probe = split_books(frames, is_book)
            cases.append(Case(venue_id, channel, path, kept, tuple(symbols),
                              f"recording{path.replace('/', '_')}", probe_only=probe))
    return cases


def _unwrapped(text: str) -> str:
    if text.startswith('{"stream":') and '"data":' in text:
        return text[text.index('"data":') + len('"data":'):-1]
    return text


async def emulator_frames(venue_id: str, path: str, subscribe: str, count: int,
                          rate: float = 2_000.0) -> list[str]:
    """``count`` frames the synthetic emulator sends a raw websocket client after
    ``subscribe`` (the subscribe request's text), acknowledgements included."""
    item = venue(venue_id)
    async with Emulator(venue_id, symbols=item.test_symbols, rate=rate, seed=7) as emulator, \
            aiohttp.ClientSession() as http, \
            http.ws_connect(emulator.url.replace("http://", "ws://") + path) as ws:
        await ws.send_str(subscribe)
        frames: list[str] = []
        async with asyncio.timeout(20):
            while len(frames) < count:
                message = await ws.receive()
                if message.type is WSMsgType.TEXT:
                    frames.append(message.data)
    return frames


_BAD_VALUES: Final[tuple[Any, ...]] = ("abc", "", None, "0", "-1", "nan", "inf", "1e5", " 7",
                                        5, 2.5, 0, True, [], {})


def mutations(template: dict[str, Any], fields: Sequence[str], *,
              wrap: str | None = None) -> list[str]:
    """Faulty variants of one frame: each of ``fields`` missing or set to each of a catalogue
    of bad values (non-numeric, empty, null, zero, negative, NaN, infinite, exponent, padded,
    numbers, a bool, structures), plus invalid and truncated JSON and other shapes (``wrap``:
    the key of the dict, under the frame, that holds the fields, e.g. Bybit's ``data``)."""
    frames: list[str] = []

    def emit(changed: dict[str, Any]) -> None:
        frames.append(json.dumps(changed))

    def target(frame: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = frame[wrap] if wrap else frame
        return found

    for name in fields:
        frame = json.loads(json.dumps(template))
        target(frame).pop(name, None)
        emit(frame)
        for value in _BAD_VALUES:
            frame = json.loads(json.dumps(template))
            target(frame)[name] = value
            emit(frame)
    text = json.dumps(template)
    frames += [text[: len(text) // 2], "{", "not json", "[]", "null", "{}", '"text"', text + " "]
    frame = json.loads(text)
    target(frame)["unexpected"] = 1
    emit(frame)
    return frames


# -- the comparison ----------------------------------------------------------------------------------


def _same(left: Any, right: Any) -> bool:
    """Equal, NaN equal to NaN (inside tuples too)."""
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, tuple) and isinstance(right, tuple):
        return len(left) == len(right) and all(map(_same, left, right))
    return bool(left == right)


def _stream(case: Case, decoder: str) -> _ChannelStream:
    return _ChannelStream(case.venue, url=_DEAD_URL, channel=case.channel, mode="websocket",
                          decoder=decoder)


def _ws_url(path: str) -> str:
    return _DEAD_URL.replace("http://", "ws://") + path


def _rows(stream: _ChannelStream, symbol: str) -> list[tuple[Any, ...]]:
    try:
        table = stream.buffer.get_latest_sync(symbol, 1_000_000, exchange=stream.exchange_id)
    except NotFound:
        return []
    columns = [c for c in table.column_names if c != "receive_timestamp"]
    return [tuple(row[c] for c in columns) for row in table.select(columns).to_pylist()]


async def assert_decoder_matches_ccxt(case: Case, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """Run ``case`` through ccxt's path and the fast decoder's; assert they store the same
    (see the module docstring). Returns what happened, for the caller's own checks."""
    markets = await load_markets(case.venue, case.replay)
    # One receive clock for both paths: the tap's (session.now_ms) and the frame guard's.
    monkeypatch.setattr(session, "now_ms", lambda: FIXED_MS)
    monkeypatch.setattr(ccxt_compat, "now_ms", lambda: FIXED_MS)
    slow, fast = _stream(case, "ccxt"), _stream(case, "fast")
    assert fast.decoder.value == "fast" and slow.decoder.value == "ccxt"
    seen: dict[str, list[Any]] = {"slow": [], "fast": []}
    for name, stream in (("slow", slow), ("fast", fast)):
        stream.exchange.set_markets(markets)
        stream._subs.add(case.symbols)
        stream._websocket.ensure_tap()  # type: ignore[union-attr]
        stream.add_callback(seen[name].append)
    url = _ws_url(case.path)
    clients = [slow.exchange.client(url), fast.exchange.client(url)]
    probe = venue(case.venue).decoders[case.channel](DecoderContext(
        url=url, markets_by_id=fast.exchange.markets_by_id, options=fast.exchange.options,
        raw_fields=fast.venue.raw_numeric_fields))
    assert probe is not None
    outcome = Outcome()
    if case.probe_only:
        alone = venue(case.venue).decoders[case.channel](DecoderContext(
            url=url, markets_by_id=fast.exchange.markets_by_id, options=fast.exchange.options,
            raw_fields=fast.venue.raw_numeric_fields))
        assert alone is not None
        sink = RecordingSink()
        for number, frame in enumerate(case.probe_only):
            assert not alone.decode(frame, FIXED_MS, sink), \
                f"probe-only frame {number} claimed: {frame}"
            assert sink.out == [], f"probe-only frame {number} declined but delivered {sink.out}"
        outcome.declined += len(case.probe_only)
    try:
        for number, frame in enumerate(case.frames):
            sink = RecordingSink()
            claimed = probe.decode(frame, FIXED_MS, sink)
            if claimed:
                outcome.claimed += 1
            else:
                outcome.declined += 1
                assert sink.out == [], f"frame {number} declined but delivered {sink.out}: {frame}"
            before = len(seen["slow"]), len(seen["fast"])
            for client in clients:
                client.last_message_at = None
                client.handle_message(WSMessage(WSMsgType.TEXT, frame, None))
            assert clients[1].last_message_at is not None  # claimed or not, the guard notes it
            new_slow, new_fast = seen["slow"][before[0]:], seen["fast"][before[1]:]
            assert len(new_slow) == len(new_fast) and all(
                _same(_fields(a), _fields(b)) for a, b in zip(new_slow, new_fast, strict=True)), (
                f"frame {number} ({'claimed' if claimed else 'declined'}): ccxt stored "
                f"{new_slow}, the decoder {new_fast}: {frame}")
            assert dict(slow._fanout.bad_frames) == dict(fast._fanout.bad_frames), (
                f"frame {number}: drops differ: ccxt {dict(slow._fanout.bad_frames)}, "
                f"decoder {dict(fast._fanout.bad_frames)}: {frame}")
        listed = {m["symbol"] for m in markets}
        for symbol in sorted(listed | set(case.symbols)):
            left, right = slow._subs.states.get(symbol), fast._subs.states.get(symbol)
            assert (left is None) == (right is None), symbol
            if left is not None and right is not None:
                assert (left.received, left.dropped, left.last_ms) == \
                    (right.received, right.dropped, right.last_ms), symbol
        for symbol in case.symbols:
            rows_slow, rows_fast = _rows(slow, symbol), _rows(fast, symbol)
            assert len(rows_slow) == len(rows_fast) and all(
                _same(a, b) for a, b in zip(rows_slow, rows_fast, strict=True)), symbol
        outcome.stored = len(seen["slow"])
        outcome.drops = {str(k): v for k, v in slow._fanout.bad_frames.items()}
        if isinstance(slow._fanout, type(fast._fanout)) and hasattr(slow._fanout, "counters"):
            assert slow._fanout.counters == fast._fanout.counters  # type: ignore[attr-defined]
            outcome.counters = dict(fast._fanout.counters)  # type: ignore[attr-defined]
    finally:
        for stream in (slow, fast):
            for future in list(stream._background):
                future.cancel()
            await asyncio.gather(*stream._background, return_exceptions=True)
            await stream.exchange.close()
    return outcome


def _fields(update: Any) -> tuple[Any, ...]:
    return tuple(getattr(update, item.name) for item in dataclasses.fields(update))


@contextlib.asynccontextmanager
async def fast_and_ccxt_streams(venue_id: str, url: str, channel: str, symbols: Sequence[str]
                                ) -> AsyncIterator[tuple[MarketDataStream, MarketDataStream]]:
    """Two streams of one emulator session, ``decoder="fast"`` and ``decoder="ccxt"``, each
    connected and subscribed to ``symbols`` (the status says which decoder each uses);
    disconnected on exit."""
    streams = [MarketDataStream(venue_id, url=url, channel=channel, decoder=decoder,
                                buffer_size=50_000) for decoder in ("fast", "ccxt")]
    try:
        for stream in streams:
            await stream.connect()
            await stream.subscribe(list(symbols))
        assert [s.status().exchanges[0].decoder for s in streams] == ["fast", "ccxt"]
        yield streams[0], streams[1]
    finally:
        for stream in streams:
            await stream.disconnect()


def stored_rows(stream: MarketDataStream, symbol: str, *, timestamped: bool
                ) -> list[tuple[Any, ...]]:
    """``symbol``'s stored rows without their receive time, and without their timestamp where
    the venue sends none (``timestamped`` false: the receive time stands in for it)."""
    table = stream.buffer.get_latest_sync(symbol, 100_000, exchange=stream.exchange_id)
    keep = [c for c in table.column_names
            if c != "receive_timestamp" and (timestamped or c != "timestamp")]
    return [tuple(row.values()) for row in table.select(keep).to_pylist()]


# -- books: the fast book path against ccxt's handle_order_book ---------------------------------------
#
# A book stream's frames are compared as the ticker channels' are (the same frames, in order, as
# aiohttp hands them, to a ``decoder="ccxt"`` and a ``decoder="fast"`` stream of the same markets
# and subscriptions), but what is compared differs: a book frame touches a kept book, so after
# every frame the books stored since the last one (``BookTop``: timestamp, bids, asks, nonce,
# receive time), the capture's counters, the ``book_resync`` events, each symbol's counts and the
# drops; at the end every stored row, read back from both buffers.


@dataclass(slots=True)
class BookOutcome:
    """What the book harness saw, equal on both sides: frames compared, books stored, resyncs,
    the final counters, and the decoder each stream reports (``("ccxt", "fast")`` when the
    venue's fast book path is in; ``("ccxt", "ccxt")`` while it is not)."""

    frames: int = 0
    stored: int = 0
    resyncs: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    decoders: tuple[str, str] = ("ccxt", "ccxt")

    @property
    def compared(self) -> bool:
        """Whether the fast side really ran the fast book path."""
        return self.decoders == ("ccxt", "fast")


def fix_book_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One receive clock for every path a book's receive time comes from: the cache tap's,
    the frame guard's and the book capture's (:data:`FIXED_MS`)."""
    from flight_md.ingest import books

    for module, name in ((session, "now_ms"), (ccxt_compat, "now_ms"), (books, "_now_ms")):
        monkeypatch.setattr(module, name, lambda: FIXED_MS)


def book_stream(venue_id: str, decoder: str, url: str = _DEAD_URL) -> _ChannelStream:
    """A book stream of ``venue_id`` pointed at ``url`` (never connected by default)."""
    return _ChannelStream(venue_id, url=url, channel=Channel.BOOK, mode="websocket",
                          decoder=decoder)


class _BookSide:
    """One stream of a book comparison and what it stored since the last look."""

    def __init__(self, stream: _ChannelStream) -> None:
        self.stream = stream
        self.tops: list[Any] = []
        self.seen = 0
        stream.add_callback(self.tops.append)

    def new(self) -> list[tuple[Any, ...]]:
        found = [_fields(top) for top in self.tops[self.seen:]]
        self.seen = len(self.tops)
        return found

    def state(self) -> tuple[Any, ...]:
        stream = self.stream
        resyncs = tuple((e.kind, e.symbols, e.detail) for e in stream._events.events()
                        if e.kind is EventKind.BOOK_RESYNC)
        symbols = tuple(sorted((symbol, s.subscribed, s.received, s.dropped, s.last_ms)
                               for symbol, s in stream._subs.states.items()))
        return (stream.counters(), resyncs, symbols, dict(stream._fanout.bad_frames))


def _book_rows(stream: _ChannelStream, symbol: str) -> list[tuple[Any, ...]]:
    try:
        table = stream.buffer.get_latest_sync(symbol, 1_000_000, exchange=stream.exchange_id)
    except NotFound:
        return []
    return [tuple(row.values()) for row in table.to_pylist()]


class BookPair:
    """A ``decoder="ccxt"`` and a ``decoder="fast"`` book stream fed the same frames.

    :meth:`feed` hands one frame to each stream's client for ``path`` (the frame guard: as
    aiohttp hands it to ccxt) and asserts both stored and reported the same since the last
    frame; :meth:`finish` compares every stored row and returns the :class:`BookOutcome`.
    """

    def __init__(self, slow: _ChannelStream, fast: _ChannelStream, symbols: Sequence[str],
                 clients: Callable[[_ChannelStream, str], Any] | None = None) -> None:
        self.sides = (_BookSide(slow), _BookSide(fast))
        self.symbols = tuple(symbols)
        self._clients = clients or self._client
        self.outcome = BookOutcome(decoders=(slow.decoder.value, fast.decoder.value))
        assert slow.decoder.value == "ccxt"

    def _client(self, stream: _ChannelStream, path: str) -> Any:
        """The stream's ccxt client for ``path``, holding the subscriptions a real subscribe
        leaves (ccxt's OKX handler deletes its book's on a failed sequence, and on the
        ccxt side writes it back after every update it handles while it is missing)."""
        url = _ws_url(path)
        known = url in (stream.exchange.clients or {})
        client = stream.exchange.client(url)
        pattern = _BOOK_HASH.get(stream.exchange_id)
        if not known and pattern is not None:
            for symbol in self.symbols:
                client.subscriptions[pattern.format(symbol=symbol)] = True
        return client

    def feed(self, path: str, frame: str, label: str = "") -> None:
        """Hand ``frame`` to both streams' client for ``path``; assert they agree after it."""
        for side in self.sides:
            client = self._clients(side.stream, path)
            client.handle_message(WSMessage(WSMsgType.TEXT, frame, None))
        self.check(f"frame {self.outcome.frames} {label}", frame)
        self.outcome.frames += 1

    def check(self, where: str, frame: str = "") -> None:
        """Assert both stored the same books since the last check, and report the same."""
        slow, fast = self.sides
        new_slow, new_fast = slow.new(), fast.new()
        shown = frame if len(frame) < 600 else frame[:600] + "..."
        assert len(new_slow) == len(new_fast) and all(
            _same(a, b) for a, b in zip(new_slow, new_fast, strict=True)), (
            f"{where}: ccxt stored {new_slow}, the fast path {new_fast}: {shown}")
        left, right = slow.state(), fast.state()
        for name, a, b in zip(("counters", "book_resync events", "symbols", "drops"), left, right,
                              strict=True):
            assert a == b, f"{where}: {name} differ: ccxt {a}, the fast path {b}: {shown}"
        self.outcome.stored += len(new_slow)

    def feed_fast_only(self, frames: Sequence[tuple[str, str]]) -> None:
        """Hand ``(path, frame)`` frames to the fast stream alone (past a comparison's budget);
        assert it kept every book in sync (no resync, nothing refused, nothing malformed)."""
        fast = self.sides[1]
        for path, frame in frames:
            self._clients(fast.stream, path).handle_message(WSMessage(WSMsgType.TEXT, frame, None))
        counters = fast.stream.counters()
        assert counters["resyncs"] == counters["refused"] == 0, counters

    def fast_tops(self) -> dict[str, tuple[list[list[float]], list[list[float]]]]:
        """The fast stream's last stored book of each symbol, ``([[price, amount]...], asks)``."""
        tops: dict[str, tuple[list[list[float]], list[list[float]]]] = {}
        for top in self.sides[1].tops:
            tops[top.symbol] = ([list(level) for level in top.bids],
                                [list(level) for level in top.asks])
        return tops

    def finish(self) -> BookOutcome:
        """Compare every stored row (receive time included) and the final state."""
        slow, fast = (side.stream for side in self.sides)
        held = {symbol for stream in (slow, fast)
                for _exchange, symbol in stream.buffer.keys(stream.exchange_id)}
        for symbol in sorted(held | set(self.symbols)):
            rows_slow, rows_fast = _book_rows(slow, symbol), _book_rows(fast, symbol)
            assert len(rows_slow) == len(rows_fast) and all(
                _same(a, b) for a, b in zip(rows_slow, rows_fast, strict=True)), symbol
            if symbol not in self.symbols:
                assert rows_slow == [], f"{symbol} is not subscribed but was stored"
        decoders = (slow.status().exchanges[0].decoder, fast.status().exchanges[0].decoder)
        assert decoders == self.outcome.decoders
        self.outcome.counters = slow.counters()
        self.outcome.resyncs = self.outcome.counters.get("resyncs", 0)
        return self.outcome


_BOOK_HASH: Final = {"okx": "books:{symbol}"}
"""ccxt's subscription hash of a subscribed book, where its handler reads it."""


@contextlib.asynccontextmanager
async def book_pair(venue_id: str, symbols: Sequence[str], monkeypatch: pytest.MonkeyPatch, *,
                    replay: bool = True) -> AsyncIterator[BookPair]:
    """Two never-connected book streams of ``venue_id`` with the emulator's markets (the
    recording's when ``replay``) and ``symbols`` subscribed, as a :class:`BookPair`."""
    markets = await load_markets(venue_id, replay)
    fix_book_clocks(monkeypatch)
    streams = (book_stream(venue_id, "ccxt"), book_stream(venue_id, "fast"))
    for stream in streams:
        stream.exchange.set_markets(markets)
        stream._subs.add(tuple(symbols))
    try:
        yield BookPair(*streams, symbols)
    finally:
        for stream in streams:
            await _close(stream)


async def _close(stream: _ChannelStream) -> None:
    for future in list(stream._background):
        future.cancel()
    await asyncio.gather(*stream._background, return_exceptions=True)
    await stream.exchange.close()


def fast_book_path(venue_id: str) -> bool:
    """Whether a ``decoder="fast"`` book stream of ``venue_id`` runs the fast book path (its
    status says ``decoder="fast"``) rather than ccxt's."""
    found = _FAST_BOOKS.get(venue_id)
    if found is None:
        stream = book_stream(venue_id, "fast")
        found = _FAST_BOOKS[venue_id] = stream.status().exchanges[0].decoder == "fast"
    return found


_FAST_BOOKS: dict[str, bool] = {}


async def emulator_book_sessions(venue_id: str, path: str, subscribe: str, count: int,
                                 faults: Sequence[Any] = (), rate: float = 2_000.0
                                 ) -> list[list[str]]:
    """Websocket sessions of one synthetic emulator, one after another: a clean one, then one
    per fault of ``faults`` (``flight_md.emulator.Fault``), injected after the session's first
    ``count`` frames; each session's ``2 * count`` frames (acknowledgements included), from
    its snapshots on."""
    item = venue(venue_id)
    sessions: list[list[str]] = []
    async with Emulator(venue_id, symbols=item.test_symbols, rate=rate, seed=7) as emulator, \
            aiohttp.ClientSession() as http:
        for fault in (None, *faults):
            async with http.ws_connect(emulator.url.replace("http://", "ws://") + path) as ws:
                await ws.send_str(subscribe)
                frames: list[str] = []
                injected = fault is None
                async with asyncio.timeout(20):
                    while len(frames) < 2 * count:
                        if not injected and len(frames) >= count:
                            await emulator.inject(fault)
                            injected = True
                        message = await ws.receive()
                        if message.type is WSMsgType.TEXT:
                            frames.append(message.data)
            sessions.append(frames)
    return sessions


def book_mutations(template: dict[str, Any], fields: Sequence[tuple[Any, ...]],
                   levels: Sequence[tuple[Any, ...]]) -> list[str]:
    """Faulty variants of one book frame: each field of the dicts at ``fields`` (paths of keys
    and indices from the frame) missing or set to each bad value of :func:`mutations`'
    catalogue; each list of levels at ``levels`` missing, empty, of another type, its first
    level of another shape or with each of its values bad, an extra value in a level, a zero
    quantity for a price the book does not hold; and :func:`mutations`' other shapes."""
    text = json.dumps(template)
    frames: list[str] = []

    def at(frame: Any, path: tuple[Any, ...]) -> Any:
        for key in path:
            frame = frame[key]
        return frame

    def emit(path: tuple[Any, ...], change: Callable[[Any], None]) -> None:
        frame = json.loads(text)
        change(at(frame, path))
        frames.append(json.dumps(frame))

    for path in fields:
        for name in at(template, path):
            emit(path, lambda found, n=name: found.pop(n))
            for value in _BAD_VALUES:
                emit(path, lambda found, n=name, v=value: found.__setitem__(n, v))
    for path in levels:
        *outer, key = path
        emit(tuple(outer), lambda found, k=key: found.pop(k))
        for value in ([], {}, "x", None, 5, [[]], [None], ["x"], [{}]):
            emit(tuple(outer), lambda found, k=key, v=value: found.__setitem__(k, v))
        first = at(template, path)[0]
        slots = range(len(first)) if isinstance(first, list) else list(first)
        for slot in slots:
            for value in _BAD_VALUES:
                emit(path, lambda found, s=slot, v=value: found[0].__setitem__(s, v))
        if isinstance(first, list):
            emit(path, lambda found: found[0].append("9"))
            emit(path, lambda found: found.__setitem__(0, found[0][:1]))
        emit(path, lambda found: found.insert(0, _absent(found[0])))
    frames += mutations(template, ())
    return frames


def _absent(level: Any) -> Any:
    """A zero-quantity level at a price far from ``level``'s (a level the book does not hold)."""
    def far(price: Any) -> Any:
        return repr(float(price) * 0.37) if isinstance(price, str) else price * 0.37

    def zero(quantity: Any) -> Any:
        return "0" if isinstance(quantity, str) else 0

    if isinstance(level, list):
        return [far(level[0]), zero(level[1]), *level[2:]]
    changed = dict(level)
    for key, value in level.items():
        if "price" in key:
            changed[key] = far(value)
        elif "q" in key:
            changed[key] = zero(value)
    return changed
