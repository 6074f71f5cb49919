"""Fixtures for the emulator tests: a real emulator and real ccxt.pro clients pointed at it.

``MS`` stretches every wait (``FLIGHT_MD_TIME_SCALE``; from :mod:`tests.support`, like
:func:`until`). ``exchange_factory`` builds
unmodified ccxt.pro exchanges whose only change is :func:`url_overrides`, and closes
every one of them at teardown so no session leaks.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import pytest
import pytest_asyncio

from flight_md.emulator import default_recording
from flight_md.ingest.endpoints import url_overrides
from tests.support import MS, async_until

__all__ = ["MS", "ExchangeFactory", "recorded_frames", "recording_path", "until"]

ExchangeFactory = Callable[..., Any]


@pytest_asyncio.fixture
async def exchange_factory() -> AsyncIterator[ExchangeFactory]:
    """``make(exchange_id, base_url, **config)`` -> a ccxt.pro exchange, closed at teardown."""
    made: list[Any] = []

    def make(exchange_id: str, base_url: str, **config: Any) -> Any:
        exchange = getattr(ccxtpro, exchange_id)({**url_overrides(exchange_id, base_url), **config})
        made.append(exchange)
        return exchange

    yield make
    for exchange in made:
        await exchange.close()


def recording_path(exchange: str) -> Path:
    """The shared recording of an exchange.

    A missing recording is a broken checkout, not something the machine lacks: the test
    fails (never skips) and says where the file was expected.
    """
    path = default_recording(exchange)
    if not path.is_file():
        pytest.fail(f"recording of {exchange!r} missing: expected {path} (put the shared "
                    "recordings there, or point $FLIGHT_MD_RECORDINGS at them)", pytrace=False)
    return path


def recorded_frames(exchange: str) -> list[tuple[str, str]]:
    """``(websocket path, frame text)`` of every received frame, read straight from the file."""
    frames: list[tuple[str, str]] = []
    paths: dict[str, str] = {}
    with gzip.open(recording_path(exchange), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "connect":
                paths[record["conn"]] = record["addr"].split("://", 1)[1].split("/", 1)[1].split("?")[0]
            elif record["t"] == "recv":
                frames.append(("/" + paths.get(record["conn"], ""), record["data"]))
    return frames


async def until(condition: Callable[[], object], timeout: float = 5.0,
                what: str = "the condition") -> None:
    """Wait until ``condition()`` holds; fail after ``timeout * MS`` seconds
    (:func:`tests.support.async_until`)."""
    await async_until(condition, timeout, what)
