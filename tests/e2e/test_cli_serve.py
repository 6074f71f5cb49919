"""Every ``flight-md serve`` option of the README's Configuration table, through the real
command line, each with an effect seen from outside.

Real ``flight-md serve`` processes stream through real ccxt.pro from real ``flight-md emulator``
processes; a test that injects faults has an emulator of its own. Covered elsewhere and not
repeated here: ``--auth-token-file``/``--read-only-token-file`` (tests/security/test_auth.py),
``--tls-cert``/``--tls-key``/``--tls-client-ca`` (tests/security/test_tls.py),
``--api-key-env``/``--api-secret-env`` reaching ccxt and never leaking
(tests/security/test_secrets.py), ``--shutdown-timeout``'s watchdog
(tests/reliability/test_shutdown.py), ``--config`` and ``--ingest-process`` (test_cli_config.py).
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import statistics
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyarrow import flight

from flight_md.config import DEMO_SYMBOLS
from tests.e2e.conftest import MarketMover
from tests.e2e.test_cli_config import ForkRunner, assert_one_line_error, ingestion_child_pids
from tests.support import MS, EmulatorProcess, ServerProcess, until

SYMBOLS = ("BTC/USDT", "ETH/USDT")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    """A Binance emulator shared by the tests that inject no fault."""
    with EmulatorProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS),
                         "--rate", "100") as running:
        yield running


@pytest.fixture
def own_emulator() -> Iterator[EmulatorProcess]:
    """A Binance emulator for one test's faults."""
    with EmulatorProcess("--exchange", "binance", "--symbols", ",".join(SYMBOLS),
                         "--rate", "100") as running:
        yield running


def status(client: flight.FlightClient) -> dict[str, Any]:
    return json.loads(next(client.do_action(flight.Action("status", b""))).body.to_pybytes())  # type: ignore[no-any-return]


def stored(client: flight.FlightClient, symbol: str) -> int:
    for entry in status(client)["symbols"]:
        if entry["symbol"] == symbol:
            return int(entry["ticks_stored"])
    return 0


def get(client: flight.FlightClient, ticket: str) -> Any:
    return client.do_get(flight.Ticket(ticket.encode())).read_all()


def events(client: flight.FlightClient, kind: str) -> list[dict[str, Any]]:
    return [e for e in get(client, "@events").to_pylist() if e["kind"] == kind]


def emulator_call(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/_emulator/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10 * MS) as reply:
        return json.loads(reply.read() or b"null")


def stream_args(url: str, *more: str) -> tuple[str, ...]:
    return ("--exchange", "binance", "--symbols", "BTC/USDT", "--exchange-url", url, *more)


def test_demo_streams_the_emulated_binance_market() -> None:
    """``--demo``: the five demo symbols on binance, ticking, trading and quoting their book,
    with no exchange given; by default ingestion runs in one child process, which SIGTERM
    stops with the server (exit 0, no child left)."""
    server = ServerProcess("--demo")
    with server, flight.connect(server.location) as client:
        assert status(client)["server"]["ingestion_mode"] == "process"
        children = ingestion_child_pids(server.pid)
        assert len(children) == 1, server.output
        until(lambda: all(stored(client, s) >= 3 for s in DEMO_SYMBOLS), 30,
              "three ticks of every demo symbol")
        flights = {tuple(p.decode() for p in f.descriptor.path) for f in client.list_flights()
                   if f.descriptor.path}  # symbol flights (not @markets)
        assert {("binance", s) for s in DEMO_SYMBOLS} <= flights  # tickers
        assert flights <= {("binance", s, *c) for s in DEMO_SYMBOLS
                           for c in ((), ("trades",), ("book",))}  # and trades and books
        until(lambda: {("binance", s, c) for s in DEMO_SYMBOLS for c in ("trades", "book")} <= {
            tuple(p.decode() for p in f.descriptor.path) for f in client.list_flights()
            if f.descriptor.path}, 30,
            "trades and books of every demo symbol")
        streams = status(client)["exchanges"]["binance"]["channels"]
        assert {c: s["state"] for c, s in streams.items()} == {
            "ticker": "connected", "trades": "connected", "book": "connected"}
        # Binance's tickers, trades and books are read by its fast decoders.
        assert {c: s["decoder"] for c, s in streams.items()} == {
            "ticker": "fast", "trades": "fast", "book": "fast"}
    assert server.stop() == 0, server.output
    until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10 * MS,
          "the ingestion child gone with the server")


