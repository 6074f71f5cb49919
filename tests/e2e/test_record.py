"""``flight-md record``: a session recorded once replays offline with the same values.

For every emulated venue: :func:`flight_md.record.record` records the synthetic emulator
(``upstream`` its URL) through real ccxt.pro; the emulator replays the file at speed 0; a real
server streams the replay; and exactly the values in the recorded frames (read from the file
here, per venue's wire format) come out of the Flight service, in the recorded order. The
``flight-md record`` command itself runs once, as a child process.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.cli import main
from flight_md.config import ServerConfig, StreamConfig
from flight_md.emulator import EmulatorThread
from flight_md.emulator.recording import Recording
from flight_md.record import RecordingProxy, _Writer, record, redact_url
from flight_md.venues import VENUES, emulated
from tests.support import ChildProcess, until

Row = tuple[str, float, float | None, float | None]
"""(market id or symbol, price, bid, ask) of one recorded ticker frame."""


def _binance(frames: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    return [(f["s"], float(f["c"]), float(f["b"]), float(f["a"])) for _, f in frames
            if f.get("e") == "24hrTicker"]


def _binance_book(frames: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    # bookTicker: no event type; the price of a bid/ask tick is the mid.
    return [(f["s"], (float(f["b"]) + float(f["a"])) / 2, float(f["b"]), float(f["a"]))
            for _, f in frames if "e" not in f and {"u", "s", "b", "a"} <= f.keys()]


def _bybit(frames: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    rows: list[Row] = []
    state: dict[str, dict[str, Any]] = {}
    for path, frame in frames:
        topic = frame.get("topic", "")
        if not topic.startswith("tickers.") or not path.endswith("/linear"):
            continue
        merged = state.setdefault(topic, {})
        if frame["type"] == "snapshot":
            merged.clear()
        merged.update(frame["data"])  # a delta carries only the changed fields
        rows.append((merged["symbol"], float(merged["lastPrice"]), float(merged["bid1Price"]),
                     float(merged["ask1Price"])))
    return rows


def _kraken(frames: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    # Websocket v2: a ticker frame (snapshot or update) is a full ticker of a unified symbol.
    return [(d["symbol"], float(d["last"]), float(d["bid"]), float(d["ask"]))
            for path, f in frames if path == "/v2" and f.get("channel") == "ticker"
            and f.get("type") in ("snapshot", "update") for d in f["data"]]


def _okx(frames: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    return [(d["instId"], float(d["last"]), float(d["bidPx"]), float(d["askPx"]))
            for _, f in frames if f.get("arg", {}).get("channel") == "tickers" and "data" in f
            for d in f["data"]]


def _coinbase(frames: list[tuple[str, dict[str, Any]]]) -> list[Row]:
    # Advanced Trade ``ticker`` channel: full tickers in ``events[].tickers[]``.
    return [(t["product_id"], float(t["price"]), float(t["best_bid"]), float(t["best_ask"]))
            for _, f in frames if f.get("channel") == "ticker"
            for e in f.get("events", ()) for t in e.get("tickers", ())]


EXTRACT: dict[tuple[str, str], Callable[[list[tuple[str, dict[str, Any]]]], list[Row]]] = {
    ("binance", "ticker"): _binance, ("binance", "bidask"): _binance_book,
    ("bybit", "ticker"): _bybit, ("coinbase", "ticker"): _coinbase, ("kraken", "ticker"): _kraken,
    ("okx", "ticker"): _okx}
"""How each venue's recorded ticker frames read, straight from its wire format."""

RECORDABLE = [(v, c) for v, c in EXTRACT if v in emulated() and VENUES[v].url_overrides is not None]
REQUIRED = {"header": ("exchange", "config", "recorded"), "http": ("conn", "ts", "url", "data"),
            "connect": ("conn", "ts", "addr"), "send": ("conn", "ts", "addr", "data"),
            "recv": ("conn", "ts", "data")}


