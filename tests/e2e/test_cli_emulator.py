"""The ``flight-md emulator`` command line of the README ("The exchange emulator"), as a real
process: ``--exchange``, ``--symbols``, ``--rate``, ``--port``.

Replays (``--replay --speed --loop``) and faults through the command line are covered by
tests/emulator (test_replay_emulator.py, test_command_emulator.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.conftest import MarketMover
from tests.support import MS, EmulatorProcess, child_env, until


def fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10 * MS) as reply:
        return json.loads(reply.read())


def stats(url: str) -> dict[str, Any]:
    return fetch(f"{url}/_emulator/stats")  # type: ignore[no-any-return]


def test_exchange_and_symbols_choose_the_dialect_and_markets() -> None:
    """``--exchange bybit --symbols A,B``: Bybit v5 endpoints listing exactly A and B; no
    Binance endpoint."""
    with EmulatorProcess("--exchange", "bybit", "--symbols",
                         "BTC/USDT:USDT,ETH/USDT:USDT") as emulator:
        info = fetch(f"{emulator.url}/v5/market/instruments-info?category=linear")
        assert sorted(i["symbol"] for i in info["result"]["list"]) == ["BTCUSDT", "ETHUSDT"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            fetch(f"{emulator.url}/api/v3/exchangeInfo")
        assert missing.value.code == 404
    with EmulatorProcess("--exchange", "binance", "--symbols", "SOL/USDT") as emulator:
        info = fetch(f"{emulator.url}/api/v3/exchangeInfo")
        assert [s["symbol"] for s in info["symbols"]] == ["SOLUSDT"]


def test_rate_paces_the_synthetic_market() -> None:
    """``--rate 20``: 21 updates take at least 1 s minus one period's slack (0.2 s at the default
    100/s). A loaded machine can only make them later, so only the lower bound is asserted."""
    with EmulatorProcess("--exchange", "binance", "--symbols", "BTC/USDT", "--rate", "20") as emu:
        mover = MarketMover(emu.url, ("BTC/USDT",))
        try:
            until(lambda: stats(emu.url)["frames_total"] >= 1, 30, "a first update")
            start, base = time.monotonic(), stats(emu.url)["frames_total"]
            until(lambda: stats(emu.url)["frames_total"] >= base + 20, 30, "twenty updates more")
            elapsed = time.monotonic() - start
        finally:
            mover.close()
    assert elapsed >= 20 / 20 - 1 / 20, elapsed


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    """``--port N``: the emulator binds N; when N is taken it says so in one line (exit 1)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "flight_md", "emulator", "--port",
                                 str(port)], env=child_env(), capture_output=True, text=True,
                                timeout=60 * MS, check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"flight-md emulator: cannot listen on 127.0.0.1:{port}: ")
