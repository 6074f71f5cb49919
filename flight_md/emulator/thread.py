"""Run an emulator on its own event loop in a background thread.

For synchronous code and for tests whose own loop must not carry the emulator's load::

    with EmulatorThread(exchange="bybit", symbols=("BTC/USDT:USDT",)) as emu:
        print(emu.url)
        emu.inject(Fault.STALL, duration=2.0)

The emulator's loop is the only thread that touches it; calls from other threads go
through ``asyncio.run_coroutine_threadsafe(...).result(timeout)``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from flight_md.emulator.fault import Fault
from flight_md.emulator.market import StreamKey
from flight_md.emulator.server import Emulator
from flight_md.emulator.stats import EmulatorStats

__all__ = ["EmulatorThread"]

_T = TypeVar("_T")

_TIMEOUT = 10.0


class EmulatorThread:
    """An :class:`Emulator` running in a daemon thread.

    Args:
        **kwargs: Passed to :class:`Emulator`.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emulator: Emulator | None = None

    def start(self) -> str:
        """Start the thread and the emulator.

        Returns:
            The emulator's base URL.
        """
        if self._thread is not None:
            return self.url
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="flight-md-emulator", daemon=True)
        self._thread.start()
        ready.wait(_TIMEOUT)
        self._emulator = self._call(self._create())
        return self.url

    async def _create(self) -> Emulator:
        emulator = Emulator(**self._kwargs)
        await emulator.start()
        return emulator

    def stop(self) -> None:
        """Stop the emulator and the thread."""
        if self._thread is None or self._loop is None:
            return
        if self._emulator is not None:
            self._call(self._emulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_TIMEOUT)
        self._thread = None
        self._emulator = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def emulator(self) -> Emulator:
        """The emulator; touch it only from its loop (see :meth:`call`)."""
        if self._emulator is None:
            raise RuntimeError("emulator thread not started; call start() first")
        return self._emulator

    @property
    def url(self) -> str:
        """The emulator's base URL."""
        return self.emulator.url

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the emulator's counters, taken on its loop."""
        return self._call(self._snapshot())

    def sent(self, channel: str, symbol: str) -> int:
        """As :meth:`Emulator.sent`, taken on the emulator's loop."""
        return self.stats.frames.get(StreamKey(channel, symbol), 0)

    def inject(self, fault: Fault | str, *, count: int | None = None, duration: float | None = None,
               retry_after: float = 1.0) -> int:
        """As :meth:`Emulator.inject`, blocking until applied."""
        return self._call(self.emulator.inject(fault, count=count, duration=duration, retry_after=retry_after))

    def clear_faults(self) -> None:
        """As :meth:`Emulator.clear_faults`."""
        self._call(self._clear())

    async def _clear(self) -> None:
        self.emulator.clear_faults()

    async def _snapshot(self) -> EmulatorStats:
        return self.emulator.stats

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_TIMEOUT)
