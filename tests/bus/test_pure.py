"""The bus's pure parts: subjects, the message, the ledger, the backlog, the options' redaction."""

from __future__ import annotations

import math
from array import array
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_md.bus.backlog import Backlog, BacklogLimits, DroppedRun
from flight_md.bus.ledger import STREAM_KEY, Gap, Ledger, Verdict, apply_changes
from flight_md.bus.message import (
    HEADER_MSG_ID,
    HEADER_SCHEMA,
    HEADER_SEQ,
    BusMessage,
    InvalidMessage,
    decode,
    encode,
    new_producer_id,
)
from flight_md.bus.options import REDACTED, BusOptions, StreamLimits
from flight_md.bus.subjects import (
    InvalidSubject,
    RingSubject,
    decode_token,
    encode_token,
    parse_subject,
    subject_for,
    validate_filter,
)
from flight_md.core.channels import CHANNELS, spec_for
from flight_md.errors import ConfigError
from flight_md.persist.store import ledger_batch, ledger_entries
from tests.bus.nats_support import trades_batch

SYMBOLS = ["BTC/USDT", "BTC-USDT-SWAP", "ETH/USD:ETH", "1000.PEPE/USDT", "a*b", "x>y", "two words",
           "100%", "tab\there", "é/€", "", "%41"]


# -- subjects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", [s for s in SYMBOLS if s])
def test_symbols_make_one_token_each_way(symbol: str) -> None:
    token = encode_token(symbol)
    assert not {".", "*", ">", " ", "\t"} & set(token)
    assert decode_token(token) == symbol
    subject = subject_for("trades", "binance", symbol)
    assert parse_subject(subject) == RingSubject("trades", "binance", symbol)


def test_readable_symbols_stay_as_they_are() -> None:
    assert subject_for("bidask", "okx", "BTC-USDT-SWAP") == "md.bidask.okx.BTC-USDT-SWAP"
    assert subject_for("ticker", "kraken", "ETH/USD:ETH") == "md.ticker.kraken.ETH/USD:ETH"
    assert subject_for("trades", "binance", "1000.PEPE/USDT") == "md.trades.binance.1000%2EPEPE/USDT"


@settings(max_examples=150)
@given(st.sampled_from(CHANNELS), st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=30))
def test_subject_round_trip(channel: str, exchange: str, symbol: str) -> None:
    subject = subject_for(channel, exchange, symbol)
    assert len(subject.split(".")) == 4
    assert not any(c.isspace() or c in "*>" for c in subject)
    assert parse_subject(subject) == RingSubject(channel, exchange, symbol)


@settings(max_examples=200)
@given(st.text(max_size=20))
def test_decode_token_accepts_only_the_one_spelling(token: str) -> None:
    try:
        text = decode_token(token)
    except InvalidSubject:
        return
    assert encode_token(text) == token


@pytest.mark.parametrize(("bad", "says"), [
    ("", "empty"), ("%2e", "outside an escape"), ("%41", "one spelling"), ("a.b", "outside an escape"),
    ("%FF", "not UTF-8"),
])
def test_bad_tokens_are_refused(bad: str, says: str) -> None:
    with pytest.raises(InvalidSubject, match=says):
        decode_token(bad)


def test_unknown_channel_and_bad_subjects() -> None:
    with pytest.raises(InvalidSubject, match="unknown channel 'quotes'"):
        subject_for("quotes", "binance", "BTC/USDT")
    for bad in ("md.trades.binance", "xx.trades.binance.BTC", "md.trades.binance.BTC.USDT"):
        with pytest.raises(InvalidSubject):
            parse_subject(bad)


@pytest.mark.parametrize("good", ["md.>", "md.trades.>", "md.trades.binance.>", "md.*.*.BTC/USDT",
                                  "md.*.binance.*", "md.book.okx.BTC-USDT-SWAP", "md.*.>"])
def test_valid_filters(good: str) -> None:
    assert validate_filter(good) == good


