"""One suite for every registered venue: connect, values, unsubscribe, every fault, REST, replay.

Modelled on cryptofeed's ``tests/unit/test_exchange.py``: the tests are written once and
parametrized over :func:`flight_md.venues.emulated` (see ``conftest.py``), so a venue is covered
by registering it. Every part is real: the project's emulator speaking the venue's public
protocol, unmodified ccxt.pro inside a :class:`~flight_md.app.MarketDataApp`, and a
``pyarrow.flight`` client reading what the server stores.

Per (venue, channel) the tests share one rig and run in file order; each leaves the stream
connected with every test symbol, and the rig's ``gap`` (frames the store will never hold)
up to date. What "the emulator sent" means: the intact frames it counted
(``EmulatorStats.frames``) and, for values, the quotes of its deterministic walks.

Replays: each venue's recording, replayed at speed 0, must come out of the Flight service with
exactly the ``(last, bid, ask)`` that ``tests/venues/expected_<venue>.py`` reads from the
recording itself, per symbol, in recorded order. A recording whose expected rows carry no
last price (Binance's holds only ``bookTicker``) is replayed through the ``bidask`` channel,
where the row's price is the mid; any other through ``ticker``.
"""

from __future__ import annotations

import functools
import importlib
import itertools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from flight_md.emulator import EmulatorThread, Fault, default_recording
from flight_md.emulator.dialect import Dialect
from flight_md.emulator.dialects import dialect_class
from flight_md.normalize import Channel
from flight_md.venues import VENUES
from tests.support import MS, until
from tests.venues.conftest import (
    HEARTBEAT_S,
    Case,
    Rig,
    Served,
    Values,
    sent,
    wait,
    walk_positions,
    walk_values,
)

pytestmark = pytest.mark.timeout(120 * MS)

LOST: dict[Fault, int] = {
    # A 1006 is a FIN after everything written: the client reads it all.
    Fault.CLOSE_1006: 0,
    # After its close frame the emulator may still write (and count) a few frames until the
    # client's close reply arrives; no websocket client reads those.
    Fault.CLOSE_1001: 3,
    Fault.SERVER_SHUTDOWN: 3,
    # An RST discards what the client had not read yet: at most what was in flight.
    Fault.RESET: 20,
}
"""Frames per symbol each connection fault may lose: only what it destroys on the wire."""
FRAME_FAULTS = (Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC)
QUICK_REST: dict[str, Any] = {"poll_interval": 0.05, "ccxt_options": {"rateLimit": 5}}
"""Poll often; ccxt's own rate limiter would otherwise space polls by up to a second."""


def _has_shutdown_event(venue_id: str) -> bool:
    return dialect_class(venue_id).shutdown_event is not Dialect.shutdown_event


def _applied(emulator: EmulatorThread, fault: Fault, before: int) -> bool:
    return emulator.stats.faults.get(fault, 0) > before


def _recovered(served: Served, since: int, needs: set[str], timeout: float) -> None:
    """Wait for the events ``needs`` after the ``since``-th, then every symbol flowing again."""
    wait(lambda: needs <= set(served.kinds(since)) and served.kinds(since)[-1] == "reconnect",
         timeout, f"{served.case}: events {sorted(needs)} ending with a reconnect",
         lambda: served.kinds(since))
    served.flowing(10, "every symbol to flow after the reconnect")


def _unchanged_prefixes(served: Served, before: dict[str, Any]) -> None:
    for symbol, table in before.items():
        now = served.rows(symbol)
        assert now.num_rows > table.num_rows, f"{served.case} {symbol}: no new ticks"
        assert now.slice(0, table.num_rows).equals(table), (
            f"{served.case} {symbol}: ticks stored before the fault changed or vanished")


# -- connect, subscribe, values -----------------------------------------------------------


def test_connects_and_subscribes_every_test_symbol(rig: Rig, case: Case) -> None:
    exchange = rig.served.exchange()
    assert (exchange["state"], exchange["mode"], exchange["channel"]) == (
        "connected", "websocket", case.channel.value)
    assert sorted(exchange["symbols"]) == sorted(case.symbols)
    assert exchange["bad_frames"] == {} and exchange["reconnects"] == 0
    kinds = rig.served.kinds()
    assert kinds[:2] == ["connect", "subscribe"], kinds
    subscribed = [e["symbols"] for e in rig.served.events() if e["kind"] == "subscribe"]
    assert sorted(itertools.chain(*subscribed)) == sorted(case.symbols)
    assert rig.emulator.stats.subscriptions == len(case.symbols)
    assert rig.emulator.stats.unserved_subscriptions == 0
    rows = {s: rig.served.rows(s).to_pylist() for s in case.symbols}
    for symbol, table in rows.items():
        assert table and all(r["symbol"] == symbol and r["exchange"] == case.venue_id for r in table)


