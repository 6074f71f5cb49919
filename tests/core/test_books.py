"""Book integrity per venue (:mod:`flight_md.core.books`) on real recorded frames, mutated frames and the emulator's.

The recordings are read here with gzip and json (Kraken's v1 recording through the emulator's
v1 -> v2 transcoder, the only v2 book frames there are); the expected values (update ids,
checksums, counts) are read from the frames themselves.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gzip
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from flight_md.core.books import (
    VERIFIERS,
    BinanceVerifier,
    BookVerifier,
    BybitVerifier,
    CoinbaseVerifier,
    KrakenVerifier,
    OkxVerifier,
    Precision,
    Reason,
    Status,
    Verdict,
    crossed,
    kraken_checksum,
    okx_checksum,
    verifier_for,
)
from flight_md.emulator import Emulator, Fault
from flight_md.emulator.dialects.binance import BinanceDialect
from flight_md.emulator.dialects.bybit import BybitDialect
from flight_md.emulator.dialects.coinbase import CoinbaseDialect
from flight_md.emulator.dialects.kraken import KrakenDialect
from flight_md.emulator.dialects.okx import OkxDialect
from flight_md.emulator.market import StreamKey, parse_symbols
from flight_md.emulator.recording import Recording
from flight_md.emulator.synthetic import PriceWalk
from tests.emulator.conftest import MS, recording_path
from tests.test_core_imports import loaded_after

Frame = dict[str, Any]


# -- recorded frames -----------------------------------------------------------------------


def records(exchange: str) -> Iterator[dict[str, Any]]:
    with gzip.open(recording_path(exchange), "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


@functools.cache
def connection_frames(exchange: str) -> tuple[tuple[str, tuple[Frame, ...]], ...]:
    """Every received JSON frame, grouped by the connection it arrived on."""
    by_conn: dict[str, list[Frame]] = {}
    for record in records(exchange):
        if record["t"] == "recv" and record["data"][:1] in "{[":
            by_conn.setdefault(record["conn"], []).append(json.loads(record["data"]))
    return tuple((conn, tuple(frames)) for conn, frames in by_conn.items())


def is_book(exchange: str, frame: Any) -> bool:
    """Whether a recorded frame is an order-book frame, by the venue's documented shape."""
    if exchange == "binance":
        return bool(frame.get("data", {}).get("e") == "depthUpdate")
    if exchange == "bybit":
        return str(frame.get("topic", "")).startswith("orderbook.")
    if exchange == "coinbase":
        return bool(frame.get("channel") == "l2_data")
    if exchange == "okx":
        return bool(frame.get("arg", {}).get("channel") == "books" and "data" in frame)
    raise AssertionError(exchange)


@functools.cache
def binance_snapshots() -> dict[str, int]:
    """The recorded REST depth snapshots' ``lastUpdateId`` by symbol."""
    found = {}
    for record in records("binance"):
        if record["t"] == "http" and "/api/v3/depth" in record["url"]:
            found[record["url"].split("symbol=")[1].split("&")[0]] = json.loads(record["data"])["lastUpdateId"]
    return found


@functools.cache
def kraken_v2() -> tuple[dict[str, Precision], tuple[tuple[int, tuple[Frame, ...]], ...]]:
    """The pairs' precision from the recorded AssetPairs, and the v2 book frames per subscribed depth."""
    recording = Recording.load(recording_path("kraken"))
    body = recording.body("/0/public/AssetPairs")
    assert body is not None
    precision = {pair["wsname"].replace("XBT", "BTC").replace("XDG", "DOGE"):
                 Precision(pair["pair_decimals"], pair["lot_decimals"])
                 for pair in json.loads(body)["result"].values() if "wsname" in pair}
    dialect = KrakenDialect((), {}, recording)
    by_depth: dict[int, list[Frame]] = {}
    for message in recording.messages:
        for key, _, text in dialect.recorded_frames(message):
            if key.channel.startswith("book"):
                depth = int(key.channel.removeprefix("book-")) if "-" in key.channel else 1000
                by_depth.setdefault(depth, []).append(json.loads(text))
    return precision, tuple((depth, tuple(frames)) for depth, frames in sorted(by_depth.items()))


