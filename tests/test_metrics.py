"""Health and Prometheus metrics of a real server (issue 10, item 18).

A real ``flight-md serve --metrics-port 0`` streams from a real exchange emulator through real
ccxt; the test scrapes its real HTTP endpoint and parses it with ``prometheus_client``'s own
parser, and calls the ``health`` action with a plain ``pyarrow.flight`` client. Readiness is
false while the emulator refuses every connection, and true once it lets ccxt in.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig, load_config
from tests.support import MS, EmulatorProcess, ServerProcess, until

SYMBOLS = ("BTC/USDT", "ETH/USDT")
METRICS_RE = re.compile(r"metrics and health on (http://\S+) ")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(server: ServerProcess) -> str:
    match = until(lambda: METRICS_RE.search("".join(server.stderr)), 30, "the metrics line")
    return str(match.group(1))


def http(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10 * MS) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(base: str) -> Samples:
    code, body = http(base + "/metrics")
    assert code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def fault(emulator: str, body: dict[str, Any] | None) -> None:
    request = urllib.request.Request(
        emulator + "/_emulator/faults", method="POST" if body else "DELETE",
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10 * MS) as response:
        assert response.status == 200


def action(client: flight.FlightClient, name: str, token: str | None = None) -> Any:
    options = flight.FlightCallOptions(
        headers=[(b"authorization", f"Bearer {token}".encode())] if token else [])
    result = next(client.do_action(flight.Action(name, b""), options))
    return json.loads(result.body.to_pybytes())


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS),
                         "--rate", "100") as emu:
        yield emu


def test_metrics_are_the_servers_own_figures(emulator: EmulatorProcess) -> None:
    with ServerProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS), "--mode",
                       "websocket", "--exchange-url", emulator.url, "--reconnect-delay", "0.2",
                       "--max-reconnect-delay", "1", "--metrics-port", "0") as server:
        base = metrics_url(server)
        assert base.startswith("http://127.0.0.1:")  # the same --host as the Flight server
        client = flight.connect(server.location)
        until(lambda: all(s["ticks_stored"] for s in action(client, "status")["symbols"]), 30,
              "ticks of every symbol")
        for _ in range(3):
            client.do_get(flight.Ticket(b"BTC/USDT?latest=5")).read_all()
        with pytest.raises(KeyError):  # NOT_FOUND
            client.do_get(flight.Ticket(b"DOGE/USDT")).read_all()
        tail = client.do_get(flight.Ticket(b"ETH/USDT?follow=true"))
        tail.read_chunk()

        before = action(client, "status")
        samples = scrape(base)
        after = action(client, "status")
        for old, new in zip(before["symbols"], after["symbols"]):
            labels = {"exchange": "binance", "symbol": old["symbol"], "channel": "ticker"}
            received = value(samples, "flight_md_ticks_received_total", **labels)
            stored = value(samples, "flight_md_ticks_stored_total", **labels)
            assert received is not None and old["ticks_received"] <= received <= new["ticks_received"]
            assert stored is not None and old["ticks_appended"] <= stored <= new["ticks_appended"]
            assert value(samples, "flight_md_ticks_dropped_total", **labels) == 0
            assert value(samples, "flight_md_stale", **labels) == 0
            age = value(samples, "flight_md_tick_age_seconds", **labels)
            assert age is not None and age >= 0
        assert value(samples, "flight_md_live_tails", exchange="binance", symbol="ETH/USDT", channel="ticker") == 1
        assert value(samples, "flight_md_live_tails", exchange="binance", symbol="BTC/USDT", channel="ticker") == 0
        assert value(samples, "flight_md_ready") == 1
        assert value(samples, "flight_md_exchange_state", exchange="binance", state="connected") == 1
        assert value(samples, "flight_md_exchange_state", exchange="binance", state="reconnecting") == 0
        assert value(samples, "flight_md_exchange_mode", exchange="binance", mode="websocket") == 1
        assert value(samples, "flight_md_reconnects_total", exchange="binance") == 0
        assert value(samples, "flight_md_rpc_requests_total", rpc="DoGet", code="OK") == 3
        assert value(samples, "flight_md_rpc_requests_total", rpc="DoGet", code="NOT_FOUND") == 1
        assert value(samples, "flight_md_rpc_duration_seconds_count", rpc="DoGet") == 4
        refused = {dict(labels)["reason"]: v for (n, labels), v in samples.items()
                   if n == "flight_md_refused_requests_total"}
        assert refused == after["server"]["refused_requests"] and sum(refused.values()) == 1
        assert value(samples, "flight_md_rpc_requests_total", rpc="DoGet(follow)", code="OK") is None

        tail.cancel()
        samples = until(lambda: (s := scrape(base)) and value(
            s, "flight_md_live_tails", exchange="binance", symbol="ETH/USDT",
            channel="ticker") == 0 and value(
            s, "flight_md_rpc_duration_seconds_count", rpc="DoGet(follow)") == 1 and s, 10,
            "the closed tail in the metrics")
        assert value(samples, "flight_md_rpc_duration_seconds_count", rpc="DoGet") == 4

        fault(emulator.url, {"fault": "malformed", "count": 3})
        until(lambda: sum(v for (n, _), v in scrape(base).items()
                          if n == "flight_md_bad_frames_total") == 3, 20, "three bad frames")
        fault(emulator.url, {"fault": "reset"})
        until(lambda: value(scrape(base), "flight_md_reconnects_total", exchange="binance") == 1,
              30, "the reconnect in the metrics")
        client.close()


def test_not_ready_until_an_exchange_connects(emulator: EmulatorProcess, tmp_path: Path) -> None:
    (tmp_path / "full.txt").write_text("full-token\n")
    (tmp_path / "read.txt").write_text("read-token\n")
    fault(emulator.url, {"fault": "refuse"})  # every handshake and REST request: 503
    with ServerProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS), "--mode",
                       "websocket", "--exchange-url", emulator.url, "--reconnect-delay", "0.2",
                       "--max-reconnect-delay", "0.5", "--metrics-port", "0",
                       "--auth-token-file", str(tmp_path / "full.txt"),
                       "--read-only-token-file", str(tmp_path / "read.txt")) as server:
        base = metrics_url(server)
        client = flight.connect(server.location)
        options = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer read-token")])
        assert "health" in [a.type for a in client.list_actions(options)]
        health = action(client, "health", "read-token")  # a read-only token may ask
        assert health["ready"] is False and health["live"] is True
        assert health["exchanges"]["binance"]["ready"] is False
        code, body = http(base + "/readyz")
        assert code == 503 and json.loads(body)["ready"] is False
        assert http(base + "/healthz")[0] == 200
        assert value(scrape(base), "flight_md_ready") == 0

        fault(emulator.url, None)  # let ccxt in
        until(lambda: action(client, "health", "read-token")["ready"], 30, "readiness")
        code, body = http(base + "/readyz")
        assert code == 200 and json.loads(body)["exchanges"]["binance"] == {
            "mode": "websocket", "ready": True, "state": "connected"}
        assert value(scrape(base), "flight_md_ready") == 1
        client.close()


def test_metrics_are_off_by_default_and_the_port_comes_from_every_source(tmp_path: Path) -> None:
    assert ServerConfig().metrics_port is None
    with MarketDataApp(ServerConfig(port=0)) as app:
        assert app.metrics is None
        client = flight.connect(app.location)
        assert action(client, "health") == {"ready": False, "live": True, "exchanges": {},
                                            "reason": "no ingestion on this server"}
        client.close()
    config = tmp_path / "server.toml"
    config.write_text("[server]\nmetrics_port = 9464\n")
    assert load_config(config).metrics_port == 9464
