"""``flight-md serve --ingest-workers N``: ingestion sharded over N processes, from the command line.

A real ``flight-md serve`` process with two ingestion workers streams tickers and trades
through real ccxt.pro from a real ``flight-md emulator`` process and serves every symbol over
Flight; a bad ``N``, on the command line or in the config file, is refused in one line before
anything starts, and so is a bad ``--decoder`` (run in forks of one pre-imported interpreter,
as test_cli_config.py runs its error table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyarrow import flight

from tests.e2e.test_cli_config import ForkRunner, assert_one_line_error, ingestion_children
from tests.support import MS, EmulatorProcess, ServerProcess, until

pytestmark = pytest.mark.timeout(120 * MS)

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS),
                         "--rate", "200") as process:
        yield process


def _rows(client: flight.FlightClient, symbol: str, channel: str) -> int:
    ticket = f"{symbol}?latest=5&channel={channel}"
    try:
        return client.do_get(flight.Ticket(ticket.encode())).read_all().num_rows
    except flight.FlightError:  # no tick of it stored yet
        return 0


def test_two_workers_serve_every_symbol(emulator: EmulatorProcess) -> None:
    server = ServerProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS),
                           "--exchange-url", emulator.url, "--mode", "websocket",
                           "--channel", "ticker,trades", "--reconnect-delay", "0.2", "--max-reconnect-delay", "1",
                           "--ingest-workers", "2", "--memory-only")
    server.start(90.0)  # three fresh interpreters import flight_md (two of them ccxt too)
    try:
        assert len(ingestion_children(server.pid)) == 2, server.output
        client = flight.connect(server.location)
        # A loaded machine may time out a worker's first markets load: it retries quickly.
        until(lambda: all(_rows(client, s, c) == 5 for s in SYMBOLS
                          for c in ("ticker", "trades")), 60 * MS,
              "ticks and trades of every symbol over Flight")
        status = json.loads(next(client.do_action(flight.Action("status", b""))).body
                            .to_pybytes())
        assert status["exchanges"]["binance"]["state"] == "connected"
        assert sorted(status["exchanges"]["binance"]["symbols"]) == sorted(SYMBOLS)
        named = [(entry["symbol"], entry.get("channel")) for entry in status["symbols"]]
        # each once per channel, though two processes stream them
        assert sorted(named) == sorted((s, c) for s in SYMBOLS for c in ("ticker", "trades"))
        client.close()
    finally:
        server.stop()


@pytest.mark.parametrize("args, needle", [
    (("--ingest-workers", "0"), "argument --ingest-workers: must be an integer >= 1, got '0'"),
    (("--ingest-workers", "two"), "argument --ingest-workers: must be an integer >= 1, got 'two'"),
    (("--no-ingest-process", "--ingest-workers", "2"),
     "--ingest-workers runs ingestion in worker processes; drop --no-ingest-process"),
    (("--config", "server.toml"),
     "ingest_workers must be an integer >= 1 (ingestion worker processes), got 0"),
], ids=["zero", "not a number", "with --no-ingest-process", "config file"])
def test_a_bad_number_of_workers_is_one_line(forks: ForkRunner, tmp_path: Path,
                                             args: tuple[str, ...], needle: str) -> None:
    (tmp_path / "server.toml").write_text("[server]\ningest_workers = 0\n", encoding="utf-8")
    assert_one_line_error(forks.run("serve", "--port", "0", *args, cwd=tmp_path), [needle])


def test_a_bad_decoder_is_one_line(forks: ForkRunner, tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text('[[exchanges]]\nid = "binance"\ndecoder = "json"\n',
                                          encoding="utf-8")
    assert_one_line_error(forks.run("serve", "--port", "0", "--config", "server.toml",
                                    cwd=tmp_path), ["decoder must be fast or ccxt, got 'json'"])
    assert_one_line_error(forks.run("serve", "--port", "0", "--decoder", "json", cwd=tmp_path),
                          ["argument --decoder: invalid choice: 'json'"])