def feed(verifier: BookVerifier, frames: Any) -> list[Verdict]:
    return [verdict for frame in frames for verdict in verifier.verify(frame)]


def binance_verifier() -> BinanceVerifier:
    verifier = BinanceVerifier()
    for symbol, last_update_id in binance_snapshots().items():
        assert verifier.on_rest_snapshot(symbol, last_update_id) == Verdict(symbol, Status.OK, sequence=last_update_id)
    return verifier


# -- every recorded book frame is accepted ---------------------------------------------------


@pytest.mark.parametrize("exchange", ["binance", "bybit", "coinbase", "okx"])
def test_every_recorded_book_frame_is_accepted(exchange: str) -> None:
    checked = 0
    for _, frames in connection_frames(exchange):
        verifier = binance_verifier() if exchange == "binance" else verifier_for(exchange)
        assert verifier is not None
        books = 0
        for frame in frames:
            verdicts = verifier.verify(frame)
            assert all(verdict.status is Status.OK for verdict in verdicts), (frame, verdicts)
            if is_book(exchange, frame):
                assert verdicts, frame
                books += 1
            else:
                assert exchange == "coinbase" or not verdicts, frame  # only Coinbase numbers every frame
        checked += books
    expected = sum(is_book(exchange, frame) for _, frames in connection_frames(exchange) for frame in frames)
    assert checked == expected > 100


def test_every_transcoded_kraken_book_frame_is_accepted_at_every_depth() -> None:
    precision, by_depth = kraken_v2()
    assert [depth for depth, _ in by_depth] == [10, 25, 100, 500, 1000]
    for depth, frames in by_depth:
        verdicts = feed(KrakenVerifier(precision, depth), frames)
        assert len(verdicts) == len(frames) > 3000
        assert {verdict.status for verdict in verdicts} == {Status.OK}, depth


def test_the_checksum_functions_reproduce_recorded_checksums() -> None:
    # OKX: the first recorded snapshot's checksum over its own levels, as sent.
    snapshot = next(frame for _, frames in connection_frames("okx") for frame in frames
                    if frame.get("action") == "snapshot")["data"][0]
    assert okx_checksum(snapshot["bids"], snapshot["asks"]) == snapshot["checksum"]
    # Kraken: a transcoded v2 snapshot at depth 10, numbers formatted to the pair's precision.
    precision, by_depth = kraken_v2()
    row = next(frame for frame in by_depth[0][1] if frame["type"] == "snapshot")["data"][0]
    p, q = precision[row["symbol"]].price, precision[row["symbol"]].qty
    asks = [(f"{level['price']:.{p}f}", f"{level['qty']:.{q}f}") for level in row["asks"]]
    bids = [(f"{level['price']:.{p}f}", f"{level['qty']:.{q}f}") for level in row["bids"]]
    assert kraken_checksum(asks, bids) == row["checksum"]


# -- mutated recordings: the exact verdict ---------------------------------------------------


def bybit_stream() -> tuple[str, list[Frame]]:
    """The linear connection's BTCUSDT book frames."""
    for _, frames in connection_frames("bybit"):
        book = [f for f in frames if f.get("topic") == "orderbook.200.BTCUSDT"]
        if len(book) > 100:
            return "BTCUSDT", book
    raise AssertionError("no BTCUSDT book recorded")


def test_bybit_dropped_and_reordered_deltas_are_gaps_and_the_next_snapshot_resyncs() -> None:
    symbol, frames = bybit_stream()
    assert frames[0]["type"] == "snapshot" and frames[1]["type"] == "delta"
    dropped = [frames[0], frames[1], *frames[3:6]]
    verdicts = feed(BybitVerifier(), dropped)
    expected_u, got_u = frames[2]["data"]["u"], frames[3]["data"]["u"]
    assert verdicts[2] == Verdict(symbol, Status.RESYNC, Reason.GAP, f"gap: expected u {expected_u} got {got_u}", got_u)
    assert [v.status for v in verdicts[3:]] == [Status.AWAITING, Status.AWAITING]  # one event, then nothing stored

    verifier = BybitVerifier()
    reordered = [frames[0], frames[2], frames[1]]
    verdicts = feed(verifier, reordered)
    assert verdicts[1].detail == f"gap: expected u {frames[1]['data']['u']} got {frames[2]['data']['u']}"
    # Bybit's snapshot after a service restart says u=1: a fresh book, not a jump backwards.
    restart = copy.deepcopy(frames[0])
    restart["data"]["u"] = 1
    later = copy.deepcopy(frames[1])
    later["data"]["u"] = 2
    assert feed(verifier, [restart, later]) == [Verdict(symbol, Status.OK, sequence=1), Verdict(symbol, Status.OK, sequence=2)]


