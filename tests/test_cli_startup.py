"""Start-up problems of ``flight-md serve`` are one line on stderr, never a traceback.

A port in use or a host that is not an address of this machine: exit 1, one line saying what
is wrong and what to do. Bad option values: exit 2, one line (argument errors).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.support import MS, ServerProcess, child_env, until

GRPC_NOISE = ("Traceback", "E0000", "absl", "Server did not start properly", "add_port")


def serve(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``flight-md serve ARGS`` to completion (it must not start serving)."""
    return subprocess.run([sys.executable, "-m", "flight_md", "serve", *args],
                          check=False, capture_output=True, text=True, env=child_env(),
                          timeout=timeout * MS,
                          stdin=subprocess.DEVNULL)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    for noise in GRPC_NOISE:
        assert noise not in stderr, stderr
    return lines[0]


def test_a_port_in_use_is_one_line_and_exit_1():
    with ServerProcess() as first:
        port = first.location.rsplit(":", 1)[1]
        result = serve("--port", port, "--demo")
    assert result.returncode == 1, result
    line = one_line(result.stderr)
    assert line == (f"flight-md: port {port} is in use; is another flight-md serve running? "
                    "choose another with --port")
    assert result.stdout == ""


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", [
    "192.0.2.1",
    pytest.param("2001:db8::1", marks=pytest.mark.skipif(not _has_ipv6(),
                                                         reason="this machine has no IPv6")),
])
def test_a_host_that_is_not_an_address_of_this_machine_is_one_line_and_exit_1(host):
    # Only bind() is tried (documentation-range addresses): nothing is sent anywhere.
    result = serve("--host", host, "--port", "0")
    assert result.returncode == 1, result
    line = one_line(result.stderr)
    assert line == (f"flight-md: cannot listen on {host!r}: not an address of this machine; "
                    "choose one with --host (127.0.0.1 for this machine only, 0.0.0.0 for all)")


def test_nothing_is_started_when_the_port_is_taken():
    """The check runs before ingestion: a --demo that cannot listen leaves no child behind
    and returns promptly (no emulator or ccxt session was started to be torn down)."""
    with ServerProcess() as first:
        port = first.location.rsplit(":", 1)[1]
        result = serve("--port", port, "--demo", "--ingest-process")
    assert result.returncode == 1
    assert "is in use" in one_line(result.stderr)


# -- bad option values: one line, exit 2 --------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--buffer-size", "0"], "argument --buffer-size: must be an integer > 0, got '0'"),
    (["--buffer-size", "-5"], "argument --buffer-size: must be an integer > 0, got '-5'"),
    (["--buffer-size", "abc"], "argument --buffer-size: must be an integer > 0, got 'abc'"),
    (["--poll-interval", "-1"], "argument --poll-interval: must be a number > 0, got '-1'"),
    (["--heartbeat-interval", "0"], "argument --heartbeat-interval: must be a number > 0, got '0'"),
    (["--reconnect-delay", "nan"], "argument --reconnect-delay: must be a number > 0, got 'nan'"),
    (["--max-reconnect-attempts", "-1"],
     "argument --max-reconnect-attempts: must be an integer >= 0, got '-1'"),
    (["--shutdown-timeout", "0"], "argument --shutdown-timeout: must be a number > 0, got '0'"),
    (["--port", "70000"], "argument --port: must be a port 0-65535, got '70000'"),
    (["--metrics-port", "-1"], "argument --metrics-port: must be an integer >= 0, got '-1'"),
    (["--ccxt-options", "[1]"], "argument --ccxt-options: must be a JSON object"),
])
def test_a_bad_option_value_is_one_line_and_exit_2(args, message):
    result = serve(*args)
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert line.startswith(f"flight-md serve: {message}"), line
    assert line.endswith("(see flight-md serve --help)"), line


@pytest.mark.parametrize(("args", "message"), [
    (["--poll-interval", "3"], "--poll-interval set a stream of --exchange; add --exchange ID"),
    (["--mode", "rest", "--channel", "bidask"],
     "--channel, --mode set a stream of --exchange; add --exchange ID"),
    (["--exchange", "binance", "--reconnect-delay", "5", "--max-reconnect-delay", "1"],
     "max_reconnect_delay must be >= reconnect_delay"),
    (["--exchange", "binance", "--ccxt-options", '{"apiKey": "k"}'],
     "ccxt_options must not hold 'apiKey': keys come from the environment"),
])
def test_an_option_that_cannot_take_effect_is_one_line_and_exit_2(args, message):
    """No dead options: a stream option without a stream it could set is refused."""
    result = serve(*args)
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert line.startswith(f"flight-md: {message}"), line


