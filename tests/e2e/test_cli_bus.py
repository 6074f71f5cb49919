"""``flight-md serve --bus`` and ``flight-md ingest``: their options and ``[bus]`` table become
the ServerConfig they say, secrets only from files or the environment and never printed, and
every mistake is one line (issue 16).

The parsing tests run the real parser (``flight_md.cli``); the one-line errors run the
command's ``main`` (and, where the process matters, ``flight-md`` as a child process), with no
nats-server: each is refused before anything connects.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flight_md.cli import _parser, build_config, build_ingest_config, main
from flight_md.config import BUS_PASSWORD_ENV, BUS_TOKEN_ENV, IngestionMode, ServerConfig
from flight_md.errors import ConfigError
from tests.support import MS, child_env

SECRET = "s3cret-bus-password-0123"
TOKEN = "bus-token-abcdef-9876"


def serve(*argv: str) -> ServerConfig:
    return build_config(_parser().parse_args(["serve", *argv]))


def ingest(*argv: str) -> ServerConfig:
    return build_ingest_config(_parser().parse_args(["ingest", *argv]))


@pytest.fixture(autouse=True)
def _no_bus_secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUS_PASSWORD_ENV, raising=False)
    monkeypatch.delenv(BUS_TOKEN_ENV, raising=False)


def test_serve_without_bus_is_unchanged_and_imports_no_nats() -> None:
    code = ("import sys; from flight_md.cli import _parser, build_config; "
            "c = build_config(_parser().parse_args(['serve', '--demo'])); "
            "assert c.bus is None and c.ingestion_mode != 'bus', c; "
            "from flight_md.app import MarketDataApp; MarketDataApp(c); "
            "assert 'nats' not in sys.modules, 'nats imported'")
    done = subprocess.run(check=False, args=[sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=60 * MS)
    assert done.returncode == 0, done.stderr


def test_serve_bus_options_become_the_config(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text(f"\n{SECRET}\n")
    config = serve("--bus", "nats://10.1.2.3:4333", "--bus-subjects", "md.*.binance.>",
                   "--bus-subjects", "md.trades.bybit.>,md.book.bybit.>", "--node-name", "s2",
                   "--advertise", "grpc://10.1.2.4:8815", "--bus-user", "md",
                   "--bus-password-file", str(password), "--bus-stream", "MD2",
                   "--data-dir", str(tmp_path / "d"))
    assert config.bus is not None
    assert (config.bus.url, config.bus.user, config.bus.password, config.bus.stream) == (
        "nats://10.1.2.3:4333", "md", SECRET, "MD2")
    assert config.bus_subjects == ("md.*.binance.>", "md.trades.bybit.>", "md.book.bybit.>")
    assert (config.node_name, config.advertise) == ("s2", "grpc://10.1.2.4:8815")
    assert config.ingestion_mode is IngestionMode.BUS
    assert SECRET not in repr(config) and SECRET not in str(config.bus)


def test_the_default_node_name_differs_by_data_dir_and_is_stable(tmp_path: Path) -> None:
    one = serve("--bus", "nats://127.0.0.1:4222", "--data-dir", str(tmp_path / "a"))
    again = serve("--bus", "nats://127.0.0.1:4222", "--data-dir", str(tmp_path / "a"))
    other = serve("--bus", "nats://127.0.0.1:4222", "--data-dir", str(tmp_path / "b"))
    memory = serve("--bus", "nats://127.0.0.1:4222", "--memory-only", "--port", "9999")
    assert one.resolved_node_name() == again.resolved_node_name() != other.resolved_node_name()
    assert "-mem-" in memory.resolved_node_name()
    for config in (one, other, memory):
        name = config.resolved_node_name()
        assert 1 <= len(name) <= 48 and name.replace("-", "").replace("_", "").isalnum(), name


def test_the_bus_table_of_a_config_file_and_options_over_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    config_file = tmp_path / "cluster.toml"
    config_file.write_text('[bus]\nurl = "nats://127.0.0.1:4999"\nsubjects = ["md.*.okx.>"]\n'
                           'node_name = "from-file"\ntoken_file = "token"\nstream = "X"\n'
                           'backlog_messages = 500\n')
    from_file = serve("--config", str(config_file), "--memory-only")
    assert from_file.bus is not None and from_file.bus.token == TOKEN
    assert (from_file.bus.url, from_file.bus.stream) == ("nats://127.0.0.1:4999", "X")
    assert (from_file.bus_subjects, from_file.node_name) == (("md.*.okx.>",), "from-file")
    over = serve("--config", str(config_file), "--memory-only", "--bus",
                 "nats://127.0.0.1:5000", "--node-name", "cli", "--bus-subjects", "md.>")
    assert over.bus is not None and over.bus.url == "nats://127.0.0.1:5000"
    assert over.bus.token == TOKEN  # the file's login stays unless one is given
    assert (over.bus_subjects, over.node_name) == (("md.>",), "cli")
    node = ingest("--config", str(config_file), "--demo", "--bus-backlog-bytes", "4096")
    assert node.backlog_limits().max_messages == 500
    assert node.backlog_limits().max_bytes == 4096


def test_ingest_takes_serves_stream_options_and_the_default_bus() -> None:
    config = ingest("--exchange", "binance", "--symbols", "BTC/USDT,ETH/USDT", "--channel",
                    "trades,book", "--decoder", "ccxt", "--book-depth", "5",
                    "--bus-backlog-messages", "20", "--node-name", "ing1")
    [stream] = config.streams
    assert (stream.exchange, stream.symbols, stream.channels, stream.decoder) == (
        "binance", ("BTC/USDT", "ETH/USDT"), ("trades", "book"), "ccxt")
    assert config.book_depth == 5 and config.node_name == "ing1"
    assert config.bus is not None and config.bus.url == "nats://127.0.0.1:4222"
    assert config.backlog_limits().max_messages == 20
    assert config.memory_only  # an ingestion node keeps nothing on disk
    demo = ingest("--demo", "binance,bybit")
    assert demo.demo == ("binance", "bybit")


def test_secrets_come_from_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUS_PASSWORD_ENV, SECRET)
    config = serve("--bus", "nats://127.0.0.1:4222", "--bus-user", "md", "--memory-only")
    assert config.bus is not None and config.bus.password == SECRET
    monkeypatch.delenv(BUS_PASSWORD_ENV)
    monkeypatch.setenv(BUS_TOKEN_ENV, TOKEN)
    config = ingest("--demo")
    assert config.bus is not None and config.bus.token == TOKEN and config.bus.user is None
    assert TOKEN not in repr(config.bus)


@pytest.mark.parametrize(("argv", "says"), [
    (["serve", "--port", "0", "--bus", "nats://127.0.0.1:1", "--demo"], "flight-md ingest"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--exchange", "binance"], "flight-md ingest"),
    (["serve", "--port", "0", "--bus", "nats://127.0.0.1:1", "--ingest-workers", "2"],
     "flight-md ingest nodes"),
    (["serve", "--node-name", "s1"], "add --bus"),
    (["serve", "--bus-subjects", "md.>"], "add --bus"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--bus-subjects", "trades.>"], "must start with"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--node-name", "no spaces"], "node_name must be"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--advertise", "http://x:1"], "advertise must be"),
    (["serve", "--bus", "http://127.0.0.1:1"], "must be nats"),
    (["serve", "--bus", f"nats://md:{SECRET}@127.0.0.1:1"], "must not hold a password"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--bus-password-file", "/nonexistent"],
     "needs --bus-user"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--bus-user", "md", "--bus-password-file",
      "/nonexistent/pw"], "cannot read bus password file"),
    (["serve", "--bus", "nats://127.0.0.1:1", "--bus-user", "md", "--bus-creds",
      "/nonexistent/x.creds"], "does not exist"),
    (["ingest"], "nothing to ingest"),
    (["ingest", "--demo", "--bus-backlog-messages", "0"], "--bus-backlog-messages"),
    (["ingest", "--demo", "--advertise", "grpc://127.0.0.1:1"], "unrecognized arguments"),
])
def test_every_bus_mistake_is_one_line(argv: list[str], says: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything starts or connects (the command's own main, in this process)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], stderr
    assert SECRET not in stderr and "Traceback" not in stderr


def test_a_bus_node_that_cannot_reach_the_bus_says_so_in_one_line(tmp_path: Path) -> None:
    """Exit 1 (a start-up problem, worth a restart), the URL without its user."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        url = f"nats://md@127.0.0.1:{closed.getsockname()[1]}"
        done = subprocess.run(check=False, args=[sys.executable, "-m", "flight_md", "serve", "--port", "0",
                               "--bus", url, "--memory-only"], env=child_env(),
                              capture_output=True, text=True, timeout=90 * MS)
    errors = [line for line in done.stderr.splitlines() if line.startswith("flight-md:")]
    assert done.returncode == 1, done.stderr
    assert len(errors) == 1 and "cannot connect to the bus" in errors[0], done.stderr
    assert "md@" not in done.stderr


