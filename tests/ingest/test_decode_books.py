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
  the recorded REST depth snapshot (and nothing on the websocket: the frames are the test's);
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

from typing import Final

import pytest

from tests.ingest.decode_support import book_pair, fast_book_path, recorded
from tests.ingest.test_book_capture import EXPECTED
from tests.ingest.test_decode_okx_coinbase_kraken import (
    COINBASE_RECORDED,
    KRAKEN_RECORDED,
    OKX_RECORDED,
    served_frames,
)

pytestmark = pytest.mark.asyncio

BYBIT_RECORDED: Final = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "BTC/USDT", "ETH/USDT")
RECORDED_SYMBOLS: Final = {"bybit": BYBIT_RECORDED, "okx": OKX_RECORDED,
                           "coinbase": COINBASE_RECORDED, "kraken": KRAKEN_RECORDED}
IS_BOOK: Final = {"bybit": '"orderbook.', "okx": '"books', "coinbase": '"l2_data"',
                  "kraken": '"book"'}
LOCKSTEP: Final = {"bybit": 700, "okx": 10_000, "coinbase": 10_000, "kraken": 2_500}
"""Book frames of a recording compared with ccxt's path (the rest: the fast stream alone).
Bybit: 700 of 2,148 (ccxt's 200-level books take ~2 ms a frame on both sides); Kraken: 2,500 of
about 17,600 served (the whole served session is ~25 s through both); OKX's 293 and Coinbase's
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