def test_stored_values_are_exactly_what_the_emulator_sent(rig: Rig, case: Case) -> None:
    """Every frame the emulator wrote is stored once, in order, with the walk's values."""
    start = rig.served.stored()
    until(lambda: all(n >= start[s] + 20 for s, n in rig.served.stored().items()), 10,
          f"{case}: 20 more ticks of every symbol")
    with rig.settled() as counts:
        rows = {s: rig.served.values(s) for s in case.symbols}
    for symbol, (written, stored) in counts.items():
        assert stored == written - rig.gap[symbol], (symbol, counts, rig.gap)
        assert len(rows[symbol]) == stored
        positions = walk_positions(rows[symbol], walk_values(symbol, case.channel))
        # While nothing fails, the stream sees every update: consecutive quotes of the walk
        # (a venue that pushes a snapshot on subscribing may repeat the latest one).
        window = positions[start[symbol]:]
        steps = {b - a for a, b in itertools.pairwise(window)}
        assert steps <= {0, 1}, f"{case} {symbol}: updates skipped or reordered: {sorted(steps)}"


def test_bad_frames_are_counted_and_dropped_without_a_reconnect(rig: Rig, case: Case) -> None:
    """Each corrupted frame is counted as bad or (where ccxt repairs it) stored, never both,
    never neither; invalid JSON is always ``malformed_frame``; the connection stays up."""
    symbols = case.symbols
    counts = rig.settle()
    before = rig.served.exchange()
    events = len(rig.served.events())
    applied = dict(rig.emulator.stats.faults)
    for fault in FRAME_FAULTS:
        rig.emulator.inject(fault, count=1)
        until(functools.partial(_applied, rig.emulator, fault, applied.get(fault, 0)), 10,
              f"{case}: {fault} applied")

    def bad_frames() -> int:
        now: dict[str, int] = rig.served.exchange()["bad_frames"]
        was: dict[str, int] = before["bad_frames"]
        return sum(now.values()) - sum(was.values())

    def accounting() -> tuple[int, int, int]:
        """(intact frames written, ticks stored, bad frames counted) since the start."""
        sent_now, stored = rig.sent(), rig.served.stored()
        return (sum(sent_now[s] - counts[s][0] for s in symbols),
                sum(stored[s] - counts[s][1] for s in symbols), bad_frames())

    def accounted() -> bool:  # every frame written was read: stored, or counted as bad
        intact, kept, bad = accounting()
        return kept + bad == intact + len(FRAME_FAULTS)

    with rig.quiet():
        # Within the heartbeat: a longer silence would be a stale stream, not a bad frame.
        wait(accounted, 0.8 * HEARTBEAT_S,
             f"{case}: each of {len(FRAME_FAULTS)} corrupted frames stored or counted as bad",
             lambda: "(intact frames, stored ticks, bad frames) since the faults: "
                     f"{accounting()}; bad frames {rig.served.exchange()['bad_frames']}")
        after = rig.served.exchange()
        stored = rig.served.stored()
        rig.gap = {s: n - stored[s] for s, n in rig.sent().items()}
    malformed = after["bad_frames"].get("malformed_frame", 0) - before["bad_frames"].get(
        "malformed_frame", 0)
    assert malformed == 2, after["bad_frames"]  # invalid and truncated JSON
    assert 2 <= bad_frames() <= len(FRAME_FAULTS), after["bad_frames"]
    assert after["reconnects"] == before["reconnects"] and after["state"] == "connected"
    assert "disconnect" not in rig.served.kinds(events)
    rig.served.flowing()