@pytest.mark.parametrize(("bad", "says"), [
    ("trades.binance.>", "must start with 'md'"),
    ("md", "matches nothing"),
    ("md.>.binance", "only be the last"),
    ("md.trades*.>", "wildcard in token"),
    ("md.quotes.>", "unknown channel 'quotes'"),
    ("md.trades.binance", "too short"),
    ("md.trades.binance.BTC.USDT", "at most 4"),
    ("md.trades..>", "empty"),
    ("md.trades.bin ance.>", "outside an escape"),
])
def test_bad_filters_say_why(bad: str, says: str) -> None:
    with pytest.raises(InvalidSubject, match=says):
        validate_filter(bad)


# -- the message --------------------------------------------------------------------------------


def test_message_round_trip_is_the_same_batch() -> None:
    batch = trades_batch(7)
    message = BusMessage("ingest-a-1", 5, 2, "trades", "binance", "ETH/USD:ETH", batch)
    subject, headers, payload = encode(message)
    assert subject == "md.trades.binance.ETH/USD:ETH"
    assert headers[HEADER_MSG_ID] == "ingest-a-1:5"
    back = decode(subject, headers, payload)
    assert back == message  # the batch compares by value
    assert back.batch.equals(batch)
    assert back.batch.schema.equals(spec_for("trades").stored)


def test_the_payload_is_the_stream_arrow_writes() -> None:
    batch = trades_batch(5)
    _, _, payload = encode(BusMessage("p", 1, 0, "trades", "binance", "BTC/USDT", batch))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    assert payload == sink.getvalue().to_pybytes()
    assert pa.ipc.open_stream(payload).read_all().equals(pa.Table.from_batches([batch]))


def test_a_payload_of_two_batches_is_refused() -> None:
    batch = trades_batch(2)
    subject, headers, payload = encode(BusMessage("p", 1, 0, "trades", "binance", "BTC/USDT", batch))
    schema = batch.schema.serialize().to_pybytes()
    body = batch.serialize().to_pybytes()
    doubled = schema + body + body + payload[-8:]
    with pytest.raises(InvalidMessage, match="one record batch"):
        decode(subject, headers, doubled)
    with pytest.raises(InvalidMessage, match="one record batch|not an Arrow"):
        decode(subject, headers, schema + body[:-8] + payload[-8:])
    sink = pa.BufferOutputStream()  # another writer's stream (here: two batches) takes the slow path
    with pa.ipc.new_stream(sink, batch.schema,
                           options=pa.ipc.IpcWriteOptions(metadata_version=pa.ipc.MetadataVersion.V4)) as w:
        w.write_batch(batch)
        w.write_batch(batch)
    with pytest.raises(InvalidMessage, match="one non-empty batch, got 2"):
        decode(subject, headers, sink.getvalue().to_pybytes())


@pytest.mark.parametrize("channel", CHANNELS)
def test_every_channel_stored_schema_travels(channel: str) -> None:
    spec = spec_for(channel)
    flat = array("d", [math.nan] * spec.width)
    flat[0], flat[-1] = 1.0, 2.0  # timestamp and receive_timestamp
    if channel == "book":
        flat[2] = flat[3] = 0.0  # no levels
    if channel == "trades":
        flat[3] = 0.0  # side not given
    batch = spec.seal(flat, 1, [None])
    subject, headers, payload = encode(BusMessage("p", 1, 0, channel, "okx", "BTC-USDT", batch))
    assert decode(subject, headers, payload).batch.equals(batch)


