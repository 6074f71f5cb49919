"""The runnable examples in clients/examples, run as a user runs them, against a real server."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pyarrow as pa
import pytest
from client_support import EXAMPLES, Feeder, IngestingMarket, scaled

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
                     "{'exchange': 'binance', 'subscribed': ['BTC/USDT']}",
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
    ticks = pa.table({
        "timestamp": [base, base + 400, base + 900, base + 1000, base + 1500, base + 2200],
        "price": [10.0, 11.0, 9.0, 12.0, 13.0, 14.0],
        "bid": [9.5, 10.5, 8.5, 11.5, 12.5, 13.5],
        "ask": [10.5, 11.5, 9.5, 12.5, 13.5, 14.5],
        # 24h rolling volume: traded = increase, clipped at zero (the window also drops trades)
        "volume": [100.0, 102.0, 101.0, 104.0, 105.0, 105.0],
        "receive_timestamp": [base + i for i in range(6)],
    })
    summary = vwap_example.vwap(ticks).to_pylist()[0]
    # traded: -, 2 @ 11, 0 @ 9 (fell), 3 @ 12 (since 101), 1 @ 13, 0 @ 14
    assert summary["ticks"] == 6
    assert summary["traded_volume"] == 6.0
    assert summary["vwap"] == pytest.approx((2 * 11 + 3 * 12 + 1 * 13) / 6)
    assert summary["twap"] == pytest.approx((10 * 400 + 11 * 500 + 9 * 100 + 12 * 500
                                             + 13 * 700) / 2200)
    assert summary["mean_spread"] == pytest.approx(1.0)
    bars = vwap_example.ohlc_bars(ticks).to_pylist()
    assert [(b["open"], b["high"], b["low"], b["close"], b["volume"], b["ticks"])
            for b in bars] == [(10.0, 11.0, 9.0, 9.0, 2.0, 3),
                               (12.0, 13.0, 12.0, 13.0, 4.0, 2),
                               (14.0, 14.0, 14.0, 14.0, 0.0, 1)]
    assert [b["bar"].isoformat() for b in bars] == ["2026-11-23T10:00:00",
                                                    "2026-11-23T10:00:01",
                                                    "2026-11-23T10:00:02"]


def test_duckdb_vwap_runs_against_a_server(live: str) -> None:
    out = _run("duckdb_vwap.py", "--location", live, "--minutes", "5", "--bars", "3")
    assert out.returncode == 0, out.stderr
    assert "ticks of BTC/USDT in the last 5 minutes" in out.stdout
    assert "vwap:" in out.stdout and "twap:" in out.stdout
    assert "one-second bars (the last 3)" in out.stdout


def test_duckdb_vwap_reports_errors_in_one_line(live: str) -> None:
    out = _run("duckdb_vwap.py", "--location", live, "--symbol", "NOPE/USDT")
    assert out.returncode == 1
    assert out.stderr.strip() == ("duckdb_vwap: unknown symbol 'NOPE/USDT'; buffered: BTC/USDT, "
                                  "ETH/USDT, SOL/USDT")
