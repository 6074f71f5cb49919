"""Fixtures shared by every test directory.

Kept generic on purpose: other directories (``tests/ingest``, ``tests/clients``,
``tests/security``, ...) have their own conftests, so the fixtures here are either neutral
(``time_scale``) or prefixed (``md_*``), apart from the ``server`` fixture the core service tests
are written against (a directory or module that defines its own ``server`` overrides it there).

* ``time_scale``: the one factor every wait in the tests is multiplied by
  (``FLIGHT_MD_TIME_SCALE``, default 1), so a slow machine can stretch them.
* ``server``: a real :class:`~flight_md.service.FlightMarketDataServer` on
  ``grpc://127.0.0.1:0`` over a filled buffer, with a connected ``pyarrow.flight`` client;
  the server is always stopped afterwards.
* ``md_make_tick``, ``md_layout``: how the fixture's ticks are made and what it holds.
* ``md_server_factory``: the same for a buffer, event log and options of the test's choosing.
* ``--live`` un-skips tests marked ``live`` (real exchanges); ``soak`` tests (hours long) are
  skipped unless selected with ``-m soak``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support import MS

MD_T0 = int(datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp() * 1000)
"""Exchange timestamp of the first tick of the ``server`` fixture: 2026-11-23T10:00:00Z."""

MD_STEP_MS = 100
"""Milliseconds between consecutive ticks of one buffer in the ``server`` fixture."""

MD_FILL = {
    ("binance", "BTC/USDT"): 1000,
    ("binance", "ETH/USDT"): 500,
    ("bybit", "ETH/USDT"): 300,
    ("bybit", "SOL/USDT"): 50,
}
"""What the ``server`` fixture's buffer holds: ticks per (exchange, symbol)."""

MD_BUFFER_SIZE = 10_000


# -- data directories ------------------------------------------------------------------------


def _data_home(factory: pytest.TempPathFactory, name: str) -> Iterator[Any]:
    home = factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(home))
        yield home


@pytest.fixture(scope="session", autouse=True)
def md_session_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The default data dir of servers started by session fixtures (see ``md_data_home``)."""
    yield from _data_home(tmp_path_factory, "xdg-session")


@pytest.fixture(scope="module", autouse=True)
def md_module_data_home(tmp_path_factory: pytest.TempPathFactory,
                        md_session_data_home: Any) -> Iterator[Any]:
    """The default data dir of servers started by module fixtures (see ``md_data_home``)."""
    yield from _data_home(tmp_path_factory, "xdg-module")


@pytest.fixture(autouse=True)
def md_data_home(tmp_path_factory: pytest.TempPathFactory, md_module_data_home: Any) -> Iterator[Any]:
    """Every test gets its own ``$XDG_DATA_HOME``: servers it starts (in process or as
    processes, which inherit the variable) persist into a fresh default data dir, never into
    the user's ``~/.local/share/flight-md`` and never into another test's. (Autouse fixtures
    of a wider scope do the same for servers that session and module fixtures start: they
    are set up before the other fixtures of their scope.)"""
    yield from _data_home(tmp_path_factory, "xdg-data")


# -- command line and markers --------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--live", action="store_true", default=False,
                     help="run tests marked 'live' (they talk to real exchanges)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    live = config.getoption("--live")
    soak = "soak" in (config.getoption("-m") or "")
    skip_live = pytest.mark.skip(reason="talks to real exchanges; run with --live")
    skip_soak = pytest.mark.skip(reason="long soak run; select with -m soak")
    for item in items:
        # Markers, not keywords: a directory named "live" must not skip everything in it.
        if not live and item.get_closest_marker("live") is not None:
            item.add_marker(skip_live)
        if not soak and item.get_closest_marker("soak") is not None:
            item.add_marker(skip_soak)


# -- time ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def time_scale() -> float:
    """The time-scale factor (``FLIGHT_MD_TIME_SCALE``); multiply every wait by it."""
    return MS


@dataclass(frozen=True)
class MdLayout:
    """The constants of the ``server`` fixture's data, for tests (they cannot import conftest)."""

    t0: int = MD_T0
    step_ms: int = MD_STEP_MS
    buffer_size: int = MD_BUFFER_SIZE
    fill: tuple[tuple[tuple[str, str], int], ...] = tuple(MD_FILL.items())

    def count(self, exchange: str, symbol: str) -> int:
        return dict(self.fill)[(exchange, symbol)]