def okx_stream() -> tuple[str, list[Frame]]:
    frames = [f for _, fs in connection_frames("okx") for f in fs if is_book("okx", f)]
    symbol = frames[0]["arg"]["instId"]
    return symbol, [f for f in frames if f["arg"]["instId"] == symbol]


def test_okx_a_dropped_delta_or_a_swapped_price_fails_the_checksum() -> None:
    _, frames = okx_stream()
    assert frames[0]["action"] == "snapshot"
    # The 2022 recording has no seqId: a dropped delta shows in the next frame's checksum,
    # unless the dropped one changed nothing in the top 25.
    assert [f["action"] for f in frames].count("snapshot") == 1
    sent = frames[:1] + frames[2:]
    verdicts = feed(OkxVerifier(), sent)
    failed = next(n for n, v in enumerate(verdicts) if v.status is not Status.OK)
    assert verdicts[failed].status is Status.RESYNC and verdicts[failed].reason is Reason.CHECKSUM
    assert verdicts[failed].detail.startswith(
        f"checksum mismatch: expected {sent[failed]['data'][0]['checksum']} computed ")
    assert {v.status for v in verdicts[failed + 1:]} == {Status.AWAITING}  # no snapshot follows: nothing stored

    swapped = copy.deepcopy(frames[:2])
    level = swapped[1]["data"][0]["asks"][0]
    level[0] = f"{float(level[0]) + 0.1:.1f}"
    verdicts = feed(OkxVerifier(), swapped)
    assert verdicts[1].reason is Reason.CHECKSUM
    assert verdicts[1].detail.startswith(f"checksum mismatch: expected {frames[1]['data'][0]['checksum']} computed ")


def test_okx_corrupt_checksum_exact_verdict_and_zero_is_not_checked() -> None:
    symbol, frames = okx_stream()
    corrupt = copy.deepcopy(frames[:2])
    right = corrupt[1]["data"][0]["checksum"]
    corrupt[1]["data"][0]["checksum"] = right + 1
    assert feed(OkxVerifier(), corrupt)[1] == Verdict(
        symbol, Status.RESYNC, Reason.CHECKSUM, f"checksum mismatch: expected {right + 1} computed {right}")
    # Since OKX's deprecation (June 2026) the field is always 0: never a mismatch.
    zero = copy.deepcopy(frames[:2])
    zero[1]["data"][0]["checksum"] = 0
    assert [v.status for v in feed(OkxVerifier(), zero)] == [Status.OK, Status.OK]


def test_okx_sequence_ids_chain_through_prev_seq_id_including_a_reset() -> None:
    symbol, frames = okx_stream()
    chained = copy.deepcopy(frames[:5])
    for number, frame in enumerate(chained):
        frame["data"][0].update(seqId=100 + number, prevSeqId=-1 if number == 0 else 99 + number)
    chained[3]["data"][0].update(seqId=7, prevSeqId=102)  # OKX's sequence reset: seqId drops, the chain holds
    chained[4]["data"][0].update(seqId=8, prevSeqId=7)
    assert [v.sequence for v in feed(OkxVerifier(), chained)] == [100, 101, 102, 7, 8]
    assert {v.status for v in feed(OkxVerifier(), chained)} == {Status.OK}
    gapped = [chained[0], chained[2]]
    assert feed(OkxVerifier(), gapped)[1] == Verdict(
        symbol, Status.RESYNC, Reason.GAP, "gap: expected prevSeqId 100 got 101", 102)


def kraken_depth10() -> tuple[dict[str, Precision], list[Frame]]:
    precision, by_depth = kraken_v2()
    depth, frames = by_depth[0]
    assert depth == 10
    symbol = frames[0]["data"][0]["symbol"]
    return precision, [f for f in frames if f["data"][0]["symbol"] == symbol]