def test_host_binds_the_address_given() -> None:
    """``--host ::1``: the server listens on IPv6 loopback, and not on 127.0.0.1."""
    with ServerProcess("--host", "::1") as server:
        assert server.location.startswith("grpc://[::1]:")
        port = int(server.location.rsplit(":", 1)[1])
        with flight.connect(server.location) as client:
            assert status(client)["server"]["ingestion"] is False
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_port_is_the_port_it_listens_on(tmp_path: Path, forks: ForkRunner) -> None:
    """``--port N``: serve binds N; with N taken it says so in one line (exit 1)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = forks.run("serve", "--port", str(port), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert (result.returncode, result.stderr.count("\n")) == (1, 1), result.stderr
    assert result.stderr.startswith(f"flight-md: port {port} is in use")


@pytest.mark.parametrize("channel", ["ticker", "bidask"])
def test_exchange_symbols_channel_and_buffer_size(emulator: EmulatorProcess, channel: str) -> None:
    """``--exchange binance --symbols BTC/USDT --channel C --buffer-size 30 --exchange-url U
    --log-level WARNING``: only that symbol of the two the emulator lists is streamed, from the
    emulator, on that channel; the ring holds 30; nothing below WARNING is logged."""
    args = stream_args(emulator.url, "--channel", channel, "--buffer-size", "30",
                       "--log-level", "WARNING")
    with ServerProcess(*args) as server, flight.connect(server.location) as client:
        until(lambda: stored(client, "BTC/USDT") == 30, 30, "a full 30-tick ring")
        flights = [tuple(p.decode() for p in f.descriptor.path) for f in client.list_flights()
                   if f.descriptor.path]  # symbol flights (not @markets)
        assert flights == [("binance", "BTC/USDT")]
        info = status(client)
        assert info["server"]["buffer_size"] == 30
        assert info["exchanges"]["binance"]["channel"] == channel
        rows = get(client, "BTC/USDT").to_pylist()  # the ring (latest=N would add history)
        assert len(rows) == 30
        if channel == "bidask":
            assert all(r["volume"] is None and r["high"] is None and
                       r["price"] == (r["bid"] + r["ask"]) / 2 for r in rows)
        else:
            assert all(r["volume"] is not None and r["high"] is not None for r in rows)
    logged = "".join(server.stderr)
    assert " INFO " not in logged and " DEBUG " not in logged, logged


def test_mode_rest_polls_every_poll_interval(emulator: EmulatorProcess) -> None:
    """``--mode rest --poll-interval 0.3 --log-level DEBUG``: status says rest; stored ticks are
    polls at least 0.3 s apart (the poller sleeps the interval between polls), and typically
    closer than the default 2 s allows; the DEBUG log is on."""
    mover = MarketMover(emulator.url, ("BTC/USDT",))  # the emulator moves subscribed markets
    try:
        args = stream_args(emulator.url, "--mode", "rest", "--poll-interval", "0.3",
                           "--log-level", "DEBUG")
        with ServerProcess(*args) as server, flight.connect(server.location) as client:
            until(lambda: stored(client, "BTC/USDT") >= 8, 30, "eight polled ticks")
            assert status(client)["exchanges"]["binance"]["mode"] == "rest"
            received = get(client, "BTC/USDT").column("receive_timestamp").to_pylist()
    finally:
        mover.close()
    gaps = [b - a for a, b in itertools.pairwise(received)]
    assert min(gaps) >= 299, gaps  # 1 ms for the millisecond clock
    # With the default every gap is at least 2 s (the sleep alone); here ccxt's rate limiter
    # may stretch a period, never shrink it, so the median is what tells them apart.
    assert statistics.median(gaps) < 2000, gaps
    assert " DEBUG " in "".join(server.stderr)


def test_testnet_with_exchange_url_streams_from_the_url(emulator: EmulatorProcess) -> None:
    """``--testnet``: ccxt's sandbox URLs, which ``--exchange-url`` then overrides (offline, the
    override is what can be seen: had the sandbox won, there would be no ticks)."""
    with ServerProcess(*stream_args(emulator.url, "--testnet")) as server, \
            flight.connect(server.location) as client:
        until(lambda: stored(client, "BTC/USDT") >= 3, 30, "ticks from the emulator")
        assert status(client)["exchanges"]["binance"]["state"] == "connected"


def test_testnet_without_a_sandbox_is_one_line(tmp_path: Path, forks: ForkRunner) -> None:
    result = forks.run("serve", "--port", "0", "--testnet", "--exchange", "kraken",
                       "--symbols", "BTC/USD", cwd=tmp_path)
    assert_one_line_error(result, ["kraken has no testnet (sandbox) in ccxt"])


def test_heartbeat_interval_marks_a_silent_stream_stale(own_emulator: EmulatorProcess) -> None:
    """``--heartbeat-interval 0.5``: a stream silent for longer is recorded ``stale`` (with the
    default 30 s nothing would be recorded within this test's wait)."""
    args = stream_args(own_emulator.url, "--mode", "websocket", "--heartbeat-interval", "0.5",
                       "--reconnect-delay", "0.1", "--max-reconnect-delay", "0.2")
    with ServerProcess(*args) as server, flight.connect(server.location) as client:
        until(lambda: stored(client, "BTC/USDT") >= 3, 30, "ticks before the stall")
        emulator_call(own_emulator.url, "POST", "faults", {"fault": "stall", "duration": 3})
        stale = until(lambda: events(client, "stale"), 10, "a stale event")
        assert stale[0]["exchange"] == "binance" and stale[0]["symbols"] == ["BTC/USDT"]


def test_reconnect_delay_sets_the_wait_after_a_disconnect(own_emulator: EmulatorProcess) -> None:
    """``--reconnect-delay 0.1``: after each connection reset the stream reconnects at least
    0.05 s later (0.5 x the delay, the jitter's floor) and within the delay plus 1 s (x ``MS``)
    for the handshake, the subscription and the first tick on a loaded machine; with the default
    5 s it could not be back before 2.5 s. The backoff resets after the first good message, so
    every reset waits the first delay again."""
    args = stream_args(own_emulator.url, "--mode", "websocket", "--reconnect-delay", "0.1",
                       "--max-reconnect-delay", "0.2")
    with ServerProcess(*args) as server, flight.connect(server.location) as client:
        until(lambda: stored(client, "BTC/USDT") >= 3, 30, "ticks before the resets")
        for n in range(1, 4):
            emulator_call(own_emulator.url, "POST", "faults", {"fault": "reset"})
            until(lambda n=n: len(events(client, "reconnect")) == n, 20, f"reconnect {n}")
        pairs = list(zip(events(client, "disconnect"), events(client, "reconnect"), strict=True))
    for disconnect, reconnect in pairs:
        waited = (reconnect["timestamp"] - disconnect["timestamp"]) / 1000
        assert 0.05 <= waited <= 0.1 + 1.0 * MS, pairs


def test_max_reconnect_delay_caps_retries_of_refused_handshakes(
        own_emulator: EmulatorProcess) -> None:
    """``--max-reconnect-delay 0.2``: while the emulator refuses every handshake, no retry waits
    longer than the cap (plus 0.3 s x ``MS`` for a refused handshake on a loaded machine), and
    none comes sooner than 0.5 x ``--reconnect-delay``. Times are the emulator's own clock."""
    args = stream_args(own_emulator.url, "--mode", "websocket", "--reconnect-delay", "0.1",
                       "--max-reconnect-delay", "0.2")
    with ServerProcess(*args) as server, flight.connect(server.location) as client:
        until(lambda: stored(client, "BTC/USDT") >= 3, 30, "ticks before the outage")
        before = len(emulator_call(own_emulator.url, "GET", "stats")["handshakes"])
        emulator_call(own_emulator.url, "POST", "faults", {"fault": "refuse"})
        emulator_call(own_emulator.url, "POST", "faults", {"fault": "reset"})

        def refused() -> list[float] | None:
            handshakes = emulator_call(own_emulator.url, "GET", "stats")["handshakes"]
            return handshakes[before:before + 6] if len(handshakes) >= before + 6 else None

        attempts = until(refused, 20, "six refused handshakes")
        emulator_call(own_emulator.url, "DELETE", "faults")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.05, gaps
    assert max(gaps) <= 0.2 + 0.3 * MS, gaps


# -- bad options: one line on stderr, exit 2 -------------------------------------------------

OPTION_ERRORS = {
    # Patterns where argparse ("--buffer-size: must be ...") or the config ("buffer_size must
    # be ...") may be the one to refuse: either way the line names the option and the value.
    "buffer size zero": (("--buffer-size", "0"), [re.compile(r"buffer[-_]size.*got '?0'?($| )")]),
    "port out of range": (("--port", "70000"), [re.compile(r"port.*70000"), "65535"]),
    "symbols without exchange": (("--symbols", "BTC/USDT"),
                                 [re.compile(r"--symbols .*--exchange")]),
    "poll interval zero": (("--exchange", "binance", "--poll-interval", "0"),
                           [re.compile(r"poll[-_]interval.*got '?0(\.0)?'?")]),
    "cap below delay": (("--exchange", "binance", "--reconnect-delay", "10",
                         "--max-reconnect-delay", "1"),
                        ["max_reconnect_delay must be >= reconnect_delay"]),
    "unset key variable": (("--exchange", "binance", "--api-key-env", "FLIGHT_MD_TEST_UNSET"),
                           ["environment variable 'FLIGHT_MD_TEST_UNSET' is not set"]),
    "unset secret variable": (("--exchange", "binance", "--api-secret-env", "FLIGHT_MD_TEST_UNSET"),
                              ["environment variable 'FLIGHT_MD_TEST_UNSET' is not set"]),
    "tls cert without key": (("--tls-cert", "cert.pem"), ["TLS needs both --tls-cert and --tls-key"]),
    "missing token file": (("--auth-token-file", "absent.txt"), ["cannot read token file",
                                                                 "absent.txt"]),
    "shutdown timeout zero": (("--shutdown-timeout", "0"),
                              [re.compile(r"--shutdown-timeout:? must be .*> 0")]),
    "demo with exchange": (("--demo", "--exchange", "binance"), ["--demo runs its own emulated"]),
}


@pytest.mark.parametrize("args, needles", list(OPTION_ERRORS.values()), ids=list(OPTION_ERRORS))
def test_bad_option_is_one_line_and_exit_2(forks: ForkRunner, tmp_path: Path,
                                           args: tuple[str, ...],
                                           needles: list[str | re.Pattern[str]]) -> None:
    assert_one_line_error(forks.run("serve", "--port", "0", *args, cwd=tmp_path), needles)