@pytest.fixture(scope="session")
def md_layout() -> MdLayout:
    """What the ``server`` fixture's buffer holds (see :data:`MD_FILL`)."""
    return MdLayout()


# -- ticks ---------------------------------------------------------------------------------


def _make_tick(i: int, symbol: str = "BTC/USDT", exchange: str = "binance", *,
               timestamp: int | None = None, full: bool = True) -> Any:
    from flight_md.schema import MarketTick

    ts = MD_T0 + i * MD_STEP_MS if timestamp is None else timestamp
    price = 2.0 * i + 1.0
    if full:
        return MarketTick(symbol, ts, price, 10.0 + i, price - 0.5, price + 0.5, price + 5.0,
                          price - 5.0, price - 1.0, price, exchange, ts + 7)
    return MarketTick(symbol, ts, price, None, None, None, None, None, None, None, exchange,
                      ts + 7)


@pytest.fixture(scope="session")
def md_make_tick() -> Callable[..., Any]:
    """``md_make_tick(i, symbol="BTC/USDT", exchange="binance", *, timestamp=None, full=True)``.

    Tick ``i`` has timestamp ``MD_T0 + i * MD_STEP_MS`` (unless given), price ``2 i + 1``,
    receive timestamp ``timestamp + 7``; ``full=False`` leaves every optional field ``None``.
    """
    return _make_tick


def md_fill(buffer: Any) -> None:
    """Fill ``buffer`` as described by :data:`MD_FILL` (SOL/USDT without optional fields)."""
    for (exchange, symbol), count in MD_FILL.items():
        buffer.extend(_make_tick(i, symbol, exchange, full=symbol != "SOL/USDT")
                      for i in range(count))


# -- Flight server -------------------------------------------------------------------------


@dataclass
class MdServer:
    """A running server, its buffer and event log, and a connected client."""

    server: Any
    client: Any
    buffer: Any
    events: Any
    location: str

    def connect(self) -> Any:
        """Another client connected to the same server (closed by the fixture)."""
        from pyarrow import flight

        client = flight.FlightClient(self.location)
        self._extra.append(client)
        return client

    def __post_init__(self) -> None:
        self._extra: list[Any] = []


@pytest.fixture
def md_server_factory(time_scale: float) -> Iterator[Callable[..., MdServer]]:
    """``md_server_factory(buffer=None, events=None, **server_options) -> MdServer``.

    Starts a real server on ``grpc://127.0.0.1:0``; every server started is stopped (and
    every client closed) at teardown, even if the test failed.
    """
    import pyarrow as pa
    from pyarrow import flight

    from flight_md.buffer import MarketDataBuffer
    from flight_md.events import EventLog
    from flight_md.service import FlightMarketDataServer

    started: list[MdServer] = []

    def start(buffer: Any = None, events: Any = None, **options: Any) -> MdServer:
        buffer = buffer if buffer is not None else MarketDataBuffer(MD_BUFFER_SIZE)
        events = events if events is not None else EventLog()
        server = FlightMarketDataServer("grpc://127.0.0.1:0", buffer, events=events, **options)
        location = f"grpc://127.0.0.1:{server.port}"
        try:
            client = flight.FlightClient(location)
        except BaseException:
            server.stop(1.0 * time_scale)
            raise
        harness = MdServer(server, client, buffer, events, location)
        started.append(harness)
        return harness

    yield start

    for harness in started:
        for client in [harness.client, *harness._extra]:
            # A severed connection may fail to close cleanly.
            with contextlib.suppress(pa.ArrowException, flight.FlightError):
                client.close()
        assert harness.server.stop(2.0 * time_scale), "server did not stop in time"


@pytest.fixture
def server(md_server_factory: Callable[..., MdServer]) -> MdServer:
    """A real server over a buffer filled per :data:`MD_FILL`, with a connected client."""
    from flight_md.buffer import MarketDataBuffer

    buffer = MarketDataBuffer(MD_BUFFER_SIZE)
    md_fill(buffer)
    return md_server_factory(buffer)
