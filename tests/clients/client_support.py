"""Shared helpers for the client, terminal, example and notebook tests: real servers.

Two kinds of real server:

* :func:`market`: a :class:`~flight_md.service.FlightMarketDataServer` on ``127.0.0.1:0``
  over a synthetic market (known prices and timestamps) and no ingestion, for what the client
  does with what a server serves (reads, tails, errors, formatting);
* :class:`IngestingMarket`: the same server assembled by :class:`~flight_md.app.MarketDataApp`
  exactly as ``flight-md serve`` does, with real ccxt streaming from the exchange emulator
  (:class:`~flight_md.emulator.EmulatorThread`), for every behaviour that needs ingestion
  (``status`` of exchanges and symbols, reconnects, subscribe and unsubscribe).

Every wait is a condition wait from :mod:`tests.support` (``MS`` stretches them all).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Self

from flight_md.app import MarketDataApp
from flight_md.buffer import MarketDataBuffer
from flight_md.config import DEMO_SYMBOLS, ServerConfig, StreamConfig
from flight_md.emulator import EmulatorThread, Fault
from flight_md.errors import NotFound
from flight_md.events import EventKind, EventLog
from flight_md.schema import MarketTick, now_ms
from flight_md.service import FlightMarketDataServer
from tests.support import MS, ChildProcess, ServerProcess, until

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "python"
EXAMPLES = ROOT / "clients" / "examples"
STEP_MS = 1000
ROWS = 600
"""Ticks per synthetic symbol: ten minutes, one a second, ending about now."""


def scaled(seconds: float) -> float:
    """A timeout handed to an API (not a wait of ours), stretched by ``MS``."""
    return seconds * MS


def base_ms() -> int:
    """A whole second, ``ROWS`` seconds before now: the first synthetic tick's timestamp."""
    return (now_ms() // 1000) * 1000 - ROWS * STEP_MS


def tick(symbol: str, timestamp: int, price: float, exchange: str = "binance",
         volume: float | None = 1000.0) -> MarketTick:
    return MarketTick(symbol, timestamp, price, volume, price - 0.5, price + 0.5, price + 10,
                      price - 10, price - 1, price, exchange, timestamp + 7)


def fill(buffer: MarketDataBuffer, start_ms: int, rows: int = ROWS) -> None:
    """BTC/USDT (price 100 + i), ETH/USDT (10 + i) on binance, SOL/USDT on binance and bybit."""
    for i in range(rows):
        ts = start_ms + i * STEP_MS
        buffer.append(tick("BTC/USDT", ts, 100.0 + i, volume=1000.0 + i))
        buffer.append(tick("ETH/USDT", ts, 10.0 + i))
    for i in range(10):
        ts = start_ms + i * STEP_MS
        buffer.append(tick("SOL/USDT", ts, 50.0 + i))
        buffer.append(tick("SOL/USDT", ts, 60.0 + i, exchange="bybit"))


@contextlib.contextmanager
def running_server(buffer: MarketDataBuffer | None = None, *, location: str =
                   "grpc://127.0.0.1:0", **kwargs: Any) -> Iterator[FlightMarketDataServer]:
    server = FlightMarketDataServer(location, buffer if buffer is not None
                                    else MarketDataBuffer(1000), **kwargs)
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def market(capacity: int = 1000, **kwargs: Any
           ) -> contextlib.AbstractContextManager[FlightMarketDataServer]:
    """A server over the synthetic market and its event log, without ingestion.

    For what the client does with data a real server serves (reads, tails, formatting).
    Behaviour that needs ingestion (``status`` of exchanges, subscribe, reconnects) is tested
    against :func:`ingesting_market`, real ccxt fed by the exchange emulator.
    """
    buffer = MarketDataBuffer(capacity)
    events = EventLog()
    start = base_ms()
    fill(buffer, start)
    events.record("binance", EventKind.CONNECT, (), "connected", timestamp=start)
    events.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT", "ETH/USDT"), "subscribed",
                  timestamp=start + 1)
    events.record("bybit", EventKind.RECONNECT, ("SOL/USDT",), "reset by peer",
                  timestamp=start + 2)
    server_cm = running_server(buffer, events=events, **kwargs)
    return _with_attrs(server_cm, start=start)


@contextlib.contextmanager
def _with_attrs(cm: contextlib.AbstractContextManager[FlightMarketDataServer],
                **attrs: Any) -> Iterator[FlightMarketDataServer]:
    with cm as server:
        for key, value in attrs.items():
            setattr(server, f"test_{key}", value)
        yield server