def test_bad_messages_are_refused() -> None:
    subject, headers, payload = encode(BusMessage("p", 3, 1, "trades", "binance", "BTC/USDT",
                                                  trades_batch(2)))
    with pytest.raises(InvalidMessage, match="schema version '2'"):
        decode(subject, {**headers, HEADER_SCHEMA: "2"}, payload)
    with pytest.raises(InvalidMessage, match="headers name"):
        decode("md.trades.binance.ETH/USDT", headers, payload)
    with pytest.raises(InvalidMessage, match="decimal integer"):
        decode(subject, {**headers, HEADER_SEQ: "-3"}, payload)
    with pytest.raises(InvalidMessage, match="not an Arrow IPC stream"):
        decode(subject, headers, b"nonsense")
    ticks = spec_for("ticker").empty()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ticks.schema) as writer:
        writer.write_batch(ticks)
    with pytest.raises(InvalidMessage, match="has the schema"):
        decode(subject, headers, sink.getvalue().to_pybytes())
    with pytest.raises(InvalidMessage, match="no Flight-Md-Producer"):
        decode(subject, {k: v for k, v in headers.items() if k != "Flight-Md-Producer"}, payload)
    with pytest.raises(InvalidMessage, match="empty batch"):
        encode(BusMessage("p", 1, 0, "trades", "binance", "BTC/USDT", spec_for("trades").empty()))
    with pytest.raises(InvalidMessage, match="producer id"):
        encode(BusMessage("p:1", 1, 0, "trades", "binance", "BTC/USDT", trades_batch(1)))
    with pytest.raises(InvalidMessage, match="previous sequence"):
        encode(BusMessage("p", 1, 1, "trades", "binance", "BTC/USDT", trades_batch(1)))


def test_producer_ids_differ_per_incarnation() -> None:
    assert new_producer_id("ingest-a", now_ms=1) == "ingest-a-1"
    assert new_producer_id("ingest-a", now_ms=1) != new_producer_id("ingest-a", now_ms=2)


# -- the ledger ---------------------------------------------------------------------------------


def msg(seq: int, prev: int, symbol: str = "BTC/USDT", producer: str = "p") -> BusMessage:
    return BusMessage(producer, seq, prev, "trades", "binance", symbol, trades_batch(1))


def test_ledger_stores_once_and_finds_gaps() -> None:
    ledger = Ledger()
    a, b = "md.trades.binance.BTC/USDT", "md.trades.binance.ETH/USDT"
    for message, verdict, gap in [
        (msg(1, 0), Verdict.STORE, None),
        (msg(2, 0, "ETH/USDT"), Verdict.STORE, None),
        (msg(3, 1), Verdict.STORE, None),
        (msg(3, 1), Verdict.DUPLICATE, None),     # redelivered
        (msg(1, 0), Verdict.DUPLICATE, None),
        (msg(7, 5), Verdict.STORE, Gap("p", a, 3, 5)),  # 5 was dropped by the producer
        (msg(8, 2, "ETH/USDT"), Verdict.STORE, None),   # a filtered consumer's jump is no gap
        (msg(4, 0, producer="q"), Verdict.STORE, None),
    ]:
        assert ledger.check(message) == (verdict, gap)
        if verdict is Verdict.STORE:
            ledger.stored(message)
    assert ledger.last("p") == 8 and ledger.last("p", a) == 7 and ledger.last("p", b) == 8
    restored = Ledger.restore(ledger.snapshot())
    assert restored.snapshot() == ledger.snapshot()
    assert restored.check(msg(7, 5)) == (Verdict.DUPLICATE, None)
    with pytest.raises(InvalidMessage):
        Ledger.restore({"p": {a: 0}})


def test_a_new_node_mid_stream_records_no_gap() -> None:
    assert Ledger().check(msg(90, 80)) == (Verdict.STORE, None)