def test_kraken_dropped_update_corrupt_checksum_and_resnapshot() -> None:
    precision, frames = kraken_depth10()
    symbol = frames[0]["data"][0]["symbol"]
    corrupt = copy.deepcopy(frames[:3])
    right = corrupt[1]["data"][0]["checksum"]
    corrupt[1]["data"][0]["checksum"] = (right + 1) % (1 << 32)
    verifier = KrakenVerifier(precision, 10)
    verdicts = feed(verifier, corrupt)
    assert verdicts == [Verdict(symbol, Status.OK),
                        Verdict(symbol, Status.RESYNC, Reason.CHECKSUM,
                                f"checksum mismatch: expected {(right + 1) % (1 << 32)} computed {right}"),
                        Verdict(symbol, Status.AWAITING)]
    assert feed(verifier, frames[:1]) == [Verdict(symbol, Status.OK)]  # a new snapshot resynchronises

    # A dropped update: the next frame's checksum cannot match (the book differs in its top 10).
    verdicts = feed(KrakenVerifier(precision, 10), frames[:1] + frames[2:4])
    assert verdicts[1].reason is Reason.CHECKSUM
    assert verdicts[1].detail.startswith(f"checksum mismatch: expected {frames[2]['data'][0]['checksum']} computed ")


def test_kraken_without_precision_is_unchecked_and_the_registry_demands_it() -> None:
    precision, frames = kraken_depth10()
    assert {v.status for v in feed(KrakenVerifier({}, 10), frames[:20])} == {Status.UNCHECKED}
    assert all(v.storable for v in feed(KrakenVerifier({}, 10), frames[:20]))
    with pytest.raises(ValueError, match="kraken's book checksum needs each pair's precision"):
        verifier_for("kraken")
    with pytest.raises(ValueError, match=r"kraken book depth must be one of \[10, 25, 100, 500, 1000\], got 7"):
        verifier_for("kraken", depth=7, precision=precision)


def test_kraken_truncates_to_the_depth_so_the_level_entering_the_top_is_kraken_s() -> None:
    # Depth 10 and 11 levels a side sent (a better bid pushes the 10th out): Kraken sends
    # no delete for it; when the best bid goes, Kraken sends the level entering the window.
    def level(price: float, qty: float = 1.0) -> dict[str, float]:
        return {"price": price, "qty": qty}

    precision = {"X/Y": Precision(1, 1)}
    bids = [level(100.0 - n) for n in range(10)]
    asks = [level(101.0 + n) for n in range(10)]

    def frame(kind: str, bids: list[dict[str, float]], asks: list[dict[str, float]], book: tuple[Any, Any]) -> Frame:
        def texts(side: list[dict[str, float]]) -> list[tuple[str, str]]:
            return [(f"{x['price']:.1f}", f"{x['qty']:.1f}") for x in side]
        return {"channel": "book", "type": kind, "data": [{"symbol": "X/Y", "bids": bids, "asks": asks,
                                                           "checksum": kraken_checksum(texts(book[1]), texts(book[0]))}]}

    verifier = KrakenVerifier(precision, 10)
    assert verifier.verify(frame("snapshot", bids, asks, (bids, asks)))[0].status is Status.OK
    better = [level(100.5), *bids[:9]]  # 91.0 falls out of the window, undeleted
    assert verifier.verify(frame("update", [level(100.5)], [], (better, asks)))[0].status is Status.OK
    after = [*better[1:], level(90.5)]  # 100.5 goes; 90.5 enters (not the truncated 91.0)
    verdict = verifier.verify(frame("update", [level(100.5, 0.0), level(90.5)], [], (after, asks)))[0]
    assert verdict == Verdict("X/Y", Status.OK)


