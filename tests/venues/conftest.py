"""Parametrization and rigs of the venue suite: real emulators, real ccxt, real Flight servers.

Every test of :mod:`tests.venues.test_venues` takes one of two parameters, generated from the
venue registry so that registering a venue (``flight_md/venues/<id>.py``) is all it takes to
cover it:

* ``case``: a :class:`Case`, one per (emulated venue, channel it has): ``binance-ticker``,
  ``bybit-bidask``, ... (``pytest -k coinbase`` selects one venue).
* ``venue_id``: one per emulated venue (the replay tests).

Both are module-scoped, so the :func:`rig` of a case (an emulator and a server streaming from
it) is started once and shared by the tests of that case, which run in file order.

A :class:`Rig` is a synthetic :class:`~flight_md.emulator.EmulatorThread` (the venue's
``test_symbols``) and a :class:`Served`: a :class:`~flight_md.app.MarketDataApp` on
``grpc://127.0.0.1:0`` streaming the case's channel from the emulator through unmodified
ccxt.pro, read with a ``pyarrow.flight`` client (ticks, ``@events``, the ``status`` action).

What the emulator sent is known two ways, neither of them a copy of the code under test:
``EmulatorStats.frames`` counts the intact data frames it wrote, and the synthetic markets are
deterministic random walks (:class:`~flight_md.emulator.synthetic.PriceWalk`, seeded by
``(seed, symbol)``), so :func:`walk_values` replays, step by step, the very quotes the emulator
rendered.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig, StreamConfig
from flight_md.emulator import EmulatorThread, Fault, Market
from flight_md.emulator.synthetic import PriceWalk
from flight_md.normalize import TICKER_LIKE, Channel
from flight_md.venues import VENUES, Venue, emulated
from tests.support import MS, until

__all__ = ["BUFFER", "FAST", "SEED", "Case", "Rig", "Served", "Values", "sent", "wait", "walk_positions",
           "walk_values"]

SEED: Final = 11
RATE: Final = 60.0
"""Synthetic updates a second over the rig's symbols (each symbol gets its share)."""
BUFFER: Final = 200_000
"""Ticks kept per symbol: far more than a run stores, so nothing is ever evicted."""
HEARTBEAT_S: Final = 1.0 * MS
FAST: Final[dict[str, Any]] = {
    "heartbeat_interval": HEARTBEAT_S, "reconnect_delay": 0.05, "max_reconnect_delay": 0.3,
}
"""Stream options that keep recovery quick: a short heartbeat and backoff."""
OPTIONS: Final = flight.FlightCallOptions(timeout=20 * MS)

Values = tuple[float | None, float | None, float | None]
"""``(price, bid, ask)`` of one row (for ``bidask`` the price is the mid)."""


@dataclass(frozen=True, slots=True)
class Case:
    """One channel of one venue."""

    venue_id: str
    channel: Channel

    @property
    def venue(self) -> Venue:
        return VENUES[self.venue_id]

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.venue.test_symbols

    def __str__(self) -> str:
        return f"{self.venue_id}-{self.channel.value}"


def cases() -> list[Case]:
    """Every (emulated venue, tick channel) pair, in registration order (trades and books have
    suites of their own: tests/ingest/test_trades*.py, tests/ingest/test_book*.py)."""
    return [Case(venue_id, channel) for venue_id in emulated() for channel in VENUES[venue_id].channels
            if channel in TICKER_LIKE]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases(), ids=str, scope="module")
    elif "venue_id" in metafunc.fixturenames:
        metafunc.parametrize("venue_id", emulated(), scope="module")


def wait(predicate: Callable[[], Any], timeout: float, what: str,
         show: Callable[[], object] | None = None) -> Any:
    """:func:`tests.support.until`, whose failure also shows ``show()`` at the time it gave up."""
    try:
        return until(predicate, timeout, what)
    except AssertionError as error:
        if show is None:
            raise
        raise AssertionError(f"{error}; at the end: {show()}") from None


# -- serving ---------------------------------------------------------------------------------


