"""``--ingest-process`` under every exchange fault the emulator injects.

README, ``--ingest-process``: "Tickets, tails, actions, ``@events`` and ``status`` behave the
same", and Guarantees: "With ``--ingest-process`` all of the above holds inside the child".
One server per fault (``MarketDataApp`` with ``ingest_process=True``: ccxt.pro runs in a
spawned child, rows cross a pipe into the server's store), streaming from the emulator. After
the fault the server must be back, ``status`` must count the reconnect, ``@events`` must hold
the gap, ticks must keep arriving, and none may be stored twice (the emulator's 24h volume
grows with every update, so a repeated tick shows up as a volume that does not).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from flight_md.emulator import EmulatorThread, Fault
from flight_md.schema import now_ms
from tests.support import MS, until

pytestmark = pytest.mark.timeout(120 * MS)

SYMBOLS = ("BTC/USDT", "ETH/USDT")
FAST = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.4, "poll_interval": 0.2}
HEARTBEAT_S = 1.0
BAD_FRAMES = 5


@dataclass(frozen=True)
class Scenario:
    """One fault: how to cause it, the events its gap leaves, and what it may lose in flight."""

    inject: Callable[[EmulatorThread], object]
    gap: tuple[str, ...]
    """Event kinds from the fault to the recovery, in order (``()``: no gap at all)."""
    lost_at_most: int = 0
    mode: str = "websocket"
    heartbeat: float = 30.0


def _refuse(emulator: EmulatorThread) -> None:
    emulator.inject(Fault.REFUSE, duration=1.0 * MS)
    emulator.inject(Fault.RESET)


SCENARIOS = {
    # lost_at_most: see tests/e2e/test_ingest_tail.py (a reset drops what was in flight; a
    # 1001 close may be followed by a few frames no client reads; a stall's queue goes to
    # the socket the stream gave up on).
    "reset": Scenario(lambda e: e.inject(Fault.RESET), ("disconnect", "reconnect"), 20),
    "close_1006": Scenario(lambda e: e.inject(Fault.CLOSE_1006), ("disconnect", "reconnect")),
    "close_1001": Scenario(lambda e: e.inject(Fault.CLOSE_1001), ("disconnect", "reconnect"), 3),
    "server_shutdown": Scenario(lambda e: e.inject(Fault.SERVER_SHUTDOWN, duration=0.1),
                                ("disconnect", "reconnect"), 3),
    "stall": Scenario(lambda e: e.inject(Fault.STALL, duration=1.5 * HEARTBEAT_S * MS),
                      ("stale", "disconnect", "reconnect"), 5, heartbeat=HEARTBEAT_S),
    "refuse": Scenario(_refuse, ("disconnect", "reconnect"), 20),
    "malformed": Scenario(lambda e: e.inject(Fault.MALFORMED, count=BAD_FRAMES), ()),
    "rest_429": Scenario(lambda e: e.inject(Fault.REST_429, count=2, retry_after=0.3),
                         ("error", "error", "reconnect"), mode="rest"),
    "rest_5xx": Scenario(lambda e: e.inject(Fault.REST_5XX, count=2),
                         ("error", "error", "reconnect"), mode="rest"),
}


def _collapse(kinds: list[str]) -> list[str]:
    """Refused reconnects and stalls noticed again repeat a cycle: keep it once."""
    out: list[str] = []
    for kind in kinds:
        if kind == "reconnect":
            out.append(kind)
            break
        if kind not in out or kind == "error":
            out.append(kind)
    return out


DEFAULT_RUN = ("reset", "malformed", "rest_5xx")
"""One connection cut, one bad-frame and one REST fault by default; every fault of every venue
is run in-process by tests/venues, and all of them through the ingestion process with -m soak."""


@pytest.mark.parametrize("fault", [
    pytest.param(name, marks=() if name in DEFAULT_RUN else pytest.mark.soak) for name in SCENARIOS])
def test_the_ingestion_process_recovers_from_every_exchange_fault(ingest_rig: Any,
                                                                 fault: str) -> None:
    scenario = SCENARIOS[fault]
    rest = scenario.mode == "rest"
    rig = ingest_rig(SYMBOLS, mode=scenario.mode, ingest_process=True, rate=100.0, mover=rest,
                     heartbeat_interval=scenario.heartbeat, **FAST)
    until(lambda: rig.flowing(SYMBOLS, 0), 30, "ticks through the ingestion process")
    assert rig.status()["server"]["ingestion"] is True
    before = rig.stored()
    injected_ms = now_ms()
    scenario.inject(rig.emulator)

    if scenario.gap:
        until(lambda: "reconnect" in rig.kinds(injected_ms), 20, "a reconnect")
        gap = rig.events(injected_ms)
        kinds = [e["kind"] for e in gap]
        assert _collapse(kinds) == list(scenario.gap), kinds
        recovered_ms = next(e["timestamp"] for e in gap if e["kind"] == "reconnect")
        failures = kinds[:kinds.index("reconnect")]
        for event in gap[:kinds.index("reconnect") + 1]:
            assert sorted(event["symbols"]) == sorted(SYMBOLS), event
    else:
        until(lambda: rig.emulator.stats.faults.get(Fault.MALFORMED, 0) == BAD_FRAMES, 10,
              "the bad frames to be sent")
        until(lambda: rig.exchange_status()["bad_frames"].get("malformed_frame") == BAD_FRAMES,
              10, "the bad frames to be counted")
        recovered_ms, failures = now_ms(), []
    until(lambda: rig.flowing(SYMBOLS, recovered_ms), 20, "ticks after the recovery")
    fresh = rig.stored()
    more = 1 if rest else 5  # REST stores about one changed ticker a second
    until(lambda: all(rig.stored()[s] >= fresh[s] + more for s in SYMBOLS), 20,
          "ticks to keep coming")

    exchange = rig.exchange_status()
    assert exchange["state"] == "connected" and exchange["mode"] == scenario.mode
    assert sorted(exchange["symbols"]) == sorted(SYMBOLS)
    if not rest:
        # Everything the exchange wrote was stored, but what the fault lost in flight.
        rig.emulator.inject(Fault.STALL)
        stored = rig.quiet()
        for symbol in SYMBOLS:
            assert 0 <= rig.sent(symbol) - stored[symbol] <= scenario.lost_at_most, (
                symbol, rig.sent(symbol), stored[symbol])
    for symbol in SYMBOLS:
        table = rig.rows(symbol)
        assert table.num_rows > before[symbol]
        volumes = table.column("volume").to_pylist()
        assert all(a < b for a, b in itertools.pairwise(volumes)), f"{symbol}: a tick stored twice"
    if not scenario.gap:  # a bad frame is dropped and counted, and closes nothing
        assert exchange["bad_frames"] == {"malformed_frame": BAD_FRAMES}
        assert not {"disconnect", "reconnect", "stale"} & set(rig.kinds(injected_ms))
    # status counts each reconnect the event log records (REST: see the test below).
    if not rest:
        assert exchange["reconnects"] == failures.count("disconnect"), (exchange, failures)


def test_status_counts_a_rest_reconnect(ingest_rig: Any) -> None:
    """README: "``status`` shows ``state``, ``reconnects``, ``last_error``" after REST 429/5xx."""
    rig = ingest_rig(SYMBOLS, mode="rest", mover=True, **FAST)
    until(lambda: rig.flowing(SYMBOLS, 0), 30, "polled ticks")
    injected_ms = now_ms()
    rig.emulator.inject(Fault.REST_5XX, count=2)
    until(lambda: "reconnect" in rig.kinds(injected_ms), 20, "a reconnect")
    assert rig.kinds(injected_ms) == ["error", "error", "reconnect"]
    assert rig.exchange_status()["reconnects"] == 1
