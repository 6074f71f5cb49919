"""The runnable examples in clients/examples, run as a user runs them, against a real server."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pyarrow as pa
import pytest
from client_support import EXAMPLES, Feeder, IngestingMarket, channel_market, scaled

from flight_md.service import FlightMarketDataServer
from tests.support import MS, child_env


@pytest.fixture
def live(server: FlightMarketDataServer) -> Iterator[str]:
    """The synthetic market with BTC/USDT ticking every 20 ms."""
    with Feeder(server.buffer):
        yield f"grpc://127.0.0.1:{server.port}"


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, env=child_env(), timeout=scaled(60), check=False)


def test_raw_flight_imports_nothing_but_pyarrow() -> None:
    tree = ast.parse((EXAMPLES / "raw_flight.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__", "argparse", "json", "os", "sys", "threading", "time",
                       "datetime", "urllib"} == {"pyarrow"}


def test_raw_flight_walks_the_whole_protocol(ingesting: IngestingMarket) -> None:
    ingesting.reset_once()  # so that the event log holds a real reconnect
    out = _run("raw_flight.py", "--location", ingesting.location, "--tail-seconds", str(2 * MS))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in ("['binance', 'BTC/USDT']  records=", "subscribe: Start streaming",
                     "DoGet 'BTC/USDT?latest=5&columns=timestamp,price,bid,ask'",
                     "%2B00:00&end=", "DoGet '*?columns=exchange,symbol,timestamp,price'",
                     "'kind': 'reconnect'", '"state": "connected"', '"reconnects": 1',
                     "'exchange': 'binance'", "'subscribed': ['BTC/USDT']}",
                     "ArrowInvalid: invalid latest 'ten'; expected a non-negative integer",
                     "ArrowKeyError: unknown symbol 'NOPE/USDT'"):
        assert expected in text, expected
    live_ticks = int(text.rsplit("== a live tail", 1)[1].split(" live ticks in")[0].split()[-1])
    assert live_ticks > 0
    assert "Traceback" not in out.stderr


def test_raw_flight_on_a_server_without_ingestion(live: str) -> None:
    out = _run("raw_flight.py", "--location", live, "--tail-seconds", str(2 * MS))
    assert out.returncode == 0, out.stderr
    assert "UNAVAILABLE: subscribe needs ingestion" in out.stdout
    assert '"exchanges": {}' in out.stdout and "'kind': 'reconnect'" in out.stdout


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_duckdb_vwap_and_bars_are_exact() -> None:
    vwap_example = _load("duckdb_vwap")
    base = 1_795_428_000_000
    trades = pa.table({
        # two trades in one millisecond: the first to arrive opens the bar, the last closes
        "timestamp": [base, base, base + 400, base + 900, base + 1000, base + 1500, base + 2200],
        "price": [10.0, 10.5, 11.0, 9.0, 12.0, 13.0, 14.0],
        "amount": [1.0, 0.5, 2.0, 0.5, 3.0, 1.0, 0.25],
        "side": ["buy", "sell", "buy", None, "sell", "buy", "buy"],
    })
    summary = vwap_example.summary(trades).to_pylist()[0]
    notional = 10 + 5.25 + 22 + 4.5 + 36 + 13 + 3.5
    assert summary["trades"] == 7
    assert summary["volume"] == 8.25
    assert summary["notional"] == pytest.approx(notional)
    assert summary["vwap"] == pytest.approx(notional / 8.25)
    assert summary["taker_buy_volume"] == 4.25 and summary["taker_sell_volume"] == 3.5
    assert (summary["low"], summary["high"]) == (9.0, 14.0)
    bars = vwap_example.ohlcv_bars(trades).to_pylist()
    assert [(b["bar_start"] - base, b["open"], b["high"], b["low"], b["close"], b["volume"],
             b["trades"]) for b in bars] == [(0, 10.0, 11.0, 9.0, 9.0, 4.0, 4),
                                             (1000, 12.0, 13.0, 12.0, 13.0, 4.0, 2),
                                             (2000, 14.0, 14.0, 14.0, 14.0, 0.25, 1)]
    assert bars[0]["vwap"] == pytest.approx((10 + 5.25 + 22 + 4.5) / 4.0)
    # The server's bars of the same trades agree (flight_md.core.bars computes them).
    from flight_md.core.bars import BarInterval, bars as server_bars

    assert vwap_example.same_bars(vwap_example.ohlcv_bars(trades),
                                  server_bars(trades.to_batches(), BarInterval.S1))
    assert not vwap_example.same_bars(vwap_example.ohlcv_bars(trades.slice(1)),
                                      server_bars(trades.to_batches(), BarInterval.S1))


@pytest.fixture
def trades_location() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A server holding known trades of BTC/USDT (ten to eight minutes ago)."""
    with channel_market() as srv:
        yield f"grpc://127.0.0.1:{srv.port}", list(srv.test_trades)  # type: ignore[attr-defined]


def test_duckdb_vwap_runs_against_a_server(
        trades_location: tuple[str, list[dict[str, Any]]]) -> None:
    location, trades = trades_location
    out = _run("duckdb_vwap.py", "--location", location, "--minutes", "15", "--bars", "3")
    assert out.returncode == 0, out.stderr
    assert f"{len(trades)} trades of BTC/USDT in the 15 minutes up to a second ago" in out.stdout
    vwap = sum(t["price"] * t["amount"] for t in trades) / sum(t["amount"] for t in trades)
    shown = float(out.stdout.split("vwap: ", 1)[1].split()[0])
    assert shown == pytest.approx(vwap, rel=1e-12)
    assert "one-second bars (the last 3)" in out.stdout
    assert "the server's bars=1s agree with DuckDB's: True" in out.stdout


def test_duckdb_vwap_reports_errors_in_one_line(
        trades_location: tuple[str, list[dict[str, Any]]]) -> None:
    out = _run("duckdb_vwap.py", "--location", trades_location[0], "--symbol", "NOPE/USDT")
    assert out.returncode == 1
    assert out.stderr.strip() == "duckdb_vwap: unknown symbol 'NOPE/USDT'; buffered: BTC/USDT"
