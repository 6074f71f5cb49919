"""Exchange faults in cycles: real ccxt against the emulator, observed through Flight.

After every cycle: the subscribed set is the requested set, every tick stored before the
fault is still stored, the gap is in ``@events`` and fresh ticks flow again. Every fault
scenario gets an emulator and a server of its own. How long recovery took is printed, not
asserted (backoff timing is measured end to end in ``tests/e2e``); the wait for it is
bounded by the backoff bound plus a generous margin, scaled by ``TIME_SCALE``, that only a
hang exceeds. CI runs a few cycles of each fault; ``pytest -m soak`` runs 200.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig, StreamConfig
from flight_md.emulator import EmulatorThread, Fault
from flight_md.schema import now_ms

from .harness import TIME_SCALE, wait_until

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
RATE = 90.0
"""Emulator messages per second over all symbols: 200 cycles stay well inside the buffer."""
BUFFER = 200_000
HEARTBEAT_S = 1.0
RECONNECT_DELAY_S = 0.1
MAX_RECONNECT_DELAY_S = 0.4
POLL_S = 0.2
REST_PERIOD_S = 1.5
"""Seconds between two REST polls in practice: ccxt's rate limiter spaces Binance
``fetch_tickers`` calls (request weight 80) about 1.1 s apart, whatever ``poll_interval``."""
BACKOFF_BOUND_S = MAX_RECONNECT_DELAY_S + 2.0
"""From the end of a fault to fresh ticks: at most the capped delay (jitter only shortens
it) before the next attempt, plus the reconnect itself and the first tick of each symbol."""
OPTIONS = flight.FlightCallOptions(timeout=20 * TIME_SCALE)
CYCLES = [
    pytest.param(3, id="ci"),
    pytest.param(200, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(3 * 3600)]),
]


class MarketMover:
    """A websocket client subscribed to every market of the emulator.

    The emulator moves a market only while a websocket subscribes to it, so without this a
    stream polling REST would see the same ticker forever (and store it once).
    """

    def __init__(self, url: str) -> None:
        streams = "/".join(f"{s.replace('/', '').lower()}@ticker" for s in SYMBOLS)
        self._url = f"{url.replace('http://', 'ws://')}/ws/{streams}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(self._url) as ws:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(ws.receive(), 0.2)
                except TimeoutError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Rig:
    """An emulator, a server streaming from it through ccxt, and a Flight client."""

    def __init__(self, mode: str, rate: float = RATE, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.emulator = EmulatorThread(exchange="binance", symbols=SYMBOLS, rate=rate, seed=5)
        self.emulator.start()
        stream = StreamConfig("binance", SYMBOLS, mode=mode, url=self.emulator.url,
                              heartbeat_interval=heartbeat_s, reconnect_delay=RECONNECT_DELAY_S,
                              max_reconnect_delay=MAX_RECONNECT_DELAY_S, poll_interval=POLL_S,
                              buffer_size=BUFFER)
        self.app = MarketDataApp(ServerConfig(port=0, buffer_size=BUFFER, streams=(stream,)))
        self.app.start()
        self.client = flight.connect(self.app.location)
        self.mover = MarketMover(self.emulator.url) if mode == "rest" else None

    def close(self) -> None:
        self.client.close()
        self.app.stop()
        if self.mover is not None:
            self.mover.close()
        self.emulator.stop()

    def status(self) -> dict[str, Any]:
        result = list(self.client.do_action(flight.Action("status", b""), OPTIONS))
        return dict(json.loads(result[0].body.to_pybytes()))

    def rows(self, symbol: str) -> pa.Table:
        return self.client.do_get(flight.Ticket(f"{symbol}?exchange=binance".encode()),
                                  OPTIONS).read_all()

    def events(self, since_ms: int) -> list[dict[str, Any]]:
        ticket = flight.Ticket(f"@events?exchange=binance&start={since_ms}".encode())
        return list(self.client.do_get(ticket, OPTIONS).read_all().to_pylist())

    def flowing(self, after_ms: int) -> bool:
        """Whether every symbol is subscribed and has a tick received after ``after_ms``."""
        status = self.status()
        exchange = status["exchanges"]["binance"]
        if exchange["state"] != "connected" or sorted(exchange["symbols"]) != sorted(SYMBOLS):
            return False
        latest = {s["symbol"]: s["last_receive_timestamp"] or 0 for s in status["symbols"]
                  if s["subscribed"]}
        return sorted(latest) == sorted(SYMBOLS) and min(latest.values()) > after_ms


@pytest.fixture
def websocket_rig() -> Iterator[Rig]:
    rig = Rig("websocket")
    try:
        assert wait_until(lambda: rig.flowing(0), 30), rig.status()
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rest_rig() -> Iterator[Rig]:
    rig = Rig("rest")
    try:
        assert wait_until(lambda: rig.flowing(0), 30), rig.status()
        yield rig
    finally:
        rig.close()


@dataclass(frozen=True)
class Scenario:
    """One fault: how to cause it, the events its gap leaves, how long recovery may take."""

    inject: Callable[[EmulatorThread], None]
    gap: frozenset[str]
    bound_s: float
    mode: str = "websocket"


STALL_S = HEARTBEAT_S + 0.5
REFUSE_S = 1.0
SHUTDOWN_GRACE_S = 0.2


def _refuse(emulator: EmulatorThread) -> None:
    emulator.inject(Fault.REFUSE, duration=REFUSE_S)
    emulator.inject(Fault.RESET)


SCENARIOS = {
    "reset": Scenario(lambda e: e.inject(Fault.RESET), frozenset({"disconnect", "reconnect"}),
                      BACKOFF_BOUND_S),
    "close_1006": Scenario(lambda e: e.inject(Fault.CLOSE_1006),
                           frozenset({"disconnect", "reconnect"}), BACKOFF_BOUND_S),
    "close_1001": Scenario(lambda e: e.inject(Fault.CLOSE_1001),
                           frozenset({"disconnect", "reconnect"}), BACKOFF_BOUND_S),
    "server_shutdown": Scenario(lambda e: e.inject(Fault.SERVER_SHUTDOWN, duration=SHUTDOWN_GRACE_S),
                                frozenset({"disconnect", "reconnect"}),
                                SHUTDOWN_GRACE_S + BACKOFF_BOUND_S),
    "stall": Scenario(lambda e: e.inject(Fault.STALL, duration=STALL_S),
                      frozenset({"stale", "disconnect", "reconnect"}), STALL_S + BACKOFF_BOUND_S),
    "refuse": Scenario(_refuse, frozenset({"disconnect", "reconnect"}),
                       REFUSE_S + BACKOFF_BOUND_S),
    "rest_429": Scenario(lambda e: e.inject(Fault.REST_429, count=2, retry_after=0.3),
                         frozenset({"error", "reconnect"}), 3 * REST_PERIOD_S + BACKOFF_BOUND_S,
                         "rest"),
    "rest_5xx": Scenario(lambda e: e.inject(Fault.REST_5XX, count=2),
                         frozenset({"error", "reconnect"}), 3 * REST_PERIOD_S + BACKOFF_BOUND_S,
                         "rest"),
}


@pytest.mark.parametrize("cycles", CYCLES)
@pytest.mark.parametrize("fault", SCENARIOS)
def test_fault_cycles(request: pytest.FixtureRequest, fault: str, cycles: int) -> None:
    scenario = SCENARIOS[fault]
    rig: Rig = request.getfixturevalue(f"{scenario.mode}_rig")
    slowest = 0.0
    for cycle in range(cycles):
        before = {s: rig.rows(s) for s in SYMBOLS}
        injected_ms = now_ms()
        started = time.monotonic()
        scenario.inject(rig.emulator)

        def recovered(since: int = injected_ms) -> bool:
            events = rig.events(since)
            if not scenario.gap <= {e["kind"] for e in events}:
                return False
            return rig.flowing(max(e["timestamp"] for e in events if e["kind"] == "reconnect"))

        # A hang detector, not a timing claim: three times the bound, and scaled.
        assert wait_until(recovered, 3 * scenario.bound_s + 5), (
            f"cycle {cycle}: no recovery in {(3 * scenario.bound_s + 5) * TIME_SCALE:.1f} s; "
            f"events {rig.events(injected_ms)}; status {rig.status()['exchanges']}")
        slowest = max(slowest, time.monotonic() - started)
        events = rig.events(injected_ms)
        for event in events:
            if event["kind"] in ("disconnect", "stale", "reconnect", "error"):
                assert sorted(event["symbols"]) == sorted(SYMBOLS), event
        if fault == "stall":  # noticed as a stall (not only as the cut that follows it)
            stale = min(e["timestamp"] for e in events if e["kind"] == "stale")
            reconnected = min(e["timestamp"] for e in events if e["kind"] == "reconnect")
            assert injected_ms < stale < reconnected, events
        for symbol, old in before.items():
            new = rig.rows(symbol)
            assert new.num_rows > old.num_rows
            assert new.slice(0, old.num_rows).equals(old), (
                f"cycle {cycle}: ticks of {symbol} stored before the fault changed or vanished")
    assert rig.status()["exchanges"]["binance"]["mode"] == scenario.mode
    print(f"{fault}: {cycles} cycles, slowest recovery {slowest:.2f} s "
          f"(bound {scenario.bound_s:.2f} s)")


BAD_FRAMES = 10_000
FRAME_FAULTS = (Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC)


@pytest.fixture
def fast_rig() -> Iterator[Rig]:
    # A heartbeat far above the test's stall: the silence that lets in-flight frames drain
    # must not count as a stale stream.
    rig = Rig("websocket", rate=4000.0, heartbeat_s=600.0)
    try:
        assert wait_until(lambda: rig.flowing(0), 30), rig.status()
        yield rig
    finally:
        rig.close()


def test_ten_thousand_bad_frames(fast_rig: Rig) -> None:
    rig = fast_rig
    before = rig.status()["exchanges"]["binance"]
    for fault in FRAME_FAULTS:
        rig.emulator.inject(fault, count=BAD_FRAMES // len(FRAME_FAULTS))
    assert wait_until(lambda: sum(rig.emulator.stats.faults.get(f, 0) for f in FRAME_FAULTS)
                      >= BAD_FRAMES, 60), rig.emulator.stats.faults
    assert wait_until(lambda: rig.flowing(now_ms()), 10)
    # Silence the emulator (well inside the heartbeat): what it sent is then fixed, and once
    # what is in flight has drained every intact frame must be stored, no more, no less.
    rig.emulator.inject(Fault.STALL)
    sent = {s: rig.emulator.sent("ticker", s) for s in SYMBOLS}
    assert all(sent.values()), sent

    def stored() -> dict[str, int]:
        return {s["symbol"]: s["ticks_stored"] for s in rig.status()["symbols"]}

    assert wait_until(lambda: stored() == sent, 30), (stored(), sent)
    status = rig.status()
    tables = {s: rig.rows(s) for s in SYMBOLS}
    rig.emulator.clear_faults()

    exchange = status["exchanges"]["binance"]
    assert exchange["reconnects"] == before["reconnects"], "bad frames caused a reconnect"
    assert exchange["state"] == "connected"
    counted = sum(exchange["bad_frames"].values()) - sum(before["bad_frames"].values())
    assert counted == BAD_FRAMES, exchange["bad_frames"]
    # Every stored row is an intact frame, and every intact frame was stored.
    assert {s["symbol"]: s["ticks_stored"] for s in status["symbols"]} == sent
    for symbol, table in tables.items():
        assert table.num_rows == sent[symbol]
        prices = table.column("price")
        assert prices.null_count == 0
        assert all(math.isfinite(p) and p > 0 for p in prices.to_pylist())
        assert pc.all(pc.equal(table.column("symbol"), symbol)).as_py()
