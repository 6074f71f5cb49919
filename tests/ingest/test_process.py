"""Ingestion in a child process (``ingest_process`` / ``--ingest-process``).

Real parts throughout: the emulator on a thread of this process, a spawned child running
real ccxt.pro against it, rows crossing the pipe into this process's buffer, and a real
Flight server and ``pyarrow.flight`` client on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.buffer import MarketDataBuffer, Store
from flight_md.cli import _parser as cli_parser
from flight_md.cli import build_config
from flight_md.config import ServerConfig, StreamConfig, load_config
from flight_md.emulator import Fault
from flight_md.emulator.thread import EmulatorThread
from flight_md.errors import ConfigError, NotFound, Unavailable
from flight_md.events import EventLog
from flight_md.ingest.process import IngestionProcess
from tests.support import until as _wait

from .support import FAST, MS, SYMBOLS

pytestmark = pytest.mark.timeout(120 * MS)


def _count(buffer: MarketDataBuffer, symbol: str) -> int:
    try:
        return buffer.count(symbol, "binance")
    except NotFound:
        return 0


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(exchange="binance", symbols=SYMBOLS, rate=600.0, seed=0)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def app(emulator: EmulatorThread) -> Iterator[MarketDataApp]:
    stream = StreamConfig("binance", SYMBOLS, channel="ticker", mode="websocket",
                          url=emulator.url, reconnect_delay=0.05, max_reconnect_delay=0.4,
                          heartbeat_interval=30.0)
    server = MarketDataApp(ServerConfig(port=0, streams=(stream,), ingest_process=True)).start()
    try:
        yield server
    finally:
        server.stop(0.5)


def _action(client: flight.FlightClient, name: str, body: dict[str, Any] | None = None) -> Any:
    payload = json.dumps(body).encode() if body is not None else b""
    results = list(client.do_action(flight.Action(name, payload)))
    return json.loads(results[0].body.to_pybytes())


def test_every_tick_crosses_into_the_parent_buffer_in_order(emulator: EmulatorThread) -> None:
    buffer, events = MarketDataBuffer(), EventLog()
    with IngestionProcess(buffer, events) as ingestion:
        assert ingestion.pid != os.getpid() and ingestion.alive
        ingestion.add_stream("binance", SYMBOLS, url=emulator.url, channel="ticker",
                             mode="websocket", **{**FAST, "heartbeat_interval": 30.0})
        _wait(lambda: all(_count(buffer, s) >= 50 for s in SYMBOLS), 30, "ticks to flow")
        # Twice: the exchange stops writing and what it wrote (in flight) must all be stored,
        # exactly. The second round's frames cross the same pipe after the first round's, so
        # a late duplicate of the first round would overshoot the second count.
        for round_ in range(2):
            emulator.inject(Fault.STALL)
            expected = {s: emulator.sent("ticker", s) for s in SYMBOLS}
            _wait(lambda: {s: _count(buffer, s) for s in SYMBOLS} == expected, 30,  # noqa: B023
                  f"exactly the {sum(expected.values())} ticks sent to be stored "
                  f"(round {round_ + 1})")
            if round_ == 0:
                emulator.clear_faults()
                _wait(lambda: all(emulator.sent("ticker", s) > expected[s]  # noqa: B023
                                  for s in SYMBOLS), 30, "frames after the stall")
        for symbol in SYMBOLS:
            table = buffer.get_latest_sync(symbol, expected[symbol], exchange="binance")
            receive = table.column("receive_timestamp").to_pylist()
            assert receive == sorted(receive)
            assert set(table.column("exchange").to_pylist()) == {"binance"}
        status = ingestion.control().status()
        assert status.exchanges[0].state == "connected"
        assert sum(s.received for s in status.symbols) == sum(expected.values())
    assert not ingestion.alive and ingestion.exitcode == 0
    kinds = [e.kind.value for e in events.events("binance")]
    assert kinds[:2] == ["connect", "subscribe"]


def test_the_flight_service_reads_serves_and_controls_through_the_child(
        app: MarketDataApp) -> None:
    client = flight.connect(app.location)
    _wait(lambda: _count(app.buffer, "BTC/USDT") >= 20, 30, "ticks to flow")

    table = client.do_get(flight.Ticket(b"BTC/USDT?latest=10")).read_all()
    assert table.num_rows == 10 and table.column("price").null_count == 0

    reader = client.do_get(flight.Ticket(b"ETH/USDT?follow=true"))
    got = 0
    while got < 5:
        chunk = reader.read_chunk()
        got += chunk.data.num_rows
    reader.cancel()

    status = _action(client, "status")
    assert status["exchanges"]["binance"]["state"] == "connected"
    assert status["server"]["ingestion"] is True

    # INVALID_ARGUMENT (pyarrow's ArrowInvalid), raised in the child, named in the parent
    with pytest.raises(pa.ArrowInvalid, match="unknown symbol 'NOPE/USDT'") as caught:
        _action(client, "subscribe", {"symbols": ["NOPE/USDT"]})
    assert "Traceback" not in str(caught.value)

    assert _action(client, "unsubscribe", {"symbols": ["SOL/USDT"]})["unsubscribed"] == [
        "SOL/USDT"]
    assert _action(client, "subscribe", {"symbols": ["SOL/USDT"]})["subscribed"] == [
        "SOL/USDT"]
    events = client.do_get(flight.Ticket(b"@events")).read_all().column("kind").to_pylist()
    assert events[:2] == ["connect", "subscribe"] and "unsubscribe" in events
    client.close()


def test_a_dead_child_is_reported_and_nothing_stored_is_lost(app: MarketDataApp) -> None:
    client = flight.connect(app.location)
    _wait(lambda: _count(app.buffer, "BTC/USDT") >= 20, 30, "ticks to flow")
    pid = app.ingestion.pid
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: any(e.kind.value == "failed" for e in app.events.events("*")), 10,
          "the failure to be recorded")
    held = app.buffer.count("BTC/USDT", "binance")
    table = client.do_get(flight.Ticket(b"BTC/USDT?latest=100000")).read_all()
    assert table.num_rows == held >= 20
    # status keeps answering while the child is down or being restarted (supervision is
    # tested in test_supervision.py).
    assert _action(client, "status")["server"]
    failure = [e for e in app.events.events("*") if e.kind.value == "failed"][-1]
    assert "exited unexpectedly" in failure.detail and str(-signal.SIGKILL) in failure.detail
    client.close()


def test_stop_is_bounded_and_leaves_no_child(app: MarketDataApp) -> None:
    """stop() returns and the child is gone (the join bound, scaled, only catches a hang)."""
    ingestion = app.ingestion
    _wait(lambda: _count(app.buffer, "BTC/USDT") >= 5, 30, "ticks to flow")
    stopper = threading.Thread(target=app.stop, args=(0.5,), daemon=True)
    stopper.start()
    stopper.join(30 * MS)
    assert not stopper.is_alive(), "app.stop(0.5) hung"
    assert not ingestion.alive and ingestion.exitcode is not None
    with pytest.raises(Unavailable):
        ingestion.control().status()


def test_the_command_line_and_the_config_file_turn_it_on(tmp_path: Path) -> None:
    assert build_config(cli_parser().parse_args(["serve", "--ingest-process"])).ingest_process
    assert not build_config(cli_parser().parse_args(["serve", "--no-ingest-process"])
                            ).ingest_process
    path = tmp_path / "server.toml"
    path.write_text("[server]\ningest_process = true\n")
    assert load_config(path).ingest_process
    path.write_text('[server]\ningest_process = "yes"\n')
    with pytest.raises(ConfigError, match="ingest_process must be true or false"):
        load_config(path)


def test_a_buffer_given_with_a_store_must_be_the_stores() -> None:
    store = Store(100)
    with pytest.raises(ValueError, match="the ticker buffer given is not the store's"):
        IngestionProcess(MarketDataBuffer(100), store=store)
    ingestion = IngestionProcess(store.buffer("ticker"), store=store)
    assert ingestion.buffer is store.buffer("ticker") and ingestion.store is store
    assert IngestionProcess(store=store).buffer is store.buffer("ticker")