def test_the_ledger_prunes_producers_below_the_streams_first_sequence() -> None:
    ledger = Ledger()
    a, b = "md.trades.binance.BTC/USDT", "md.trades.binance.ETH/USDT"
    ledger.stored(msg(1, 0, producer="old"), 1)
    ledger.stored(msg(2, 0, "ETH/USDT", producer="old"), 2)
    ledger.seen("old", 5)  # a copy of one of them, later in the stream
    ledger.stored(msg(1, 0, producer="new"), 6)
    ledger.take_changes()
    assert ledger.stream_seq("old") == 5 and ledger.prune(5) == []  # the copy is still there
    assert ledger.prune(6) == ["old"]
    assert ledger.producers() == {"new"} and len(ledger) == 1
    changes = ledger.take_changes()
    assert changes == {("old", a): -1, ("old", b): -2, ("old", STREAM_KEY): -5}
    # Journalled rows merge in any order: the tombstones win over what they pruned, and an
    # entry stored again later (a higher sequence) over its tombstone.
    rows = [(("old", a), 1), (("old", b), 2), (("old", STREAM_KEY), 5), (("new", a), 1),
            (("new", STREAM_KEY), 6), *changes.items(), (("old", b), 3)]
    for order in (rows, rows[::-1]):
        table = pa.Table.from_batches([ledger_batch(dict([row])) for row in order])
        entries = ledger_entries(table)
        restored = Ledger()
        restored.merge(entries)
        assert restored.snapshot() == {"new": {a: 1, STREAM_KEY: 6}, "old": {b: 3}}
        # A reader of before pruning (the highest sequence per key) ignores the tombstones:
        # it prunes nothing, and takes the stream sequence as one more subject.
        before: dict[tuple[str, str], int] = {}
        for key, seq in order:
            if seq > before.get(key, 0):
                before[key] = seq
        assert before == {("old", a): 1, ("old", b): 3, ("old", STREAM_KEY): 5,
                          ("new", a): 1, ("new", STREAM_KEY): 6}
    # A ledger of before pruning (no stream sequences): bounded by the stream's last sequence
    # at the first check, pruned once the stream's first sequence passes it.
    legacy = Ledger.restore({"old": {a: 4}, "new": {a: 2, STREAM_KEY: 40}})
    assert legacy.stream_seq("old") is None and legacy.prune(1_000) == ["new"]
    assert legacy.bound(50) == ["old"] and legacy.prune(50) == []
    assert legacy.prune(51) == ["old"] and len(legacy) == 0
    assert Ledger.restore(legacy.snapshot()).snapshot() == {}


def test_tombstones_apply_only_to_entries_at_most_as_high() -> None:
    target = {("p", "s"): 5, ("q", "s"): 9}
    apply_changes(target, {("p", "s"): -5, ("q", "s"): -8, ("r", "s"): -1, ("q", "t"): 2})
    assert target == {("q", "s"): 9, ("q", "t"): 2}


# -- the backlog --------------------------------------------------------------------------------


def build(size: int):  # type: ignore[no-untyped-def]
    return lambda seq, prev: ({"seq": str(seq), "prev": str(prev)}, b"x" * size)


def test_backlog_keeps_order_and_numbers_subjects() -> None:
    backlog = Backlog(BacklogLimits(max_bytes=1000, max_messages=10))
    kept = [backlog.add(s, build(10)) for s in ("a", "b", "a")]
    assert [(k.seq, k.headers["prev"]) for k in kept if k] == [(1, "0"), (2, "0"), (3, "1")]
    head = backlog.head()
    assert head is not None
    backlog.acked(head.seq)
    with pytest.raises(ValueError, match="not of the oldest"):
        backlog.acked(3)
    assert backlog.stats().acked == 1 and len(backlog) == 2


def test_backlog_overflow_records_each_run_dropped() -> None:
    backlog = Backlog(BacklogLimits(max_bytes=35, max_messages=3))
    results = [backlog.add("a", build(10), online=False) for _ in range(6)]  # 1-3 fit, 4-6 not
    assert [r is not None for r in results] == [True, True, True, False, False, False]
    stats = backlog.stats()
    assert (stats.buffered, stats.dropped, stats.dropped_bytes) == (6, 3, 30)
    assert stats.gaps == (DroppedRun(4, 6, 3, 30),)
    while (head := backlog.head()) is not None:
        backlog.acked(head.seq)
    assert backlog.add("a", build(30)) is not None  # 7 fits: the run 4-6 is closed
    assert backlog.add("a", build(30)) is None      # 8: a new run
    assert backlog.stats().gaps == (DroppedRun(4, 6, 3, 30), DroppedRun(8, 8, 1, 30))
    assert backlog.stats().peak == 3
    with pytest.raises(ConfigError, match="max_bytes"):
        BacklogLimits(max_bytes=0)


# -- options: secrets ---------------------------------------------------------------------------


