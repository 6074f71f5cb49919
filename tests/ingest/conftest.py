"""Fixtures of the ingestion tests: emulators and streams that are always shut down.

Every test here runs real ``ccxt.pro`` against :class:`flight_md.emulator.Emulator` on
127.0.0.1; only ccxt's URLs are pointed at it (``MarketDataStream(url=...)``).
"""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from flight_md.emulator import Emulator
from flight_md.ingest.stream import MarketDataStream

from .support import FAST, MS, SYMBOLS


@pytest_asyncio.fixture
async def make_emulator() -> AsyncIterator[Callable[..., Awaitable[Emulator]]]:
    """``await make_emulator(exchange="binance", symbols=SYMBOLS, rate=100.0, **options)``."""
    started: list[Emulator] = []

    async def make(exchange: str = "binance", symbols: Any = SYMBOLS, rate: float = 100.0,
                   **options: Any) -> Emulator:
        emulator = Emulator(exchange=exchange, symbols=symbols, rate=rate, seed=0, **options)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in reversed(started):
        await emulator.stop()


@pytest_asyncio.fixture
async def make_stream(make_emulator: Any) -> AsyncIterator[Callable[..., Awaitable[MarketDataStream]]]:
    """``await make_stream(emulator, symbols=(), connect=True, **stream_kwargs)``.

    Fast reconnect options by default; every stream is disconnected at teardown (before the
    emulators stop: this fixture is requested after ``make_emulator``).
    """
    streams: list[MarketDataStream] = []

    async def make(emulator: Any, symbols: Any = (), connect: bool = True,
                   **kwargs: Any) -> MarketDataStream:
        options = {**FAST, **kwargs}
        stream = MarketDataStream(emulator.exchange, url=emulator.url, **options)
        streams.append(stream)
        if connect:
            await stream.connect()
            if symbols:
                await stream.subscribe(list(symbols))
        return stream

    yield make
    for stream in reversed(streams):
        await stream.disconnect()


class EmulatorProcess:
    """An emulator in a child process (``python -m flight_md.emulator serve``).

    For throughput tests: the emulator gets a core of its own instead of sharing the test's
    event loop. Faults and counters go through its HTTP control endpoint.
    """

    def __init__(self, exchange: str, symbols: tuple[str, ...], rate: float) -> None:
        self.exchange = exchange
        self.symbols = symbols
        self.rate = rate
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flight_md.emulator", "serve", "--exchange", self.exchange,
             "--symbols", ",".join(self.symbols), "--rate", str(self.rate), "--seed", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], 30 * MS)
        assert ready, "the emulator process did not print its url"
        self.url = self._process.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10 * MS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    async def inject(self, fault: str, **options: Any) -> None:
        async with aiohttp.ClientSession() as http, \
                http.post(f"{self.url}/_emulator/faults", json={"fault": fault, **options}) as r:
            assert (await r.json())["ok"]

    async def clear_faults(self) -> None:
        async with aiohttp.ClientSession() as http, http.delete(f"{self.url}/_emulator/faults") as r:
            assert (await r.json())["ok"]

    async def frames(self) -> dict[str, int]:
        """Intact frames written, by ``"<channel> <symbol>"``."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/_emulator/stats") as r:
            frames: dict[str, int] = (await r.json())["frames"]
            return frames


@pytest.fixture
def emulator_process() -> Iterator[Callable[..., EmulatorProcess]]:
    """``emulator_process(exchange, symbols, rate) -> EmulatorProcess`` (started; always stopped)."""
    started: list[EmulatorProcess] = []

    def make(exchange: str, symbols: tuple[str, ...], rate: float) -> EmulatorProcess:
        process = EmulatorProcess(exchange, symbols, rate)
        started.append(process)
        process.start()
        return process

    yield make
    for process in started:
        process.stop()