class Feeder:
    """Appends ticks of one symbol at a steady rate on a thread, prices 1000, 1001, ..."""

    def __init__(self, buffer: MarketDataBuffer, symbol: str = "BTC/USDT",
                 exchange: str = "binance", interval: float = 0.02) -> None:
        self.buffer = buffer
        self.symbol = symbol
        self.exchange = exchange
        self.interval = interval
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-feeder", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.buffer.append(tick(self.symbol, now_ms(), 1000.0 + self.sent,
                                    exchange=self.exchange))
            self.sent += 1

    def start(self) -> Self:
        """Start feeding (idempotent)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5 * MS)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()




def followers(buffer: MarketDataBuffer, symbol: str, exchange: str = "binance") -> int:
    """Live tails the server holds open on (exchange, symbol)."""
    return next((s.followers for s in buffer.stats(exchange) if s.symbol == symbol), 0)


def tail_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flight-md-tail")]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The socket is bound (so no other process can take the port) but never listens, so a
    connection attempt gets a TCP reset: "connection refused", with no race for the port.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


_SERVE_ONE_TICK: Final = """
import time
from flight_md.buffer import MarketDataBuffer
from flight_md.schema import MarketTick
from flight_md.service import FlightMarketDataServer
buffer = MarketDataBuffer(100)
buffer.append(MarketTick("BTC/USDT", 1, 1.0, None, None, None, None, None, None, None,
                         "binance", 1))