def test_secrets_are_never_shown(tmp_path: Path) -> None:
    options = BusOptions(url="nats://127.0.0.1:4222", user="alice", password="hunter2-secret")
    token = BusOptions(token="tok-SECRET-42")
    in_url = BusOptions(url="nats://bob:url-SECRET@127.0.0.1:4222")
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0eXAi.JWT-SECRET\n------END NATS USER JWT------\n"
                     "************************* IMPORTANT *************************\n"
                     "-----BEGIN USER NKEY SEED-----\nSUAM-SEED-SECRET\n------END USER NKEY SEED------\n")
    with_creds = BusOptions(creds_file=creds)
    for opts, secrets in [(options, ["hunter2-secret"]), (token, ["tok-SECRET-42"]),
                          (in_url, ["url-SECRET", "bob"]),
                          (with_creds, ["eyJ0eXAi.JWT-SECRET", "SUAM-SEED-SECRET"])]:
        shown = repr(opts) + str(opts) + opts.display_url
        for secret in secrets:
            assert secret not in shown
            assert REDACTED in opts.redact(f"error dialling with {secret}")
            assert secret not in opts.redact(f"error dialling with {secret} at {opts.url}")
    assert options.connect_kwargs()["password"] == "hunter2-secret"  # handed to nats-py only
    assert with_creds.connect_kwargs()["user_credentials"] == str(creds)


def test_bad_options_say_why() -> None:
    with pytest.raises(ConfigError, match="must be nats"):
        BusOptions(url="http://127.0.0.1:4222")
    with pytest.raises(ConfigError, match="one bus login"):
        BusOptions(user="a", token="b")
    with pytest.raises(ConfigError, match="needs a bus user"):
        BusOptions(password="p")
    with pytest.raises(ConfigError, match="needs its key"):
        BusOptions(tls_cert=Path("c.pem"))
    with pytest.raises(ConfigError, match="stream name"):
        BusOptions(stream="md.all")
    with pytest.raises(ConfigError, match="must not exceed"):
        StreamLimits(max_age_s=60, duplicate_window_s=120)
    with pytest.raises(ConfigError, match="max_bytes"):
        StreamLimits(max_bytes=0)
    with pytest.raises(ConfigError, match="not a valid URL") as raised:
        BusOptions(url="nats://u:pw-SECRET@127.0.0.1:99999")
    assert "pw-SECRET" not in str(raised.value)


def test_the_stream_sequence_is_read_from_the_reply_subject_as_nats_py_reads_it() -> None:
    from nats.aio.msg import Msg

    from flight_md.bus.consumer import _stream_seq

    for reply in ("$JS.ACK.MD.flight-md-s1.1.4711.42.1700000000000000000.7",  # v1
                  "$JS.ACK._.ACCHASH.MD.flight-md-s1.2.4712.43.1700000000000000000.0.r1",  # v2
                  "$JS.ACK.hub.ACCHASH.MD.flight-md-s1.1.99.1.1700000000000000000.0"):
        msg = Msg(None, subject="md.trades.binance.BTC/USDT", reply=reply)  # type: ignore[arg-type]
        assert _stream_seq(msg) == msg.metadata.sequence.stream


def test_restored_subscriptions_count_only_once_taken_and_give_way_to_live_events() -> None:
    from flight_md.events import Event, EventKind, EventLog

    # As the journal gives them back: without their channel.
    old = [Event(1, "binance", EventKind.SUBSCRIBE, ("BTC/USDT", "ETH/USDT"), "s"),
           Event(2, "binance", EventKind.UNSUBSCRIBE, ("ETH/USDT",), "u"),
           Event(3, "okx", EventKind.SUBSCRIBE, ("SOL/USDT",), "s")]
    single = EventLog()
    single.restore(old)  # a server with its own ingestion: it subscribes again by itself
    assert single.subscribed() == [] and len(single) == 3
    node = EventLog()
    node.restore(old)
    assert node.resume_subscriptions() == [("binance", "BTC/USDT"), ("okx", "SOL/USDT")]
    assert node.subscribed_channels("binance", "BTC/USDT") == [""]
    node.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT",), "s", channel="trades")
    assert node.subscribed_channels("binance", "BTC/USDT") == ["trades"]
    node.record("binance", EventKind.UNSUBSCRIBE, ("BTC/USDT",), "u", channel="trades")
    node.record("okx", EventKind.UNSUBSCRIBE, ("SOL/USDT",), "u", channel="ticker")
    assert node.subscribed() == [] and node.resume_subscriptions() == []
