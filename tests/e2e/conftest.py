"""End-to-end tests of the README's promises: the real server, real ccxt.pro and the emulator.

Each test names the README sentence it proves. Shared waits and child processes come from
:mod:`tests.support`.
"""


# -- ingestion rigs (tests/e2e/test_ingest_*.py) -------------------------------------------

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.test_cli_config import ForkRunner
from tests.support import until


@pytest.fixture(scope="module")
def forks() -> Iterator[ForkRunner]:
    """A forking runner of ``flight-md`` commands, for a module's one-line-error cases."""
    runner = ForkRunner()
    try:
        yield runner
    finally:
        runner.close()


class MarketMover:
    """A plain websocket client subscribed to every market of an emulator.

    The emulator moves a market only while some websocket subscribes to it, so a server that
    polls REST would otherwise see one unchanging ticker (and store it once).
    """

    def __init__(self, url: str, symbols: tuple[str, ...]) -> None:
        import asyncio
        import threading

        streams = "/".join(f"{s.replace('/', '').lower()}@ticker" for s in symbols)
        self._url = f"{url.replace('http://', 'ws://')}/ws/{streams}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        import asyncio

        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self._url) as ws:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(ws.receive(), 0.2)
                except TimeoutError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Tail:
    """A live tail (``DoGet`` of a ``follow=true`` ticket) read on a thread of its own.

    :attr:`table` is every row received so far, in the order received; :meth:`close`
    cancels the stream from the client side.
    """

    def __init__(self, client: Any, ticket: str) -> None:
        import threading

        from pyarrow import flight

        self._reader = client.do_get(flight.Ticket(ticket.encode()))
        self._chunks: list[Any] = []
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._read, daemon=True, name="e2e-tail")
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                chunk = self._reader.read_chunk()
                with self._lock:
                    self._chunks.append(chunk.data)
        except StopIteration:
            pass
        except BaseException as error:  # noqa: BLE001 - reported by the test, unless we cancelled
            if not self._closing:
                self.error = error
        finally:
            self.ended.set()

    @property
    def rows(self) -> int:
        with self._lock:
            return sum(batch.num_rows for batch in self._chunks)

    @property
    def table(self) -> Any:
        import pyarrow as pa

        with self._lock:
            return pa.Table.from_batches(list(self._chunks)) if self._chunks else None

    def close(self) -> None:
        self._closing = True
        self._reader.cancel()
        self._thread.join(10)