class Served:
    """A :class:`MarketDataApp` streaming one venue channel, and a Flight client to it.

    Args:
        case: The venue and channel.
        url: The emulator's base URL.
        symbols: What to subscribe (default: the venue's test symbols).
        **options: More :class:`StreamConfig` options (over :data:`FAST`).
    """

    def __init__(self, case: Case, url: str, symbols: Sequence[str] | None = None,
                 **options: Any) -> None:
        self.case = case
        self.symbols = tuple(symbols if symbols is not None else case.symbols)
        stream = StreamConfig(case.venue_id, self.symbols, channel=case.channel.value, url=url,
                              buffer_size=BUFFER, **{"mode": "websocket", **FAST, **options})
        # Its own data dir: cases share a module's fixtures, never their stored history.
        self.data_dir = Path(tempfile.mkdtemp(prefix="flight-md-venue-"))
        self.app = MarketDataApp(ServerConfig(port=0, buffer_size=BUFFER, streams=(stream,),
                                              data_dir=self.data_dir))
        self.app.start()
        try:
            self.client = flight.connect(self.app.location)
        except BaseException:
            self.app.stop()
            raise

    def close(self) -> None:
        with contextlib.suppress(pa.ArrowException, flight.FlightError):
            self.client.close()
        self.app.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading through Flight --------------------------------------------------------------

    def action(self, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        results = list(self.client.do_action(flight.Action(name, payload), OPTIONS))
        return dict(json.loads(results[0].body.to_pybytes()))

    def status(self) -> dict[str, Any]:
        return self.action("status")

    def exchange(self) -> dict[str, Any]:
        """The ``status`` entry of the stream's exchange."""
        return dict(self.status()["exchanges"][self.case.venue_id])

    def stored(self) -> dict[str, int]:
        """Ticks stored per symbol (every symbol asked for, 0 if none yet)."""
        found = {s["symbol"]: s["ticks_stored"] for s in self.status()["symbols"]
                 if s["exchange"] == self.case.venue_id}
        return {symbol: int(found.get(symbol, 0)) for symbol in self.symbols}

    def rows(self, symbol: str) -> pa.Table:
        """Every stored tick of ``symbol``, oldest first."""
        ticket = flight.Ticket(f"{symbol}?exchange={self.case.venue_id}".encode())
        return self.client.do_get(ticket, OPTIONS).read_all()

    def values(self, symbol: str) -> list[Values]:
        table = self.rows(symbol)
        return list(zip(table.column("price").to_pylist(), table.column("bid").to_pylist(),
                        table.column("ask").to_pylist(), strict=True))

    def events(self) -> list[dict[str, Any]]:
        """The exchange's ``@events``, oldest first."""
        ticket = flight.Ticket(f"@events?exchange={self.case.venue_id}".encode())
        return list(self.client.do_get(ticket, OPTIONS).read_all().to_pylist())

    def kinds(self, since: int = 0) -> list[str]:
        """Kinds of the events from the ``since``-th on."""
        return [event["kind"] for event in self.events()[since:]]

    # -- conditions ---------------------------------------------------------------------------

    def connected(self, mode: str = "websocket") -> bool:
        exchange = self.exchange()
        return (exchange["state"] == "connected" and exchange["mode"] == mode
                and sorted(exchange["symbols"]) == sorted(self.symbols))

    def flowing(self, timeout: float = 10.0, what: str = "every symbol to flow",
                mode: str = "websocket") -> dict[str, int]:
        """Wait until the stream is connected in ``mode`` with every symbol, and each symbol
        stores new ticks; return the counts."""
        until(lambda: self.connected(mode), timeout, f"{self.case}: connected ({mode})")
        before = self.stored()

        def grown() -> dict[str, int] | None:
            now = self.stored()
            return now if all(now[s] > before[s] for s in now) else None

        counts: dict[str, int] = wait(grown, timeout, f"{self.case}: {what}", self.stored)
        return counts


def sent(emulator: EmulatorThread, symbol: str) -> int:
    """Intact data frames the emulator wrote for ``symbol``, over every channel and connection."""
    return sum(count for key, count in emulator.stats.frames.items() if key.symbol == symbol)


class Rig:
    """A synthetic emulator of the case's venue and a server streaming the case's channel.

    ``gap`` tracks, per symbol, intact frames the emulator wrote less ticks stored, as of the
    last :meth:`settled`: frames written to connections already given up on (an upper bound
    once a fault lost some), less corrupted frames ccxt repaired and the stream stored (which
    the emulator does not count as intact). 0 until a fault.
    """

    def __init__(self, case: Case) -> None:
        self.case = case
        self.emulator = EmulatorThread(exchange=case.venue_id, symbols=case.symbols, rate=RATE,
                                       seed=SEED)
        self.emulator.start()
        try:
            self.served = Served(case, self.emulator.url)
        except BaseException:
            self.emulator.stop()
            raise
        self.gap = dict.fromkeys(case.symbols, 0)

    def close(self) -> None:
        try:
            self.served.close()
        finally:
            self.emulator.stop()

    def sent(self) -> dict[str, int]:
        return {symbol: sent(self.emulator, symbol) for symbol in self.case.symbols}

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """The emulator stalls (writes nothing) inside the block: what it sent stays fixed."""
        self.emulator.inject(Fault.STALL)
        try:
            yield
        finally:
            self.emulator.clear_faults()

    @contextlib.contextmanager
    def settled(self, lost: int = 0) -> Iterator[dict[str, tuple[int, int]]]:
        """Stall the emulator until the store holds what it sent, less at most ``lost`` more
        frames per symbol than already lost; the block gets ``(sent, stored)`` per symbol and
        runs with the emulator still stalled (so the store holds still).

        "Nothing in flight" is a condition, not a pause: the live connection delivers every
        frame written to it, so the stored counts reach the sent counts less what went to
        connections nobody reads any more.
        """
        with self.quiet():
            def caught_up() -> dict[str, tuple[int, int]] | None:
                sent_, stored = self.sent(), self.served.stored()
                counts = {s: (sent_[s], stored[s]) for s in self.case.symbols}
                return counts if all(a - b <= self.gap[s] + lost for s, (a, b) in counts.items()) \
                    else None

            counts: dict[str, tuple[int, int]] = wait(
                caught_up, 10, f"{self.case}: the store to catch up with the emulator (at most "
                               f"{lost} more frames lost per symbol than {self.gap})",
                lambda: f"sent {self.sent()}, stored {self.served.stored()}")
            for symbol, (sent_, stored) in counts.items():
                self.gap[symbol] = sent_ - stored
            yield counts

    def settle(self, lost: int = 0) -> dict[str, tuple[int, int]]:
        """:meth:`settled`, and the emulator goes on at once."""
        with self.settled(lost) as counts:
            return counts


@pytest.fixture(scope="module")
def rig(case: Case) -> Iterator[Rig]:
    """The case's rig, streaming every test symbol; shared by the case's tests."""
    made = Rig(case)
    try:
        made.served.flowing(30, "the first ticks")
        yield made
    finally:
        made.close()


# -- what the emulator sent ----------------------------------------------------------------


def walk_values(symbol: str, channel: Channel, seed: int = SEED) -> Iterator[Values]:
    """The ``(price, bid, ask)`` a row shows for each quote of ``symbol``'s synthetic walk.

    The first is the walk's state before any update (what a venue that pushes a snapshot on
    subscribing sends first), then one per update. Prices are rounded to the market's grid,
    as they travel on the wire; a best bid/ask row's price is the mid.
    """
    market = Market.from_symbol(symbol)
    walk = PriceWalk(market, seed)
    digits = market.price_decimals
    quote = walk.quote
    while True:
        bid, ask = round(quote.bid, digits), round(quote.ask, digits)
        if channel is Channel.BIDASK:
            yield ((bid + ask) / 2.0, bid, ask)
        else:
            yield (round(quote.last, digits), bid, ask)
        quote = walk.step(0)


def walk_positions(rows: Sequence[Values], reference: Iterator[Values],
                   lookahead: int = 20_000) -> list[int]:
    """Where each row is in the walk: strictly increasing positions, but for a repeated
    snapshot (the same position twice).

    A field the row lacks (``None``: the channel does not carry it) is not compared.

    Raises:
        AssertionError: A row is not among the next ``lookahead`` quotes of the walk.
    """
    seen: list[Values] = []
    positions: list[int] = []
    position = 0
    for number, row in enumerate(rows):
        limit = position + lookahead
        while True:
            while len(seen) <= position:
                seen.append(next(reference))
            if _same(row, seen[position]):
                break
            position += 1
            if position > limit:
                last = seen[positions[-1]] if positions else None
                raise AssertionError(f"row {number} {row} is not a quote the emulator rendered "
                                     f"after {last} (position {positions[-1] if positions else '-'})")
        positions.append(position)
    return positions


def _same(row: Values, quote: Values) -> bool:
    return all(got is None or got == want for got, want in zip(row, quote, strict=True)) \
        and row[0] is not None