def test_binance_first_event_rule_then_consecutive_update_ids() -> None:
    verifier = BinanceVerifier()
    def depth(first: int, last: int) -> Frame:
        return {"stream": "xyz@depth", "data": {"e": "depthUpdate", "s": "XYZ", "U": first, "u": last, "b": [], "a": []}}
    # Before the REST snapshot: buffered (ccxt caches them), not storable.
    assert feed(verifier, [depth(95, 99), depth(100, 104)]) == [
        Verdict("XYZ", Status.AWAITING, sequence=99), Verdict("XYZ", Status.AWAITING, sequence=104)]
    assert verifier.on_rest_snapshot("XYZ", 106) == Verdict("XYZ", Status.OK, sequence=106)
    assert feed(verifier, [depth(105, 106), depth(105, 110), depth(111, 111)]) == [
        Verdict("XYZ", Status.OK, sequence=106),  # u <= lastUpdateId: dropped
        Verdict("XYZ", Status.OK, sequence=110),  # U <= lastUpdateId + 1 <= u
        Verdict("XYZ", Status.OK, sequence=111)]
    assert verifier.verify(depth(113, 115)) == (
        Verdict("XYZ", Status.RESYNC, Reason.GAP, "gap: expected U 112 got 113", 115),)
    assert verifier.verify(depth(116, 118)) == (Verdict("XYZ", Status.AWAITING, sequence=118),)
    # A snapshot older than the oldest delta since the failure: the updates between are lost.
    assert verifier.on_rest_snapshot("XYZ", 110) == Verdict(
        "XYZ", Status.RESYNC, Reason.GAP, "gap: expected U 111 got 116", 110)
    assert verifier.on_rest_snapshot("XYZ", 117) == Verdict("XYZ", Status.OK, sequence=117)
    assert verifier.verify(depth(119, 120))[0].status is Status.OK  # the buffered delta bridged it


def test_binance_recorded_dropped_delta_is_a_gap() -> None:
    (_, frames), = connection_frames("binance")
    depths = [f for f in frames if is_book("binance", f) and f["data"]["s"] == "NKNUSDT"]
    verifier = binance_verifier()
    verdicts = feed(verifier, depths[:3] + depths[4:6])
    dropped, after = depths[3]["data"], depths[4]["data"]
    assert verdicts[3] == Verdict("NKNUSDT", Status.RESYNC, Reason.GAP, f"gap: expected U {dropped['U']} got {after['U']}",
                                  after["u"])


def test_coinbase_sequence_gap_on_any_channel_resyncs_every_book_of_the_connection() -> None:
    (_, frames), = connection_frames("coinbase")
    snapshots = [n for n, f in enumerate(frames) if f["channel"] == "l2_data" and f["events"][0]["type"] == "snapshot"]
    start = max(snapshots) + 1  # both products have their book from here on
    gap_at = next(n for n in range(start, len(frames)) if frames[n]["channel"] == "ticker")
    verifier = CoinbaseVerifier()
    feed(verifier, frames[:gap_at])
    after = frames[gap_at + 1]
    verdicts = verifier.verify(after)  # the ticker frame in between was lost
    expected, got = frames[gap_at]["sequence_num"], after["sequence_num"]
    detail = f"gap: expected sequence_num {expected} got {got}"
    resyncs = [v for v in verdicts if v.status is Status.RESYNC]
    assert resyncs == [Verdict(p, Status.RESYNC, Reason.GAP, detail, got) for p in ("BTC-USD", "ETH-USD")]
    later = [v for v in feed(verifier, frames[gap_at + 2:]) if v.status is not Status.AWAITING]
    assert later == []  # no snapshot follows in the recording: nothing stored, no new event
    # A new snapshot of one product brings that book back alone.
    snapshot = frames[snapshots[0]]
    product = snapshot["events"][0]["product_id"]
    renumbered = {**snapshot, "sequence_num": frames[-1]["sequence_num"] + 1}
    assert verifier.verify(renumbered) == (Verdict(product, Status.OK, sequence=renumbered["sequence_num"]),)


def test_check_book_crossed_and_reset() -> None:
    verifier = BybitVerifier()
    assert verifier.check_book("BTCUSDT", [[100.0, 1.0]], [[100.5, 1.0]]) == Verdict("BTCUSDT", Status.OK)
    assert verifier.check_book("BTCUSDT", [[100.5, 1.0]], [[100.5, 2.0]]) == Verdict(
        "BTCUSDT", Status.RESYNC, Reason.CROSSED, "crossed book: best bid 100.5 >= best ask 100.5")
    assert verifier.check_book("BTCUSDT", [[100.0, 1.0]], [[100.5, 1.0]]).status is Status.AWAITING
    verifier.reset("BTCUSDT")
    assert verifier.check_book("BTCUSDT", [[100.0, 1.0]], [[100.5, 1.0]]).status is Status.OK


