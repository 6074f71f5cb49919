"""The server supervises its ingestion child (issue 10, items 4 and 6).

Real parts: a ``flight-md emulator`` process, a :class:`MarketDataApp` with
``ingest_process=True`` (a real spawned child running real ccxt), a real ``pyarrow.flight``
client and live tail, and real signals: ``SIGKILL`` of the child, ``SIGSTOP`` to make it
unresponsive.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig, StreamConfig
from flight_md.ingest.process import IngestionProcess
from tests.support import MS, EmulatorProcess, until

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def _action(client: flight.FlightClient, name: str, body: Any = None) -> dict[str, Any]:
    payload = b"" if body is None else json.dumps(body).encode()
    result = next(client.do_action(flight.Action(name, payload)))
    answer: dict[str, Any] = json.loads(result.body.to_pybytes())
    return answer


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--symbols", ",".join(SYMBOLS), "--rate", "60") as process:
        yield process


class _Tail:
    """A live tail read on a thread of its own, every row kept."""

    def __init__(self, client: flight.FlightClient, ticket: bytes) -> None:
        self.rows: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._reader = client.do_get(flight.Ticket(ticket))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._reader:
                self.rows.extend(chunk.data.to_pylist())
        except Exception as error:  # noqa: BLE001 - the cancel at the end lands here
            self.error = error

    def close(self) -> None:
        self._reader.cancel()
        self._thread.join(10 * MS)


def test_a_killed_child_is_restarted_with_its_subscriptions_and_status_answers_throughout(
        emulator: EmulatorProcess) -> None:
    config = ServerConfig(port=0, ingest_process=True, streams=(StreamConfig(
        "binance", ("BTC/USDT", "ETH/USDT"), mode="websocket", url=emulator.url,
        reconnect_delay=0.2, max_reconnect_delay=1.0),))
    with MarketDataApp(config) as app:
        client = flight.connect(app.location)
        # Run-time changes, which the restarted child must get: SOL in, ETH out.
        assert _action(client, "subscribe", {"symbols": ["SOL/USDT"]})["subscribed"] == ["SOL/USDT"]
        assert _action(client, "unsubscribe", {"symbols": ["ETH/USDT"]})["unsubscribed"] == [
            "ETH/USDT"]
        tail = _Tail(client, b"BTC/USDT?follow=true")
        until(lambda: len(tail.rows) >= 5, 30, "the tail to receive ticks")
        old_pid = app.ingestion.pid

        os.kill(old_pid, signal.SIGKILL)
        states: set[str] = set()
        errors: list[str] = []

        def restarted() -> bool:
            status = _action(client, "status")  # never fails, down or not
            binance = status["exchanges"]["binance"]
            states.add(binance["state"])
            if binance["state"] == "down":
                errors.append(binance["last_error"])
                assert binance["symbols"] == ["BTC/USDT", "SOL/USDT"]
            for symbol in status["symbols"]:
                assert symbol["ticks_appended"] <= symbol["ticks_received"], symbol
            return any(e.kind.value == "restarted" for e in app.events.events("*"))

        until(restarted, 60, "the child to be restarted", interval=0.02)
        assert "down" in states
        assert errors and all("ingestion process exited unexpectedly" in e for e in errors)
        assert any("(exit code -9); restarting in" in e for e in errors)
        assert app.ingestion.pid != old_pid
        kinds = [e.kind.value for e in app.events.events("*")]
        assert kinds.index("failed") < kinds.index("restarted")
        back_at = next(e for e in app.events.events("*") if e.kind.value == "restarted").timestamp

        def fresh(symbol: str) -> int:
            if symbol not in {s for _, s in app.buffer.keys("binance")}:
                return 0
            table = app.buffer.get_range_sync(symbol, exchange="binance",
                                              columns=["receive_timestamp"])
            return sum(t >= back_at for t in table.column("receive_timestamp").to_pylist())

        until(lambda: fresh("SOL/USDT") >= 3 and fresh("BTC/USDT") >= 3, 60,
              "ticks of every subscribed symbol from the restarted child")
        status = _action(client, "status")
        assert status["exchanges"]["binance"]["state"] == "connected"
        assert status["exchanges"]["binance"]["symbols"] == ["BTC/USDT", "SOL/USDT"]
        assert fresh("ETH/USDT") == 0  # unsubscribed before the crash: not subscribed again
        # The tail followed the store across the crash: it got the new child's ticks too.
        until(lambda: any(r["receive_timestamp"] >= back_at for r in tail.rows), 30,
              "the open tail to receive ticks after the restart")
        assert tail.error is None
        times = [r["receive_timestamp"] for r in tail.rows]
        assert times == sorted(times)
        tail.close()
        client.close()


def test_stop_says_how_long_it_really_waited(caplog: pytest.LogCaptureFixture) -> None:
    ingestion = IngestionProcess().start()
    pid = ingestion.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
    limit = 0.5
    caplog.set_level(logging.WARNING, logger="flight_md.ingest.process")
    try:
        began = time.time()
        ingestion.stop(limit)
        ended = time.time()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    records = [r for r in caplog.records if "still running" in r.getMessage()]
    assert len(records) == 1
    said = float(re.search(r"still running ([0-9.]+) s", records[0].getMessage()).group(1))
    waited = records[0].created - began
    # What it says is what elapsed (to its 2 decimals), and the whole stop kept to its limit
    # before the terminate/kill steps.
    assert abs(said - waited) < 0.05 * MS
    assert said >= limit
    assert not ingestion.alive and ended >= records[0].created
