"""The bus against a real nats-server (JetStream, loopback, a temporary store): publish and
consume, restarts, re-publishes, outages, overflow, lag and credentials."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pyarrow as pa
import pytest
import pytest_asyncio

from flight_md.bus.backlog import BacklogLimits, DroppedRun
from flight_md.bus.connection import BusUnavailable
from flight_md.bus.consumer import Consumer
from flight_md.bus.ledger import Gap, Ledger
from flight_md.bus.message import HEADER_MSG_ID, BusMessage, encode
from flight_md.bus.options import BusOptions, StreamLimits
from flight_md.bus.publisher import Publisher
from flight_md.core.channels import spec_for
from flight_md.errors import ConfigError, Unavailable
from tests.bus.nats_support import NatsServer, nats_server, trades_batch
from tests.support import MS, async_until

__all__ = ["nats_server"]

TIMEOUT = 10.0


def options_for(server: NatsServer, **kwargs: object) -> BusOptions:
    return BusOptions(url=server.url, reconnect_wait_s=0.1, connect_timeout_s=1.0,
                      limits=StreamLimits(max_age_s=600), **kwargs)  # type: ignore[arg-type]


class Stored:
    """A store callback that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.messages: list[BusMessage] = []

    def __call__(self, message: BusMessage) -> None:
        self.messages.append(message)

    def seqs(self, producer: str | None = None) -> list[int]:
        return [m.seq for m in self.messages if producer is None or m.producer == producer]


@pytest_asyncio.fixture
async def publisher(nats_server: NatsServer) -> AsyncIterator[Publisher]:
    pub = Publisher(options_for(nats_server), "ingest-a-1", ack_timeout_s=0.5)
    await pub.start()
    await async_until(lambda: pub.connected, TIMEOUT, "the publisher to connect")
    try:
        yield pub
    finally:
        await pub.close(timeout=1)


async def consume_until(consumer: Consumer, stored: Stored, count: int) -> None:
    await async_until(lambda: len(stored.messages) >= count or consumer.failed, TIMEOUT,
                      f"{count} stored messages")
    assert consumer.failed is None


async def consumed(server: NatsServer, count: int, **options: Any) -> Stored:
    """What a consumer ``serve-a`` (``options``: the Consumer's) stores of its first ``count``
    messages, the consumer closed again."""
    stored = Stored()
    consumer = Consumer(options_for(server), "serve-a", stored, **options)
    await consumer.start()
    try:
        await consume_until(consumer, stored, count)
    finally:
        await consumer.close()
    return stored


@pytest.mark.asyncio
async def test_a_published_batch_arrives_exactly_as_sent(nats_server: NatsServer,
                                                         publisher: Publisher) -> None:
    batch = trades_batch(50)
    assert publisher.publish("trades", "binance", "BTC/USDT", batch) == 1
    await publisher.flush(TIMEOUT * MS)
    stored = await consumed(nats_server, 1)
    [message] = stored.messages
    assert message.batch.equals(batch)
    assert message.batch.schema.equals(batch.schema)
    assert (message.producer, message.seq, message.prev) == ("ingest-a-1", 1, 0)
    assert (message.channel, message.exchange, message.symbol) == ("trades", "binance", "BTC/USDT")
    stats = publisher.stats()
    assert stats.connected and stats.backlog.acked == 1 and stats.backlog.queued == 0


@pytest.mark.asyncio
async def test_a_filter_takes_only_its_subjects(nats_server: NatsServer, publisher: Publisher) -> None:
    for symbol in ("BTC/USDT", "ETH/USDT"):
        publisher.publish("trades", "binance", symbol, trades_batch(1))
        publisher.publish("trades", "okx", symbol.replace("/", "-"), trades_batch(1))
    await publisher.flush(TIMEOUT * MS)
    stored = Stored()
    consumer = Consumer(options_for(nats_server), "serve-b", stored,
                        subjects=["md.trades.binance.>", "md.*.okx.ETH-USDT"])
    await consumer.start()
    try:
        await consume_until(consumer, stored, 3)
        lag = await consumer.lag()
    finally:
        await consumer.close()
    assert sorted((m.exchange, m.symbol) for m in stored.messages) == [
        ("binance", "BTC/USDT"), ("binance", "ETH/USDT"), ("okx", "ETH-USDT")]
    assert lag.pending == 0 and set(lag.subjects.values()) == {0}