def test_an_unknown_channel_in_a_config_file_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[exchanges]]\nid = "binance"\nsymbols = ["BTC/USDT"]\nchannel = "foo"\n')
    result = serve("--config", str(config))
    assert result.returncode == 2
    assert one_line(result.stderr) == ("flight-md: invalid channel 'foo'; allowed: ticker, "
                                       "bidask, trades, book (a comma list of them)")


# -- every MarketDataStream parameter is an option, with one default ----------------------------


def test_every_stream_parameter_is_a_serve_option_and_a_config_key_with_one_default():
    import argparse
    import inspect

    from flight_md.cli import _serve_parser
    from flight_md.config import STREAM_DEFAULTS, StreamConfig
    from flight_md.ingest.stream import MarketDataStream, channels_of

    sub = argparse.ArgumentParser().add_subparsers()
    _serve_parser(sub)
    dests = {a.dest for a in sub.choices["serve"]._actions}
    params = inspect.signature(MarketDataStream.__init__).parameters
    python_only = {"self", "buffer", "events", "store"}  # objects
    server_wide = {"book_depth"}                         # ServerConfig / serve --book-depth
    by_option = {"exchange_id": "exchange", "url": "exchange_url",
                 "api_key": "api_key_env", "api_secret": "api_secret_env",
                 "channels": "channel"}  # serve --channel takes the comma list
    for name, param in params.items():
        if name in python_only:
            continue
        if name in server_wide:
            assert name in dests, f"MarketDataStream({name}=) has no serve option"
            continue
        assert by_option.get(name, name) in dests, f"MarketDataStream({name}=) has no serve option"
        if name in ("exchange_id", "api_key", "api_secret", "channels"):
            continue
        assert name in {f for f in StreamConfig.__dataclass_fields__}, f"{name} is no TOML key"
        if param.default is not inspect.Parameter.empty and name not in ("buffer_size", "channel"):
            assert param.default == STREAM_DEFAULTS[name], (
                f"MarketDataStream({name}={param.default!r}) but StreamConfig says "
                f"{STREAM_DEFAULTS[name]!r}")
    assert params["buffer_size"].default == STREAM_DEFAULTS["buffer_size"]
    # channel=None (so channels= can tell it was not given) means StreamConfig's default.
    assert channels_of(None, None) == (STREAM_DEFAULTS["channel"],)


def test_the_new_stream_options_reach_the_running_stream():
    """--max-reconnect-attempts is used, not just validated: a server pointed at a closed port
    gives up after one attempt (state failed in status, a failed event in @events)."""
    import json

    from pyarrow import flight

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        with ServerProcess("--exchange", "binance", "--symbols", "BTC/USDT", "--exchange-url",
                           url, "--max-reconnect-attempts", "1", "--reconnect-delay", "0.05",
                           "--max-reconnect-delay", "0.1") as server:
            def state():
                with flight.connect(server.location) as client:
                    body = next(iter(client.do_action(flight.Action("status", b"")))).body
                    exchange = json.loads(body.to_pybytes())["exchanges"]["binance"]
                    return exchange if exchange["state"] == "failed" else None

            failed = until(state, 60, "the stream to give up after one attempt")
            with flight.connect(server.location) as client:
                events = client.do_get(flight.Ticket(b"@events")).read_all().to_pylist()
    assert failed["last_error"], failed
    gave_up = [e for e in events if e["kind"] == "failed" and e["exchange"] == "binance"]
    assert len(gave_up) == 1 and "gave up after 1 reconnect attempts" in gave_up[0]["detail"], events


def test_stream_options_become_stream_settings():
    from flight_md.cli import _parser, build_config

    args = _parser().parse_args([
        "serve", "--exchange", "binance", "--symbols", "BTC/USDT", "--ccxt-options",
        '{"timeout": 1500}', "--urls", '{"api": {"public": "http://127.0.0.1:1"}}',
        "--rest-fallback-after", "5", "--ws-probe-interval", "7.5", "--max-reconnect-attempts",
        "0", "--follow-max-lag", "42", "--channel", "bidask"])
    config = build_config(args)
    kwargs = config.streams[0].stream_kwargs()
    assert kwargs["ccxt_options"] == {"timeout": 1500}
    assert kwargs["urls"] == {"api": {"public": "http://127.0.0.1:1"}}
    assert (kwargs["rest_fallback_after"], kwargs["ws_probe_interval"],
            kwargs["max_reconnect_attempts"], kwargs["channel"]) == (5, 7.5, 0, "bidask")
    assert config.follow_max_lag == 42