def test_crossed() -> None:
    assert not crossed([], [[1.0, 1.0]]) and not crossed([[1.0, 1.0]], [])
    assert not crossed([["99.5", "1"], ["99", "2"]], [["100", "1"]])
    assert crossed([[100.0, 1.0]], [[100.0, 1.0]])  # locked
    assert crossed([[101.0, 1.0]], [[100.0, 1.0]])


def test_a_crossed_kept_book_is_resynced() -> None:
    symbol, frames = okx_stream()
    snapshot = copy.deepcopy(frames[0])
    row = snapshot["data"][0]
    row["bids"].insert(0, [row["asks"][0][0], "1", "0", "1"])
    row["checksum"] = okx_checksum(row["bids"], row["asks"])
    assert OkxVerifier().verify(snapshot) == (Verdict(
        symbol, Status.RESYNC, Reason.CROSSED, f"crossed book: best bid {row['asks'][0][0]} >= best ask {row['asks'][0][0]}"),)


def test_malformed_book_frames_resync_their_book() -> None:
    symbol, frames = bybit_stream()
    broken = copy.deepcopy(frames[1])
    broken["data"]["u"] = "12"
    assert BybitVerifier().verify(broken) == (Verdict(
        symbol, Status.RESYNC, Reason.MALFORMED, "malformed book frame: type 'delta', u '12'"),)
    assert BybitVerifier().verify({"topic": "tickers.BTCUSDT", "data": {}}) == ()
    assert BybitVerifier().verify(["not", "a", "dict"]) == ()


def test_precision_from_steps() -> None:
    assert Precision.from_steps(0.1, 1e-08) == Precision(1, 8)
    assert Precision.from_steps("0.00001", "1") == Precision(5, 0)
    with pytest.raises(ValueError, match=r"a precision step must be a power of ten at most 1 \(0.01, 1e-08\), got 0.5"):
        Precision.from_steps(0.5, 1)
    with pytest.raises(ValueError, match="precision qty must be a whole number of decimals >= 0, got -1"):
        Precision(1, -1)


def test_registry() -> None:
    assert sorted(VERIFIERS) == ["binance", "bybit", "coinbase", "kraken", "okx"]
    for venue_id, factory in VERIFIERS.items():
        verifier = factory(None, {})
        assert verifier.venue == venue_id
    assert verifier_for("deribit") is None


def test_the_module_is_pure() -> None:
    loaded = loaded_after("flight_md.core.books")
    assert not any(loaded.values()), sorted(m for m, v in loaded.items() if v)


# -- the emulator's synthetic book frames ---------------------------------------------------


def synthetic(venue: str, steps: int = 300) -> tuple[BookVerifier, list[str], Any]:
    """A verifier and the text of a synthetic book stream (snapshot, then updates), with its dialect."""
    dialect_class, symbol, channel = {
        "binance": (BinanceDialect, "BTC/USDT", "depth@100ms"),
        "bybit": (BybitDialect, "BTC/USDT:USDT", "orderbook.50"),
        "coinbase": (CoinbaseDialect, "BTC/USD", "level2"),
        "kraken": (KrakenDialect, "BTC/USD", "book"),
        "okx": (OkxDialect, "BTC/USDT", "books"),
    }[venue]
    (market,) = parse_symbols((symbol,))
    walk = PriceWalk(market, 11)
    dialect = dialect_class((market,), {symbol: walk}, None)
    market = dialect.markets[0]
    key = StreamKey(channel, symbol)
    texts = [dialect.render(key, market, walk.quote, snapshot=True)]
    texts += [dialect.render(key, market, walk.step(n), snapshot=False) for n in range(1, steps)]
    verifier = verifier_for(venue, precision={market.symbol: Precision(market.price_decimals, market.size_decimals)})
    assert verifier is not None
    if venue == "binance":
        # No websocket snapshot: ccxt's is REST, its lastUpdateId the last u the emulator sent.
        texts = texts[1:]
        assert isinstance(verifier, BinanceVerifier)
        assert verifier.on_rest_snapshot(market.id, json.loads(texts[0])["U"] - 1).status is Status.OK
    return verifier, texts, dialect


