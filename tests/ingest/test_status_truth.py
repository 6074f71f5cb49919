"""``status`` tells the truth (issue 10, items 5, 12 and 19).

* Counters are consistent by construction: at every ``status`` call, for every symbol,
  ``ticks_stored <= ticks_appended <= ticks_received`` (the store is read before ingestion,
  which counts an update before storing it), under load, with ingestion in a thread or a
  child process.
* ``last_error`` stays after the stream recovers, dated by ``last_error_ms`` (when it
  happened), so its age is visible.
* Clock skew: per exchange, the nearest-rank median and p99 of ``receive_timestamp -
  timestamp`` over the last minute equal those of the rows stored in that minute; a channel
  without exchange timestamps (Binance ``bookTicker``) reports null.

Real parts: a ``flight-md emulator`` process or an emulator thread, a real ``MarketDataApp``
and a real ``pyarrow.flight`` client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig, StreamConfig
from flight_md.emulator.fault import Fault
from flight_md.emulator.thread import EmulatorThread
from flight_md.ingest.skew import SkewWindow, nearest_rank
from flight_md.schema import now_ms
from tests.support import EmulatorProcess, until

LOAD_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT")
CALLS = 60


def _status(client: flight.FlightClient) -> dict[str, Any]:
    result = next(client.do_action(flight.Action("status", b"")))
    status: dict[str, Any] = json.loads(result.body.to_pybytes())
    return status


def _symbols(app: MarketDataApp) -> list[str]:
    return [symbol for _, symbol in app.buffer.keys("binance")]


def _action(client: flight.FlightClient, name: str, body: Any) -> dict[str, Any]:
    result = next(client.do_action(flight.Action(name, json.dumps(body).encode())))
    answer: dict[str, Any] = json.loads(result.body.to_pybytes())
    return answer


@pytest.fixture
def loaded_emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--symbols", ",".join(LOAD_SYMBOLS), "--rate", "1000") as emulator:
        yield emulator


@pytest.mark.parametrize("process", [False, True], ids=["thread", "ingest-process"])
def test_stored_never_exceeds_received_at_any_status_call_under_load(
        loaded_emulator: EmulatorProcess, process: bool) -> None:
    config = ServerConfig(port=0, ingest_process=process, buffer_size=200, streams=(
        StreamConfig("binance", LOAD_SYMBOLS, mode="websocket", url=loaded_emulator.url),))
    with MarketDataApp(config) as app:
        client = flight.connect(app.location)
        until(lambda: all(s["ticks_appended"] >= 250 for s in _status(client)["symbols"])
              and len(_status(client)["symbols"]) == len(LOAD_SYMBOLS), 60,
              "every symbol to pass the buffer size")
        checked = 0
        for _ in range(CALLS):
            for symbol in _status(client)["symbols"]:
                assert symbol["ticks_stored"] <= symbol["ticks_appended"] \
                    <= symbol["ticks_received"], symbol
                checked += 1
        assert checked == CALLS * len(LOAD_SYMBOLS)
        client.close()


def test_last_error_is_dated_so_its_age_shows_once_the_stream_recovers() -> None:
    with EmulatorThread(exchange="binance", symbols=("BTC/USDT",), rate=40.0, seed=1) as emulator:
        config = ServerConfig(port=0, streams=(StreamConfig(
            "binance", ("BTC/USDT",), mode="websocket", url=emulator.url,
            reconnect_delay=0.2, max_reconnect_delay=0.5),))
        with MarketDataApp(config) as app:
            client = flight.connect(app.location)
            until(lambda: _status(client)["exchanges"]["binance"]["state"] == "connected"
                  and app.buffer.stats(), 30, "the first ticks")
            before = now_ms()
            emulator.inject(Fault.REFUSE)
            emulator.inject(Fault.RESET)
            outage = until(lambda: (ex := _status(client)["exchanges"]["binance"])["last_error"]
                           and ex, 30, "the outage to show in status")
            assert outage["state"] == "reconnecting" and outage["last_error_ms"] >= before
            emulator.clear_faults()

            def newest() -> int:
                times = app.buffer.get_range_sync("BTC/USDT", exchange="binance",
                                                  columns=["receive_timestamp"])
                return int(times.column("receive_timestamp")[-1].as_py())

            until(lambda: _status(client)["exchanges"]["binance"]["state"] == "connected", 30,
                  "the stream to recover")
            recovered = _status(client)["exchanges"]["binance"]
            until(lambda: newest() > recovered["last_error_ms"] + 50, 30,
                  "ticks well after the last error")
            again = _status(client)["exchanges"]["binance"]
            assert again["state"] == "connected" and again["reconnects"] >= 1
            # The error stays, dated within the outage: its age grows while ticks flow.
            assert again["last_error"] and again["last_error"] == recovered["last_error"]
            assert before <= again["last_error_ms"] == recovered["last_error_ms"] < newest()
            client.close()


def _skew_of_stored(app: MarketDataApp, since_ms: int) -> tuple[int | None, int | None, int]:
    skews = []
    for exchange, symbol in app.buffer.keys("binance"):
        table = app.buffer.get_range_sync(symbol, exchange=exchange,
                                          columns=["timestamp", "receive_timestamp"])
        for row in table.to_pylist():
            if row["receive_timestamp"] > since_ms:
                skews.append(row["receive_timestamp"] - row["timestamp"])
    skews.sort()
    if not skews:
        return None, None, 0
    return nearest_rank(skews, 0.5), nearest_rank(skews, 0.99), len(skews)


def test_clock_skew_is_the_median_and_p99_of_the_rows_stored_in_the_last_minute() -> None:
    symbols = ("BTC/USDT", "ETH/USDT")
    with EmulatorThread(exchange="binance", symbols=symbols, rate=200.0, seed=2) as emulator:
        config = ServerConfig(port=0, streams=(StreamConfig(
            "binance", symbols, mode="websocket", url=emulator.url),))
        with MarketDataApp(config) as app:
            client = flight.connect(app.location)
            until(lambda: all(app.buffer.count(s, "binance") >= 100 for s in symbols
                              if s in _symbols(app)) and
                  len(app.buffer.keys()) == 2, 30, "ticks on both symbols")
            # Quiesce: no row is stored after an unsubscribe returns.
            _action(client, "unsubscribe", {"symbols": list(symbols)})
            status = _status(client)
            skew = status["exchanges"]["binance"]["clock_skew_ms"]
            median, p99, samples = _skew_of_stored(app, now_ms() - 60_000)
            assert samples == sum(app.buffer.count(s, "binance") for s in symbols) >= 200
            assert skew == {"median": median, "p99": p99, "samples": samples, "window_s": 60.0}
            client.close()


def test_a_channel_without_exchange_time_reports_null_skew() -> None:
    with EmulatorThread(exchange="binance", symbols=("BTC/USDT",), rate=50.0, seed=3) as emulator:
        config = ServerConfig(port=0, streams=(StreamConfig(
            "binance", ("BTC/USDT",), channel="bidask", mode="websocket", url=emulator.url),))
        with MarketDataApp(config) as app:
            client = flight.connect(app.location)
            bidask = app.store.buffer("bidask")  # the bid/ask stream's own rings
            until(lambda: bidask.keys("binance")
                  and bidask.count("BTC/USDT", "binance") >= 10, 30, "bid/ask ticks")
            skew = _status(client)["exchanges"]["binance"]["clock_skew_ms"]
            assert skew == {"median": None, "p99": None, "samples": 0, "window_s": 60.0}
            client.close()


def test_the_skew_window_is_bounded_in_time_and_size() -> None:
    window = SkewWindow(window_ms=60_000, capacity=8)
    assert window.summary(1_000_000).median_ms is None
    window.add(1_000_000, 1_000_000 - 500)  # 61 s before "now" below: outside the window
    for i in range(5):
        window.add(1_061_000 + i, 1_061_000 + i - (10 + i))  # skews 10..14
    summary = window.summary(1_061_000 + 5)
    assert (summary.median_ms, summary.p99_ms, summary.samples) == (12, 14, 5)
    for i in range(20):  # more than the capacity: only the newest 8 are kept
        window.add(1_062_000 + i, 1_062_000 + i - 100 - i)  # skews 100..119
    summary = window.summary(1_062_100)
    assert (summary.median_ms, summary.p99_ms, summary.samples) == (115, 119, 8)
    with pytest.raises(ValueError, match="power of two"):
        SkewWindow(capacity=6)