def test_unsubscribe_stops_that_symbol_and_the_others_keep_flowing(rig: Rig, case: Case) -> None:
    symbols = case.symbols
    dropped, *others = symbols[-1:] + symbols[:-1]
    result = rig.served.action("unsubscribe", {"exchange": case.venue_id, "symbols": [dropped]})
    assert result["unsubscribed"] == [dropped]
    until(lambda: rig.served.exchange()["symbols"] == others, 5,
          f"{case}: the stream to drop {dropped}")
    until(lambda: rig.emulator.stats.subscriptions == len(others), 10,
          f"{case}: the emulator to stop streaming {dropped}")
    frozen, kept = rig.sent()[dropped], rig.served.stored()[dropped]
    flowing = rig.served.stored()
    until(lambda: all(rig.served.stored()[s] > flowing[s] + 5 for s in others), 10,
          f"{case}: {others} to go on")
    assert rig.sent()[dropped] == frozen, "the exchange kept sending the unsubscribed symbol"
    assert rig.served.stored()[dropped] == kept, "ticks were stored for an unsubscribed symbol"
    status = {s["symbol"]: s for s in rig.served.status()["symbols"]}
    assert not status[dropped]["subscribed"] and not status[dropped]["stale"]
    assert [e["symbols"] for e in rig.served.events() if e["kind"] == "unsubscribe"][-1] == [dropped]

    result = rig.served.action("subscribe", {"exchange": case.venue_id, "symbols": [dropped]})
    assert result["subscribed"] == [dropped]
    rig.served.flowing(10, f"{dropped} to flow again")
    # Frames of the dropped symbol still in flight when it was dropped are ignored.
    rig.settle(lost=50)


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(LOST))
def test_a_cut_connection_recovers_and_loses_nothing_stored(rig: Rig, case: Case, fault: Fault) -> None:
    if fault is Fault.SERVER_SHUTDOWN and not _has_shutdown_event(case.venue_id):
        pytest.skip(f"{case.venue_id} has no 'server going away' message")
    gap = rig.settle()
    before = {s: rig.served.rows(s) for s in rig.served.symbols}
    reconnects = rig.served.exchange()["reconnects"]
    since = len(rig.served.events())
    assert rig.emulator.inject(fault, duration=0.05) >= 1
    _recovered(rig.served, since, {"disconnect", "reconnect"}, 10)
    counts = rig.settle(lost=LOST[fault])
    exchange = rig.served.exchange()
    assert exchange["reconnects"] == reconnects + 1, exchange
    assert exchange["last_error"], exchange
    lost = {s: (written - stored) - (gap[s][0] - gap[s][1]) for s, (written, stored) in counts.items()}
    assert all(0 <= n <= LOST[fault] for n in lost.values()), lost
    disconnects = [e for e in rig.served.events()[since:] if e["kind"] == "disconnect"]
    assert all(sorted(e["symbols"]) == sorted(case.symbols) and e["detail"] for e in disconnects)
    _unchanged_prefixes(rig.served, before)


def test_a_silent_stream_is_stale_after_the_heartbeat_and_recovers(rig: Rig, case: Case) -> None:
    before = {s: rig.served.rows(s) for s in rig.served.symbols}
    since = len(rig.served.events())
    rig.emulator.inject(Fault.STALL)
    try:
        until(lambda: "stale" in rig.served.kinds(since), HEARTBEAT_S + 2, f"{case}: a stale event")
    finally:
        rig.emulator.clear_faults()
    stale = next(e for e in rig.served.events()[since:] if e["kind"] == "stale")
    assert sorted(stale["symbols"]) == sorted(case.symbols) and stale["detail"]
    _recovered(rig.served, since, {"stale", "reconnect"}, 10)
    until(lambda: not any(s["stale"] for s in rig.served.status()["symbols"]), 5, "fresh symbols")
    # Frames queued during the stall went to sockets the stream had given up on.
    rig.settle(lost=10_000)
    _unchanged_prefixes(rig.served, before)


def test_refused_reconnects_are_retried_until_the_exchange_is_back(rig: Rig, case: Case) -> None:
    before = {s: rig.served.rows(s) for s in rig.served.symbols}
    since = len(rig.served.events())
    refused = rig.emulator.stats.faults.get(Fault.REFUSE, 0)
    rig.emulator.inject(Fault.REFUSE, duration=0.5 * MS)
    rig.emulator.inject(Fault.RESET)
    until(lambda: rig.served.kinds(since).count("disconnect") >= 2, 5,
          f"{case}: a refused reconnect")
    _recovered(rig.served, since, {"disconnect", "reconnect"}, 10)
    assert rig.emulator.stats.faults[Fault.REFUSE] > refused
    rig.settle(lost=LOST[Fault.RESET])
    _unchanged_prefixes(rig.served, before)


# -- REST -----------------------------------------------------------------------------------