@pytest.mark.asyncio
async def test_a_restarted_consumer_resumes_without_loss_or_duplicate(
        nats_server: NatsServer, publisher: Publisher) -> None:
    for i in range(20):
        publisher.publish("trades", "binance", "BTC/USDT" if i % 2 else "ETH/USDT", trades_batch(2, i))
    await publisher.flush(TIMEOUT * MS)
    stored = Stored()
    halt = asyncio.Event()

    async def slow_store(message: BusMessage) -> None:
        stored(message)
        if len(stored.messages) == 8:
            await halt.wait()  # the node is stopped while it stores the 8th

    first = Consumer(options_for(nats_server), "serve-a", slow_store)
    await first.start()
    await async_until(lambda: len(stored.messages) == 8, TIMEOUT, "8 stored")
    closing = asyncio.ensure_future(first.close())
    await asyncio.sleep(0)
    halt.set()  # the 8th is finished and acked; the rest of the pull is given back
    await closing
    saved = first.ledger.snapshot()  # what the node persisted with its rows
    for i in range(20, 30):
        publisher.publish("trades", "binance", "BTC/USDT", trades_batch(2, i))
    await publisher.flush(TIMEOUT * MS)
    second = Consumer(options_for(nats_server), "serve-a", stored, ledger=Ledger.restore(saved))
    await second.start()
    try:
        await consume_until(second, stored, 30)
        lag = await second.lag()
    finally:
        await second.close()
    assert sorted(stored.seqs()) == list(range(1, 31))
    assert lag.pending == 0


@pytest.mark.asyncio
async def test_a_store_that_failed_gets_the_message_again(nats_server: NatsServer,
                                                          publisher: Publisher) -> None:
    for i in range(5):
        publisher.publish("trades", "binance", "BTC/USDT", trades_batch(1, i))
    await publisher.flush(TIMEOUT * MS)
    stored = Stored()

    def failing(message: BusMessage) -> None:
        if message.seq == 3:
            raise OSError("disk full")
        stored(message)

    first = Consumer(options_for(nats_server), "serve-a", failing)
    await first.start()
    await async_until(lambda: first.failed, TIMEOUT, "the store to fail")
    await first.close()
    assert isinstance(first.failed, OSError) and stored.seqs() == [1, 2]
    second = Consumer(options_for(nats_server), "serve-a", stored, ledger=first.ledger)
    await second.start()
    try:
        await consume_until(second, stored, 5)
    finally:
        await second.close()
    assert stored.seqs() == [1, 2, 3, 4, 5]


@pytest.mark.asyncio
async def test_the_same_producer_and_seq_is_stored_once(nats_server: NatsServer,
                                                        publisher: Publisher) -> None:
    publisher.publish("trades", "binance", "BTC/USDT", trades_batch(3))
    await publisher.flush(TIMEOUT * MS)  # makes the stream
    message = BusMessage("ingest-b-1", 1, 0, "trades", "binance", "BTC/USDT", trades_batch(4))
    subject, headers, payload = encode(message)
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        first = await js.publish(subject, payload, headers=dict(headers))
        again = await js.publish(subject, payload, headers=dict(headers))  # a lost ack's re-send
        assert again.duplicate and again.seq == first.seq
        # One the server cannot drop (outside its window; here: without the id): the ledger does.
        late = {k: v for k, v in headers.items() if k != HEADER_MSG_ID}
        assert not (await js.publish(subject, payload, headers=late)).duplicate
    finally:
        await client.close()
    stored = Stored()
    consumer = Consumer(options_for(nats_server), "serve-a", stored)
    await consumer.start()
    try:
        await async_until(lambda: consumer.stats().duplicates == 1, TIMEOUT, "the late copy")
    finally:
        await consumer.close()
    assert [(m.producer, m.seq) for m in stored.messages] == [("ingest-a-1", 1), ("ingest-b-1", 1)]
    assert stored.messages[1].batch.equals(message.batch)


