"""The node registry against a real nats-server: records put, watched, deleted, expired; which
serving node holds a ring by its subject filters (the NATS wildcard rules, as a table)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client

from flight_md.bus.connection import BusUnavailable
from flight_md.bus.registry import BUCKET, Registry, node_record, subject_matches
from flight_md.bus.subjects import subject_for
from tests.bus.nats_support import NatsServer, nats_server
from tests.support import MS, async_until, until

__all__ = ["nats_server"]

TIMEOUT = 10.0
INTERVAL = 0.2
TTL = 1.0
"""Short registry timings so that expiry is seen within a second or two."""


@pytest.mark.parametrize(("subject_filter", "subject", "matches"), [
    ("md.>", "md.trades.binance.BTC/USDT", True),
    ("md.>", "md", False),  # '>' needs at least one token
    ("md.trades.>", "md.trades.binance.BTC/USDT", True),
    ("md.trades.>", "md.book.binance.BTC/USDT", False),
    ("md.*.binance.>", "md.trades.binance.BTC/USDT", True),
    ("md.*.binance.>", "md.trades.okx.BTC/USDT", False),
    ("md.*.binance.>", "md.trades.binance", False),
    ("md.*.*.BTC/USDT", "md.ticker.okx.BTC/USDT", True),
    ("md.*.*.BTC/USDT", "md.ticker.okx.ETH/USDT", False),
    ("md.*.*.BTC/USDT", "md.ticker.okx.BTC/USDT.x", False),  # '*' is one token exactly
    ("md.ticker.okx.BTC/USDT", "md.ticker.okx.BTC/USDT", True),
    ("md.ticker.okx.BTC/USDT", "md.ticker.okx.BTC/USD", False),
    ("md.ticker.okx.BTC/USDT", "md.ticker.okx", False),
    ("md.*", "md.ticker", True),
    ("md.*", "md.ticker.okx", False),
    ("*.>", "md.ticker.okx.X", True),
    (">", "md.ticker.okx.X", True),
    ("md.>.x", "md.ticker.x", False),  # '>' anywhere but last matches nothing
    ("md.trades.binance.BTC%2EX", subject_for("trades", "binance", "BTC.X"), True),
    ("md.trades.binance.BTC", subject_for("trades", "binance", "BTC.X"), False),
])
def test_subject_matches_as_nats_does(subject_filter: str, subject: str, matches: bool) -> None:
    assert subject_matches(subject_filter, subject) is matches


def test_node_record_refuses_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown node role 'replica'"):
        node_record("replica")


@pytest_asyncio.fixture
async def connect(nats_server: NatsServer) -> AsyncIterator[Callable[[], Awaitable[Client]]]:
    """Connections to the test's server, each closed after the test."""
    clients: list[Client] = []

    async def make() -> Client:
        client = await nats.connect(nats_server.url, reconnect_time_wait=0.1,
                                    max_reconnect_attempts=-1)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            if not client.is_closed:
                await client.close()


async def serving(client: Client, node: str, *subjects: str, port: int = 1) -> Registry:
    record = node_record("serve", location=f"grpc://127.0.0.1:{port}", subjects=subjects)
    return await Registry(client, node, record, interval_s=INTERVAL, ttl_s=TTL).start()


def names(registry: Registry) -> list[str]:
    return [record["node"] for record in registry.nodes()]


def holder_names(registry: Registry, channel: str, exchange: str, symbol: str) -> list[str]:
    return [record["node"] for record in registry.holders(channel, exchange, symbol)]


@pytest.mark.asyncio
async def test_nodes_see_each_other_and_holders_follow_the_filters(
        connect: Callable[[], Awaitable[Client]]) -> None:
    s1 = await serving(await connect(), "s1", "md.*.binance.>", port=1001)
    s2 = await serving(await connect(), "s2", "md.trades.>", "md.*.*.SOL/USDT", port=1002)
    ingest = await Registry(await connect(), "ing1", node_record("ingest", exchanges=["binance"]),
                            interval_s=INTERVAL, ttl_s=TTL).start()
    try:
        # start() returns after the replay: s2 knew s1 at once; s1 hears of the others live.
        assert {"s1", "s2"} <= set(names(s2))
        await async_until(lambda: names(s1) == ["ing1", "s1", "s2"], TIMEOUT, "s1 to see all")
        record = next(r for r in s1.nodes() if r["node"] == "s2")
        assert record["role"] == "serve" and record["location"] == "grpc://127.0.0.1:1002"
        assert record["subjects"] == ["md.trades.>", "md.*.*.SOL/USDT"]
        assert isinstance(record["pid"], int) and record["seen_ms"] >= record["started_ms"]
        # Holders: other serving nodes whose filters match; never this node, never ingestion.
        assert holder_names(s1, "trades", "okx", "BTC/USDT") == ["s2"]
        assert holder_names(s1, "ticker", "okx", "SOL/USDT") == ["s2"]
        assert holder_names(s1, "ticker", "okx", "BTC/USDT") == []
        assert holder_names(s2, "book", "binance", "BTC/USDT") == ["s1"]
        assert holder_names(s2, "trades", "binance", "BTC/USDT") == ["s1"]  # s2 itself too
        assert holder_names(ingest, "trades", "binance", "BTC/USDT") == ["s1", "s2"]
        assert s1.status()["nodes"] == ["ing1", "s1", "s2"]
    finally:
        for registry in (s1, s2, ingest):
            await registry.stop()