@pytest.mark.parametrize("venue", sorted(VERIFIERS))
def test_the_emulator_s_synthetic_books_pass_every_check(venue: str) -> None:
    verifier, texts, _ = synthetic(venue)
    verdicts = feed(verifier, map(json.loads, texts))
    assert len(verdicts) == len(texts)
    assert {v.status for v in verdicts} == {Status.OK}


@pytest.mark.parametrize("fault", [Fault.NON_NUMERIC, Fault.MISSING_FIELDS])
@pytest.mark.parametrize("venue", sorted(VERIFIERS))
def test_an_emulator_frame_fault_on_a_book_resyncs_it_once(venue: str, fault: Fault) -> None:
    # A price ccxt cannot parse, or a frame that names no book (ccxt drops it): either way
    # ccxt's book is no longer the venue's, whatever the sequence numbers say.
    verifier, texts, dialect = synthetic(venue, steps=6)
    texts[2] = dialect.corrupt(fault, texts[2])
    statuses = [[v.status for v in verifier.verify(json.loads(text))] for text in texts]
    assert statuses == [[Status.OK]] * 2 + [[Status.RESYNC]] + [[Status.AWAITING]] * (len(texts) - 3)
    (verdict,) = verifier.verify(json.loads(texts[-1]))
    assert verdict.status is Status.AWAITING


def test_invalidate_fails_a_book_ccxt_could_not_apply() -> None:
    symbol, frames = bybit_stream()
    verifier = BybitVerifier()
    feed(verifier, frames[:2])
    assert verifier.invalidate(symbol, "ccxt raised TypeError") == Verdict(
        symbol, Status.RESYNC, Reason.MALFORMED, "ccxt raised TypeError")
    assert verifier.invalidate(symbol, "again") == Verdict(symbol, Status.AWAITING)
    assert feed(verifier, frames[2:3]) == [Verdict(symbol, Status.AWAITING, sequence=frames[2]["data"]["u"])]


async def coinbase_connection(url: str, frames: int) -> list[Frame]:
    """``frames`` frames of one raw websocket subscribed to BTC-USD's level2 and the heartbeats."""
    received: list[Frame] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
        for request in ({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"},
                        {"type": "subscribe", "channel": "heartbeats"}):
            await ws.send_str(json.dumps(request))
        while len(received) < frames:
            message = await asyncio.wait_for(ws.receive(), 10 * MS)
            assert message.type is aiohttp.WSMsgType.TEXT, message
            received.append(json.loads(message.data))
    return received


@pytest.mark.asyncio
async def test_the_coinbase_emulator_numbers_each_connection_s_messages() -> None:
    async with Emulator(exchange="coinbase", symbols=("BTC/USD",), rate=50) as emu:
        url = emu.url.replace("http://", "ws://") + "/"
        connections = await asyncio.gather(coinbase_connection(url, 40), coinbase_connection(url, 40))
    for frames in connections:
        assert {v.status for v in feed(CoinbaseVerifier(), frames)} == {Status.OK}


def test_only_binance_books_wait_for_a_rest_snapshot() -> None:
    verifier = BinanceVerifier()
    def depth(first: int, last: int) -> Frame:
        return {"e": "depthUpdate", "s": "XYZ", "U": first, "u": last, "b": [], "a": []}
    assert verifier.rest_snapshot and verifier.pending_snapshots() == set()
    verifier.verify(depth(10, 12))
    assert verifier.pending_snapshots() == {"XYZ"}  # a chain of deltas, no snapshot yet
    assert verifier.on_rest_snapshot("XYZ", 12).status is Status.OK
    assert verifier.pending_snapshots() == set()
    assert verifier.verify(depth(14, 15))[0].status is Status.RESYNC
    assert verifier.pending_snapshots() == set()  # failed: nothing held until the next delta
    verifier.verify(depth(16, 16))
    assert verifier.pending_snapshots() == {"XYZ"}
    for venue_id in ("bybit", "coinbase", "okx"):
        other = verifier_for(venue_id)
        assert other is not None and not other.rest_snapshot and other.pending_snapshots() == set()
        with pytest.raises(TypeError, match=f"{venue_id} books have no REST snapshot"):
            other.on_rest_snapshot("XYZ", 1)
