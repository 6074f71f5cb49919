"""The fast book path's own parts: kept books (``verifier_for(..., keep=True)``) and the stream's wiring.

The differential test of the whole path against ccxt's, frame by frame over every recording,
is tests/ingest/test_decode_books.py. Here: a kept book is what ccxt 4.5.90's book would be
after the same frames (levels as floats, timestamp, nonce), keeping never changes a verdict,
only the venues whose verifier keeps books take ``keep``, and a book stream of such a venue
says ``decoder: fast`` and stores the frames ccxt never sees.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import WSMessage, WSMsgType

from flight_md.core.books import Status, keeps_books, verifier_for
from flight_md.events import EventKind
from flight_md.ingest.stream import _ChannelStream
from flight_md.normalize import Channel
from tests.ingest.decode_support import FIXED_MS, load_markets

FAST_VENUES = ("binance", "bybit", "coinbase", "kraken", "okx")
"""The venues whose book frames the fast path takes so far."""


def bybit(kind: str, u: int, bids: list[list[Any]], asks: list[list[Any]], ts: Any = 1_700_000_000_123,
          symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"topic": f"orderbook.50.{symbol}", "type": kind, "ts": ts,
            "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": 1}}


def okx(action: str, seq: int, prev: int, bids: list[list[str]], asks: list[list[str]],
        ts: str = "1700000000456") -> dict[str, Any]:
    return {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action,
            "data": [{"bids": bids, "asks": asks, "ts": ts, "checksum": 0, "seqId": seq,
                      "prevSeqId": prev}]}


def test_a_kept_bybit_book_is_ccxts_after_a_snapshot_and_deltas() -> None:
    verifier = verifier_for("bybit", keep=True)
    assert verifier is not None
    snapshot = bybit("snapshot", 10, [["100.50", "1"], ["100.0", "2"], ["99", "3"]],
                     [["101", "1.5"], ["102.25", "4"]])
    assert [v.status for v in verifier.verify(snapshot)] == [Status.OK]
    # A level replaced (a new text of the same price), one removed, one added; a JSON number.
    delta = bybit("delta", 11, [["100.00", "5"], ["99", "0"], [98.5, 7]], [["101", "0"]], ts="1700000000999")
    assert [(v.status, v.sequence) for v in verifier.verify(delta)] == [(Status.OK, 11)]
    kept = verifier.kept("BTCUSDT")
    assert kept is not None
    assert kept.rows(2) == ([(100.5, 1.0), (100.0, 5.0)], [(102.25, 4.0)])
    assert kept.rows(10)[0] == [(100.5, 1.0), (100.0, 5.0), (98.5, 7.0)]
    assert kept.timestamp == 1_700_000_000_999  # ccxt's safe_integer(message, "ts")
    verifier.verify(bybit("delta", 12, [], [], ts=None))
    assert kept.timestamp is None  # the capture then stores the receive time, as from ccxt's book


def test_keeping_never_changes_a_verdict() -> None:
    frames = [
        bybit("delta", 4, [["1", "1"]], []),  # before the snapshot: refused
        bybit("snapshot", 5, [["100", "1"]], [["101", "1"]]),
        bybit("delta", 6, [["100.5", "2"]], []),
        bybit("delta", 8, [["100.6", "2"]], []),  # a gap
        bybit("delta", 9, [["100.7", "2"]], []),  # awaiting the snapshot
        bybit("snapshot", 1, [["100", "1"]], [["101", "1"]]),
        bybit("delta", 2, [["x", "2"]], []),  # malformed
        bybit("snapshot", 3, [["102", "1"]], [["101", "1"]]),  # crossed: kept, the capture checks it
    ]
    plain, keeping = verifier_for("bybit"), verifier_for("bybit", keep=True)
    assert plain is not None and keeping is not None
    for frame in frames:
        assert plain.verify(frame) == keeping.verify(frame)
    assert keeping.kept("BTCUSDT") is not None and plain.kept("BTCUSDT") is None
    keeping.reset("BTCUSDT")
    assert keeping.kept("BTCUSDT") is None


def test_a_kept_okx_book_carries_ccxts_timestamp_and_nonce() -> None:
    verifier = verifier_for("okx", keep=True)
    assert verifier is not None
    verifier.verify(okx("snapshot", 100, -1, [["10.1", "1", "0", "1"], ["10", "2", "0", "1"]],
                        [["10.2", "3", "0", "1"]]))
    assert [v.status for v in verifier.verify(okx("update", 101, 100, [["10.1", "0", "0", "0"]], [],
                                                  ts="1700000000789"))] == [Status.OK]
    kept = verifier.kept("BTC-USDT")
    assert kept is not None
    assert kept.rows(5) == ([(10.0, 2.0)], [(10.2, 3.0)])
    assert (kept.timestamp, kept.nonce) == (1_700_000_000_789, 101)
    assert verifier_for("okx").kept("BTC-USDT") is None  # type: ignore[union-attr]


def test_only_a_venue_whose_verifier_keeps_books_takes_keep() -> None:
    assert not keeps_books("bitstamp")
    with pytest.raises(ValueError, match="cannot keep its books"):
        verifier_for("bitstamp", keep=True)


def stream(venue_id: str, decoder: str) -> _ChannelStream:
    return _ChannelStream(venue_id, url="http://127.0.0.1:9", channel=Channel.BOOK, mode="websocket",
                          decoder=decoder)


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", ["binance", "bybit", "coinbase", "kraken", "okx"])
async def test_a_book_stream_says_which_decoder_it_uses(venue_id: str) -> None:
    fast, slow = stream(venue_id, "fast"), stream(venue_id, "ccxt")
    try:
        assert slow.status().exchanges[0].decoder == "ccxt"
        expected = "fast" if venue_id in FAST_VENUES else "ccxt"
        assert fast.status().exchanges[0].decoder == expected
        assert keeps_books(venue_id) is (venue_id in FAST_VENUES)
    finally:
        await fast.exchange.close()
        await slow.exchange.close()


@pytest.mark.asyncio
async def test_the_fast_path_stores_the_frames_ccxt_never_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    from flight_md.ingest import books, ccxt_compat

    for module, name in ((ccxt_compat, "now_ms"), (books, "_now_ms")):
        monkeypatch.setattr(module, name, lambda: FIXED_MS)
    markets = await load_markets("bybit", True)
    symbol = "BTC/USDT:USDT"
    frames = [bybit("snapshot", 1, [["100", "1"]], [["101", "2"]]),
              bybit("delta", 2, [["100.5", "3"]], [["101", "0"], ["102", "1"]]),
              bybit("delta", 4, [["100.6", "3"]], [])]  # a gap: one resync
    seen: dict[str, Any] = {}
    for decoder in ("ccxt", "fast"):
        made = stream("bybit", decoder)
        try:
            made.exchange.set_markets(markets)
            made._subs.add((symbol,))
            tops: list[Any] = []
            made.add_callback(tops.append)
            client = made.exchange.client("ws://127.0.0.1:9/v5/public/linear")
            for frame in frames:
                client.handle_message(WSMessage(WSMsgType.TEXT, json.dumps(frame), None))
            events = [(e.kind, e.detail) for e in made._events.events() if e.kind is EventKind.BOOK_RESYNC]
            seen[decoder] = ([(t.timestamp, t.bids, t.asks, t.nonce) for t in tops], events,
                             made.counters(), symbol in made.exchange.orderbooks)
        finally:
            await made.exchange.close()
    assert seen["fast"][:3] == seen["ccxt"][:3]
    assert seen["fast"][0] == [(1_700_000_000_123, ((100.0, 1.0),), ((101.0, 2.0),), 1),
                               (1_700_000_000_123, ((100.5, 3.0), (100.0, 1.0)), ((102.0, 1.0),), 2)]
    assert seen["fast"][1] == [(EventKind.BOOK_RESYNC, "gap: expected u 3 got 4")]
    # ccxt built its book on its path only: the fast path's frames never reached it.
    assert (seen["ccxt"][3], seen["fast"][3]) == (True, False)


def kraken(kind: str, bids: list[dict[str, Any]], asks: list[dict[str, Any]],
           timestamp: str = "2023-11-14T22:13:20.250000Z") -> dict[str, Any]:
    return {"channel": "book", "type": kind,
            "data": [{"symbol": "BTC/USD", "bids": bids, "asks": asks, "checksum": 0,
                      "timestamp": timestamp}]}


def test_a_kept_kraken_book_is_cut_to_the_depth_and_stamped_by_its_updates() -> None:
    verifier = verifier_for("kraken", depth=10, precision={}, keep=True)  # no precision: unchecked
    assert verifier is not None
    snapshot = kraken("snapshot", [{"price": 100 - i, "qty": 1.0} for i in range(10)],
                      [{"price": 101 + i, "qty": 2.5} for i in range(10)])
    assert [v.status for v in verifier.verify(snapshot)] == [Status.UNCHECKED]
    kept = verifier.kept("BTC/USD")
    assert kept is not None and kept.timestamp is None  # ccxt's reset({}): the receive time
    verifier.verify(kraken("update", [{"price": 100.5, "qty": 3.0}], [{"price": 101, "qty": 0.0}]))
    bids, asks = kept.rows(20)
    assert bids[:2] == [(100.5, 3.0), (100.0, 1.0)] and len(bids) == 10  # 91 pushed out
    assert asks[0] == (102.0, 2.5) and len(asks) == 9
    assert kept.timestamp == 1_700_000_000_250


def test_kraken_leaves_an_update_before_any_snapshot_to_ccxt() -> None:
    # ccxt raises on it (no book), and its path counts that: the fast path hands it to ccxt.
    verifier = verifier_for("kraken", depth=10, precision={}, keep=True)
    assert verifier is not None
    update = kraken("update", [{"price": 100.5, "qty": 3.0}], [])
    assert not verifier.claims(update)
    verifier.verify(kraken("snapshot", [{"price": 100, "qty": 1.0}], [{"price": 101, "qty": 1.0}]))
    assert verifier.claims(update)


@pytest.mark.asyncio
async def test_a_declined_book_frame_meets_the_kept_book_in_ccxt(monkeypatch: pytest.MonkeyPatch) -> None:
    """OKX: a frame the decoder leaves to ccxt (a prevSeqId that is no integer) is handled by ccxt
    on a book that is the kept one, nonce included, as on ccxt's own path."""
    from flight_md.ingest import books, ccxt_compat

    for module, name in ((ccxt_compat, "now_ms"), (books, "_now_ms")):
        monkeypatch.setattr(module, name, lambda: FIXED_MS)
    markets = await load_markets("okx", True)
    made = stream("okx", "fast")
    try:
        made.exchange.set_markets(markets)
        made._subs.add(("BTC/USDT",))
        client = made.exchange.client("ws://127.0.0.1:9/ws/v5/public")
        client.subscriptions["books:BTC/USDT"] = True  # as ccxt's subscribe leaves it

        def feed(frame: dict[str, Any]) -> None:
            client.handle_message(WSMessage(WSMsgType.TEXT, json.dumps(frame), None))

        feed(okx("snapshot", 100, -1, [["10.1", "1", "0", "1"]], [["10.2", "3", "0", "1"]]))
        feed(okx("update", 101, 100, [["10.0", "2", "0", "1"]], []))
        assert "BTC/USDT" not in made.exchange.orderbooks  # both frames the fast path's
        declined = okx("update", 102, 101, [["9.9", "4", "0", "1"]], [])
        declined["data"][0]["prevSeqId"] = "101"  # ccxt reads it as 101: its nonce check passes
        feed(declined)
        book = made.exchange.orderbooks["BTC/USDT"]
        assert (book["bids"][:3], book["asks"][:1], book["nonce"]) == (
            [[10.1, 1.0], [10.0, 2.0], [9.9, 4.0]], [[10.2, 3.0]], 102)
        assert made.counters()["stored"] == 3 and made.counters()["ccxt_errors"] == 0
    finally:
        await made.exchange.close()


