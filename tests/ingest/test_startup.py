"""A server whose exchange is down at start-up serves anyway and keeps retrying (issue 10, item 3).

Real processes: ``flight-md serve`` pointed (``--exchange-url``) at a loopback port where no
exchange listens yet, a real ``pyarrow.flight`` client, and later a real ``flight-md
emulator`` started on that very port. Only invalid arguments are fatal: an unknown symbol,
found once the markets load, ends ``serve`` with one line and exit status 2.
"""

from __future__ import annotations

import json
import signal
import socket
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from tests.support import MS, ChildProcess, EmulatorProcess, ServerProcess, until

FAST = ("--reconnect-delay", "0.2", "--max-reconnect-delay", "0.5")
DESTROYED = "Task was destroyed but it is pending"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _status(client: flight.FlightClient) -> dict[str, Any]:
    result = next(client.do_action(flight.Action("status", b"")))
    status: dict[str, Any] = json.loads(result.body.to_pybytes())
    return status


def _stored(client: flight.FlightClient, symbol: str) -> int:
    try:
        return client.do_get(flight.Ticket(f"{symbol}?latest=100000".encode())).read_all().num_rows
    except pa.ArrowKeyError:  # nothing buffered yet
        return 0


def _events(client: flight.FlightClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = client.do_get(flight.Ticket(b"@events")).read_all().to_pylist()
    return rows


@pytest.mark.parametrize("process", [False, True], ids=["thread", "ingest-process"])
def test_a_server_started_while_its_exchange_is_down_serves_and_connects_later(
        process: bool) -> None:
    port = _free_port()  # nothing listens here until the emulator starts below
    extra = ("--ingest-process",) if process else ("--no-ingest-process",)
    server = ServerProcess("--exchange", "binance", "--symbols", "BTC/USDT",
                           "--exchange-url", f"http://127.0.0.1:{port}", *FAST, *extra).start()
    emulator: EmulatorProcess | None = None
    try:
        client = flight.connect(server.location)
        down = until(lambda: (ex := _status(client)["exchanges"].get("binance"))
                     and ex["last_error"] and ex, 30, "status to show the failed connection")
        assert down["state"] in ("connecting", "reconnecting")
        assert "127.0.0.1" in down["last_error"] and down["last_error_ms"] > 0
        # It keeps retrying with the backoff: several failed attempts are on record.
        until(lambda: sum(e["kind"] == "error" for e in _events(client)) >= 3, 30,
              "repeated connection attempts")
        assert server.proc is not None and server.proc.poll() is None

        emulator = EmulatorProcess("--port", str(port), "--symbols", "BTC/USDT",
                                   "--rate", "40").start()
        until(lambda: _stored(client, "BTC/USDT") >= 5, 60, "ticks once the exchange is up")
        up = _status(client)["exchanges"]["binance"]
        assert up["state"] == "connected" and up["symbols"] == ["BTC/USDT"]
        # Recovered: the last error stays, dated before the first tick (item 5).
        first = client.do_get(flight.Ticket(b"BTC/USDT?latest=100000")).read_all()
        assert up["last_error"] and "127.0.0.1" in up["last_error"]
        assert up["last_error_ms"] <= min(first.column("receive_timestamp").to_pylist())
        client.close()
    finally:
        server.signal(signal.SIGTERM)
        code = server.wait(30 * MS)
        if emulator is not None:
            emulator.stop()
    assert code == 0, server.output
    assert DESTROYED not in server.output


def test_a_symbol_the_exchange_does_not_list_is_one_line_and_exit_2() -> None:
    with EmulatorProcess("--symbols", "BTC/USDT", "--rate", "20") as emulator:
        serve = ChildProcess(["-m", "flight_md", "serve", "--port", "0", "--exchange", "binance",
                              "--symbols", "BTC/USDT,BTC/USDX", "--exchange-url", emulator.url,
                              *FAST]).start()
        try:
            code = serve.wait(120 * MS)
        finally:
            serve.kill()
    stderr = "".join(serve.stderr)
    assert code == 2, serve.output
    errors = [line for line in stderr.splitlines() if line.startswith("flight-md: ")]
    assert len(errors) == 1 and "unknown symbol 'BTC/USDX' on binance" in errors[0]
    assert stderr.rstrip().splitlines()[-1] == errors[0]
    assert "Traceback" not in stderr and DESTROYED not in stderr
    assert "serving on" not in serve.output


def test_a_symbol_found_missing_once_markets_load_ends_the_server_with_one_line() -> None:
    port = _free_port()
    server = ServerProcess("--exchange", "binance", "--symbols", "BTC/USDX",
                           "--exchange-url", f"http://127.0.0.1:{port}", *FAST).start()
    try:
        client = flight.connect(server.location)
        until(lambda: _status(client)["exchanges"]["binance"]["last_error"], 30,
              "the first failed attempt")
        client.close()
        with EmulatorProcess("--port", str(port), "--symbols", "BTC/USDT", "--rate", "20"):
            code = server.wait(60 * MS)
    finally:
        server.kill()
    assert code == 2, server.output
    stderr = "".join(server.stderr)
    assert stderr.rstrip().splitlines()[-1].startswith(
        "flight-md: unknown symbol 'BTC/USDX' on binance")
    assert "Traceback" not in stderr and DESTROYED not in stderr


def test_subscribing_to_a_symbol_the_exchange_does_not_list_is_invalid_argument() -> None:
    with EmulatorProcess("--symbols", "BTC/USDT", "--rate", "20") as emulator, \
            ServerProcess("--exchange", "binance", "--symbols", "BTC/USDT",
                          "--exchange-url", emulator.url, *FAST) as server:
        client = flight.connect(server.location)
        body = json.dumps({"symbols": ["ETH/USDX"]}).encode()
        with pytest.raises(pa.ArrowInvalid, match="unknown symbol 'ETH/USDX' on binance"):
            next(client.do_action(flight.Action("subscribe", body)))
        assert _status(client)["exchanges"]["binance"]["symbols"] == ["BTC/USDT"]
        client.close()
