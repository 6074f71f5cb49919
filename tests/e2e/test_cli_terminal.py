"""The terminal commands' common options through the real command line: ``$FLIGHT_MD_LOCATION``,
``$FLIGHT_MD_TOKEN`` (and ``--location`` over the environment) and ``--timeout``.

README, Terminal: "Every command takes ``--location`` (default ``$FLIGHT_MD_LOCATION`` or
``grpc://127.0.0.1:8815``), ``--token`` / ``--token-file`` / ``$FLIGHT_MD_TOKEN``, ... and
``--timeout S``." ``--location``, ``--token``, ``--token-file`` and the TLS options are run
in-process by tests/test_terminal.py; here ``python -m flight_md`` runs as a process of its own
against a real in-process server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flight_md.auth import MIDDLEWARE_KEY, TokenAuth
from flight_md.buffer import MarketDataBuffer
from flight_md.config import Secret
from flight_md.schema import MarketTick
from flight_md.service import FlightMarketDataServer
from tests.support import MS, child_env, until

TOKEN = "terminal-e2e-token"


class HeldStatusServer(FlightMarketDataServer):
    """The real server, whose ``status`` answers only once :attr:`release` is set."""

    def __init__(self, **options: Any) -> None:
        buffer = MarketDataBuffer(100)
        buffer.extend(MarketTick("BTC/USDT", 1_700_000_000_000 + i, 100.0 + i, 1.0, None, None,
                                 None, None, None, None, "binance", 1_700_000_000_000 + i)
                      for i in range(5))
        super().__init__("grpc://127.0.0.1:0", buffer, **options)
        self.release = threading.Event()
        self.asked = threading.Event()

    def status(self) -> dict[str, Any]:
        self.asked.set()
        self.release.wait(60 * MS)
        return super().status()


@pytest.fixture
def server() -> Iterator[HeldStatusServer]:
    auth = TokenAuth([Secret(TOKEN)])
    running = HeldStatusServer(middleware={MIDDLEWARE_KEY: auth}, authorize=auth.authorize)
    try:
        yield running
    finally:
        running.release.set()
        running.stop(2.0)


def flight_md(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flight_md", *args], env=child_env(env),
                          capture_output=True, text=True, timeout=60 * MS, check=False)


def test_location_and_token_from_the_environment(server: HeldStatusServer) -> None:
    location = f"grpc://127.0.0.1:{server.port}"
    server.release.set()
    both = {"FLIGHT_MD_LOCATION": location, "FLIGHT_MD_TOKEN": TOKEN}
    result = flight_md("get", "BTC/USDT", "--latest", "2", "--csv", env=both)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith('"symbol","timestamp","price"')
    assert [line.split(",")[1] for line in lines[1:]] == ['"2023-11-14T22:13:20.003Z"',
                                                         '"2023-11-14T22:13:20.004Z"']

    no_token = flight_md("get", "BTC/USDT", env={"FLIGHT_MD_LOCATION": location})
    assert no_token.returncode == 1 and "missing or invalid bearer token" in no_token.stderr

    elsewhere = flight_md("status", "--location", "grpc://127.0.0.1:1", env=both)
    assert (elsewhere.returncode, elsewhere.stderr) == (
        1, ("flight-md: cannot reach grpc://127.0.0.1:1 (connection refused); is `flight-md "
           "serve` running?\n"))


def test_timeout_bounds_each_request(server: HeldStatusServer) -> None:
    """``--timeout 0.5`` gives up on a server that does not answer (one line, exit 1);
    ``--timeout 60`` waits for the same request until the server answers."""
    location = f"grpc://127.0.0.1:{server.port}"
    common = ("--location", location, "--token", TOKEN)
    short = flight_md("status", "--json", "--timeout", "0.5", *common)
    assert server.asked.is_set()
    assert (short.returncode, short.stdout) == (1, "")
    assert short.stderr == f"flight-md: {location} did not answer in time (see --timeout)\n"

    server.asked.clear()
    waiting = subprocess.Popen([sys.executable, "-m", "flight_md", "status", "--json",
                                "--timeout", "60", *common], env=child_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(server.asked.is_set, 30, "the status request to reach the server")
        server.release.set()
        out, err = waiting.communicate(timeout=30 * MS)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert (waiting.returncode, err) == (0, "")
    assert '"buffer_size": 100' in out