@pytest.mark.asyncio
async def test_binance_deltas_after_ccxts_rest_snapshot_are_the_fast_paths(
        make_emulator: Any, make_stream: Any) -> None:
    """Binance's hybrid: ccxt fetches the REST snapshot and applies the deltas it buffered; the
    kept book is seeded from that book and takes every later delta, which ccxt never sees. The
    rows equal a ``decoder="ccxt"`` stream's on the same market (the emulator sends both
    connections the same deltas), update by update: by nonce, since where each stream's
    snapshot came in depends on timing."""
    from flight_md.buffer import MarketDataBuffer
    from tests.ingest.support import wait_until
    from tests.ingest.test_book_stream import count, rows

    symbols = ("BTC/USDT", "ETH/USDT")
    emulator = await make_emulator("binance", symbols, rate=40.0)
    buffers = {decoder: MarketDataBuffer(10_000, channel="book", book_depth=10) for decoder in ("ccxt", "fast")}
    streams = {decoder: await make_stream(emulator, symbols, channel="book", buffer=buffers[decoder],
                                          decoder=decoder)
               for decoder in ("ccxt", "fast")}
    await wait_until(lambda: all(count(b, "binance", s) >= 20 for b in buffers.values() for s in symbols), 15,
                     "20 books of each symbol on each stream")
    assert {d: s.status().exchanges[0].decoder for d, s in streams.items()} == {"ccxt": "ccxt", "fast": "fast"}
    for symbol in symbols:
        by_nonce = {}
        for decoder, buffer in buffers.items():
            table = rows(buffer, "binance", symbol)
            assert table is not None
            # The first row is the book as ccxt's snapshot left it, stamped when it came in.
            by_nonce[decoder] = {row["nonce"]: (row["bids"], row["asks"], row["timestamp"])
                                 for row in table.to_pylist()[1:]}
        shared = set(by_nonce["ccxt"]) & set(by_nonce["fast"])
        assert len(shared) >= 10, symbol
        assert all(by_nonce["ccxt"][n] == by_nonce["fast"][n] for n in shared), symbol
        # ccxt's own book stopped at its snapshot (and buffered deltas) on the fast stream.
        assert streams["fast"].exchange.orderbooks[symbol]["nonce"] < max(by_nonce["fast"]), symbol
    assert streams["fast"].counters()["resyncs"] == streams["ccxt"].counters()["resyncs"] == 0
