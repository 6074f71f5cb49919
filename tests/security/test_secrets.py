"""Secrets never leave the server: not in logs, errors, status, events or any Flight response.

A real ``flight-md serve`` process gets fake exchange keys (through ``--api-key-env`` and
``--api-secret-env``) and bearer tokens, streams from the exchange emulator through real
ccxt, logs at DEBUG, and is driven through every RPC, its errors and a few exchange faults.
Everything it prints and answers is then searched for each secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from reliability.harness import TIME_SCALE, ServerProcess, bearer, wait_until

from flight_md.app import MarketDataApp
from flight_md.config import Secret, ServerConfig, StreamConfig, load_config
from flight_md.emulator import EmulatorThread, Fault

# Random-looking, so that any 8 characters of one found in the output are a leak, not chance.
API_KEY = "Zq81mVx0LrkT5uYw3PaD9sEf"
API_SECRET = "Pw4Jt9Nc2sGh7Lq1Vb6Xm0Rz"
FULL_TOKEN = "Hk5Rb3Yd7eQa2Wn8Tc4Ju6Sp"
READ_ONLY_TOKEN = "Ga6Uf2Qm8wEy1Ko5Xr3Hd9Lt"
WRONG_TOKEN = "Xc3Vn7Bp1zMf4Rs8Dk2Wq6Ag"
SECRETS = {"api key": API_KEY, "api secret": API_SECRET, "full token": FULL_TOKEN,
           "read-only token": READ_ONLY_TOKEN, "presented wrong token": WRONG_TOKEN}
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def assert_no_secret(text: str, where: str) -> None:
    for name, value in SECRETS.items():
        for form in (value, value[:8], value[8:16], value[-8:]):
            assert form not in text, f"the {name} (or part of it) appears in {where}"


class Recorder:
    """Runs requests and keeps everything that came back, answers and errors alike."""

    def __init__(self, client: flight.FlightClient) -> None:
        self.client = client
        self.seen: list[str] = []
        self.errors = 0

    def __call__(self, call: Callable[[flight.FlightClient], Any]) -> Any:
        try:
            result = call(self.client)
        except Exception as exc:  # every answer is recorded, errors included
            self.errors += 1
            self.seen.append(f"{type(exc).__name__}: {exc}")
            return None
        self.seen.append(_render(result))
        return result


def _render(result: Any) -> str:
    if hasattr(result, "to_pylist"):
        return f"{result.schema}\n{result.to_pylist()}"
    if isinstance(result, flight.FlightInfo):
        tickets = [e.ticket.ticket for e in result.endpoints]
        return f"{result.schema}\n{result.descriptor}\n{tickets}"
    if isinstance(result, list):
        return "\n".join(_render(r) for r in result)
    if isinstance(result, flight.Result):
        return result.body.to_pybytes().decode("utf-8", "replace")
    return repr(result)


def _action(name: str, body: dict[str, Any] | None = None,
            token: str = FULL_TOKEN) -> Callable[[flight.FlightClient], Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    return lambda c: list(c.do_action(flight.Action(name, raw), bearer(token)))


def _get(ticket: str, token: str = FULL_TOKEN) -> Callable[[flight.FlightClient], Any]:
    return lambda c: c.do_get(flight.Ticket(ticket.encode()), bearer(token)).read_all()


def _tail(c: flight.FlightClient) -> Any:
    reader = c.do_get(flight.Ticket(b"BTC/USDT?latest=5&follow=true"), bearer(FULL_TOKEN))
    try:
        return reader.read_chunk().data
    finally:
        reader.cancel()


def _exercise(record: Recorder) -> None:
    """Every RPC, good and bad, as each kind of caller."""
    path = flight.FlightDescriptor.for_path("binance", "BTC/USDT")
    for token in (FULL_TOKEN, READ_ONLY_TOKEN):
        options = bearer(token)
        record(lambda c, o=options: list(c.list_flights(b"", o)))
        record(lambda c, o=options: c.get_flight_info(path, o))
        record(lambda c, o=options: c.get_schema(path, o))
        record(lambda c, o=options: c.list_actions(o))
        record(_action("status", token=token))
        for ticket in ("BTC/USDT?latest=50", "*", "@events", "@events?exchange=binance"):
            record(_get(ticket, token))
    record(_tail)
    for bad in ("", "BTC/USDX", "BTC/USDT?latest=-1", "@events?exchange=kraken", "\x00"):
        record(_get(bad))
    for token in (WRONG_TOKEN, f"{FULL_TOKEN}x", FULL_TOKEN[:-1]):
        record(_get("BTC/USDT", token))
        record(_action("status", token=token))
    for name in ("subscribe", "unsubscribe", "clear"):
        record(_action(name, {"symbols": ["SOL/USDT"]}, token=READ_ONLY_TOKEN))
    record(_action("unsubscribe", {"symbols": ["SOL/USDT"]}))
    record(_action("subscribe", {"symbols": ["SOL/USDT"]}))
    record(_action("subscribe", {"symbols": ["DOGE/USDT"]}))
    record(_action("subscribe", {"symbols": ["BTC/USDT"], "exchange": "kraken"}))
    record(_action("clear", {"symbols": ["ETH/USDT"]}))
    record(_action("nope", {}))
    record(lambda c: c.do_put(path, pa.schema([]), bearer(FULL_TOKEN))[0].close())


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(exchange="binance", symbols=SYMBOLS, rate=200.0, seed=3) as emu:
        yield emu


@pytest.fixture
def token_files(tmp_path: Path) -> tuple[Path, Path]:
    full, read_only = tmp_path / "full.txt", tmp_path / "ro.txt"
    full.write_text(FULL_TOKEN + "\n", encoding="utf-8")
    read_only.write_text(READ_ONLY_TOKEN + "\n", encoding="utf-8")
    return full, read_only


def _status(client: flight.FlightClient) -> dict[str, Any]:
    result = list(client.do_action(flight.Action("status", b""), bearer(FULL_TOKEN)))
    return dict(json.loads(result[0].body.to_pybytes()))


def _reconnected(client: flight.FlightClient, reconnects: int) -> bool:
    exchange = _status(client)["exchanges"]["binance"]
    return bool(exchange["reconnects"] > reconnects and exchange["state"] == "connected")


def _events(client: flight.FlightClient) -> list[dict[str, Any]]:
    return list(_get("@events")(client).to_pylist())


def test_no_secret_in_any_output(emulator: EmulatorThread, token_files: tuple[Path, Path]) -> None:
    full, read_only = token_files
    env = {"FMD_TEST_API_KEY": API_KEY, "FMD_TEST_API_SECRET": API_SECRET}
    server = ServerProcess(
        "--exchange", "binance", "--symbols", ",".join(SYMBOLS), "--exchange-url", emulator.url,
        "--api-key-env", "FMD_TEST_API_KEY", "--api-secret-env", "FMD_TEST_API_SECRET",
        "--auth-token-file", str(full), "--read-only-token-file", str(read_only),
        "--mode", "websocket", "--heartbeat-interval", "1", "--reconnect-delay", "0.1",
        "--max-reconnect-delay", "0.5",
        "--log-level", "DEBUG", env=env)
    with server, flight.connect(server.location) as client:
        assert_no_secret(Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(), "the command line")
        assert wait_until(lambda: len(_status(client)["symbols"]) >= 3
                          and all(s["ticks_stored"] for s in _status(client)["symbols"]), 30)
        record = Recorder(client)
        _exercise(record)
        # Exchange trouble puts error text into status, events and logs: none may hold a key.
        for faults, reconnects in (([(Fault.RESET, {})], True),
                                   ([(Fault.MALFORMED, {"count": 5}),
                                     (Fault.NON_NUMERIC, {"count": 5})], False),
                                   ([(Fault.CLOSE_1006, {})], True),
                                   ([(Fault.REFUSE, {"duration": 1.0}), (Fault.RESET, {})], True),
                                   ([(Fault.STALL, {"duration": 2.0})], True)):
            before = _status(client)["exchanges"]["binance"]["reconnects"]
            for fault, options in faults:
                emulator.inject(fault, **options)
            if reconnects:
                assert wait_until(lambda since=before: _reconnected(client, since), 30), (
                    faults, _status(client)["exchanges"], _events(client))
        _exercise(record)
        assert record.errors >= 20
    assert server.wait(10 * TIME_SCALE) is not None
    for index, seen in enumerate(record.seen):
        assert_no_secret(seen, f"Flight answer #{index}: {seen[:300]!r}")
    assert "DEBUG" in server.output  # the output searched really is the debug log
    assert_no_secret(server.output, "the server's stdout/stderr")


def test_the_keys_reach_ccxt(emulator: EmulatorThread) -> None:
    """The keys are not dropped on the way: ccxt holds them (and only ccxt)."""
    stream_config = StreamConfig("binance", SYMBOLS, url=emulator.url, mode="websocket",
                                 api_key=Secret(API_KEY), api_secret=Secret(API_SECRET))
    with MarketDataApp(ServerConfig(port=0, streams=(stream_config,))) as app:
        stream = app.ingestion.manager.get_stream("binance")
        assert (stream.exchange.apiKey, stream.exchange.secret) == (API_KEY, API_SECRET)
        assert_no_secret(repr(stream), "the stream's repr")
        assert_no_secret(repr(app.config), "the app's config repr")


def test_configuration_objects_mask_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMD_TEST_API_KEY", API_KEY)
    monkeypatch.setenv("FMD_TEST_API_SECRET", API_SECRET)
    (tmp_path / "tokens.txt").write_text(FULL_TOKEN + "\n", encoding="utf-8")
    config_file = tmp_path / "server.toml"
    config_file.write_text(
        '[server]\nauth_token_file = "tokens.txt"\n'
        f'read_only_tokens = ["{READ_ONLY_TOKEN}"]\n'
        '[[exchanges]]\nid = "binance"\nsymbols = ["BTC/USDT"]\n'
        'api_key_env = "FMD_TEST_API_KEY"\napi_secret_env = "FMD_TEST_API_SECRET"\n',
        encoding="utf-8")
    config = load_config(config_file)
    stream = config.streams[0]
    assert stream.api_key == Secret(API_KEY) and stream.api_secret == Secret(API_SECRET)
    assert config.auth_tokens == (Secret(FULL_TOKEN),)
    for text in (repr(config), str(config), repr(stream), f"{stream}", str(config.auth_tokens)):
        assert_no_secret(text, "a configuration repr")
    direct = ServerConfig(streams=(StreamConfig("binance", api_key=Secret(API_KEY)),))
    assert_no_secret(repr(direct), "a configuration repr")