class IngestRig:
    """An emulator (on a thread), a real server streaming from it through real ccxt.pro, and a
    ``pyarrow.flight`` client: what ``flight-md serve --exchange binance --exchange-url URL``
    runs, in-process (``MarketDataApp``), with ingestion on a thread or in a child process.

    Args:
        symbols: What the server subscribes at start; the emulator lists ``listed`` (or these).
        mode: The stream's ``--mode``.
        ingest_process: ``--ingest-process``.
        rate: Emulator messages per second over every subscribed market.
        mover: Keep every listed market moving with a websocket of its own (REST mode).
        stream_options: More :class:`~flight_md.config.StreamConfig` fields (delays, heartbeat).
    """

    EXCHANGE = "binance"

    def __init__(self, symbols: tuple[str, ...], *, listed: tuple[str, ...] | None = None,
                 mode: str = "websocket", ingest_process: bool = False, rate: float = 100.0,
                 mover: bool = False, **stream_options: Any) -> None:
        from pyarrow import flight

        from flight_md.app import MarketDataApp
        from flight_md.config import ServerConfig, StreamConfig
        from flight_md.emulator import EmulatorThread

        self.listed = listed or symbols
        self.emulator = EmulatorThread(exchange=self.EXCHANGE, symbols=self.listed, rate=rate,
                                       seed=3)
        self.emulator.start()
        self.mover: MarketMover | None = None
        self.app: Any = None
        self.client: Any = None
        self._tails: list[Tail] = []
        try:
            if mover:
                self.mover = MarketMover(self.emulator.url, self.listed)
            stream = StreamConfig(self.EXCHANGE, symbols, mode=mode, url=self.emulator.url,
                                  **stream_options)
            self.app = MarketDataApp(ServerConfig(port=0, streams=(stream,),
                                                  ingest_process=ingest_process)).start()
            self.client = flight.connect(self.app.location)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for tail in self._tails:
            tail.close()
        if self.client is not None:
            self.client.close()
        if self.app is not None:
            self.app.stop(0.5)
        if self.mover is not None:
            self.mover.close()
        self.emulator.stop()

    # -- through Flight ---------------------------------------------------------------------

    def action(self, name: str, body: dict[str, Any] | None = None) -> Any:
        import json

        from pyarrow import flight

        payload = json.dumps(body).encode() if body is not None else b""
        results = list(self.client.do_action(flight.Action(name, payload)))
        return json.loads(results[0].body.to_pybytes())

    def status(self) -> dict[str, Any]:
        return dict(self.action("status"))

    def exchange_status(self) -> dict[str, Any]:
        return dict(self.status()["exchanges"][self.EXCHANGE])

    def stored(self) -> dict[str, int]:
        """Ticks stored per symbol (``status`` → ``symbols[].ticks_stored``)."""
        return {s["symbol"]: s["ticks_stored"] for s in self.status()["symbols"]}

    def quiet(self) -> dict[str, int]:
        """Wait until no symbol's stored count changes over four looks 0.1 s apart (call it
        once the emulator has stopped writing); return the counts."""
        seen: list[dict[str, int]] = []

        def settled() -> bool:
            seen.append(self.stored())
            return len(seen) >= 4 and all(counts == seen[-1] for counts in seen[-4:])

        until(settled, 15, "the store to stop growing", interval=0.1)
        return seen[-1]

    def rows(self, symbol: str) -> Any:
        """Every stored tick of ``symbol`` (its whole buffer, oldest first)."""
        from pyarrow import flight

        ticket = flight.Ticket(f"{symbol}?exchange={self.EXCHANGE}".encode())
        return self.client.do_get(ticket).read_all()

    def events(self, since_ms: int = 0) -> list[dict[str, Any]]:
        """``@events`` of the exchange from ``since_ms`` on, oldest first."""
        from pyarrow import flight

        ticket = flight.Ticket(f"@events?exchange={self.EXCHANGE}&start={since_ms}".encode())
        return list(self.client.do_get(ticket).read_all().to_pylist())

    def kinds(self, since_ms: int = 0) -> list[str]:
        return [e["kind"] for e in self.events(since_ms)]

    def tail(self, ticket: str) -> Tail:
        tail = Tail(self.client, ticket)
        self._tails.append(tail)
        return tail

    # -- from the emulator ------------------------------------------------------------------

    def sent(self, symbol: str) -> int:
        """Intact ticker frames the emulator wrote for ``symbol``."""
        return self.emulator.sent("ticker", symbol)

    def flowing(self, symbols: tuple[str, ...], after_ms: int) -> bool:
        """Connected, and every one of ``symbols`` has a tick received after ``after_ms``."""
        status = self.status()
        if status["exchanges"][self.EXCHANGE]["state"] != "connected":
            return False
        latest = {s["symbol"]: s["last_receive_timestamp"] or 0 for s in status["symbols"]}
        return all(latest.get(s, 0) > after_ms for s in symbols)


@pytest.fixture
def ingest_rig() -> Iterator[Callable[..., IngestRig]]:
    """``ingest_rig(symbols, *, listed=None, mode="websocket", ingest_process=False,
    rate=100.0, mover=False, **stream_options) -> IngestRig``; every rig is closed at
    teardown, even when the test failed."""
    started: list[IngestRig] = []

    def make(symbols: tuple[str, ...], **options: Any) -> IngestRig:
        rig = IngestRig(symbols, **options)
        started.append(rig)
        return rig

    yield make
    for rig in reversed(started):
        rig.close()
