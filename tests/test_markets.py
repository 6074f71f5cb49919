"""``@markets``: every market the served exchanges list, as real ccxt loaded them.

A real server on ``grpc://127.0.0.1:0`` ingests, through real ccxt.pro, from two emulators:
Binance replaying the recorded session (its ``exchangeInfo`` lists 1,695 markets) and synthetic
Bybit (spot and linear perpetuals), once with ingestion on a thread and once in a child process
(the markets cross the pipe). The expected values come from the exchanges' own REST answers
(the recording's ``exchangeInfo``, the emulator's ``instruments-info``), not from flight_md.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig, StreamConfig
from flight_md.control import MARKET_SCHEMA, MarketInfo, markets_table
from flight_md.emulator import EmulatorThread, default_recording
from flight_md.ingest.manager import tick_size
from tests.support import until

BINANCE_SUBSCRIBED = ("NKN/USDT", "LRC/BTC")
BYBIT_SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "BTC/USDT")
BYBIT_SUBSCRIBED = ("BTC/USDT:USDT",)


def recorded_exchange_info() -> dict[str, dict[str, Any]]:
    """Binance's recorded ``exchangeInfo`` symbols by market id, read straight from the file."""
    with gzip.open(default_recording("binance"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and "/api/v3/exchangeInfo" in record["url"]:
                return {entry["symbol"]: entry for entry in json.loads(record["data"])["symbols"]}
    raise AssertionError("no exchangeInfo in the binance recording")


def binance_filter(entry: dict[str, Any], kind: str, key: str) -> float:
    (found,) = (f for f in entry["filters"] if f["filterType"] == kind)
    return float(found[key])


class Rig:
    """A served app plus its emulators."""

    def __init__(self, ingest_process: bool, data_dir: Path) -> None:
        self.binance = EmulatorThread(exchange="binance", replay=default_recording("binance"),
                                      speed=1.0)
        self.bybit = EmulatorThread(exchange="bybit", symbols=BYBIT_SYMBOLS, rate=20.0)
        self.binance.start()
        self.bybit.start()
        streams = (
            StreamConfig("binance", BINANCE_SUBSCRIBED, url=self.binance.url, mode="websocket"),
            StreamConfig("bybit", BYBIT_SUBSCRIBED, url=self.bybit.url, mode="websocket"),
        )
        self.app = MarketDataApp(ServerConfig(port=0, streams=streams,
                                              ingest_process=ingest_process,
                                              data_dir=data_dir)).start()
        self.client = flight.connect(self.app.location)
        until(lambda: {"binance", "bybit"} <= set(self.get("@markets?columns=exchange")
                                                  .column("exchange").to_pylist()),
              30, "both exchanges' markets")

    def get(self, ticket: str) -> pa.Table:
        return self.client.do_get(flight.Ticket(ticket.encode())).read_all()

    def rows(self, ticket: str) -> list[dict[str, Any]]:
        return self.get(ticket).to_pylist()

    def close(self) -> None:
        self.client.close()
        self.app.stop()
        self.binance.stop()
        self.bybit.stop()


@pytest.fixture(scope="module", params=[False, True], ids=["thread", "process"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # Each parameter its own data dir: the process rig must not refill from the thread one's.
    rig = Rig(ingest_process=request.param, data_dir=tmp_path_factory.mktemp("markets-data"))
    try:
        yield rig
    finally:
        rig.close()


def test_every_loaded_binance_market_with_the_exchanges_values(rig: Rig) -> None:
    recorded = recorded_exchange_info()
    table = rig.get("@markets?exchange=binance")
    assert table.schema == MARKET_SCHEMA
    rows = table.to_pylist()
    # Every market ccxt loaded (all 1,695 listed), not only the two subscribed ones.
    assert len(rows) == len(recorded) == 1695
    assert [r["symbol"] for r in rows] == sorted(r["symbol"] for r in rows)
    for row in rows:
        entry = recorded[row["id"]]
        assert row["exchange"] == "binance"
        assert (row["type"], row["contract"], row["linear"], row["inverse"]) == \
            ("spot", False, None, None)
        assert (row["contract_size"], row["settle"], row["expiry"]) == (None, None, None)
        # ccxt's TICK_SIZE precision: the PRICE_FILTER and LOT_SIZE steps, as numbers.
        assert row["price_tick"] == binance_filter(entry, "PRICE_FILTER", "tickSize"), row
        assert row["amount_tick"] == binance_filter(entry, "LOT_SIZE", "stepSize"), row
        assert row["active"] is (entry["status"] == "TRADING"), row
        assert row["subscribed"] is (row["symbol"] in BINANCE_SUBSCRIBED)
    by_symbol = {r["symbol"]: r for r in rows}
    assert (by_symbol["NKN/USDT"]["base"], by_symbol["NKN/USDT"]["quote"],
            by_symbol["NKN/USDT"]["id"]) == ("NKN", "USDT", "NKNUSDT")


def test_bybit_linear_and_spot_markets_with_the_exchanges_values(rig: Rig) -> None:
    raw: dict[tuple[str, str], dict[str, Any]] = {}
    for category in ("spot", "linear"):
        url = f"{rig.bybit.url}/v5/market/instruments-info?category={category}"
        with urllib.request.urlopen(url, timeout=10) as response:
            for entry in json.load(response)["result"]["list"]:
                raw[(category, entry["symbol"])] = entry
    rows = rig.rows("@markets?exchange=bybit")
    assert {r["symbol"] for r in rows} == set(BYBIT_SYMBOLS)
    for row in rows:
        category = "spot" if row["type"] == "spot" else "linear"
        entry = raw[(category, row["id"])]
        assert row["price_tick"] == float(entry["priceFilter"]["tickSize"])
        step = entry["lotSizeFilter"].get("qtyStep") or entry["lotSizeFilter"]["basePrecision"]
        assert row["amount_tick"] == float(step)
        assert row["subscribed"] is (row["symbol"] in BYBIT_SUBSCRIBED)
        assert row["active"] is (entry["status"] == "Trading")
    swap = next(r for r in rows if r["symbol"] == "BTC/USDT:USDT")
    assert {k: swap[k] for k in ("base", "quote", "type", "contract", "linear", "inverse",
                                 "contract_size", "settle", "expiry")} == {
        "base": "BTC", "quote": "USDT", "type": "swap", "contract": True, "linear": True,
        "inverse": False, "contract_size": 1.0, "settle": "USDT", "expiry": None}
    spot = next(r for r in rows if r["symbol"] == "BTC/USDT")
    assert (spot["type"], spot["contract"], spot["settle"], spot["linear"]) == \
        ("spot", False, None, None)


def test_all_exchanges_glob_and_columns(rig: Rig) -> None:
    every = rig.rows("@markets")
    assert [r["exchange"] for r in every] == \
        ["binance"] * 1695 + ["bybit"] * len(BYBIT_SYMBOLS)  # in the order streams were added
    glob = "BTC/*"
    expected = [(r["exchange"], r["symbol"]) for r in every
                if fnmatch.fnmatchcase(r["symbol"], glob)]
    assert ("bybit", "BTC/USDT:USDT") in expected and ("binance", "ETH/BTC") not in expected
    got = rig.get(f"@markets?symbol={glob}&columns=exchange,symbol")
    assert got.schema == pa.schema([MARKET_SCHEMA.field("exchange"),
                                    MARKET_SCHEMA.field("symbol")])
    assert list(zip(*got.to_pydict().values(), strict=True)) == expected
    assert rig.rows("@markets?symbol=*/USDT:USDT&columns=symbol") == [
        {"symbol": "BTC/USDT:USDT"}, {"symbol": "ETH/USDT:USDT"}]
    bracket = [{"symbol": r["symbol"], "subscribed": r["subscribed"]} for r in every
               if r["exchange"] == "binance" and fnmatch.fnmatchcase(r["symbol"], "NKN/[UB]*")]
    assert {"symbol": "NKN/USDT", "subscribed": True} in bracket
    assert rig.rows("@markets?exchange=binance&symbol=NKN/[UB]*&columns=symbol,subscribed") == \
        bracket
    assert rig.rows("@markets?symbol=NOPE/*") == []


def test_subscribed_follows_subscribe_and_unsubscribe(rig: Rig) -> None:
    def subscribed() -> list[str]:
        return [r["symbol"] for r in rig.rows("@markets?exchange=bybit&columns=symbol,subscribed")
                if r["subscribed"]]

    def act(name: str, body: dict[str, Any]) -> None:
        list(rig.client.do_action(flight.Action(name, json.dumps(body).encode())))

    assert subscribed() == ["BTC/USDT:USDT"]
    act("subscribe", {"exchange": "bybit", "symbols": ["ETH/USDT:USDT"]})
    assert subscribed() == ["BTC/USDT:USDT", "ETH/USDT:USDT"]
    act("unsubscribe", {"exchange": "bybit", "symbols": ["ETH/USDT:USDT"]})
    assert subscribed() == ["BTC/USDT:USDT"]


def test_list_flights_flight_info_and_schema(rig: Rig) -> None:
    flights = list(rig.client.list_flights())
    (markets,) = [f for f in flights if f.descriptor.descriptor_type == flight.DescriptorType.CMD]
    assert markets.descriptor.command == b"@markets"
    assert markets.schema == MARKET_SCHEMA and markets.total_records == -1
    (endpoint,) = markets.endpoints
    assert rig.client.do_get(endpoint.ticket).read_all().num_rows == 1695 + len(BYBIT_SYMBOLS)
    (bybit,) = [f for f in rig.client.list_flights(b"bybit") if not f.descriptor.path]
    assert bybit.endpoints[0].ticket.ticket == b"@markets?exchange=bybit"
    assert [f for f in rig.client.list_flights(b"BTC/*") if not f.descriptor.path] == []

    info = rig.client.get_flight_info(flight.FlightDescriptor.for_command(
        b"@markets?exchange=bybit&columns=symbol,price_tick"))
    assert info.total_records == len(BYBIT_SYMBOLS)
    assert info.schema == pa.schema([MARKET_SCHEMA.field("symbol"),
                                     MARKET_SCHEMA.field("price_tick")])
    assert info.endpoints[0].ticket.ticket == b"@markets?exchange=bybit&columns=symbol,price_tick"
    schema = rig.client.get_schema(flight.FlightDescriptor.for_command(b"@markets")).schema
    assert schema == MARKET_SCHEMA
    json_info = rig.client.get_flight_info(flight.FlightDescriptor.for_command(
        b'{"symbol": "@markets", "exchange": "binance"}'))
    assert json_info.total_records == 1695


@pytest.mark.parametrize(("ticket", "not_found", "message"), [
    ("@markets?exchange=kraken", True,
     "no stream for exchange 'kraken'; running: binance, bybit"),
    ("@markets?symbol=BTC%20USDT", False,
     "invalid symbol glob 'BTC USDT' for '@markets'; expected 1-64 characters"),
    ("@markets?latest=5", False,
     "parameter 'latest' is not allowed for '@markets'; allowed: exchange, columns, symbol"),
    ("@markets?columns=price", False, "unknown column 'price'; allowed: exchange, symbol, id"),
    ("@markets?follow=true", False, "parameter 'follow' is not allowed"),
])
def test_bad_filters_are_refused(rig: Rig, ticket: str, not_found: bool, message: str) -> None:
    # NOT_FOUND for an exchange without a stream (as '*' and '@events'), else INVALID_ARGUMENT.
    with pytest.raises(pa.ArrowKeyError if not_found else pa.ArrowInvalid) as info:
        rig.get(ticket)
    assert message in str(info.value)


def test_a_server_without_ingestion_lists_no_markets() -> None:
    from flight_md.service import FlightMarketDataServer

    with FlightMarketDataServer("grpc://127.0.0.1:0") as server, \
            flight.connect(f"grpc://127.0.0.1:{server.port}") as client:
        table = client.do_get(flight.Ticket(b"@markets")).read_all()
        assert (table.num_rows, table.schema) == (0, MARKET_SCHEMA)
        assert list(client.list_flights()) == []
        with pytest.raises(pa.ArrowKeyError, match="unknown exchange 'binance'; no exchange is "
                                                   "streaming"):
            client.do_get(flight.Ticket(b"@markets?exchange=binance")).read_all()


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "mode", "expected"), [
    (0.01, 4, 0.01),  # TICK_SIZE: the step itself
    ("0.00001000", 4, 0.00001),
    (2, 2, 0.01),  # DECIMAL_PLACES: a count of decimals
    (0, 2, 1.0),
    (8, 2, 1e-8),
    (2.5, 2, None),  # not a count
    (5, 3, None),  # SIGNIFICANT_DIGITS: no fixed step
    (None, 4, None),
    (0, 4, None),
    ("abc", 4, None),
    (True, 4, None),
])
def test_tick_size_normalises_ccxt_precision_modes(value: Any, mode: int,
                                                   expected: float | None) -> None:
    assert tick_size(value, mode) == expected


def test_markets_table_has_the_schema_and_projects() -> None:
    info = MarketInfo("bybit", "BTC/USD:BTC-261225", "BTCUSDZ26", "BTC", "USD", "future", True,
                      False, True, 1.0, "BTC", 1_798_185_600_000, 0.5, 1.0, None, False)
    table = markets_table([info])
    assert table.schema == MARKET_SCHEMA
    assert table.to_pylist()[0]["expiry"] == 1_798_185_600_000
    assert table.to_pylist()[0]["active"] is None
    assert markets_table([], ("symbol", "expiry")).schema.names == ["symbol", "expiry"]
