"""Shutdown is bounded: with busy clients, live tails and streams nobody reads.

In-process, :meth:`FlightMarketDataServer.stop` must return within about ``2 * grace``; as a
process, ``flight-md serve --demo`` must exit within 5 s of SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import psutil
import pytest
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer
from flight_md.config import DEMO_SYMBOLS
from flight_md.service import FlightMarketDataServer

from .harness import TIME_SCALE, ChildProcess, ServerProcess, tick, wait_until

BIG_ROWS = 300_000
"""Rows of the symbol the unread DoGets ask for: ~30 MB, far more than any socket buffers."""
OPTIONS = flight.FlightCallOptions(timeout=60 * TIME_SCALE)


class Load:
    """Pulling clients, reading tails and unread streams against one server, in threads.

    Args:
        location: The server.
        symbols: Symbols to pull and tail.
        pullers: Clients looping ``SYMBOL?latest=100``.
        tails: Live tails that read.
        unread: ``(ticket, count)`` streams opened and never read.
    """

    def __init__(self, location: str, symbols: tuple[str, ...], pullers: int, tails: int,
                 unread: list[tuple[bytes, int]]) -> None:
        self.location = location
        self.symbols = symbols
        self.stopping = threading.Event()
        self.pulls = 0
        self.tail_rows = 0
        self._stack = ExitStack()
        self._threads = [threading.Thread(target=self._pull, args=(i,), daemon=True)
                         for i in range(pullers)]
        self._threads += [threading.Thread(target=self._tail, args=(i,), daemon=True)
                          for i in range(tails)]
        self._unread = unread
        self.readers: list[flight.FlightStreamReader] = []

    def _client(self) -> flight.FlightClient:
        return self._stack.enter_context(flight.connect(self.location))

    def start(self) -> Load:
        for ticket, count in self._unread:
            for _ in range(count):
                self.readers.append(self._client().do_get(flight.Ticket(ticket), OPTIONS))
        for thread in self._threads:
            thread.start()
        return self

    def _pull(self, index: int) -> None:
        client = self._client()
        ticket = flight.Ticket(f"{self.symbols[index % len(self.symbols)]}?latest=100".encode())
        while not self.stopping.is_set():
            try:
                client.do_get(ticket, OPTIONS).read_all()
            except flight.FlightError:  # the server is going away: expected here
                return
            self.pulls += 1

    def _tail(self, index: int) -> None:
        client = self._client()
        ticket = f"{self.symbols[index % len(self.symbols)]}?latest=10&follow=true".encode()
        try:
            reader = client.do_get(flight.Ticket(ticket), OPTIONS)
            while not self.stopping.is_set():
                self.tail_rows += reader.read_chunk().data.num_rows
        except (flight.FlightError, StopIteration, OSError):
            return

    def finished(self, timeout: float) -> bool:
        """Whether every client thread ended (the server let go of them) within ``timeout``."""
        deadline = time.monotonic() + timeout * TIME_SCALE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        self.stopping.set()
        self.finished(10)
        self._stack.close()


LoadFactory = Callable[..., Load]


@pytest.fixture
def load_factory() -> Iterator[LoadFactory]:
    """``load_factory(location, symbols, pullers=, tails=, unread=)``: started, closed after."""
    loads: list[Load] = []

    def make(*args: Any, **kwargs: Any) -> Load:
        load = Load(*args, **kwargs)
        loads.append(load)
        return load.start()

    yield make
    for load in loads:
        load.close()


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("grace", [0.5, 1.5])
def test_stop_is_bounded_with_unread_streams(load_factory: LoadFactory, grace: float,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """stop(grace) returns cleanly, severing the streams nobody reads.

    stop() waits at most ``grace`` twice (before and after severing); the elapsed-time check
    adds 5 s (scaled) to that, so only a hang fails it, not a loaded machine.
    """
    buffer = MarketDataBuffer(BIG_ROWS)
    buffer.extend(tick("BIG/USDT", n) for n in range(BIG_ROWS))
    buffer.extend(tick("BTC/USDT", n) for n in range(1000))
    server = FlightMarketDataServer("grpc://127.0.0.1:0", buffer)
    location = f"grpc://127.0.0.1:{server.port}"
    writing = threading.Event()

    def writer() -> None:
        n = 1000
        while not writing.is_set():
            buffer.append(tick("BTC/USDT", n))
            n += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=writer, daemon=True)
    feeder.start()
    try:
        load = load_factory(location, ("BTC/USDT",), pullers=8, tails=4,
                            unread=[(b"BIG/USDT", 2), (b"BTC/USDT?follow=true", 2)])
        assert wait_until(lambda: load.pulls > 50 and load.tail_rows > 50, 20)
        started = time.monotonic()
        clean = server.stop(grace)
        elapsed = time.monotonic() - started
    finally:
        writing.set()
        server.stop(grace)
    assert elapsed < 2 * grace + 5.0 * TIME_SCALE, f"stop took {elapsed:.2f} s"
    assert clean, "stop() reports an unclean shutdown"
    # Behaviour, not log text: whether the unread streams had to be severed depends on how
    # fast gRPC's buffers filled on this machine; either way the server is gone and no client
    # is left blocked.
    assert _refuses_connections(server.port)
    assert load.finished(5), "a client is still blocked on a stopped server"


@pytest.mark.parametrize("mode", [("--no-ingest-process",), ()], ids=["thread", "process"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_loaded_demo_server_within_5_s(load_factory: LoadFactory, signum: int,
                                                       mode: tuple[str, ...]) -> None:
    server = ServerProcess("--demo", *mode)
    with server:
        assert wait_until(lambda: _has_data(server.location), 30)
        children = psutil.Process(server.pid).children(recursive=True)
        # process mode (serve's default): the ingestion child (and multiprocessing's tracker)
        assert bool(children) == ("--no-ingest-process" not in mode), children
        load = load_factory(server.location, DEMO_SYMBOLS, pullers=8, tails=4,
                            unread=[(b"BTC/USDT", 2), (b"ETH/USDT?latest=0&follow=true", 2),
                                    (b"*", 1)])
        assert wait_until(lambda: load.pulls > 50 and load.tail_rows > 5, 30)
        started = time.monotonic()
        server.signal(signum)
        code = server.wait(5 * TIME_SCALE)
        elapsed = time.monotonic() - started
    assert code is not None, f"still running 5 s after {signal.Signals(signum).name}"
    # The watchdog exits with status 1, so 0 means shutdown finished by itself.
    assert code == 0, f"exit {code} after {elapsed:.2f} s:\n{server.output}"
    assert load.finished(5)
    _gone, alive = psutil.wait_procs(children, timeout=5 * TIME_SCALE)
    assert not alive, f"the ingestion process outlived the server: {alive}"


def test_shutdown_watchdog_exits_non_zero(load_factory: LoadFactory) -> None:
    """A shutdown that outlives --shutdown-timeout must not look clean: exit 1, and say why."""
    server = ServerProcess("--demo", "--shutdown-timeout", "0.001")
    with server:
        assert wait_until(lambda: _has_data(server.location), 30)
        # A stream nobody reads holds shutdown for the whole grace period (1.5 s).
        load = load_factory(server.location, DEMO_SYMBOLS, pullers=0, tails=0,
                            unread=[(b"BTC/USDT?latest=0&follow=true", 1)])
        server.signal(signal.SIGTERM)
        code = server.wait(10 * TIME_SCALE)
    assert code == 1, f"exit {code}:\n{server.output}"
    assert "shutdown did not finish within 0.001 s" in "".join(server.stderr), server.output
    assert load.finished(5)


def test_shutdown_timeout_must_be_positive() -> None:
    server = ChildProcess(["-m", "flight_md", "serve", "--shutdown-timeout", "0"])
    server.start()
    assert server.wait(30 * TIME_SCALE) == 2
    assert "argument --shutdown-timeout: must be a number > 0, got '0'" in "".join(server.stderr), (
        server.output)
    assert "Traceback" not in server.output


def _has_data(location: str) -> bool:
    with flight.connect(location) as client:
        try:
            return all(client.do_get(flight.Ticket(f"{s}?latest=1".encode()),
                                     OPTIONS).read_all().num_rows for s in DEMO_SYMBOLS)
        except flight.FlightError:
            return False
        except KeyError:  # NOT_FOUND before the first tick
            return False
