"""Bearer-token authentication on every RPC, in-process and through ``flight-md serve``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability.harness import TIME_SCALE, ServerProcess, bearer, status_code, tick

from flight_md.app import MarketDataApp
from flight_md.config import Secret, ServerConfig

FULL_TOKENS = ("full-token-alpha-5b0c9e", "full-token-bravo-71d2aa")
READ_ONLY_TOKEN = "read-only-token-charlie-3f8e41"
ALL_TOKENS = (*FULL_TOKENS, READ_ONLY_TOKEN)

Call = Callable[[flight.FlightClient, flight.FlightCallOptions], Any]


def _tail(client: flight.FlightClient, options: flight.FlightCallOptions) -> int:
    reader = client.do_get(flight.Ticket(b"BTC/USDT?latest=3&follow=true"), options)
    try:
        return reader.read_chunk().data.num_rows
    finally:
        reader.cancel()


def _put(client: flight.FlightClient, options: flight.FlightCallOptions) -> None:
    writer, _ = client.do_put(flight.FlightDescriptor.for_path("BTC/USDT"),
                              pa.schema([("x", pa.int64())]), options)
    writer.close()


def _exchange(client: flight.FlightClient, options: flight.FlightCallOptions) -> None:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"BTC/USDT"), options)
    writer.close()
    reader.read_all()


def _action(name: str, body: dict[str, Any] | None = None) -> Call:
    raw = json.dumps(body).encode() if body is not None else b""
    return lambda c, o: [r.body.to_pybytes() for r in c.do_action(flight.Action(name, raw), o)]


PATH = flight.FlightDescriptor.for_path("binance", "BTC/USDT")
READS: dict[str, Call] = {
    "ListFlights": lambda c, o: list(c.list_flights(b"", o)),
    "GetFlightInfo": lambda c, o: c.get_flight_info(PATH, o),
    "GetFlightInfo(cmd)": lambda c, o: c.get_flight_info(
        flight.FlightDescriptor.for_command(b'{"symbol": "BTC/USDT", "latest": 2}'), o),
    "GetSchema": lambda c, o: c.get_schema(PATH, o),
    "DoGet": lambda c, o: c.do_get(flight.Ticket(b"BTC/USDT?latest=5"), o).read_all(),
    "DoGet(snapshot)": lambda c, o: c.do_get(flight.Ticket(b"*"), o).read_all(),
    "DoGet(@events)": lambda c, o: c.do_get(flight.Ticket(b"@events"), o).read_all(),
    "DoGet(live tail)": _tail,
    "ListActions": lambda c, o: c.list_actions(o),
    "DoAction(status)": _action("status"),
}
WRITES: dict[str, Call] = {
    "DoAction(subscribe)": _action("subscribe", {"symbols": ["BTC/USDT"]}),
    "DoAction(unsubscribe)": _action("unsubscribe", {"symbols": ["BTC/USDT"]}),
    "DoAction(clear)": _action("clear", {"symbols": ["CLR/USDT"]}),
}
UNSUPPORTED: dict[str, Call] = {"DoPut": _put, "DoExchange": _exchange}
EVERY_RPC = {**READS, **WRITES, **UNSUPPORTED}


def _headers(*pairs: tuple[bytes, bytes]) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=list(pairs), timeout=10 * TIME_SCALE)


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


BAD_CREDENTIALS = {
    "none": flight.FlightCallOptions(timeout=10 * TIME_SCALE),
    "wrong token": bearer("not-a-token"),
    "empty bearer": _headers((b"authorization", b"Bearer ")),
    "no scheme": _headers((b"authorization", FULL_TOKENS[0].encode())),
    "basic scheme": _headers((b"authorization", _basic("analyst", FULL_TOKENS[0]))),
    "prefix of a token": bearer(FULL_TOKENS[0][:-1]),
    "token plus a character": bearer(FULL_TOKENS[0] + "x"),
    "token in upper case": bearer(FULL_TOKENS[0].upper()),
    "two tokens glued": bearer(FULL_TOKENS[0] + FULL_TOKENS[1]),
    "other header": _headers((b"x-api-key", FULL_TOKENS[0].encode())),
}


@pytest.fixture
def token_files(tmp_path: Path) -> tuple[Path, Path]:
    """``(full, read_only)`` token files, with a comment and a blank line to skip."""
    full = tmp_path / "tokens.txt"
    full.write_text("# analysts\n" + "\n".join(FULL_TOKENS) + "\n\n", encoding="utf-8")
    read_only = tmp_path / "read-only.txt"
    read_only.write_text(READ_ONLY_TOKEN + "\n", encoding="utf-8")
    return full, read_only


@pytest.fixture(scope="module")
def app() -> Iterator[MarketDataApp]:
    config = ServerConfig(port=0, auth_tokens=tuple(Secret(t) for t in FULL_TOKENS),
                          read_only_tokens=(Secret(READ_ONLY_TOKEN),))
    with MarketDataApp(config) as running:
        running.buffer.extend(tick("BTC/USDT", n) for n in range(50))
        yield running


@pytest.fixture(scope="module")
def client(app: MarketDataApp) -> Iterator[flight.FlightClient]:
    with flight.connect(app.location) as connected:
        yield connected


@pytest.fixture(autouse=True)
def clearable(app: MarketDataApp) -> None:
    """A symbol that ``clear`` may drop, with three ticks at the start of every test."""
    if ("binance", "CLR/USDT") in app.buffer.keys():
        app.buffer.clear_sync("CLR/USDT")
    app.buffer.extend(tick("CLR/USDT", n) for n in range(3))


def _refusal(call: Call, client: flight.FlightClient,
             options: flight.FlightCallOptions) -> Exception:
    with pytest.raises((flight.FlightError, OSError)) as info:
        call(client, options)
    return info.value


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize("rpc", EVERY_RPC)
def test_every_rpc_without_a_valid_bearer_token_is_unauthenticated(
        client: flight.FlightClient, app: MarketDataApp, rpc: str, credentials: str) -> None:
    stored = app.buffer.count("CLR/USDT")
    error = _refusal(EVERY_RPC[rpc], client, BAD_CREDENTIALS[credentials])
    assert status_code(error) == "UNAUTHENTICATED", error
    assert "Bearer <token>" in str(error)
    for token in (*ALL_TOKENS, "not-a-token"):
        assert token not in str(error) and token.upper() not in str(error)
    assert app.buffer.count("CLR/USDT") == stored


@pytest.mark.parametrize("token", ALL_TOKENS)
@pytest.mark.parametrize("rpc", READS)
def test_every_token_may_read(client: flight.FlightClient, rpc: str, token: str) -> None:
    READS[rpc](client, bearer(token))


def test_reads_return_data_to_a_valid_token(client: flight.FlightClient) -> None:
    table = client.do_get(flight.Ticket(b"BTC/USDT?latest=5"), bearer(FULL_TOKENS[1])).read_all()
    assert table.column("price").to_pylist() == [145.0, 146.0, 147.0, 148.0, 149.0]
    assert _tail(client, bearer(READ_ONLY_TOKEN)) == 3


@pytest.mark.parametrize("rpc", WRITES)
def test_read_only_token_may_not_change_anything(client: flight.FlightClient, app: MarketDataApp,
                                                 rpc: str) -> None:
    error = _refusal(WRITES[rpc], client, bearer(READ_ONLY_TOKEN))
    assert status_code(error) == "PERMISSION_DENIED", error
    assert "read-only" in str(error) and READ_ONLY_TOKEN not in str(error)
    assert app.buffer.count("CLR/USDT") == 3


@pytest.mark.parametrize("token", FULL_TOKENS)
def test_full_tokens_may_change_things(client: flight.FlightClient, app: MarketDataApp,
                                       token: str) -> None:
    result = _action("clear", {"symbols": ["CLR/USDT"]})(client, bearer(token))
    assert json.loads(result[0]) == {"cleared": 3}
    # Past authorization: this server has no ingestion, which is a different refusal.
    error = _refusal(WRITES["DoAction(subscribe)"], client, bearer(token))
    assert status_code(error) == "UNAVAILABLE"


def test_auth_refusals_do_not_reach_the_handlers(client: flight.FlightClient) -> None:
    before = json.loads(_action("status")(client, bearer(FULL_TOKENS[0]))[0])
    for credentials in BAD_CREDENTIALS.values():
        _refusal(READS["DoGet"], client, credentials)
    after = json.loads(_action("status")(client, bearer(FULL_TOKENS[0]))[0])
    assert after["server"]["refused_requests"] == before["server"]["refused_requests"]


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
HEADER_VALUES = st.one_of(
    st.text(PRINTABLE, max_size=60),
    st.builds(lambda scheme, gap, token, cut, extra: f"{scheme}{gap}{token[cut:]}{extra}",
              st.sampled_from(["Bearer", "bearer", "BEARER", "Bearer:", "Basic", "", "Token"]),
              st.sampled_from([" ", "  ", "", "="]),
              st.sampled_from([*ALL_TOKENS, *(t.upper() for t in ALL_TOKENS), ""]),
              st.sampled_from([0, 0, 0, 1, 5]), st.text(PRINTABLE, max_size=3)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=HEADER_VALUES)
def test_only_an_exact_bearer_token_is_admitted(client: flight.FlightClient, value: str) -> None:
    presented = value[7:].strip() if value[:7].lower() == "bearer " else None
    options = _headers((b"authorization", value.encode()))
    if presented in ALL_TOKENS:
        assert client.list_actions(options)
        return
    error = _refusal(READS["ListActions"], client, options)
    assert status_code(error) == "UNAUTHENTICATED", (value, error)


# -- through the command line ---------------------------------------------------------------


def _check_server(location: str) -> None:
    """Tokens from files (and config) admit exactly what they should on a served process."""
    with flight.connect(location) as client:
        for credentials in ("none", "wrong token", "no scheme"):
            error = _refusal(READS["ListActions"], client, BAD_CREDENTIALS[credentials])
            assert status_code(error) == "UNAUTHENTICATED"
        error = _refusal(READS["DoGet(live tail)"], client, BAD_CREDENTIALS["none"])
        assert status_code(error) == "UNAUTHENTICATED"
        for token in ALL_TOKENS:
            assert {name for name, _ in client.list_actions(bearer(token))} >= {"status"}
        error = _refusal(_action("clear"), client, bearer(READ_ONLY_TOKEN))
        assert status_code(error) == "PERMISSION_DENIED"
        for token in FULL_TOKENS:
            assert json.loads(_action("clear")(client, bearer(token))[0]) == {"cleared": 0}


def test_token_files_on_the_command_line(token_files: tuple[Path, Path]) -> None:
    full, read_only = token_files
    with ServerProcess("--auth-token-file", str(full),
                       "--read-only-token-file", str(read_only)) as server:
        _check_server(server.location)
    for token in ALL_TOKENS:
        assert token not in server.output


def test_tokens_in_a_config_file(tmp_path: Path) -> None:
    (tmp_path / "ro.txt").write_text(READ_ONLY_TOKEN + "\n", encoding="utf-8")
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nport = 0\nauth_tokens = ["{FULL_TOKENS[0]}"]\n'
                      'read_only_token_file = "ro.txt"\n', encoding="utf-8")
    extra = tmp_path / "more.txt"
    extra.write_text(FULL_TOKENS[1] + "\n", encoding="utf-8")
    # Tokens from the file and from --auth-token-file add up.
    with ServerProcess("--config", str(config), "--auth-token-file", str(extra)) as server:
        _check_server(server.location)
    for token in ALL_TOKENS:
        assert token not in server.output