server = FlightMarketDataServer("grpc://127.0.0.1:0", buffer)
print(f"serving on grpc://127.0.0.1:{server.port}", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def killable_server() -> Iterator[tuple[ChildProcess, str]]:
    """A real server in a child process holding one BTC/USDT tick, and its location.

    For a lost connection: ``child.kill()`` (SIGKILL, no goodbye) makes the process vanish
    under an open stream.
    """
    with ChildProcess(["-c", _SERVE_ONE_TICK], ready=re.compile(r"serving on (\S+)")) as child:
        assert child.ready_value is not None
        yield child, child.ready_value


# -- real ingestion: the emulator, real ccxt, the server as `flight-md serve` assembles it --

WIRE_CHANNEL: Final = "ticker"
"""The emulator's name for the binance channel the ``ticker`` stream subscribes."""
LISTED: Final = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
"""Markets the emulator lists."""
STREAMED: Final = ("BTC/USDT", "ETH/USDT")
"""Symbols the server streams from the start."""


class IngestingMarket:
    """An emulated binance (on its own thread) and a :class:`MarketDataApp` streaming from it.

    Fresh for each test: nothing (faults, subscriptions, counters) leaks between scenarios.

    Args:
        symbols: Symbols the server streams from the start.
        rate: Emulator updates per second, spread over the subscribed streams.
        **server: Further :class:`ServerConfig` fields (tokens, buffer size, ...).
    """

    def __init__(self, symbols: tuple[str, ...] = STREAMED, rate: float = 60.0,
                 buffer_size: int = 5000, **server: Any) -> None:
        self.symbols = symbols
        self.emulator = EmulatorThread(exchange="binance", symbols=LISTED, rate=rate, seed=3)
        self._buffer_size = buffer_size
        self._server = server
        self.app: MarketDataApp | None = None

    def start(self) -> Self:
        url = self.emulator.start()
        stream = StreamConfig("binance", self.symbols, channel="ticker", mode="websocket",
                              url=url, reconnect_delay=0.05, max_reconnect_delay=0.4,
                              heartbeat_interval=60.0 * MS)
        try:
            self.app = MarketDataApp(ServerConfig(port=0, buffer_size=self._buffer_size,
                                                  streams=(stream,), **self._server)).start()
            until(lambda: all(self.stored(s) >= 3 for s in self.symbols), 30,
                  f"ticks of {', '.join(self.symbols)} to be stored")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop(1.0)
            self.app = None
        self.emulator.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def location(self) -> str:
        assert self.app is not None
        return self.app.location

    @property
    def buffer(self) -> MarketDataBuffer:
        assert self.app is not None
        return self.app.buffer

    @property
    def events(self) -> EventLog:
        assert self.app is not None
        return self.app.events

    def stored(self, symbol: str) -> int:
        """Ticks the server holds for ``symbol``."""
        try:
            return self.buffer.count(symbol, "binance")
        except NotFound:
            return 0

    def sent(self, symbol: str) -> int:
        """Intact frames the emulator wrote for ``symbol``, over every connection."""
        return self.emulator.sent(WIRE_CHANNEL, symbol)

    def kinds(self) -> list[str]:
        """The kinds of the events logged for binance, in order."""
        return [e.kind.value for e in self.events.events("binance")]

    def freeze(self) -> dict[str, int]:
        """Stall the exchange and wait until every frame it wrote is stored.

        Returns:
            Frames written per subscribed symbol: from now on the exact figures of the server.
        """
        self.emulator.inject(Fault.STALL)
        sent = {s: self.sent(s) for s in self.symbols}
        until(lambda: {s: self.stored(s) for s in self.symbols} == sent, 30,
              f"the {sum(sent.values())} frames written to be stored")
        return sent

    def reset_once(self) -> None:
        """Reset every exchange connection and wait until the stream has reconnected and
        ticks flow again."""
        assert self.kinds().count("reconnect") == 0
        before = {s: self.stored(s) for s in self.symbols}
        assert self.emulator.inject(Fault.RESET) >= 1
        until(lambda: "reconnect" in self.kinds(), 30, "the stream to reconnect")
        until(lambda: all(self.stored(s) > before[s] for s in self.symbols), 30,
              "ticks after the reconnect")


# -- the demo server, as a user starts it ----------------------------------------------------


@contextlib.contextmanager
def demo_server() -> Iterator[str]:
    """``flight-md serve --demo --port 0`` in a child process; yield its location once every
    demo symbol has at least 10 ticks stored.

    A demo that cannot start (a broken install, a missing module) fails the test: nothing here
    turns it into a skip.
    """
    from flight_md_client import MarketDataClient

    with ServerProcess("--demo", "--log-level", "WARNING") as server, \
            MarketDataClient(server.location, timeout=10.0 * MS) as md:
        until(lambda: {s.symbol for s in md.symbols() if s.records >= 10} == set(DEMO_SYMBOLS),
              60, "every demo symbol to have 10 ticks")
        yield server.location


TRADE_ROWS = 300
"""Synthetic trades of BTC/USDT on binance: one every 400 ms (two minutes)."""
BOOK_ROWS = 50
BOOK_LEVELS = 12
"""Levels a side each synthetic book update has (the store keeps the default 10)."""


def synthetic_trades(start_ms: int) -> list[dict[str, Any]]:
    """The trades :func:`channel_market` stores, as rows of the trades schema."""
    return [{"symbol": "BTC/USDT", "exchange": "binance", "timestamp": start_ms + i * 400,
             "trade_id": str(1_000_000 + i), "price": 100.0 + (i % 17) * 0.5,
             "amount": 0.1 + (i % 5) * 0.25, "side": "buy" if i % 3 else "sell",
             "receive_timestamp": start_ms + i * 400 + 3} for i in range(TRADE_ROWS)]


def synthetic_books(start_ms: int) -> list[dict[str, Any]]:
    """The book updates :func:`channel_market` stores, in ccxt form (all levels)."""
    return [{"timestamp": start_ms + i * 1000, "nonce": 5000 + i,
             "bids": [[99.5 - k * 0.5 + i * 0.01, 0.1 * (i + k + 1)] for k in range(BOOK_LEVELS)],
             "asks": [[100.5 + k * 0.5 + i * 0.01, 0.2 * (i + k + 1)] for k in range(BOOK_LEVELS)],
             "receive_timestamp": start_ms + i * 1000 + 5} for i in range(BOOK_ROWS)]


def channel_market(capacity: int = 1000, **kwargs: Any
                   ) -> contextlib.AbstractContextManager[FlightMarketDataServer]:
    """:func:`market`'s ticks, plus trades and books of BTC/USDT on binance, in one store.

    ETH/USDT and SOL/USDT have ticks only; the event log holds a connect and a reconnect.
    The server's ``test_store`` is the
    :class:`~flight_md.buffer.Store`, ``test_trades``/``test_books`` what was stored.
    """
    from flight_md.buffer import Store

    start = base_ms()
    store = Store(capacity)
    fill(store.buffer("ticker"), start)
    trades = synthetic_trades(start)
    for t in trades:
        store.buffer("trades").append_trade(
            t["exchange"], t["symbol"], t["timestamp"], t["trade_id"], t["price"], t["amount"],
            t["side"], t["receive_timestamp"])
    books = synthetic_books(start)
    for b in books:
        store.buffer("book").append_book("binance", "BTC/USDT", b["timestamp"], b["bids"],
                                         b["asks"], b["nonce"], b["receive_timestamp"])
    events = EventLog()
    events.record("binance", EventKind.CONNECT, (), "connected", timestamp=start)
    events.record("bybit", EventKind.RECONNECT, ("SOL/USDT",), "reset by peer",
                  timestamp=start + 2)
    server_cm = running_server(store.buffer("ticker"), store=store, events=events, **kwargs)
    return _with_attrs(server_cm, start=start, store=store, trades=trades, books=books)


class ChannelFeeder:
    """Appends trades (and a book every ``book_every`` trades) of BTC/USDT at now, on a thread:
    prices wander around 100, books around the last trade, as a live market would."""

    def __init__(self, store: Any, symbol: str = "BTC/USDT", exchange: str = "binance",
                 interval: float = 0.01, book_every: int = 5) -> None:
        self.store = store
        self.symbol = symbol
        self.exchange = exchange
        self.interval = interval
        self.book_every = book_every
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-channel-feeder",
                                        daemon=True)

    def _run(self) -> None:
        trades, books = self.store.buffer("trades"), self.store.buffer("book")
        while not self._stop.wait(self.interval):
            i = self.sent
            ts = now_ms()
            price = 100.0 + (i % 40 - 20) * 0.05
            trades.append_trade(self.exchange, self.symbol, ts, str(5_000_000 + i), price,
                                0.01 * (1 + i % 7), "buy" if i % 2 else "sell", ts)
            if i % self.book_every == 0:
                books.append_book(self.exchange, self.symbol, ts,
                                  [[price - 0.05 * (k + 1), 0.5 + k] for k in range(10)],
                                  [[price + 0.05 * (k + 1), 0.4 + k] for k in range(10)],
                                  i, ts)
            self.sent += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5 * MS)
