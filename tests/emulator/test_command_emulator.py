"""``python -m flight_md.emulator serve|fault``: a real emulator process, driven from outside."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.emulator.conftest import MS

ROOT = Path(__file__).resolve().parents[2]


def python(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "flight_md.emulator", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def test_serve_prints_its_url_takes_faults_and_stops_on_sigterm() -> None:
    server = python("serve", "--exchange", "bybit", "--symbols", "BTC/USDT:USDT", "--rate", "50", "--port", "0")
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 20 * MS)
        assert ready, "emulator printed no url"
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        fault = python("fault", "--url", url, "rest_5xx", "--count", "1")
        out, err = fault.communicate(timeout=20 * MS)
        assert fault.returncode == 0, err
        assert json.loads(out)["fault"] == "rest_5xx"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/v5/market/time", timeout=5 * MS)
        assert refused.value.code == 503
        stats = python("fault", "--url", url, "stats")
        out, _ = stats.communicate(timeout=20 * MS)
        assert json.loads(out)["faults"] == {"rest_5xx": 1}
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20 * MS)
    assert server.returncode == 0


def test_fault_reports_an_unreachable_emulator() -> None:
    fault = python("fault", "--url", "http://127.0.0.1:9", "clear")
    _, err = fault.communicate(timeout=20 * MS)
    assert fault.returncode == 1 and "cannot reach" in err


def test_emulator_thread_serves_synchronous_callers() -> None:
    from flight_md.emulator import EmulatorThread, Fault

    with EmulatorThread(exchange="binance", symbols=("BTC/USDT",), rate=10) as emu:
        with urllib.request.urlopen(emu.url + "/api/v3/ticker/bookTicker?symbol=BTCUSDT", timeout=5 * MS) as reply:
            book = json.loads(reply.read())
        assert float(book["bidPrice"]) < float(book["askPrice"])
        emu.inject(Fault.REST_429, retry_after=3)
        with pytest.raises(urllib.error.HTTPError) as limited:
            urllib.request.urlopen(emu.url + "/api/v3/ping", timeout=5 * MS)
        assert limited.value.code == 429 and limited.value.headers["Retry-After"] == "3"
        assert emu.stats.faults[Fault.REST_429] == 1
