"""flight-md get / tail / top over the trades and book channels and bars (issue 12).

The parts that need no server (option refusals, book cells, CSV of book sides, the trades/s of
``top`` from status counters) run here without one; reads and tails of trades, books and bars
run against a real server holding known trades and books.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "clients"))
from client_support import channel_market, followers, refused_port

from flight_md import terminal
from flight_md.core.channels import BOOK_SCHEMA
from flight_md.schema import now_ms
from flight_md.service import FlightMarketDataServer
from flight_md.terminal import (
    TopModel,
    format_levels,
    format_number,
    format_time,
    table_lines,
    tail_line,
    with_times,
)
from tests.support import until


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIGHT_MD_TOKEN", raising=False)
    monkeypatch.delenv("FLIGHT_MD_LOCATION", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = terminal.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- refusals before anything is sent ---------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["get", "BTC/USDT", "--channel", "book", "--bars", "1m"],
     "flight-md: bars=1m needs trades; channel 'book' has no bars (use channel=trades, or no "
     "channel)"),
    (["get", "BTC/USDT", "--channel", "trades", "--columns", "bid"],
     "flight-md: unknown column 'bid' for channel 'trades'; allowed: symbol, exchange, "
     "timestamp, trade_id, price, amount, side, receive_timestamp"),
    (["get", "BTC/USDT", "--bars", "1m", "--columns", "price"],
     "flight-md: unknown column 'price' for bars; allowed: bar_start, open, high, low, close, "
     "volume, vwap, trades"),
    (["get", "@events", "--channel", "trades"], "flight-md: '@events' takes no --channel"),
    (["get", "@events", "--bars", "1m"], "flight-md: '@events' takes no --bars"),
    (["get", "*", "--bars", "1m"], "flight-md: '*' (the market snapshot) takes no --bars; ask a "
                                   "symbol for its bars"),
    (["tail", "BTC/USDT", "--channel", "ticker", "--bars", "5m"],
     "flight-md: bars=5m needs trades; channel 'ticker' has no bars"),
    (["tail", "BTC/USDT", "--channel", "book", "--columns", "price"],
     "flight-md: unknown column 'price' for channel 'book'; allowed: symbol, exchange, "
     "timestamp, bids, asks, nonce, receive_timestamp"),
])
def test_channel_refusals_are_local_one_line_exit_2(capsys: pytest.CaptureFixture[str],
                                                    argv: list[str], message: str) -> None:
    # The port refuses connections: a refusal here proves nothing was sent.
    with refused_port() as port:
        code, out, err = run(capsys, *argv, "--location", f"grpc://127.0.0.1:{port}")
    assert (code, out) == (2, "")
    assert err.splitlines() == [err.strip()] and err.strip().startswith(message), err


@pytest.mark.parametrize(("argv", "fragment", "allowed"), [
    (["get", "BTC/USDT", "--channel", "trade"], "argument --channel: invalid choice: 'trade'",
     ["ticker", "bidask", "trades", "book"]),
    (["get", "BTC/USDT", "--bars", "2m"], "argument --bars: invalid choice: '2m'",
     ["1s", "1m", "5m", "15m", "1h", "1d"]),
    (["tail", "BTC/USDT", "--channel", "TRADES"], "argument --channel: invalid choice",
     ["trades"]),
])
def test_unknown_channel_or_interval_is_an_argument_error(capsys: pytest.CaptureFixture[str],
                                                          argv: list[str], fragment: str,
                                                          allowed: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        terminal.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert all(name in err.partition("choose from")[2] for name in allowed), err


# -- book cells, CSV, tail lines ---------------------------------------------------------------


LEVELS = [{"price": 100.5, "amount": 2.0}, {"price": 100.0, "amount": 0.25},
          {"price": 99.5, "amount": 1e-05}, {"price": 99.0, "amount": 3.0}]


def test_book_levels_print_as_amount_at_price_best_first() -> None:
    assert format_levels(LEVELS) == "2@100.5 0.25@100 0.00001@99.5 (+1)"
    assert format_levels(LEVELS[:2]) == "2@100.5 0.25@100"
    assert format_levels([]) == ""
    assert format_levels(LEVELS, shown=1) == "2@100.5 (+3)"


def _book_table() -> pa.Table:
    return pa.Table.from_pylist([
        {"symbol": "BTC/USDT", "exchange": "binance", "timestamp": 1_764_000_000_000,
         "bids": LEVELS, "asks": [{"price": 101.0, "amount": 1.5}], "nonce": 42,
         "receive_timestamp": 1_764_000_000_003},
        {"symbol": "BTC/USDT", "exchange": "binance", "timestamp": 1_764_000_000_100,
         "bids": [], "asks": [], "nonce": None, "receive_timestamp": 1_764_000_000_104},
    ], schema=BOOK_SCHEMA)


def test_a_book_table_shows_the_best_levels_of_each_side() -> None:
    lines, hidden = table_lines(_book_table())
    assert hidden == 0
    assert lines[0].split() == ["symbol", "exchange", "timestamp", "bids", "asks", "nonce",
                                "receive_timestamp"]
    assert "2@100.5 0.25@100 0.00001@99.5 (+1)" in lines[1]
    assert "1.5@101" in lines[1] and lines[1].split()[-2] == "42"
    assert lines[2].split() == ["BTC/USDT", "binance", "2025-11-24T16:00:00.100Z", "-",
                                "2025-11-24T16:00:00.104Z"]


def test_book_sides_go_to_csv_as_ccxt_json_lists() -> None:
    text_table = with_times(_book_table(), as_text=True)
    out = io.BytesIO()
    import pyarrow.csv as pacsv

    pacsv.write_csv(text_table, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert json.loads(rows[0]["bids"]) == [[100.5, 2.0], [100.0, 0.25], [99.5, 1e-05],
                                           [99.0, 3.0]]
    assert json.loads(rows[0]["asks"]) == [[101.0, 1.5]]
    assert json.loads(rows[1]["bids"]) == [] and rows[1]["nonce"] == ""
    assert rows[0]["timestamp"] == "2025-11-24T16:00:00.000Z"


def test_tail_lines_of_trades_books_and_bars() -> None:
    trade = {"symbol": "BTC/USDT", "exchange": "binance", "timestamp": 1_764_000_000_000,
             "trade_id": "123456789", "price": 100.25, "amount": 0.5, "side": "sell",
             "receive_timestamp": 1_764_000_000_002}
    assert tail_line(trade, terminal.TAIL_DEFAULTS["trades"]) == (
        "2025-11-24T16:00:00.000Z  binance  BTC/USDT  side=sell  price=100.25  amount=0.5  "
        "trade_id=123456789")
    book = _book_table().to_pylist()[0]
    assert tail_line(book, terminal.TAIL_DEFAULTS["book"]) == (
        "2025-11-24T16:00:00.000Z  binance  BTC/USDT  bids=2@100.5 0.25@100 0.00001@99.5 (+1)  "
        "asks=1.5@101  nonce=42")
    bar = {"bar_start": 1_764_000_000_000, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
           "volume": 10.0, "vwap": 1.25, "trades": 7}
    assert tail_line(bar, terminal.TAIL_DEFAULTS["bars"]) == (
        "2025-11-24T16:00:00.000Z  open=1  high=2  low=0.5  close=1.5  volume=10  vwap=1.25  "
        "trades=7")


# -- top: trades/s ------------------------------------------------------------------------------


def _status(ticks: int, trades: dict[str, int], shape: str = "symbols") -> dict[str, Any]:
    """A status as the server gives it: one ``symbols`` entry per (exchange, symbol,
    channel); ``shape="buffers"`` puts the trades and book entries under ``buffers``."""
    tick = {"exchange": "e", "symbol": "A/B", "channel": "ticker", "ticks_appended": ticks,
            "ticks_stored": ticks, "ticks_dropped": 0, "age_ms": 100}
    others = [{"exchange": "e", "symbol": sym, "channel": "trades", "ticks_appended": n,
               "ticks_stored": n, "ticks_dropped": 0, "age_ms": 50} for sym, n in trades.items()]
    others.append({"exchange": "e", "symbol": "A/B", "channel": "book", "ticks_appended": 999,
                   "ticks_stored": 999})
    status: dict[str, Any] = {"server": {"uptime_s": 5}, "exchanges": {}, "symbols": [tick]}
    if shape == "symbols":
        status["symbols"] += others
    else:
        status["buffers"] = [{**e, "appended": e.pop("ticks_appended")} for e in others]
    return status


SNAPSHOT = pa.table({"symbol": ["A/B"], "exchange": ["e"], "price": [1.5], "bid": [1.0],
                     "ask": [2.0]})


@pytest.mark.parametrize("shape", ["symbols", "buffers"])
def test_top_shows_trades_per_second_where_trades_are_streamed(shape: str) -> None:
    model = TopModel("grpc://x:1")
    model.update(_status(10, {"A/B": 100, "C/D": 0}, shape), SNAPSHOT, now=10.0)
    model.update(_status(30, {"A/B": 1100, "C/D": 50}, shape), SNAPSHOT, now=12.0)
    lines = model.lines(width=200, height=None, color=False)
    assert "10.0 ticks/s  525.0 trades/s" in lines[0]
    header = lines[lines.index("") + 1].split()
    assert header[:5] == ["EXCHANGE", "SYMBOL", "STATE", "TICKS/S", "TRADES/S"]
    rows = {line.split()[1]: line.split() for line in lines[lines.index("") + 2:]}
    assert rows["A/B"][3:5] == ["10.0", "500.0"]
    # A symbol streamed for trades only still gets its row, with no ticker figures.
    assert rows["C/D"][:5] == ["e", "C/D", "idle", "-", "25.0"]


def test_top_without_trades_has_no_trades_column() -> None:
    model = TopModel("grpc://x:1")
    # An older server: no channel in its entries at all.
    status = _status(10, {})
    status["symbols"] = [{k: v for k, v in status["symbols"][0].items() if k != "channel"}]
    model.update(status, SNAPSHOT, now=10.0)
    model.update(_status(20, {}), SNAPSHOT, now=11.0)
    lines = model.lines(width=200, height=None, color=False)
    assert "trades/s" not in lines[0] and "TRADES/S" not in "\n".join(lines)


@pytest.mark.parametrize("buffers", [
    None, "nonsense", [1, None, "x"], [{"channel": "trades"}],
    [{"channel": "trades", "exchange": "e", "symbol": "A/B", "appended": "many"}],
    {"trades": [{"channel": "trades", "exchange": "e", "symbol": "A/B", "rows_appended": 5}]},
])
def test_top_degrades_gracefully_on_unexpected_buffer_entries(buffers: Any) -> None:
    model = TopModel("grpc://x:1")
    for now in (1.0, 2.0):
        model.update({**_status(1, {}), "buffers": buffers}, SNAPSHOT, now=now)
    lines = model.lines(width=200, height=None, color=False)
    assert lines[-1].split()[:4] == ["e", "A/B", "idle", "0.0"]


# -- against a real server with trades and books ------------------------------------------------


@pytest.fixture
def channel_server() -> Iterator[FlightMarketDataServer]:
    with channel_market() as srv:
        yield srv


@pytest.fixture
def loc(channel_server: FlightMarketDataServer) -> list[str]:
    return ["--location", f"grpc://127.0.0.1:{channel_server.port}"]


def _stored_trades(server: FlightMarketDataServer) -> list[dict[str, Any]]:
    return list(server.test_trades)  # type: ignore[attr-defined]


def test_get_trades_prints_the_newest_trades(capsys: pytest.CaptureFixture[str],
                                             channel_server: FlightMarketDataServer,
                                             loc: list[str]) -> None:
    code, out, err = run(capsys, "get", "BTC/USDT", "--channel", "trades", "--latest", "3",
                         "--columns", "timestamp,trade_id,side,price,amount", *loc)
    assert code == 0 and err == ""
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["timestamp", "trade_id", "side", "price", "amount"]
    assert lines[1:] == [[format_time(t["timestamp"]), t["trade_id"], t["side"],
                          format_number(t["price"]), format_number(t["amount"])]
                         for t in _stored_trades(channel_server)[-3:]]


def test_get_bars_prints_one_row_per_bar(capsys: pytest.CaptureFixture[str],
                                         channel_server: FlightMarketDataServer,
                                         loc: list[str]) -> None:
    trades = _stored_trades(channel_server)
    code, out, _ = run(capsys, "get", "BTC/USDT", "--bars", "1m", "--csv", *loc)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    starts = sorted({t["timestamp"] // 60_000 * 60_000 for t in trades})
    assert [r["bar_start"] for r in rows] == [format_time(s) for s in starts]
    assert sum(int(r["trades"]) for r in rows) == len(trades)
    assert float(rows[0]["open"]) == trades[0]["price"]
    assert float(rows[-1]["close"]) == trades[-1]["price"]


def test_get_book_exports_every_level(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      channel_server: FlightMarketDataServer,
                                      loc: list[str]) -> None:
    books = list(channel_server.test_books)  # type: ignore[attr-defined]
    target = tmp_path / "book.parquet"
    code, _, err = run(capsys, "get", "BTC/USDT", "--channel", "book", "--parquet",
                       str(target), *loc)
    assert code == 0 and f"wrote {len(books)} rows" in err
    import pyarrow.parquet as pq

    stored = pq.read_table(target).to_pylist()
    assert [[[lv["price"], lv["amount"]] for lv in row["bids"]] for row in stored] == [
        b["bids"][:10] for b in books]
    code, out, _ = run(capsys, "get", "BTC/USDT", "--channel", "book", "--latest", "1", *loc)
    assert code == 0 and "(+7)" in out  # ten levels stored, three shown


def test_tail_trades_prints_one_line_per_new_trade(capsys: pytest.CaptureFixture[str],
                                                   channel_server: FlightMarketDataServer,
                                                   loc: list[str]) -> None:
    trades = _stored_trades(channel_server)
    code, out, _ = run(capsys, "tail", "BTC/USDT", "--channel", "trades", "--backlog", "2",
                       "--count", "2", *loc)
    assert code == 0
    assert out.splitlines() == [
        f"{format_time(t['timestamp'])}  binance  BTC/USDT  side={t['side']}  "
        f"price={format_number(t['price'])}  amount={format_number(t['amount'])}  "
        f"trade_id={t['trade_id']}" for t in trades[-2:]]
    code, out, _ = run(capsys, "tail", "BTC/USDT", "--channel", "trades", "--backlog", "1",
                       "--count", "1", "--json", *loc)
    assert code == 0 and json.loads(out) == trades[-1]


def test_status_and_top_show_the_trades_channel(capsys: pytest.CaptureFixture[str],
                                                channel_server: FlightMarketDataServer,
                                                loc: list[str]) -> None:
    trades = channel_server.test_store.buffer("trades")  # type: ignore[attr-defined]
    code, out, _ = run(capsys, "status", *loc)
    assert code == 0
    assert re.search(r"^EXCHANGE\s+SYMBOL\s+CHANNEL\s+SUBSCRIBED\s+STORED", out, re.MULTILINE)
    assert re.search(rf"^binance\s+BTC/USDT\s+trades\s+no\s+{len(_stored_trades(channel_server))}"
                     r"\s", out, re.MULTILINE), out
    assert re.search(r"^binance\s+BTC/USDT\s+book\s+no\s+50\s", out, re.MULTILINE), out
    stop = threading.Event()

    def feed() -> None:  # a steady trickle of trades while top samples the counters
        i = 0
        while not stop.wait(0.005):
            ts = now_ms()
            trades.append_trade("binance", "BTC/USDT", ts, f"t{i}", 100.0, 1.0, "buy", ts)
            i += 1

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        code, out, _ = run(capsys, "top", "--iterations", "2", "--interval", "0.3", *loc)
    finally:
        stop.set()
        feeder.join()
    assert code == 0
    last = out.rsplit("flight-md top", 1)[1]  # the second frame
    assert re.search(r"\d+\.\d ticks/s  \d+\.\d trades/s", last), last
    header = next(line for line in last.splitlines() if line.startswith("EXCHANGE"))
    assert header.split()[:5] == ["EXCHANGE", "SYMBOL", "STATE", "TICKS/S", "TRADES/S"]
    rows = {tuple(line.split()[:2]): line.split() for line in last.splitlines()
            if line.startswith(("binance", "bybit"))}
    assert float(rows[("binance", "BTC/USDT")][4]) > 0  # trades arrived between the frames
    assert rows[("binance", "ETH/USDT")][4] == "-"  # no trades channel for it


def test_a_bars_table_prints_the_vwap_without_float_noise() -> None:
    bars = pa.table({"bar_start": [1_764_000_000_000], "open": [64648.9], "high": [64658.07],
                     "low": [64542.93], "close": [64562.04], "volume": [0.176956],
                     "vwap": [64589.911182949436], "trades": [15]})
    lines, _ = table_lines(bars)
    assert lines[1].split() == ["2025-11-24T16:00:00.000Z", "64648.9", "64658.07", "64542.93",
                                "64562.04", "0.176956", "64589.911", "15"]


def test_tail_bars_prints_each_bar_when_it_closes(capsys: pytest.CaptureFixture[str],
                                                  channel_server: FlightMarketDataServer,
                                                  loc: list[str]) -> None:
    trades = channel_server.test_store.buffer("trades")  # type: ignore[attr-defined]
    second = (now_ms() // 1000 + 5) * 1000  # a bar that has no trades yet

    def feed() -> None:
        until(lambda: followers(trades, "BTC/USDT") == 1, 10, "the tail to open")
        for i, price in enumerate((10.0, 12.0, 9.0, 11.0)):
            trades.append_trade("binance", "BTC/USDT", second + i, f"b{i}", price, 2.0, None,
                                second + i)
        # a trade well into a later bar closes the first one
        trades.append_trade("binance", "BTC/USDT", second + 3000, "b9", 50.0, 1.0, None,
                            second + 3000)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    code, out, _ = run(capsys, "tail", "BTC/USDT", "--bars", "1s", "--count", "1", *loc)
    feeder.join()
    assert code == 0
    assert out.splitlines() == [f"{format_time(second)}  open=10  high=12  low=9  close=11  "
                                "volume=8  vwap=10.5  trades=4"]