def test_rest_mode_polls_the_emulator_state_and_rides_out_429_and_5xx(rig: Rig, case: Case) -> None:
    """A REST-mode server polls the rig's emulator (whose websocket stream keeps the markets
    moving): each stored row is a quote of the walk, newer than the last, and 429 and 5xx
    answers are errors it recovers from."""
    with Served(case, rig.emulator.url, mode="rest", **QUICK_REST) as polled:
        until(lambda: all(n >= 3 for n in polled.stored().values()), 15, f"{case}: polled ticks")
        assert polled.exchange()["mode"] == "rest"
        since = len(polled.events())
        for fault in (Fault.REST_429, Fault.REST_5XX):
            rig.emulator.inject(fault, count=2, retry_after=0.1)
        until(lambda: polled.kinds(since).count("error") >= 4 and polled.kinds(since)[-1] == "reconnect",
              15, f"{case}: four failed polls and a recovery")
        errors = [e for e in polled.events()[since:] if e["kind"] == "error"]
        assert all(e["detail"].startswith("poll failed: ") for e in errors), errors
        polled.flowing(15, "polls to store again", mode="rest")
        for symbol in case.symbols:
            rows = polled.values(symbol)
            assert all(a != b for a, b in itertools.pairwise(rows)), "an unchanged poll was stored"
            positions = walk_positions(rows, walk_values(symbol, case.channel))
            assert all(a < b for a, b in itertools.pairwise(positions)), positions
        faults = rig.emulator.stats.faults
        assert faults[Fault.REST_429] >= 2 and faults[Fault.REST_5XX] >= 2


def test_auto_mode_falls_back_to_rest_and_returns_to_the_websocket(venue_id: str) -> None:
    """Once per venue, on its first channel: falling back is the stream's policy, the same for
    every channel, and each channel's REST method is covered by the REST-mode test."""
    case = Case(venue_id, next(iter(VENUES[venue_id].channels)))
    with EmulatorThread(exchange=venue_id, symbols=case.symbols, rate=60.0) as emulator, \
            Served(case, emulator.url, mode="auto", heartbeat_interval=0.5 * MS,
                   rest_fallback_after=1, ws_probe_interval=0.3 * MS, **QUICK_REST) as served:
        served.flowing(30, "the first ticks")
        # Websockets go silent (REST still answers): a stale session, then polling.
        emulator.inject(Fault.STALL)
        try:
            until(lambda: served.connected("rest"), 10, f"{case}: the fall back to REST polling")
        finally:
            emulator.clear_faults()
        # The websocket answers again: a probe finds it and the stream goes back.
        until(lambda: served.exchange()["mode"] == "websocket", 15, f"{case}: the return")
        served.flowing(10, "websocket ticks again")
        modes = [e["detail"].split(":")[0] for e in served.events() if e["kind"] == "mode"]
        assert modes == ["rest", "websocket"], modes


# -- replay ---------------------------------------------------------------------------------


def _expected_module(venue_id: str) -> ModuleType:
    name = f"tests.venues.expected_{venue_id}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
    pytest.fail(f"{venue_id} has no {name.replace('.', '/')}.py: write expected_replay(path) "
                "-> {symbol: [(last, bid, ask), ...]} read straight from its recording",
                pytrace=False)


def _row_of(expected: Values, channel: Channel) -> Values:
    last, bid, ask = expected
    if channel is Channel.BIDASK:
        assert bid is not None and ask is not None
        return ((bid + ask) / 2.0, bid, ask)
    return (last, bid, ask)


def test_replay_comes_out_of_the_flight_service_exactly_as_recorded(venue_id: str) -> None:
    venue = VENUES[venue_id]
    assert venue.recording is not None, f"{venue_id} names no recording"
    path = default_recording(venue_id)
    if not path.is_file():
        pytest.fail(f"recording of {venue_id!r} missing: expected {path}", pytrace=False)
    expected_replay: Callable[[Any], dict[str, list[Values]]] = _expected_module(venue_id).expected_replay
    expected = expected_replay(path)
    assert expected, f"expected_{venue_id}.expected_replay found nothing in {path}"
    channel = Channel.TICKER if any(row[0] is not None for rows in expected.values() for row in rows) \
        else Channel.BIDASK
    assert channel in venue.channels, f"{venue_id} has no {channel} channel for its recording"
    symbols = sorted(expected)
    case = Case(venue_id, channel)
    want = {s: [_row_of(row, channel) for row in expected[s]] for s in symbols}
    with EmulatorThread(exchange=venue_id, replay=path, speed=0) as emulator, \
            Served(case, emulator.url, symbols=symbols) as served:
        counts = {s: len(want[s]) for s in symbols}
        wait(lambda: served.stored() == counts, 30,
             f"{venue_id}: the whole recording stored ({counts})",
             lambda: f"stored {served.stored()}, emulator sent "
                     f"{ {s: sent(emulator, s) for s in symbols} }")
        assert emulator.stats.unserved_subscriptions == 0, "subscribed to what the recording lacks"
        got = {s: served.values(s) for s in symbols}
        exchange = served.exchange()
    for symbol in symbols:
        assert got[symbol] == want[symbol], f"{venue_id} {symbol}: rows differ from the recording"
    assert exchange["bad_frames"] == {} and exchange["reconnects"] == 0, exchange
