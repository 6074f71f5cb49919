"""Issue 10, item 17 from the client's side: the server ends a live tail at shutdown with
UNAVAILABLE + ``server_shutdown``; ``flight_md_client``'s tail still ends quietly with
``TailEnd.SERVER_CLOSED``, after every row, and a tail that is really broken is still an error.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from flight_md_client import MarketDataClient, TailEnd
from flight_md_client.errors import ServerShuttingDown, Unavailable, translate
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer
from flight_md.schema import MarketTick
from tests.support import MS, until

T0 = 1_795_000_000_000


def tick(i: int) -> MarketTick:
    return MarketTick("BTC/USDT", T0 + i, 100.0 + i, None, None, None, None, None, None, None,
                      "binance", T0 + i)


def following(buffer: MarketDataBuffer) -> bool:
    return buffer.stats()[0].followers == 1


def stop_soon(harness: Any) -> tuple[threading.Thread, dict[str, bool]]:
    out: dict[str, bool] = {}
    thread = threading.Thread(target=lambda: out.update(clean=harness.server.stop()),
                              daemon=True)
    thread.start()
    return thread, out


def test_tail_ends_server_closed_after_every_row(md_server_factory: Callable[..., Any]) -> None:
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(5))
    harness = md_server_factory(buffer)
    with MarketDataClient(harness.location) as md:
        tail = md.tail("BTC/USDT", backlog=5)
        assert next(tail).num_rows == 5
        until(lambda: following(buffer), 5, "the tail to follow")
        buffer.append(tick(5))
        assert next(tail).to_pylist()[0]["timestamp"] == T0 + 5
        thread, out = stop_soon(harness)
        rest = list(tail)  # ends quietly: no exception
        thread.join(10 * MS)
    assert tail.end_reason is TailEnd.SERVER_CLOSED
    assert sum(b.num_rows for b in rest) == 0
    assert tail.rows == 6
    assert out == {"clean": True}


def test_atail_ends_server_closed(md_server_factory: Callable[..., Any]) -> None:
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(3))
    harness = md_server_factory(buffer)

    async def run() -> list[int]:
        sizes = []
        with MarketDataClient(harness.location) as md:
            stopper = None
            async for batch in md.atail("BTC/USDT", backlog=3):
                sizes.append(batch.num_rows)
                if stopper is None:
                    stopper = stop_soon(harness)
        return sizes

    assert asyncio.run(run()) == [3]


def test_the_shutdown_marker_is_what_tells_the_tail_apart() -> None:
    """Without the marker an UNAVAILABLE is an error; with it, the server's shutdown."""
    marked = flight.FlightUnavailableError("server is shutting down; the live tail ends here. "
                                           "Detail: Unavailable", b"server_shutdown")
    plain = flight.FlightUnavailableError("ingestion did not answer. Detail: Unavailable")
    assert isinstance(translate(marked, streaming=True), ServerShuttingDown)
    error = translate(plain, streaming=True)
    assert isinstance(error, Unavailable) and not isinstance(error, ServerShuttingDown)


@pytest.mark.parametrize("backlog", [0, 2])
def test_a_closed_tail_is_still_closed_not_server_closed(
        md_server_factory: Callable[..., Any], backlog: int) -> None:
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(3))
    harness = md_server_factory(buffer)
    with MarketDataClient(harness.location) as md:
        tail = md.tail("BTC/USDT", backlog=backlog)
        until(lambda: following(buffer), 5, "the tail to follow")
        tail.close()
    assert tail.end_reason is TailEnd.CLOSED