def read_lines(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def recorded_frames(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(websocket path, parsed frame)`` of every JSON object frame received, in order."""
    paths: dict[str, str] = {}
    frames = []
    for line in read_lines(path):
        if line["t"] == "connect":
            paths[line["conn"]] = urlsplit(line["addr"]).path
        elif line["t"] == "recv":
            try:
                frame = json.loads(line["data"])
            except ValueError:
                continue  # e.g. OKX's text "pong"
            if isinstance(frame, dict):
                frames.append((paths[line["conn"]], frame))
    return frames


class Recorded:
    """One venue's recording, made by the real command from its synthetic emulator."""

    def __init__(self, venue_id: str, channel: str, directory: Path) -> None:
        self.venue = VENUES[venue_id]
        self.channel = channel
        self.symbols = self.venue.test_symbols
        self.path = directory / f"{venue_id}.jsonl.gz"
        with EmulatorThread(exchange=venue_id, symbols=self.symbols, rate=60.0) as emulator:
            self.upstream = emulator.url
            self.summary = asyncio.run(record(venue_id, self.symbols, self.path, duration=1.0,
                                              channel=channel, upstream=emulator.url)).line()


@pytest.fixture(scope="module", params=RECORDABLE, ids=["-".join(c) for c in RECORDABLE])
def recorded(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    venue_id, channel = request.param
    yield Recorded(venue_id, channel, tmp_path_factory.mktemp(f"record-{venue_id}-{channel}"))


def test_every_emulated_venue_is_recorded_and_replayed() -> None:
    assert {v for v, _ in RECORDABLE} == set(emulated()), "add the venue's frame reader to EXTRACT"


def test_the_recording_is_in_the_shared_format(recorded: Recorded) -> None:
    lines = read_lines(recorded.path)
    assert lines[0]["t"] == "header"
    assert lines[0]["exchange"] == recorded.venue.id.upper()
    assert lines[0]["config"] == {recorded.channel: list(recorded.symbols)}
    opened = set()
    for line in lines:
        assert line["t"] in REQUIRED, line
        for key in REQUIRED[line["t"]]:
            assert key in line, (key, line)
        if line["t"] != "header":
            assert isinstance(line["ts"], float) and isinstance(line["conn"], str)
        if line["t"] == "connect":
            opened.add(line["conn"])
        if line["t"] in ("send", "recv"):
            assert line["conn"] in opened and isinstance(line["data"], str)
        for key in ("url", "addr"):  # the real upstream URL, not the local proxy's
            if key in line:
                assert urlsplit(line[key]).netloc == urlsplit(recorded.upstream).netloc
    kinds = {line["t"] for line in lines}
    assert {"http", "connect", "send", "recv"} <= kinds
    # The summary line counts what the file holds.
    received = sum(line["t"] == "recv" for line in lines)
    http = sum(line["t"] == "http" for line in lines)
    match = re.search(r"recorded (\d+) frames received and (\d+) sent, (\d+) http calls",
                      recorded.summary)
    assert match is not None, recorded.summary
    assert (int(match[1]), int(match[3])) == (received, http)
    assert str(recorded.path) in recorded.summary
    # The emulator's own reader takes it, with the market list.
    loaded = Recording.load(recorded.path)
    assert loaded.exchange == recorded.venue.id and loaded.http and loaded.messages


def test_the_replayed_recording_serves_the_recorded_values(recorded: Recorded) -> None:
    rows = EXTRACT[(recorded.venue.id, recorded.channel)](recorded_frames(recorded.path))
    assert len(rows) >= 10, "too short a recording to prove anything"
    with EmulatorThread(exchange=recorded.venue.id, replay=recorded.path, speed=0) as replay:
        stream = StreamConfig(recorded.venue.id, recorded.symbols, url=replay.url,
                              channel=recorded.channel, mode="websocket",
                              heartbeat_interval=300.0)
        with MarketDataApp(ServerConfig(port=0, streams=(stream,))) as app, \
                flight.connect(app.location) as client:
            def get(ticket: str) -> list[dict[str, Any]]:
                return client.do_get(flight.Ticket(ticket.encode())).read_all().to_pylist()

            markets = get(f"@markets?exchange={recorded.venue.id}&columns=id,symbol")
            to_symbol = {m["id"]: m["symbol"] for m in markets if m["symbol"] in recorded.symbols}
            expected: dict[str, list[tuple[float, float | None, float | None]]] = {}
            for key, price, bid, ask in rows:
                symbol = key if key in recorded.symbols else to_symbol[key]
                expected.setdefault(symbol, []).append((price, bid, ask))
            assert set(expected) == set(recorded.symbols)

            def served(symbol: str) -> list[tuple[float, float | None, float | None]]:
                table = get(f"{symbol}?exchange={recorded.venue.id}&columns=price,bid,ask") \
                    if symbol in {s.symbol for s in app.store.buffer(recorded.channel).stats()} \
                    else []
                return [(r["price"], r["bid"], r["ask"]) for r in table]

            until(lambda: all(len(served(s)) >= len(v) for s, v in expected.items()), 30,
                  "every recorded ticker served")
            for symbol, values in expected.items():
                assert served(symbol) == values, symbol


def test_the_command_records_and_prints_one_summary_line(tmp_path: Path) -> None:
    out = tmp_path / "session.jsonl.gz"
    with EmulatorThread(exchange="bybit", symbols=("BTC/USDT:USDT",), rate=40.0) as emulator:
        command = ChildProcess(["-m", "flight_md", "record", "--exchange", "bybit", "--symbols",
                                "BTC/USDT:USDT", "--duration", "0.5", "--out", str(out),
                                "--upstream", emulator.url])
        command.start()
        code = command.wait(60)
        if code is None:
            command.kill()
    assert code == 0, command.output
    (line,) = command.stdout
    received = sum(r["t"] == "recv" for r in read_lines(out))
    assert line.startswith(f"recorded {received} frames received and "), line
    assert line.rstrip().endswith(f"-> {out}") and not (tmp_path / "session.jsonl.gz.part").exists()
    assert "Traceback" not in command.output


@pytest.mark.parametrize(("args", "message"), [
    (["--duration", "0"], "invalid duration 0.0; expected seconds > 0"),
    (["--duration", "1", "--upstream", "ftp://h"],
     "invalid upstream 'ftp://h'; expected http(s)://host:port"),
    (["--duration", "1", "--upstream", "http://h:1/api"], "invalid upstream 'http://h:1/api'"),
    (["--duration", "1", "--symbols", ","], "no symbols to record; give --symbols A,B"),
])
def test_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  args: list[str], message: str) -> None:
    out = tmp_path / "x.jsonl.gz"
    argv = ["record", "--exchange", "bybit", "--symbols", "BTC/USDT:USDT", "--out", str(out),
            *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("flight-md: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("venue_id", "path", "websocket", "target"), [
    ("binance", "/api/v3/exchangeInfo", False, "https://api.binance.com/api/v3/exchangeInfo"),
    ("binance", "/api/v3/ticker/24hr?symbols=%5B%22A%22%5D", False,
     "https://api.binance.com/api/v3/ticker/24hr?symbols=%5B%22A%22%5D"),
    ("binance", "/ws/0", True, "wss://stream.binance.com:9443/ws/0"),
    ("binance", "/ws-api/v3", True, "wss://ws-api.binance.com:443/ws-api/v3"),
    ("binance", "/fapi/v1/exchangeInfo", False, "https://fapi.binance.com/fapi/v1/exchangeInfo"),
    ("binance", "/wsx", True, None),
    ("bybit", "/v5/market/instruments-info?category=spot", False,
     "https://api.bybit.com/v5/market/instruments-info?category=spot"),
    ("bybit", "/v5/public/linear", True, "wss://stream.bybit.com/v5/public/linear"),
    ("bybit", "/elsewhere", False, None),
])
def test_each_path_goes_to_the_real_host_that_serves_it(tmp_path: Path, venue_id: str, path: str,
                                                          websocket: bool,
                                                          target: str | None) -> None:
    writer = _Writer(tmp_path / "x.jsonl.gz", venue_id, {})
    try:
        assert RecordingProxy(VENUES[venue_id], writer).target(path, websocket) == target
        upstream = RecordingProxy(VENUES[venue_id], writer, upstream="http://127.0.0.1:9")
        assert upstream.target(path, websocket) == \
            ("ws" if websocket else "http") + "://127.0.0.1:9" + path
    finally:
        writer.close()


@pytest.mark.parametrize(("url", "redacted"), [
    ("https://api.binance.com/api/v3/exchangeInfo", "https://api.binance.com/api/v3/exchangeInfo"),
    ("https://x/api/v3/account?timestamp=1&recvWindow=5000&signature=abc",
     "https://x/api/v3/account?timestamp=1&recvWindow=5000"),
    ("https://x/p?apiKey=k&symbol=BTCUSDT&Sign=s", "https://x/p?symbol=BTCUSDT"),
    ("https://x/v5/market/instruments-info?category=linear&limit=1000",
     "https://x/v5/market/instruments-info?category=linear&limit=1000"),
])
def test_keys_and_signatures_never_reach_a_recording(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
