"""The fast book path stores exactly what ccxt's ``handle_order_book`` and the book capture store.

Differential (:class:`tests.ingest.decode_support.BookPair`): the same frames, in order, as
aiohttp hands them to ccxt (a ``TEXT`` message to the client's frame guard), through a
``decoder="ccxt"`` and a ``decoder="fast"`` book stream of the same venue, markets and
subscriptions (one listed symbol left out: neither may store it). After every frame: the same
books stored (timestamp, bids, asks, nonce, receive time; NaN-equal), the same capture counters,
the same ``book_resync`` events (kind, symbols, detail), the same counts per symbol and the same
drops; at the end, the same rows in both buffers. The frames:

* every frame of each venue's recording: Bybit's, OKX's and Coinbase's as the file holds them,
  Kraken's as the emulator serves them (the 2021 websocket v1 session as v2), Binance's
  ``depthUpdate`` frames after both streams really subscribed to a replay emulator that serves
  the recorded REST depth snapshot (and nothing on the websocket: the frames are the test's),
  then the bad-value catalogue below in the update after the last one;
* the synthetic emulator's book frames, with its book faults (a lost update, a wrong checksum)
  and frame faults (malformed, truncated, missing fields, non-numeric) injected while they are
  sent, a crossed update, and a catalogue of bad values in one update (each level field
  non-numeric, null, empty, of the wrong type; levels missing, empty, of the wrong shape; a zero
  quantity for a level the book does not hold), each on a fresh connection's fresh book.

Which venues are really compared: until a venue's fast book path is in, its ``decoder="fast"``
stream runs ccxt's path too and the comparison holds trivially. Each test's id says which:
``<venue>-fast`` (the stream's ``status()`` says ``decoder="fast"``, and the test asserts it)
or ``<venue>-ccxt-only`` (it says ``ccxt``: the test still runs the frames, and asserts that).

Budget: ccxt's book code is most of the time (Coinbase's two recorded snapshots hold tens of
thousands of levels each; Kraken's served session is 20,000 frames). Past
:data:`LOCKSTEP` book frames of a venue's recording, frames go to the fast stream alone (only
when it is fast: otherwise it is the same path again), which must keep every book in sync (no
resync: the recordings are unbroken chains, checksums included) and end on the books rebuilt
from the file by :mod:`tests.ingest.test_book_capture`. Every recorded book frame meets the fast
path once.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from flight_md.emulator import Emulator, Fault, default_recording
from flight_md.emulator.fault import FRAME_FAULTS
from flight_md.venues import venue
from tests.ingest.decode_support import (
    BookPair,
    _unwrapped,
    book_mutations,
    book_pair,
    book_stream,
    emulator_book_sessions,
    fast_book_path,
    fix_book_clocks,
    recorded,
)
from tests.ingest.test_book_capture import EXPECTED
from tests.ingest.test_decode_okx_coinbase_kraken import (
    COINBASE_RECORDED,
    KRAKEN_RECORDED,
    OKX_RECORDED,
    served_frames,
)
from tests.support import MS, async_until

pytestmark = pytest.mark.asyncio

BYBIT_RECORDED: Final = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "BTC/USDT", "ETH/USDT")
RECORDED_SYMBOLS: Final = {"bybit": BYBIT_RECORDED, "okx": OKX_RECORDED,
                           "coinbase": COINBASE_RECORDED, "kraken": KRAKEN_RECORDED}
IS_BOOK: Final = {"bybit": '"orderbook.', "okx": '"books', "coinbase": '"l2_data"',
                  "kraken": '"book"'}
LOCKSTEP: Final = {"bybit": 400, "okx": 10_000, "coinbase": 10_000, "kraken": 1_000}
"""Book frames of a recording compared with ccxt's path (the rest: the fast stream alone).
Bybit: 400 of 2,148 (ccxt's 200-level books take ~2 ms a frame on both sides); Kraken: 1,000
of 20,298 served (the whole served session took ~25 s through both); OKX's 293 and Coinbase's
775 all (Coinbase's cost is its two snapshots, which every later frame needs)."""


def _id(venue_id: str) -> str:
    return f"{venue_id}-fast" if fast_book_path(venue_id) else f"{venue_id}-ccxt-only"


def hand_fed_frames(venue_id: str) -> list[tuple[str, str]]:
    """``(websocket path, frame)`` of every frame the streams get from the venue's recording."""
    if venue_id == "kraken":
        return [("/v2", text) for _channel, text in served_frames("kraken")]
    return recorded(venue_id)


@pytest.mark.parametrize("venue_id", sorted(RECORDED_SYMBOLS), ids=_id)
async def test_every_recorded_book_frame_is_stored_as_ccxt_stores_it(
        venue_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    symbols = RECORDED_SYMBOLS[venue_id]
    marker, cap = IS_BOOK[venue_id], LOCKSTEP[venue_id]
    frames = hand_fed_frames(venue_id)
    async with book_pair(venue_id, symbols, monkeypatch) as pair:
        books = 0
        rest: list[tuple[str, str]] = []
        for path, text in frames:
            if marker in text[:300]:
                books += 1
                if books > cap:
                    rest.append((path, text))
                    continue
            if rest:  # after the cap, every frame in order goes the same way
                rest.append((path, text))
                continue
            pair.feed(path, text)
        outcome = pair.finish()
        assert outcome.decoders == ("ccxt", "fast" if fast_book_path(venue_id) else "ccxt")
        assert outcome.stored > 0 and outcome.resyncs == 0  # the recordings are unbroken
        if rest and outcome.compared:
            pair.feed_fast_only(rest)
            expected = EXPECTED[venue_id]()
            tops = pair.fast_tops()
            for symbol, top in expected.tops.items():
                if symbol in symbols:
                    assert tops[symbol] == top, symbol


# -- synthetic frames: the emulator's, with its faults, and a catalogue of bad values ---------------


@dataclass(frozen=True, slots=True)
class Synthetic:
    """How one venue's synthetic book session is asked for and where its frames hold what."""

    path: str
    subscribe: dict[str, Any]
    market: str  # the subscribed symbol's market id as frames name it (the other is left out)
    fields: tuple[tuple[Any, ...], ...]  # paths to the dicts whose fields are mutated
    levels: tuple[tuple[Any, ...], ...]  # paths to the lists of levels
    best_ask: Callable[[dict[str, Any]], Any]  # a snapshot's best ask price
    crossing: Callable[[dict[str, Any], Any], None]  # make an update a lone bid at a price
    checksum: bool = False  # the venue's updates carry a checksum (the emulator's book_checksum)


def _lists(bids: str, asks: str, extra: tuple[str, ...] = ()) -> Callable[[dict[str, Any], Any], None]:
    def crossing(holder: dict[str, Any], price: Any) -> None:
        holder[bids], holder[asks] = [[price, "1", *extra]], []
    return crossing


def _coinbase_crossing(frame: dict[str, Any], price: Any) -> None:
    event = frame["events"][0]
    event["updates"] = [dict(event["updates"][0], side="bid", price_level=price, new_quantity="1")]


def _kraken_crossing(frame: dict[str, Any], price: Any) -> None:
    frame["data"][0]["bids"], frame["data"][0]["asks"] = [{"price": price, "qty": 1.0}], []


SYNTHETIC: Final = {
    "bybit": Synthetic(
        "/v5/public/linear",
        {"op": "subscribe", "args": ["orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"], "req_id": "1"},
        '"BTCUSDT"', ((), ("data",)), (("data", "b"), ("data", "a")),
        lambda s: s["data"]["a"][0][0], lambda f, p: _lists("b", "a")(f["data"], p)),
    "okx": Synthetic(
        "/ws/v5/public",
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"},
                                     {"channel": "books", "instId": "ETH-USDT-SWAP"}]},
        '"BTC-USDT"', ((), ("arg",), ("data", 0)), (("data", 0, "bids"), ("data", 0, "asks")),
        lambda s: s["data"][0]["asks"][0][0],
        lambda f, p: _lists("bids", "asks", ("0", "1"))(f["data"][0], p), checksum=True),
    "coinbase": Synthetic(
        "/", {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
        '"BTC-USD"', ((), ("events", 0), ("events", 0, "updates", 0)), (("events", 0, "updates"),),
        lambda s: next(u["price_level"] for u in s["events"][0]["updates"] if u["side"] != "bid"),
        _coinbase_crossing),
    "kraken": Synthetic(
        "/v2", {"method": "subscribe",
                "params": {"channel": "book", "symbol": ["BTC/USD", "ETH/USD"], "depth": 10}},
        '"BTC/USD"', ((), ("data", 0)), (("data", 0, "bids"), ("data", 0, "asks")),
        lambda s: s["data"][0]["asks"][0]["price"], _kraken_crossing, checksum=True),
}
SYNTHETIC_COUNT: Final = 40
"""Frames of a synthetic session before its fault is injected (and as many after)."""


def _book_frames(frames: list[str], market: str) -> tuple[str, str, str]:
    """The subscribed market's snapshot and the two updates after it."""
    ours = [text for text in frames if market in text[:200] and '"subscribe' not in text[:40]]
    start = next(i for i, text in enumerate(ours) if '"snapshot"' in text[:400])
    snapshot, first, second = ours[start:start + 3]
    assert '"snapshot"' not in first[:400] + second[:400]
    return snapshot, first, second


@pytest.mark.parametrize("venue_id", sorted(SYNTHETIC), ids=_id)
async def test_synthetic_book_frames_faults_and_bad_values_are_stored_as_ccxt_stores_them(
        venue_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SYNTHETIC[venue_id]
    faults = [Fault.BOOK_GAP, *sorted(FRAME_FAULTS)] + ([Fault.BOOK_CHECKSUM] if spec.checksum else [])
    sessions = await emulator_book_sessions(venue_id, spec.path, json.dumps(spec.subscribe),
                                            SYNTHETIC_COUNT, faults)
    snapshot, first, second = _book_frames(sessions[0], spec.market)
    template = json.loads(second)
    crossed = [json.loads(second), json.loads(second)]
    best_ask = spec.best_ask(json.loads(snapshot))
    spec.crossing(crossed[0], best_ask)  # locked: a bid at the best ask
    spec.crossing(crossed[1], type(best_ask)(float(best_ask) * 1.01)
                  if not isinstance(best_ask, str) else repr(float(best_ask) * 1.01))
    bad = [json.dumps(frame) for frame in crossed]
    bad += book_mutations(template, spec.fields, spec.levels)
    symbol = venue(venue_id).test_symbols[0]
    async with book_pair(venue_id, (symbol,), monkeypatch, replay=False) as pair:
        for number, frames in enumerate(sessions):  # each session on a connection of its own
            for text in frames:
                pair.feed(f"{spec.path}?session={number}", text, f"session {number}")
        for number, text in enumerate(bad):  # each on a fresh connection's fresh book
            path = f"{spec.path}?bad={number}"
            for frame in (snapshot, first, text):
                pair.feed(path, frame, f"bad value {number}")
        outcome = pair.finish()
    assert outcome.decoders == ("ccxt", "fast" if fast_book_path(venue_id) else "ccxt")
    counters = outcome.counters
    assert counters["stored"] > len(bad) and counters["resyncs"] > 0  # the faults did resync
    assert counters["gap" if venue_id != "kraken" else "checksum"] > 0


# -- Binance: the REST snapshot ccxt fetches when it subscribes ---------------------------------------

BINANCE_RECORDED: Final = ("NKN/USDT", "LRC/BTC", "BLZ/ETH")  # RUNE/EUR is listed, left out


def rest_only_recording(path: Path) -> Path:
    """The Binance recording without its depth frames: a replay of it acknowledges a book
    subscription, serves the recorded REST snapshots and sends a book stream nothing (its
    other streams' frames go to their subscribers only), so that the test hands the streams
    the recorded depth frames itself."""
    with gzip.open(default_recording("binance"), "rt", encoding="utf-8") as source, \
            gzip.open(path, "wt", encoding="utf-8") as kept:
        for line in source:
            record = json.loads(line)
            if record["t"] != "recv" or '"depthUpdate"' not in record["data"]:
                kept.write(line)
    return path


@pytest.mark.parametrize("venue_id", ["binance"], ids=_id)
async def test_binance_recorded_depth_updates_after_the_recorded_rest_snapshot_are_stored_as_ccxt_stores_them(
        venue_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Binance's snapshot is REST: both streams really subscribe (ccxt fetches each book's
    # recorded snapshot from the emulator), then get the recorded depthUpdate frames, as a raw
    # /ws connection receives them, on their live connection.
    fix_book_clocks(monkeypatch)
    frames = [_unwrapped(text) for _path, text in recorded("binance")]
    async with Emulator("binance", replay=rest_only_recording(tmp_path / "binance.jsonl.gz"),
                        speed=0) as emulator:
        streams = (book_stream("binance", "ccxt", emulator.url),
                   book_stream("binance", "fast", emulator.url))
        pair = BookPair(*streams, BINANCE_RECORDED,
                        clients=lambda stream, _path: next(iter(stream.exchange.clients.values())))
        try:
            for stream in streams:
                await stream.connect()
                await stream.subscribe(list(BINANCE_RECORDED))
            # Before any frame (else when the snapshot lands would decide which are applied):
            # every book has its snapshot, the nonce ccxt's book takes from it.
            await async_until(lambda: all(
                isinstance((stream.exchange.orderbooks.get(symbol) or {}).get("nonce"), int)
                for stream in streams for symbol in BINANCE_RECORDED), 10 * MS,
                "each book's REST snapshot")
            pair.check("the REST snapshots")
            for text in frames:
                pair.feed("", text)
            recorded_counters = streams[1].counters()
            # Then bad values in the next update of a book (every field, every level), handed
            # in with no await between them, so that the first one's resync (a resubscription
            # on the live connection) runs only after the comparison.
            ours = [json.loads(t) for t in frames if '"NKNUSDT"' in t[:120]]
            levels = next(f for f in reversed(ours) if f["b"] and f["a"])
            following = dict(levels, U=ours[-1]["u"] + 1, u=ours[-1]["u"] + 1)
            for number, text in enumerate(book_mutations(following, ((),), (("b",), ("a",)))):
                pair.feed("", text, f"bad value {number}")
            outcome = pair.finish()
        finally:
            for stream in streams:
                await stream.disconnect()
    assert outcome.decoders == ("ccxt", "fast" if fast_book_path(venue_id) else "ccxt")
    assert recorded_counters["resyncs"] == 0  # the recording is one unbroken chain
    assert recorded_counters["stored"] > len(BINANCE_RECORDED)
    assert outcome.counters["stored"] == outcome.stored and outcome.counters["gap"] > 0