@pytest.mark.asyncio
async def test_an_outage_is_buffered_and_resumed_in_order(nats_server: NatsServer,
                                                          publisher: Publisher) -> None:
    for i in range(5):
        publisher.publish("trades", "binance", "BTC/USDT", trades_batch(2, i))
    await publisher.flush(TIMEOUT * MS)
    nats_server.kill()  # kill -9
    await async_until(lambda: not publisher.connected, TIMEOUT, "the publisher to see it")
    for i in range(5, 25):
        publisher.publish("trades", "binance", "BTC/USDT" if i % 3 else "ETH/USDT",
                          trades_batch(2, i))
    await asyncio.sleep(2 * MS)  # the bus stays away ~2 s
    held = publisher.stats()
    assert (held.backlog.queued, held.backlog.buffered, held.backlog.dropped) == (20, 20, 0)
    nats_server.restart()
    await publisher.flush(TIMEOUT * MS)
    stats = publisher.stats()
    assert stats.backlog.acked == 25 and stats.disconnects >= 1 and not stats.backlog.gaps
    stored = Stored()
    consumer = Consumer(options_for(nats_server), "serve-a", stored)
    await consumer.start()
    try:
        await consume_until(consumer, stored, 25)
    finally:
        await consumer.close()
    assert stored.seqs() == list(range(1, 26))  # stream order is publish order
    assert [m.batch.column("timestamp")[0].as_py() for m in stored.messages] == list(range(25))
    assert consumer.stats().gaps == ()


@pytest.mark.asyncio
async def test_a_kill_with_publishes_in_flight_loses_and_reorders_nothing(
        nats_server: NatsServer, publisher: Publisher) -> None:
    for i in range(400):
        publisher.publish("trades", "binance", f"S{i % 7}/USDT", trades_batch(1, i))
    await async_until(lambda: publisher.stats().backlog.acked >= 50, TIMEOUT, "some acks")
    nats_server.kill()  # with a window of publishes in flight
    nats_server.restart()
    await publisher.flush(TIMEOUT * MS)
    assert publisher.stats().backlog.acked == 400
    stored = Stored()
    consumer = Consumer(options_for(nats_server), "serve-a", stored)
    await consumer.start()
    try:
        await consume_until(consumer, stored, 400)
        await async_until(lambda: consumer.stats().stored + consumer.stats().duplicates >= 400,
                          TIMEOUT, "the stream")
    finally:
        await consumer.close()
    assert stored.seqs() == list(range(1, 401))  # each once, in publish order
    assert consumer.stats().gaps == ()


@pytest.mark.asyncio
async def test_an_overflow_is_counted_and_the_gap_recorded(nats_server: NatsServer) -> None:
    publisher = Publisher(options_for(nats_server), "ingest-a-1", ack_timeout_s=0.5,
                          limits=BacklogLimits(max_messages=5))
    await publisher.start()
    try:
        for i in range(2):
            publisher.publish("trades", "binance", "BTC/USDT", trades_batch(1, i))
        await publisher.flush(TIMEOUT * MS)
        nats_server.stop()
        await async_until(lambda: not publisher.connected, TIMEOUT, "the publisher to see it")
        kept = [publisher.publish("trades", "binance", "BTC/USDT", trades_batch(1, i))
                for i in range(2, 14)]
        assert kept == [3, 4, 5, 6, 7, *[None] * 7]
        nats_server.restart()
        await publisher.flush(TIMEOUT * MS)
        assert publisher.publish("trades", "binance", "BTC/USDT", trades_batch(1, 14)) == 15
        await publisher.flush(TIMEOUT * MS)
        stats = publisher.stats().backlog
    finally:
        await publisher.close(timeout=1)
    size = stats.dropped_bytes // 7
    assert (stats.dropped, stats.acked) == (7, 8)
    assert stats.gaps == (DroppedRun(8, 14, 7, 7 * size),)
    gaps: list[Gap] = []
    stored = await consumed(nats_server, 8, on_gap=gaps.append)
    assert stored.seqs() == [1, 2, 3, 4, 5, 6, 7, 15]
    assert gaps == [Gap("ingest-a-1", "md.trades.binance.BTC/USDT", 7, 14)]


@pytest.mark.asyncio
async def test_a_bus_down_at_start_is_an_outage_too(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)  # not started yet
    with pytest.raises(BusUnavailable) as raised:
        await Consumer(options_for(server), "serve-a", Stored()).start()
    assert isinstance(raised.value, Unavailable) and f"127.0.0.1:{server.port}" in str(raised.value)
    publisher = Publisher(options_for(server), "ingest-a-1", ack_timeout_s=0.5)
    await publisher.start()
    try:
        assert publisher.publish("bidask", "okx", "BTC-USDT-SWAP", ticks_batch()) == 1
        assert publisher.stats().backlog.buffered == 1
        server.start()
        await publisher.flush(TIMEOUT * MS)
        assert publisher.stats().backlog.acked == 1
    finally:
        await publisher.close(timeout=1)
        server.kill()


def ticks_batch() -> pa.RecordBatch:
    spec = spec_for("bidask")
    return spec.seal(array("d", [1.0, *[2.0] * (spec.width - 2), 3.0]), 1, [None])


