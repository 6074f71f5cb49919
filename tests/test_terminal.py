"""flight-md get / status / top / tail against a real server, in-process, in subprocesses and
in a real pseudo-terminal.

Reads and tails run against the synthetic market (known values, no ingestion); what ``status``
and ``top`` say about exchanges and streams runs against a server with real ccxt ingestion
from the exchange emulator, and must show that server's own figures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trustme

# The synthetic market, feeder and control shared with tests/clients.
sys.path.insert(0, str(Path(__file__).resolve().parent / "clients"))
from client_support import (
    ROWS,
    STEP_MS,
    Feeder,
    IngestingMarket,
    followers,
    killable_server,
    market,
    refused_port,
    scaled,
    tick,
)
from flight_md_client import MarketDataClient

from flight_md import terminal
from flight_md.auth import MIDDLEWARE_KEY, TokenAuth
from flight_md.config import Secret
from flight_md.schema import SCHEMA, now_ms
from flight_md.service import FlightMarketDataServer
from flight_md.terminal import (
    TopModel,
    format_age,
    format_number,
    format_time,
    grid,
    parse_time_arg,
    table_lines,
)
from tests.support import child_env, until

ISO_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def server() -> Iterator[FlightMarketDataServer]:
    with market() as srv:
        yield srv


@pytest.fixture
def loc(server: FlightMarketDataServer) -> list[str]:
    return ["--location", f"grpc://127.0.0.1:{server.port}"]


@pytest.fixture
def ingesting() -> Iterator[IngestingMarket]:
    """A server streaming BTC/USDT and ETH/USDT from an emulated binance through real ccxt."""
    with IngestingMarket() as rig:
        yield rig


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIGHT_MD_TOKEN", raising=False)
    monkeypatch.delenv("FLIGHT_MD_LOCATION", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = terminal.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def start_of(server: FlightMarketDataServer) -> int:
    return int(server.test_start)  # type: ignore[attr-defined]


# -- get -------------------------------------------------------------------------------------


def test_get_prints_an_aligned_table_with_iso_times(capsys: pytest.CaptureFixture[str],
                                                    server: FlightMarketDataServer,
                                                    loc: list[str]) -> None:
    code, out, err = run(capsys, "get", "BTC/USDT", "--latest", "3", *loc)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["symbol", "timestamp", "price", "volume", "bid", "ask", "high",
                                "low", "open", "close", "exchange", "receive_timestamp"]
    first_ts = start_of(server) + (ROWS - 3) * STEP_MS
    assert lines[1].split() == ["BTC/USDT", format_time(first_ts), "697", "1597", "696.5",
                                "697.5", "707", "687", "696", "697", "binance",
                                format_time(first_ts + 7)]
    # numbers are right-aligned: every price ends in the same column
    ends = {line.index(line.split()[2]) + len(line.split()[2]) for line in lines}
    assert len(ends) == 1


def test_get_defaults_to_twenty_rows_and_takes_columns_and_ranges(
        capsys: pytest.CaptureFixture[str], server: FlightMarketDataServer,
        loc: list[str]) -> None:
    code, out, _ = run(capsys, "get", "ETH/USDT", *loc)
    assert code == 0 and len(out.splitlines()) == 1 + terminal.TABLE_LATEST
    start = start_of(server)
    code, out, _ = run(capsys, "get", "ETH/USDT", "--columns", "timestamp,price", "--start",
                       format_time(start + 10 * STEP_MS), "--end", str(start + 13 * STEP_MS),
                       *loc)
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["timestamp", "price"], [format_time(start + 10_000), "20"],
        [format_time(start + 11_000), "21"], [format_time(start + 12_000), "22"]]
    stamps = [start + i * STEP_MS for i in range(ROWS)]
    before = now_ms()
    code, out, _ = run(capsys, "get", "ETH/USDT", "--start", "10s", "--columns", "price", *loc)
    after = now_ms()
    # "10 s ago", now being some instant of the command: exactly the ticks from there on
    assert code == 0 and len(out.splitlines()) - 1 in {
        sum(t >= now - 10_000 for t in stamps) for now in range(before, after + 1)}


def test_get_snapshot_and_events(capsys: pytest.CaptureFixture[str], loc: list[str]) -> None:
    code, out, _ = run(capsys, "get", "*", "--exchange", "bybit", "--columns", "symbol,price",
                       *loc)
    assert code == 0 and [line.split() for line in out.splitlines()] == [
        ["symbol", "price"], ["SOL/USDT", "69"]]
    code, out, _ = run(capsys, "get", "@events", *loc)
    assert code == 0
    assert re.search(rf"^{ISO_RE}\s+binance\s+subscribe\s+BTC/USDT,ETH/USDT\s+subscribed$",
                     out, re.MULTILINE)
    assert "reset by peer" in out


def test_get_csv_to_stdout(capsys: pytest.CaptureFixture[str], server: FlightMarketDataServer,
                           loc: list[str]) -> None:
    code, out, _ = run(capsys, "get", "BTC/USDT", "-n", "2", "--columns",
                       "timestamp,price,receive_timestamp", "--csv", *loc)
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    ts = start_of(server) + (ROWS - 2) * STEP_MS
    assert rows == [["timestamp", "price", "receive_timestamp"],
                    [format_time(ts), "698", format_time(ts + 7)],
                    [format_time(ts + STEP_MS), "699", format_time(ts + STEP_MS + 7)]]


def test_get_exports_the_whole_buffer_to_csv_and_parquet(capsys: pytest.CaptureFixture[str],
                                                         server: FlightMarketDataServer,
                                                         loc: list[str], tmp_path: Path) -> None:
    csv_file = tmp_path / "btc.csv"
    code, out, err = run(capsys, "get", "BTC/USDT", "--csv", str(csv_file), *loc)
    assert code == 0 and out == "" and err.strip() == f"wrote {ROWS} rows to {csv_file}"
    assert len(csv_file.read_text().splitlines()) == ROWS + 1

    parquet_file = tmp_path / "btc.parquet"
    code, _, err = run(capsys, "get", "BTC/USDT", "--parquet", str(parquet_file), *loc)
    assert code == 0 and err.strip() == f"wrote {ROWS} rows to {parquet_file}"
    table = pq.read_table(parquet_file)
    assert table.num_rows == ROWS
    assert table.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    first = table.column("timestamp")[0].value
    assert first == start_of(server)

    events_file = tmp_path / "events.csv"
    assert run(capsys, "get", "@events", "--csv", str(events_file), *loc)[0] == 0
    assert '"BTC/USDT,ETH/USDT"' in events_file.read_text()  # lists joined with commas


def test_get_errors_are_one_line(capsys: pytest.CaptureFixture[str], loc: list[str]) -> None:
    code, out, err = run(capsys, "get", "BTC/USDX", *loc)
    assert (code, out) == (1, "")
    assert err == ("flight-md: unknown symbol 'BTC/USDX'; buffered: BTC/USDT, ETH/USDT, "
                   "SOL/USDT\n")
    code, _, err = run(capsys, "get", "BTC/USDT", "--columns", "price,nope", *loc)
    assert code == 2 and err.startswith("flight-md: unknown column 'nope'; allowed: ")
    code, _, err = run(capsys, "get", "SOL/USDT", *loc)
    assert code == 1 and "add exchange= one of: binance, bybit" in err
    code, _, err = run(capsys, "get", "*", "--latest", "3", *loc)
    assert code == 2 and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        terminal.main(["get", "BTC/USDT", "--start", "yesterday", *loc])
    assert exit_info.value.code == 2
    assert "invalid time 'yesterday'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["get", "BTC/USDT"], ["status"], ["top", "--iterations", "1"],
                                  ["tail", "BTC/USDT"]])
def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str],
                                           argv: list[str]) -> None:
    with refused_port() as port:
        code, out, err = run(capsys, *argv, "--location", f"grpc://127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert err == (f"flight-md: cannot reach grpc://127.0.0.1:{port} (connection refused); "
                   "is `flight-md serve` running?\n")


# Every refusal is the client's error (or the ticket grammar's, before sending) as one line; the
# exit code says whose fault: 1 the server refused, 2 a bad argument refused locally.
REFUSALS = [
    (["get", "BTC/USDX"], 1, "unknown symbol 'BTC/USDX'; buffered: BTC/USDT, ETH/USDT, SOL/USDT"),
    (["tail", "BTC/USDX"], 1, "unknown symbol 'BTC/USDX'; buffered: BTC/USDT, ETH/USDT, SOL/USDT"),
    (["tail", "SOL/USDT"], 1, ("symbol 'SOL/USDT' is buffered on several exchanges; add "
                               "exchange= one of: binance, bybit")),
    (["get", "*", "--exchange", "kraken"], 1, None),
    (["tail", "BTC/USDT", "--columns", "price,nope"], 2,
     f"unknown column 'nope'; allowed: {', '.join(SCHEMA.names)}"),
    (["get", "BTC/USDT?latest=1"], 2, ("invalid symbol 'BTC/USDT?latest=1'; expected 1-64 "
                                       "characters from A-Z a-z 0-9 / - _ : . (e.g. 'BTC/USDT')")),
    (["get", "@events", "--columns", "price"], 2, "'@events' takes no --columns"),
]


@pytest.mark.parametrize(("argv", "code", "message"), REFUSALS,
                         ids=[" ".join(r[0]) for r in REFUSALS])
def test_refusals_are_one_line_with_their_exit_code(capsys: pytest.CaptureFixture[str],
                                                    loc: list[str], argv: list[str], code: int,
                                                    message: str | None) -> None:
    got_code, out, err = run(capsys, *argv, *loc)
    assert (got_code, out) == (code, "")
    assert err.startswith("flight-md: ") and err.endswith("\n") and err.count("\n") == 1, err
    if message is not None:
        assert err == f"flight-md: {message}\n"


def test_a_bad_location_is_named_by_its_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "status", "--location", "carrier-pigeon://x") == (
        2, "", ("flight-md: invalid --location 'carrier-pigeon://x': No client transport "
                "implementation for carrier-pigeon\n"))
    code, _, err = run(capsys, "tail", "BTC/USDT", "--location", "host:port")
    assert code == 2 and err.startswith("flight-md: invalid --location 'grpc://host:port': ")


def test_a_lost_connection_ends_the_tail_with_one_line() -> None:
    with killable_server() as (child, location):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flight_md.terminal", "tail", "BTC/USDT", "--backlog", "1",
             "--location", location], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=child_env())
        try:
            assert proc.stdout is not None
            assert "BTC/USDT" in proc.stdout.readline()  # the tail is open
            child.kill()  # SIGKILL: the server vanishes under the open stream
            _, err = proc.communicate(timeout=scaled(20))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1
    assert re.fullmatch(rf"flight-md: lost the connection to {re.escape(location)} "
                        r"\([a-zA-Z ]+\)\n", err), err


def test_a_tail_that_falls_behind_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with market(capacity=5000, follow_max_lag=10) as server:
        def burst() -> None:
            until(lambda: followers(server.buffer, "BTC/USDT") == 1, 10, "the tail to be open")
            stamp = now_ms()
            server.buffer.extend(tick("BTC/USDT", stamp + i, 1.0) for i in range(2000))

        burster = threading.Thread(target=burst)
        burster.start()
        code, out, err = run(capsys, "tail", "BTC/USDT", "--location",
                             f"grpc://127.0.0.1:{server.port}")
        burster.join(scaled(10))
    assert code == 1 and out == ""  # nothing arrived before the burst
    assert re.fullmatch(r"flight-md: live tail of 'BTC/USDT' on binance fell \d+ ticks behind "
                        r"\(limit 10\); read faster or resume with a new request \(the terminal "
                        r"could not keep up\)\n", err), err


# Without the client the subcommands still exist and parse (``--start 5m`` included), then
# say in one line what to install; serve and the emulator do not need the client.
_WITHOUT_CLIENT = """
import sys
sys.modules["flight_md_client"] = None  # import fails exactly as if it were not installed
from flight_md.cli import main
for argv in (["get", "BTC/USDT", "--start", "5m"], ["status"], ["top", "--iterations", "1"],
             ["tail", "BTC/USDT", "--json"]):
    print(argv[0], main([*argv, "--location", "grpc://127.0.0.1:1"]), flush=True)
    print("--", file=sys.stderr, flush=True)