def test_the_bus_needs_nats_py(tmp_path: Path) -> None:
    """Without the bus extra: one line naming it (nats hidden from this child's imports)."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['nats'] = None\n")
    env = child_env({"PYTHONPATH": f"{tmp_path}:{child_env()['PYTHONPATH']}"})
    done = subprocess.run(check=False, args=[sys.executable, "-m", "flight_md", "ingest", "--demo"], env=env,
                          capture_output=True, text=True, timeout=60 * MS)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "flight-md: the bus needs nats-py: install flight-md[bus]"


def test_config_errors_of_the_bus_table(tmp_path: Path) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text('[bus]\nurl = "nats://127.0.0.1:1"\npassword = "inline"\n')
    with pytest.raises(ConfigError, match="unknown key 'password' in \\[bus\\]"):
        serve("--config", str(config_file))


def test_a_serving_node_logs_in_with_a_password_file_and_never_shows_it(tmp_path: Path) -> None:
    """A real nats-server that wants a user and password: the node logs in from the file; its
    output and status never hold the password; a wrong one is one line, exit 1, without it."""
    import json

    from pyarrow import flight

    from tests.bus.nats_support import NatsServer
    from tests.support import ServerProcess

    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats", "--user", "md", "--pass", SECRET).start()
    try:
        (tmp_path / "pw").write_text(SECRET + "\n")
        with ServerProcess("--bus", server.url, "--bus-user", "md", "--bus-password-file",
                           str(tmp_path / "pw"), "--memory-only", "--node-name", "s1") as node:
            with flight.connect(node.location) as client:
                body = next(iter(client.do_action(flight.Action("status", b"")))).body
                status = json.loads(body.to_pybytes())
            assert status["bus"]["connected"] and status["server"]["ingestion_mode"] == "bus"
            assert SECRET not in body.to_pybytes().decode()
        assert SECRET not in node.output
        (tmp_path / "wrong").write_text("not-the-password\n")
        done = subprocess.run(check=False, args=[
            sys.executable, "-m", "flight_md", "serve", "--port", "0", "--bus", server.url,
            "--bus-user", "md", "--bus-password-file", str(tmp_path / "wrong"), "--memory-only"],
            env=child_env(), capture_output=True, text=True, timeout=90 * MS)
        errors = [line for line in done.stderr.splitlines() if line.startswith("flight-md:")]
        assert done.returncode == 1 and len(errors) == 1, done.stderr
        assert "not-the-password" not in done.stderr and SECRET not in done.stderr
    finally:
        server.kill()