@pytest.mark.asyncio
async def test_lag_per_subject(nats_server: NatsServer, publisher: Publisher) -> None:
    for i in range(3):
        publisher.publish("trades", "binance", "BTC/USDT", trades_batch(1, i))
    for i in range(2):
        publisher.publish("trades", "okx", "BTC-USDT", trades_batch(1, i))
    await publisher.flush(TIMEOUT * MS)
    release = asyncio.Event()
    stored = Stored()

    async def held(message: BusMessage) -> None:
        await release.wait()
        stored(message)

    consumer = Consumer(options_for(nats_server), "serve-a", held)
    await consumer.start()
    try:
        lag = await consumer.lag()
        assert lag.subjects == {"md.trades.binance.BTC/USDT": 3, "md.trades.okx.BTC-USDT": 2}
        release.set()
        await consume_until(consumer, stored, 5)
        assert (await consumer.lag()).subjects == {"md.trades.binance.BTC/USDT": 0,
                                                   "md.trades.okx.BTC-USDT": 0}

        async def caught_up() -> bool:
            lag = await consumer.lag()
            return lag.pending == 0 and lag.ack_pending == 0  # acks reach the server a little later

        await async_until(caught_up, TIMEOUT, "the acks")
    finally:
        await consumer.close()


@pytest.mark.asyncio
async def test_credentials_never_appear_in_reprs_or_errors(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, "--user", "alice", "--pass", "hunter2-SECRET").start()
    try:
        wrong = options_for(server, user="alice", password="wrong-SECRET")
        with pytest.raises(BusUnavailable) as raised:
            await Consumer(wrong, "serve-a", Stored()).start()
        in_url = BusOptions(url=f"nats://alice:url-SECRET@127.0.0.1:{server.port}",
                            connect_timeout_s=1.0)
        with pytest.raises(BusUnavailable) as raised_url:
            await Consumer(in_url, "serve-a", Stored()).start()
        good = options_for(server, user="alice", password="hunter2-SECRET")
        publisher = Publisher(good, "ingest-a-1")
        await publisher.start()
        publisher.publish("trades", "binance", "BTC/USDT", trades_batch(1))
        await publisher.flush(TIMEOUT * MS)
        consumer = Consumer(good, "serve-a", Stored())
        await consumer.start()
        shown = [repr(good), str(good), repr(publisher), repr(consumer), repr(publisher.stats()),
                 str(raised.value), repr(raised.value), str(raised_url.value), repr(in_url)]
        await consumer.close()
        await publisher.close()
    finally:
        server.kill()
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    for text in shown:
        for secret in ("hunter2-SECRET", "wrong-SECRET", "url-SECRET"):
            assert secret not in text, text


@pytest.mark.asyncio
async def test_tls_and_token_reach_the_server(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = NatsServer(tmp_path, "--tls", "--tlscert", str(cert_file), "--tlskey", str(key_file),
                        "--auth", "tok-SECRET-7").start()
    try:
        options = BusOptions(url=f"tls://127.0.0.1:{server.port}", token="tok-SECRET-7",
                             tls_ca=ca_file, connect_timeout_s=2.0)
        publisher = Publisher(options, "ingest-a-1")
        await publisher.start()
        publisher.publish("trades", "binance", "BTC/USDT", trades_batch(3))
        await publisher.flush(TIMEOUT * MS)
        stored = Stored()
        consumer = Consumer(options, "serve-a", stored)
        await consumer.start()
        await consume_until(consumer, stored, 1)
        await consumer.close()
        await publisher.close()
        untrusted = BusOptions(url=f"tls://127.0.0.1:{server.port}", token="tok-SECRET-7",
                               connect_timeout_s=0.3, reconnect_wait_s=0.1)
        with pytest.raises(BusUnavailable, match="SSL|certificate") as raised:
            await Consumer(untrusted, "serve-a", Stored()).start()
    finally:
        server.kill()
    assert stored.messages[0].batch.equals(trades_batch(3))
    assert "tok-SECRET-7" not in str(raised.value) + repr(options) + repr(untrusted)


@pytest.mark.asyncio
async def test_unusable_tls_files_are_refused_at_start(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nkey-SECRET\n-----END PRIVATE KEY-----\n")
    options = BusOptions(url="tls://127.0.0.1:4222", tls_cert=key, tls_key=key)
    with pytest.raises(ConfigError, match="bus TLS files cannot be used") as raised:
        await Publisher(options, "ingest-a-1").start()
    assert "key-SECRET" not in str(raised.value)