try:
    main(["serve", "--help"])
except SystemExit as done:
    print("serve --help", done.code)
"""


def test_without_the_client_each_view_is_one_line_saying_what_to_install() -> None:
    done = subprocess.run([sys.executable, "-c", _WITHOUT_CLIENT], capture_output=True,
                          text=True, env=child_env(), timeout=scaled(60), check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["get 1", "status 1", "top 1", "tail 1"], done.stdout
    assert lines[-1] == "serve --help 0" and "--exchange" in done.stdout
    errors = done.stderr.split("--\n")[:4]
    assert errors == [f"flight-md: {command} needs the Python client (the flight-md-client "
                      "distribution), which is not installed; install it from the flight_md "
                      "source tree with: pip install ./clients/python\n"
                      for command in ("get", "status", "top", "tail")]


# -- status ----------------------------------------------------------------------------------


def _newest(location: str, symbol: str) -> dict[str, Any]:
    with MarketDataClient(location) as md:
        row: dict[str, Any] = md.latest(symbol, 1).to_pylist()[0]
        return row


def test_status_shows_the_real_servers_figures(capsys: pytest.CaptureFixture[str],
                                               ingesting: IngestingMarket) -> None:
    ingesting.reset_once()  # one real reconnect
    sent = ingesting.freeze()  # the exchange goes quiet: every figure below is final
    location = ingesting.location
    with MarketDataClient(location) as md:
        exchange = md.status()["exchanges"]["binance"]

    code, out, err = run(capsys, "status", "--location", location)
    assert code == 0 and err == ""
    assert re.search(rf"^server {re.escape(location)}: up \S+, buffer 5000 ticks per symbol, "
                     rf"ingestion on, {len(ingesting.events)} events, 0 refused requests$", out,
                     re.MULTILINE), out
    last_error = re.escape(exchange["last_error"] or "-")
    assert re.search(rf"^binance\s+connected\s+websocket\s+ticker\s+1\s+2\s+0\s+{last_error}$",
                     out, re.MULTILINE), out
    for symbol, frames in sent.items():
        newest = format_time(_newest(location, symbol)["timestamp"])
        row = re.search(rf"^binance\s+{re.escape(symbol)}\s+yes\s+{frames}\s+{frames}\s+0\s+"
                        rf"(\S+)\s+ok\s+{newest}$", out, re.MULTILINE)
        assert row, out
        assert re.fullmatch(r"\d+ms|\d+\.\ds|\dm\d\ds", row.group(1))

    code, out, _ = run(capsys, "status", "--json", "--location", location)
    data = json.loads(out)
    assert code == 0 and data["exchanges"]["binance"] == exchange
    assert {s["symbol"]: s["ticks_stored"] for s in data["symbols"]} == sent


def test_status_of_a_server_without_ingestion(capsys: pytest.CaptureFixture[str],
                                              loc: list[str]) -> None:
    code, out, _ = run(capsys, "status", *loc)
    assert code == 0
    assert re.search(r"^server grpc://127\.0\.0\.1:\d+: up \S+, buffer 1000 ticks per symbol, "
                     r"ingestion off, 3 events, 0 refused requests$", out, re.MULTILINE)
    assert "RECONNECTS" not in out  # no exchange table without ingestion
    assert re.search(r"^binance\s+BTC/USDT\s+no\s+600\s+600\s+0\s+\S+\s+ok\s+" + ISO_RE + "$",
                     out, re.MULTILINE), out


def test_bearer_token_from_option_file_or_environment(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    auth = TokenAuth([Secret("s3cret")])
    with market(middleware={MIDDLEWARE_KEY: auth}, authorize=auth.authorize) as server:
        loc = ["--location", f"127.0.0.1:{server.port}"]
        code, _, err = run(capsys, "status", *loc)
        assert code == 1 and err == (
            "flight-md: missing or invalid bearer token; send the header 'authorization: "
            "Bearer <token>' (pass --token, --token-file or set FLIGHT_MD_TOKEN)\n")
        assert run(capsys, "status", "--token", "s3cret", *loc)[0] == 0
        token_file = tmp_path / "token"
        token_file.write_text("# the analyst's token\ns3cret\n")
        assert run(capsys, "get", "BTC/USDT", "--token-file", str(token_file), *loc)[0] == 0
        monkeypatch.setenv("FLIGHT_MD_TOKEN", "s3cret")
        assert run(capsys, "tail", "BTC/USDT", "--backlog", "1", "--count", "1", *loc)[0] == 0
        code, _, err = run(capsys, "status", "--token-file", str(tmp_path / "none"), *loc)
        assert code == 2 and err.startswith("flight-md: cannot read --token-file")


def test_tls_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with market(location="grpc+tls://127.0.0.1:0",
                tls_certificates=[(cert.cert_chain_pems[0].bytes(),
                                   cert.private_key_pem.bytes())]) as server:
        code, out, _ = run(capsys, "get", "ETH/USDT", "-n", "1", "--location",
                           f"grpc+tls://127.0.0.1:{server.port}", "--tls-root-certs",
                           str(ca_file))
        assert code == 0 and "ETH/USDT" in out
    code, _, err = run(capsys, "status", "--location", "grpc://127.0.0.1:1", "--tls-root-certs",
                       str(ca_file))
    assert code == 2 and "TLS options need a grpc+tls:// location" in err
    code, _, err = run(capsys, "status", "--location", "grpc+tls://127.0.0.1:1", "--tls-cert",
                       str(ca_file))
    assert code == 2 and "needs both --tls-cert and --tls-key" in err


# -- top -------------------------------------------------------------------------------------


def _frames(out: str) -> list[str]:
    return [f for f in re.split(r"(?m)^(?=flight-md top )", out) if f]


def test_top_without_a_terminal_shows_the_real_servers_figures(
        capsys: pytest.CaptureFixture[str], ingesting: IngestingMarket) -> None:
    ingesting.reset_once()  # one real reconnect
    location = ingesting.location
    code, out, err = run(capsys, "top", "--iterations", "2", "--interval", "1", "--location",
                         location)
    assert code == 0 and err == ""
    frames = _frames(out)
    assert len(frames) == 2
    assert "\x1b[" not in out  # no escape codes without a terminal
    assert all("binance: connected (websocket, 1 reconnects)" in f for f in frames)
    assert re.search(r"^binance\s+BTC/USDT\s+connected\s+-\s", frames[0], re.MULTILINE), frames[0]
    for symbol in ("BTC/USDT", "ETH/USDT"):  # the exchange is sending: both are ticking
        row = re.search(rf"^binance\s+{re.escape(symbol)}\s+connected\s+([\d.]+)\s+.*\s1\s+"
                        r"(\d+)\s+0$", frames[1], re.MULTILINE)
        assert row, frames[1]
        assert float(row.group(1)) > 0

    sent = ingesting.freeze()  # now the exact figures: nothing moves any more
    code, out, _ = run(capsys, "top", "--iterations", "2", "--interval", "0.3", "--location",
                       location)
    assert code == 0
    last = _frames(out)[1]
    for symbol, frames_sent in sent.items():
        tick = _newest(location, symbol)
        row = re.search(rf"^binance\s+{re.escape(symbol)}\s+connected\s+0\.0\s+([\d.]+)\s+"
                        rf"([\d.]+)\s+([\d.]+)\s+\S+\s+1\s+{frames_sent}\s+0$", last,
                        re.MULTILINE)
        assert row, last
        for shown, name in zip(row.groups(), ("price", "bid", "ask")):
            # the newest tick's value, to the decimals shown (the market's precision)
            decimals = len(shown.partition(".")[2])
            assert abs(float(shown) - tick[name]) <= 0.5 * 10**-decimals + 1e-9, (
                name, shown, tick[name])


def test_top_model_rates_and_errors() -> None:
    model = TopModel("grpc://x:1")
    status = {"server": {"uptime_s": 61}, "exchanges": {},
              "symbols": [{"exchange": "e", "symbol": "A/B", "ticks_appended": 10,
                           "ticks_stored": 10, "ticks_dropped": 0, "age_ms": 1500}]}
    snapshot = pa.table({"symbol": ["A/B"], "exchange": ["e"], "price": [1.5], "bid": [None],
                         "ask": [2.0]})
    model.update(status, snapshot, now=100.0)
    status["symbols"][0]["ticks_appended"] = 40
    model.update(status, snapshot, now=102.0)
    model.error = "cannot reach grpc://x:1 (connection refused)"
    lines = model.lines(width=200, height=None, color=False)
    assert lines[0].startswith("flight-md top  grpc://x:1  ") and "up 1m01s" in lines[0]
    assert "15.0 ticks/s" in lines[0]
    assert "! cannot reach grpc://x:1 (connection refused) (retrying)" in lines
    assert lines[-1].split() == ["e", "A/B", "idle", "15.0", "1.5", "-", "2", "1.5s", "-", "10",
                                 "0"]
    narrow = model.lines(width=40, height=5, color=False)
    assert len(narrow) == 5 and narrow[-1] == "q or Ctrl-C quits"
    assert all(len(line) <= 40 for line in narrow[:-1])


def _pty_top(location: str) -> tuple[subprocess.Popen[bytes], int]:
    main_fd, child_fd = pty.openpty()
    env = child_env({"COLUMNS": "140", "LINES": "30", "TERM": "xterm"})
    # A new session whose controlling terminal is the pty, so that ^C there sends SIGINT.
    argv = [sys.executable, "-m", "flight_md.terminal", "top", "--interval", "0.2",
            "--location", location]
    shim = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", shim, *argv], stdin=child_fd, stdout=child_fd, stderr=child_fd,
        env=env, start_new_session=True)
    os.close(child_fd)
    return proc, main_fd


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + scaled(timeout)
    while needle not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} never appeared; got {data[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


def _drain(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    return data


@pytest.mark.parametrize(("key", "code"), [(b"q", 0), (b"\x03", 130)])
def test_top_in_a_real_terminal_quits_on_q_and_ctrl_c(ingesting: IngestingMarket,
                                                      key: bytes, code: int) -> None:
    proc, fd = _pty_top(ingesting.location)
    try:
        screen = _read_until(fd, b"q or Ctrl-C quits", timeout=20)
        assert b"\x1b[?1049h" in screen  # the alternate screen, like top
        assert b"BTC/USDT" in screen and b"connected" in screen
        os.write(fd, key)
        assert proc.wait(scaled(10)) == code
        rest = _drain(fd, proc, timeout=2)
        assert b"\x1b[?1049l" in screen + rest and b"\x1b[?25h" in screen + rest  # restored
        assert b"Traceback" not in screen + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(fd)


# -- tail ------------------------------------------------------------------------------------


def test_tail_prints_one_line_per_tick(capsys: pytest.CaptureFixture[str],
                                       server: FlightMarketDataServer, loc: list[str]) -> None:
    with Feeder(server.buffer):
        code, out, err = run(capsys, "tail", "BTC/USDT", "--backlog", "2", "--count", "5", *loc)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 5
    for line in lines:
        price = int(re.search(r"price=(\d+)", line).group(1))  # type: ignore[union-attr]
        assert re.fullmatch(rf"{ISO_RE}  binance  BTC/USDT  price={price}  bid={price - 1}\.5  "
                            rf"ask={price}\.5  volume=\d+", line)
    prices = [int(re.search(r"price=(\d+)", line).group(1)) for line in lines]  # type: ignore
    # The backlog is the two newest stored ticks when the tail opened (the feeder may already
    # have added some), then every new tick: a contiguous run of what was stored, in order.
    stored = [*range(100, 700), *range(1000, 2000)]  # the fill (100 + i), then the feeder
    first = stored.index(prices[0])
    assert prices == stored[first:first + 5]
    assert prices[0] >= 698


def test_tail_json_and_columns(capsys: pytest.CaptureFixture[str],
                               server: FlightMarketDataServer, loc: list[str]) -> None:
    with Feeder(server.buffer):
        code, out, _ = run(capsys, "tail", "BTC/USDT", "--count", "3", "--json", "--columns",
                           "timestamp,price", *loc)
        assert code == 0
        rows = [json.loads(line) for line in out.splitlines()]
        first = rows[0]["price"]  # the first tick appended after the tail opened
        assert first >= 1000.0 and [r["price"] for r in rows] == [first, first + 1, first + 2]
        assert set(rows[0]) == {"timestamp", "price"} and isinstance(rows[0]["timestamp"], int)
        code, out, _ = run(capsys, "tail", "BTC/USDT", "--count", "1", "--columns", "ask", *loc)
        assert code == 0 and re.fullmatch(rf"{ISO_RE}  binance  BTC/USDT  ask=\d+\.5\n", out)


def test_tail_ends_quietly_when_the_server_stops(capsys: pytest.CaptureFixture[str],
                                                 server: FlightMarketDataServer,
                                                 loc: list[str]) -> None:
    def stop_once_tailing() -> None:
        until(lambda: followers(server.buffer, "ETH/USDT") == 1, 10, "the tail to be open")
        server.stop()

    stopper = threading.Thread(target=stop_once_tailing)
    stopper.start()
    code, out, err = run(capsys, "tail", "ETH/USDT", "--backlog", "1", *loc)
    stopper.join(scaled(10))
    assert code == 0 and len(out.splitlines()) == 1
    assert err == "flight-md: the server ended the live tail (it is shutting down)\n"


def test_tail_ctrl_c_exits_130_without_a_traceback(server: FlightMarketDataServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flight_md.terminal", "tail", "ETH/USDT", "--backlog", "1",
         "--location", f"grpc://127.0.0.1:{server.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    try:
        assert proc.stdout is not None
        assert b"ETH/USDT" in proc.stdout.readline()  # running, on a quiet symbol
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=scaled(10))
        assert proc.returncode == 130
        assert err == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_closed_pipe_is_not_an_error(server: FlightMarketDataServer) -> None:
    # `flight-md get BTC/USDT --csv | head -1`
    proc = subprocess.Popen(
        [sys.executable, "-m", "flight_md.terminal", "get", "BTC/USDT", "--csv", "--location",
         f"grpc://127.0.0.1:{server.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b'"symbol"')
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(scaled(20)) == 0
    assert err == b""


def test_the_flight_md_command_has_the_terminal_views(server: FlightMarketDataServer) -> None:
    base = [sys.executable, "-m", "flight_md"]
    loc = ["--location", f"grpc://127.0.0.1:{server.port}"]
    out = subprocess.run([*base, "get", "BTC/USDT", "-n", "1", *loc], capture_output=True,
                         text=True, env=child_env(), timeout=scaled(60), check=False)
    assert out.returncode == 0, out.stderr
    assert "BTC/USDT" in out.stdout.splitlines()[1]
    with refused_port() as port:
        out = subprocess.run([*base, "status", "--location", f"grpc://127.0.0.1:{port}"],
                             capture_output=True, text=True, env=child_env(),
                             timeout=scaled(60), check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"flight-md: cannot reach grpc://127.0.0.1:{port} (connection "
                          "refused); is `flight-md serve` running?\n")


# -- formatting ------------------------------------------------------------------------------


def test_formatting_helpers() -> None:
    assert format_time(1_795_428_000_123) == "2026-11-23T10:00:00.123Z"
    assert format_time(None) == "-"
    assert [format_number(v) for v in (43210.5, 100.0, 1.234e-05, 1e20, None, 7)] == [
        "43210.5", "100", "0.00001234", "100000000000000000000", "-", "7"]
    assert [format_age(v) for v in (None, 850, 12_345, 184_000, 7_500_000, 273_600_000)] == [
        "-", "850ms", "12.3s", "3m04s", "2h05m", "3d04h"]
    now = 1_000_000_000
    assert parse_time_arg("5m", now) == now - 300_000
    assert parse_time_arg("-90s", now) == parse_time_arg("90s ago", now) == now - 90_000
    assert parse_time_arg("1.5h", now) == now - 5_400_000
    assert parse_time_arg("now", now) == now
    assert parse_time_arg("2026-11-23T11:00:00+01:00") == 1_795_428_000_000
    assert parse_time_arg("1795428000000") == 1_795_428_000_000
    lines, hidden = grid(["A", "BB"], [["x", "1"], ["yyy", "22"]], [False, True])
    assert lines == ["A    BB", "x     1", "yyy  22"] and hidden == 0
    assert grid(["A", "B"], [["aaaa", "bbbb"]], width=6) == (["A", "aaaa"], 1)
    table = pa.table({"price": [1.5, None], "symbols": [["a", "b"], []]})
    assert table_lines(table)[0] == ["price  symbols", "  1.5  a,b", "    -"]
