"""Shared helpers for the client, example and notebook tests: real servers, synthetic ticks.

Every test talks to a real :class:`~flight_md.service.FlightMarketDataServer` on
``127.0.0.1:0`` through real gRPC. Waits are multiplied by :data:`SCALE`
(``FLIGHT_MD_TIME_SCALE``, as in tests/conftest.py) so a slow machine can stretch them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from flight_md.buffer import MarketDataBuffer
from flight_md.control import ExchangeStatus, IngestionStatus, SymbolStatus
from flight_md.errors import UnknownExchange
from flight_md.events import EventKind, EventLog
from flight_md.schema import MarketTick, now_ms
from flight_md.service import FlightMarketDataServer

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "python"
EXAMPLES = ROOT / "clients" / "examples"
SCALE = float(os.environ.get("FLIGHT_MD_TIME_SCALE", "1"))
STEP_MS = 1000
ROWS = 600
"""Ticks per synthetic symbol: ten minutes, one a second, ending about now."""


def scaled(seconds: float) -> float:
    return seconds * SCALE


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it is truthy; return it, or fail after ``timeout`` (scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f} s waiting for "
                                 f"{getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


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


class StaticControl:
    """A real :class:`~flight_md.control.IngestionControl` without exchanges: it keeps the
    subscription list, reports a fixed connection state, and records what it was asked."""

    def __init__(self, buffer: MarketDataBuffer, exchanges: Sequence[str] = ("binance",),
                 reconnects: int = 2) -> None:
        self.buffer = buffer
        self.subscribed: dict[str, list[str]] = {e: [] for e in exchanges}
        self.reconnects = reconnects
        self.calls: list[tuple[str, str | None, tuple[str, ...]]] = []

    def _exchange(self, exchange: str | None) -> str:
        if exchange is None:
            return next(iter(self.subscribed))
        if exchange not in self.subscribed:
            raise UnknownExchange(f"unknown exchange {exchange!r}")
        return exchange

    def subscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        self.calls.append(("subscribe", exchange, tuple(symbols)))
        name = self._exchange(exchange)
        for symbol in symbols:
            if symbol not in self.subscribed[name]:
                self.subscribed[name].append(symbol)
        return {"exchange": name, "subscribed": list(symbols)}

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        self.calls.append(("unsubscribe", exchange, tuple(symbols)))
        name = self._exchange(exchange)
        self.subscribed[name] = [s for s in self.subscribed[name] if s not in symbols]
        return {"exchange": name, "unsubscribed": list(symbols)}

    def status(self) -> IngestionStatus:
        exchanges = tuple(ExchangeStatus(name, "connected", "websocket", "ticker",
                                         self.reconnects, tuple(symbols))
                          for name, symbols in self.subscribed.items())
        symbols = []
        for stats in self.buffer.stats():
            if stats.exchange in self.subscribed:
                symbols.append(SymbolStatus(
                    stats.exchange, stats.symbol, stats.symbol in self.subscribed[stats.exchange],
                    stats.appended, 0, False, stats.last_receive_timestamp))
        return IngestionStatus(exchanges, tuple(symbols))


@contextlib.contextmanager
def running_server(buffer: MarketDataBuffer | None = None, *, location: str =
                   "grpc://127.0.0.1:0", **kwargs: Any) -> Iterator[FlightMarketDataServer]:
    server = FlightMarketDataServer(location, buffer if buffer is not None
                                    else MarketDataBuffer(1000), **kwargs)
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def market(capacity: int = 1000, control: bool = True, **kwargs: Any
           ) -> contextlib.AbstractContextManager[FlightMarketDataServer]:
    """A server over the synthetic market, with an event log and (optionally) a control."""
    buffer = MarketDataBuffer(capacity)
    events = EventLog()
    start = base_ms()
    fill(buffer, start)
    events.record("binance", EventKind.CONNECT, (), "connected", timestamp=start)
    events.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT", "ETH/USDT"), "subscribed",
                  timestamp=start + 1)
    events.record("bybit", EventKind.RECONNECT, ("SOL/USDT",), "reset by peer",
                  timestamp=start + 2)
    ctl = StaticControl(buffer, ("binance", "bybit")) if control else None
    if ctl is not None:
        ctl.subscribed["binance"] = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
        ctl.subscribed["bybit"] = ["SOL/USDT"]
    server_cm = running_server(buffer, events=events, control=ctl, **kwargs)
    return _with_attrs(server_cm, start=start, control_obj=ctl)


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

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: flight_md and flight_md_client importable."""
    env = dict(os.environ)
    paths = [str(ROOT), str(CLIENT_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("FLIGHT_MD_TOKEN", None)
    env.update(extra)
    return env


def tail_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flight-md-tail")]


# The demo server, as a user starts it.
_MISSING = ("No module named", "ModuleNotFoundError", "invalid choice", "unrecognized arguments")


class DemoUnavailable(Exception):
    """``flight-md serve --demo`` does not exist (yet) in this tree."""


@contextlib.contextmanager
def demo_server(timeout: float = 60.0) -> Iterator[str]:
    """Run ``python -m flight_md serve --demo`` on a free port; yield its location.

    Raises:
        DemoUnavailable: The command is not there yet (the caller skips).
    """
    import importlib.util

    if importlib.util.find_spec("flight_md.ingest.manager") is None:
        raise DemoUnavailable("`flight-md serve --demo` is not available yet: "
                              "flight_md.ingest.manager does not exist")
    port = free_port()
    location = f"grpc://127.0.0.1:{port}"
    log = subprocess.Popen(
        [sys.executable, "-m", "flight_md", "serve", "--demo", "--port", str(port),
         "--log-level", "WARNING"],
        cwd=ROOT, env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        from flight_md_client import ConnectionFailed, MarketDataClient

        deadline = time.monotonic() + scaled(timeout)
        with MarketDataClient(location, timeout=2.0) as md:
            while True:
                if log.poll() is not None:
                    err = log.stderr.read() if log.stderr else ""
                    last = (err.strip().splitlines() or ["(no output)"])[-1]
                    if any(marker in err for marker in _MISSING):
                        raise DemoUnavailable(f"`flight-md serve --demo` is not available yet: "
                                              f"{last}")
                    raise AssertionError(f"flight-md serve --demo exited with {log.returncode}:"
                                         f"\n{err}")
                try:
                    if any(s.records > 0 for s in md.symbols()):
                        break
                except ConnectionFailed:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("flight-md serve --demo did not serve ticks within "
                                         f"{scaled(timeout):.0f} s")
                time.sleep(0.1)
        yield location
    finally:
        if log.poll() is None:
            log.send_signal(2)  # SIGINT: the server's own clean shutdown
            try:
                log.wait(scaled(10))
            except subprocess.TimeoutExpired:
                log.kill()
                log.wait(5)
        for stream in (log.stdout, log.stderr):
            if stream is not None:
                stream.close()
