"""``flight-md serve --channel ticker,trades,book --book-depth N`` and the terminal commands
over those channels, as a user runs them: a real ``flight-md serve`` process streaming through
real ccxt.pro from a real ``flight-md emulator`` (Binance dialect); ``flight-md tail`` as a
process, ``flight-md get`` in this process (the same command, without a start-up per call).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyarrow import flight

from flight_md import terminal
from flight_md.cli import _parser, build_config, main
from flight_md.core.channels import DEFAULT_BOOK_DEPTH
from tests.support import MS, EmulatorProcess, ServerProcess, child_env, until


def _config(*argv: str):  # type: ignore[no-untyped-def]
    return build_config(_parser().parse_args(["serve", *argv]))


def test_channel_takes_a_comma_list_and_book_depth_a_number() -> None:
    config = _config("--exchange", "binance", "--symbols", "BTC/USDT", "--channel",
                     "ticker, trades,book", "--book-depth", "25")
    assert config.streams[0].channels == ("ticker", "trades", "book")
    assert config.book_depth == 25
    assert _config("--exchange", "binance", "--channel", "bidask").streams[0].channels == (
        "bidask",)
    assert _config("--demo").book_depth == DEFAULT_BOOK_DEPTH


def test_book_depth_overrides_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "flight-md.toml"
    path.write_text('[server]\nbook_depth = 50\n\n[[exchanges]]\nid = "binance"\n'
                    'symbols = ["BTC/USDT"]\nchannel = ["ticker", "trades"]\n')
    config = _config("--config", str(path))
    assert config.book_depth == 50 and config.streams[0].channels == ("ticker", "trades")
    assert _config("--config", str(path), "--book-depth", "3").book_depth == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["--channel", "ticker,trade"], "argument --channel: invalid channel 'trade'; expected a "
                                    "comma list of: ticker, bidask, trades, book"),
    (["--channel", "trades,trades"], "argument --channel: 'trades,trades' names a channel "
                                     "twice; name each once"),
    (["--channel", ""], "argument --channel: invalid channel ''"),
    (["--book-depth", "0"], "argument --book-depth: must be an integer from 1 to 1000, got '0'"),
    (["--book-depth", "1001"], "argument --book-depth: must be an integer from 1 to 1000"),
    (["--book-depth", "ten"], "argument --book-depth: must be an integer from 1 to 1000, got "
                              "'ten'"),
])
def test_bad_channel_and_book_depth_are_one_line(capsys: pytest.CaptureFixture[str],
                                                 argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--exchange", "binance", *argv])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    assert err.startswith(f"flight-md serve: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_a_bad_channel_list_is_one_line_from_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "flight_md", "serve", "--exchange", "binance",
                           "--channel", "ticker,book,tickers"], capture_output=True, text=True,
                          env=child_env(), timeout=30 * MS, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("flight-md serve: argument --channel: invalid channel 'tickers'; "
                           "expected a comma list of: ticker, bidask, trades, book (see "
                           "flight-md serve --help)\n")


# -- a real server streaming ticker, trades and book ----------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with EmulatorProcess("--exchange", "binance", "--symbols", "BTC/USDT", "--rate", "100") as emu, \
            ServerProcess("--memory-only", "--exchange", "binance", "--symbols", "BTC/USDT",
                          "--channel", "ticker,trades,book", "--book-depth", "5",
                          "--exchange-url", emu.url, "--log-level", "WARNING") as srv:
        yield srv


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flight_md", *args], capture_output=True,
                          text=True, env=child_env(), timeout=60 * MS, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_serve_streams_every_channel_it_is_given(server: ServerProcess,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    loc = ("--location", server.location)

    def get(*args: str) -> list[dict[str, str]]:  # flight-md get, in this process
        code = terminal.main(["get", *args, "--csv", *loc])
        out, err = capsys.readouterr()
        assert code == 0, err
        return _rows(out)

    client = flight.FlightClient(server.location)

    def stored(channel: str) -> int:
        infos = client.list_flights(b"BTC/USDT")
        return sum(i.total_records for i in infos if list(i.descriptor.path or [])[2:] == [
            channel.encode()])

    until(lambda: stored("trades") >= 30 and stored("book") >= 3, 60, "trades and books stored")
    client.close()
    books = get("BTC/USDT", "--channel", "book", "--latest", "3")
    assert len(books) == 3
    for row in books:
        bids, asks = json.loads(row["bids"]), json.loads(row["asks"])
        assert 0 < len(bids) <= 5 and 0 < len(asks) <= 5  # --book-depth 5
        assert bids[0][0] < asks[0][0]  # never crossed
        assert [b[0] for b in bids] == sorted((b[0] for b in bids), reverse=True)
    trades = get("BTC/USDT", "--channel", "trades")
    ids = [int(t["trade_id"]) for t in trades]
    assert ids == sorted(set(ids))  # each trade once, in order
    # Bars over exactly the trades just read: their counts and volume add up.
    first, last = trades[0]["timestamp"], trades[-1]["timestamp"]
    bars = get("BTC/USDT", "--bars", "1s", "--start", first, "--end", last)
    inside = [t for t in trades if t["timestamp"] < last]
    assert sum(int(b["trades"]) for b in bars) == len(inside)
    assert sum(float(b["volume"]) for b in bars) == pytest.approx(
        sum(float(t["amount"]) for t in inside))


def test_tail_trades_prints_each_new_trade_once(server: ServerProcess) -> None:
    out = cli("tail", "BTC/USDT", "--channel", "trades", "--count", "20", "--json",
              "--location", server.location)
    trades = [json.loads(line) for line in out.splitlines()]
    assert len(trades) == 20
    ids = [int(t["trade_id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + 20))  # Binance ids are sequential: none missed
    assert {t["side"] for t in trades} <= {"buy", "sell"}