@pytest.mark.asyncio
async def test_an_updated_record_reaches_the_others_at_the_next_put(
        connect: Callable[[], Awaitable[Client]]) -> None:
    s1 = await serving(await connect(), "s1", "md.>")
    ingest = await Registry(await connect(), "ing1", node_record("ingest", exchanges=["okx"]),
                            interval_s=INTERVAL, ttl_s=TTL).start()
    try:
        ingest.update(exchanges=["okx", "kraken"])  # e.g. after a subscribe on a new exchange
        await async_until(lambda: any(r.get("exchanges") == ["okx", "kraken"]
                                      for r in s1.nodes()), TIMEOUT, "the new exchanges")
        with pytest.raises(ValueError, match="not valid"):
            ingest.update(role="replica")
    finally:
        await s1.stop()
        await ingest.stop()


@pytest.mark.asyncio
async def test_a_node_that_stops_or_dies_leaves_the_holders(
        connect: Callable[[], Awaitable[Client]]) -> None:
    s1 = await serving(await connect(), "s1", "md.>")
    s2 = await serving(await connect(), "s2", "md.*.okx.>")
    dying = await connect()
    s3 = await serving(dying, "s3", "md.*.kraken.>")
    try:
        await async_until(lambda: len(s1.nodes()) == 3, TIMEOUT, "s1 to see s2 and s3")
        # A clean stop deletes the record: gone at the next watch update.
        await s2.stop()
        await async_until(lambda: not s1.holders("trades", "okx", "BTC/USDT"), TIMEOUT,
                          "s2 to leave the holders")
        # A node that dies (its connection gone, no delete) is gone once its record is TTL old.
        assert holder_names(s1, "trades", "kraken", "BTC/USDT") == ["s3"]
        await dying.close()
        died = time.monotonic()
        await async_until(lambda: not s1.holders("trades", "kraken", "BTC/USDT"), TIMEOUT,
                          "s3 to expire")
        assert time.monotonic() - died <= (TTL + INTERVAL + 1.0) * MS
        assert names(s1) == ["s1"]
    finally:
        await s1.stop()
        await s3.stop()  # its client is closed: bounded, the record was left to expire


@pytest.mark.asyncio
async def test_a_late_node_is_not_shown_a_dead_one(
        connect: Callable[[], Awaitable[Client]]) -> None:
    dying = await connect()
    await serving(dying, "dead", "md.>")
    await dying.close()  # died 0 s ago: a node starting now sees it, for at most the TTL
    await asyncio.sleep(TTL * 0.6)
    late = await serving(await connect(), "late", "md.>")
    try:
        replayed = time.monotonic()
        assert "dead" in names(late)  # replayed from the bucket, with its age taken off
        await async_until(lambda: names(late) == ["late"], TIMEOUT, "the dead record to expire")
        assert time.monotonic() - replayed < TTL * MS  # not a fresh TTL from the replay
    finally:
        await late.stop()


@pytest.mark.asyncio
async def test_records_come_back_after_the_bus_restarts(
        nats_server: NatsServer, connect: Callable[[], Awaitable[Client]]) -> None:
    s1 = await serving(await connect(), "s1", "md.>")
    s2 = await serving(await connect(), "s2", "md.*.okx.>")
    try:
        await async_until(lambda: len(s1.nodes()) == 2, TIMEOUT, "s1 to see s2")
        nats_server.kill()
        await asyncio.sleep(TTL + 0.5)  # long enough for every record to expire
        assert names(s1) == []
        nats_server.restart()
        # The watch restarts by itself (its own puts stopped arriving), the puts resume.
        await async_until(lambda: names(s1) == ["s1", "s2"], TIMEOUT, "s1 to see both again")
        assert holder_names(s1, "trades", "okx", "ETH/USDT") == ["s2"]
        assert s1.status()["watch_restarts"] >= 1
    finally:
        await s1.stop()
        await s2.stop()


@pytest.mark.asyncio
async def test_reads_from_other_threads_need_no_loop(
        connect: Callable[[], Awaitable[Client]]) -> None:
    s1 = await serving(await connect(), "s1", "md.>")
    s2 = await serving(await connect(), "s2", "md.*.okx.>")
    try:
        await async_until(lambda: len(s1.nodes()) == 2, TIMEOUT, "s1 to see s2")
        seen: list[Any] = []

        def read() -> None:  # as a Flight handler would: on its own thread
            for _ in range(200):
                seen.append(holder_names(s1, "book", "okx", "BTC/USDT"))

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * MS)
        assert seen == [["s2"]] * 800
    finally:
        await s1.stop()
        await s2.stop()


@pytest.mark.asyncio
async def test_an_existing_bucket_is_used_and_a_foreign_key_ignored(
        connect: Callable[[], Awaitable[Client]]) -> None:
    client = await connect()
    kv = await client.jetstream().create_key_value(bucket=BUCKET)  # made by someone else
    await kv.put("junk", b"not json")
    await kv.put("other", b'{"node": "someone-else", "role": "serve"}')  # key != node
    s1 = await serving(client, "s1", "md.>")
    try:
        assert names(s1) == ["s1"]
        assert s1.status()["invalid"] == 2
    finally:
        await s1.stop()
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get("s1")  # deleted on stop


@pytest.fixture
def server_without_jetstream(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)  # its binary and a free port; started here without -js
    proc = subprocess.Popen([server.binary, "-a", "127.0.0.1", "-p", str(server.port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(server._ready, TIMEOUT, "nats-server without JetStream")
        yield server
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.asyncio
async def test_no_jetstream_is_a_clear_error(server_without_jetstream: NatsServer) -> None:
    client = await nats.connect(server_without_jetstream.url)
    try:
        with pytest.raises(BusUnavailable, match="cannot open the node registry"):
            await Registry(client, "s1", node_record("serve")).start()
    finally:
        await client.close()
