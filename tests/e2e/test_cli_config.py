"""``flight-md serve --config FILE.toml``: several exchanges, options over the file, and every
config error as one line.

README, Configuration: "``--config FILE.toml`` | several exchanges and server settings (below);
options override it". The servers here are real ``flight-md serve`` processes streaming through
real ccxt.pro from two real ``flight-md emulator`` processes (Binance and Bybit dialects).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyarrow import flight

from tests.support import MS, EmulatorProcess, ServerProcess, child_env, until

BINANCE = ("BTC/USDT", "ETH/USDT")
BYBIT = ("BTC/USDT:USDT",)


@pytest.fixture(scope="module")
def binance() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--exchange", "binance", "--symbols", ",".join(BINANCE),
                         "--rate", "100") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def bybit() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--exchange", "bybit", "--symbols", ",".join(BYBIT),
                         "--rate", "100") as emulator:
        yield emulator


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port this test keeps listening on: a server told to use it cannot start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def status(client: flight.FlightClient) -> dict[str, Any]:
    result = next(client.do_action(flight.Action("status", b"")))
    return json.loads(result.body.to_pybytes())  # type: ignore[no-any-return]


def symbol_status(client: flight.FlightClient, exchange: str, symbol: str) -> dict[str, Any]:
    for entry in status(client)["symbols"]:
        if (entry["exchange"], entry["symbol"]) == (exchange, symbol):
            return entry  # type: ignore[no-any-return]
    return {}


def ingestion_children(pid: int) -> list[str]:
    """Command lines of the multiprocessing children of process ``pid`` (``--ingest-process``)."""
    return [cmdline for _, cmdline in _ingestion_processes(pid)]


def ingestion_child_pids(pid: int) -> list[int]:
    """Process ids of the multiprocessing children of process ``pid``."""
    return [child for child, _ in _ingestion_processes(pid)]


def _ingestion_processes(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def write_config(path: Path, server: str, binance_url: str, bybit_url: str) -> Path:
    path.write_text(f"""\
[server]
{server}

[[exchanges]]
id = "binance"
symbols = {json.dumps(list(BINANCE))}
channel = "bidask"
mode = "websocket"
url = "{binance_url}"

[[exchanges]]
id = "bybit"
symbols = {json.dumps(list(BYBIT))}
mode = "websocket"
url = "{bybit_url}"
""", encoding="utf-8")
    return path


def test_config_with_two_exchanges_and_options_over_it(
        tmp_path: Path, binance: EmulatorProcess, bybit: EmulatorProcess, held_port: int) -> None:
    """Both exchanges stream as the file says; ``--port``, ``--buffer-size`` and
    ``--ingest-process`` win over the file's ``port``, ``buffer_size`` and ``ingest_process``."""
    config = write_config(
        tmp_path / "server.toml",
        f"port = {held_port}\nbuffer_size = 20000\ningest_process = false",
        binance.url, bybit.url)
    # ServerProcess passes --port 0: had the file's (held) port won, the server could not bind.
    with ServerProcess("--config", str(config), "--buffer-size", "40", "--ingest-process") as server, \
            flight.connect(server.location) as client:
        assert not server.location.endswith(f":{held_port}")
        assert ingestion_children(server.pid), "--ingest-process started no ingestion child"
        first = status(client)
        assert first["server"]["ingestion_mode"] == "process"
        assert first["server"]["buffer_size"] == 40
        assert {ex: first["exchanges"][ex]["channel"] for ex in first["exchanges"]} == \
            {"binance": "bidask", "bybit": "ticker"}
        assert sorted(first["exchanges"]["binance"]["symbols"]) == sorted(BINANCE)
        assert first["exchanges"]["bybit"]["symbols"] == list(BYBIT)

        for exchange, symbol in [("binance", s) for s in BINANCE] + [("bybit", s) for s in BYBIT]:
            until(lambda e=exchange, s=symbol: symbol_status(client, e, s).get(
                "ticks_appended", 0) > 40, 30, f"more than 40 ticks of ({exchange}, {symbol})")
            # The bare ticket is the ring (latest=N beyond it would read the history too).
            ticket = f"{symbol}?exchange={exchange}".encode()
            table = client.do_get(flight.Ticket(ticket)).read_all()
            assert table.num_rows == 40, "the ring must hold --buffer-size 40 ticks"
            assert set(table.column("exchange").to_pylist()) == {exchange}
            rows = table.to_pylist()
            if exchange == "binance":  # channel = "bidask": the mid price, no 24h volume
                assert all(r["volume"] is None and r["price"] == (r["bid"] + r["ask"]) / 2
                           for r in rows)
            else:  # the default ticker channel carries the 24h volume
                assert all(r["volume"] is not None for r in rows)


def test_the_file_is_used_where_no_option_overrides_it(
        tmp_path: Path, binance: EmulatorProcess, bybit: EmulatorProcess) -> None:
    """Without ``--buffer-size`` the file's ``buffer_size`` holds; ``--no-ingest-process``
    overrides the file's ``ingest_process = true``."""
    config = write_config(tmp_path / "server.toml", "buffer_size = 25\ningest_process = true",
                          binance.url, bybit.url)
    with ServerProcess("--config", str(config), "--no-ingest-process") as server, \
            flight.connect(server.location) as client:
        assert status(client)["server"]["buffer_size"] == 25
        assert status(client)["server"]["ingestion_mode"] == "thread"
        until(lambda: symbol_status(client, "bybit", "BTC/USDT:USDT").get("ticks_appended", 0)
              > 25, 30, "more than 25 bybit ticks")
        table = client.do_get(flight.Ticket(b"BTC/USDT:USDT")).read_all()
        assert table.num_rows == 25
        assert ingestion_children(server.pid) == []


# (serve options, [server] lines of --config or None for no file) -> (ingest_process, workers)
WHERE_INGESTION_RUNS = {
    "default": ((), None, (True, 1)),
    "--no-ingest-process": (("--no-ingest-process",), None, (False, 0)),
    "file without the key": ((), "buffer_size = 25", (True, 1)),
    "file false": ((), "ingest_process = false", (False, 0)),
    "file false, --ingest-process": (("--ingest-process",), "ingest_process = false", (True, 1)),
    "file true, --no-ingest-process": (("--no-ingest-process",), "ingest_process = true",
                                       (False, 0)),
    "file false, --ingest-workers 2": (("--ingest-workers", "2"), "ingest_process = false",
                                       (True, 2)),
    "file workers 2, --no-ingest-process": (("--no-ingest-process",), "ingest_workers = 2",
                                            (False, 0)),
}


@pytest.mark.parametrize("args, server, expected", list(WHERE_INGESTION_RUNS.values()),
                         ids=list(WHERE_INGESTION_RUNS))
def test_serve_runs_ingestion_in_a_child_process_unless_told_otherwise(
        tmp_path: Path, args: tuple[str, ...], server: str | None,
        expected: tuple[bool, int]) -> None:
    """``flight-md serve`` ingests in a child process by default (SERVE_INGEST_PROCESS);
    ``--no-ingest-process`` or the file's ``ingest_process = false`` puts it on a thread, and
    the command line wins over the file either way."""
    from flight_md.cli import _parser, build_config

    config_args: tuple[str, ...] = ()
    if server is not None:
        (tmp_path / "server.toml").write_text(f"[server]\n{server}\n", encoding="utf-8")
        config_args = ("--config", str(tmp_path / "server.toml"))
    config = build_config(_parser().parse_args(["serve", "--demo", *config_args, *args]))
    assert (config.ingest_process, config.workers) == expected
    assert config.ingestion_mode == ("process" if expected[0] else "thread")


def test_the_python_api_keeps_ingestion_in_process(tmp_path: Path) -> None:
    """``ServerConfig`` and ``load_config`` from Python keep ingestion on a thread of the
    caller (callbacks and MarketDataStream stay in-process); the file's key still counts."""
    from flight_md.config import ServerConfig, load_config

    assert ServerConfig(demo=True).ingestion_mode == "thread"
    (tmp_path / "server.toml").write_text("[server]\nbuffer_size = 25\n", encoding="utf-8")
    assert load_config(tmp_path / "server.toml").ingest_process is False
    (tmp_path / "server.toml").write_text("[server]\ningest_process = true\n", encoding="utf-8")
    assert load_config(tmp_path / "server.toml").ingest_process is True


# -- config errors ---------------------------------------------------------------------------

BINANCE_ENTRY = '[[exchanges]]\nid = "binance"\nsymbols = ["BTC/USDT"]\n'

CONFIG_ERRORS = {
    # name: (file text, substrings the one stderr line must hold)
    "unknown server key": ('[server]\nbogus = 1\n', ["unknown key 'bogus' in [server]"]),
    "unknown exchange key": (BINANCE_ENTRY + 'colour = "red"\n',
                             ["unknown key 'colour' for exchange 'binance'"]),
    "unknown section": ('[storage]\npath = "x"\n', ["unknown section 'storage'"]),
    "unknown channel": (BINANCE_ENTRY + 'channel = "candles"\n',
                        ["invalid channel 'candles'", "ticker, bidask, trades, book"]),
    "unknown mode": (BINANCE_ENTRY + 'mode = "fast"\n', ["invalid mode 'fast'"]),
    "missing id": ('[[exchanges]]\nsymbols = ["BTC/USDT"]\n', ["entry 1 needs an id"]),
    "bad toml": ('[server\nport = 1\n', ["'server.toml' is not valid TOML", "line 1"]),
    "port of wrong type": ('[server]\nport = "8815"\n', ["invalid port '8815'"]),
    "buffer_size of wrong type": ('[server]\nbuffer_size = "big"\n',
                                  ["buffer_size must be a positive integer, got 'big'"]),
    "buffer_size zero": ('[server]\nbuffer_size = 0\n',
                         ["buffer_size must be a positive integer, got 0"]),
    "follow_max_lag of wrong type": ('[server]\nfollow_max_lag = "x"\n',
                                     ["follow_max_lag must be a positive integer, got 'x'"]),
    "host of wrong type": ('[server]\nhost = 127\n', ["host must be", "got 127"]),
    "server not a table": ('server = 5\n', ["server must be a table", "got 5"]),
    "exchanges not an array": ('[exchanges]\nid = "binance"\n',
                               ["exchanges must be an array of tables"]),
    "symbols as a string": ('[[exchanges]]\nid = "binance"\nsymbols = "BTC/USDT"\n',
                            ["symbols of binance must be a list", "got 'BTC/USDT'"]),
    "url of wrong type": (BINANCE_ENTRY + 'url = 9000\n', ["url must be a string", "got 9000"]),
    "testnet of wrong type": (BINANCE_ENTRY + 'testnet = "yes"\n',
                              ["testnet must be true or false, got 'yes'"]),
    "heartbeat not positive": (BINANCE_ENTRY + 'heartbeat_interval = 0\n',
                               ["heartbeat_interval must be a positive number, got 0"]),
    "ingest_process of wrong type": ('[server]\ningest_process = "yes"\n',
                                     ["ingest_process must be true or false, got 'yes'"]),
    "tls_cert of wrong type": ('[server]\ntls_cert = 5\n', ["tls_cert must be a file name"]),
    "missing token file": ('[server]\nauth_token_file = "absent.txt"\n',
                           ["cannot read token file", "absent.txt"]),
    "unset key variable": (BINANCE_ENTRY + 'api_key_env = "FLIGHT_MD_TEST_UNSET_KEY"\n',
                           ["environment variable 'FLIGHT_MD_TEST_UNSET_KEY' is not set"]),
    "fsync unknown": ('[server]\nfsync = "sometimes"\n',
                      ["fsync must be always or interval or never, got 'sometimes'"]),
    "retention unreadable": ('[server]\nretention = "forever"\n',
                             ["retention must be a positive duration such as 30d",
                              "got 'forever'"]),
    "max_history_bytes unreadable": ('[server]\nmax_history_bytes = "lots"\n',
                                     ["max_history_bytes must be a positive size such as 20GB",
                                      "got 'lots'"]),
    "commit_interval zero": ('[server]\ncommit_interval = 0\n',
                             ["commit_interval must be a positive number of seconds, got 0"]),
    "data_dir of wrong type": ('[server]\ndata_dir = 5\n',
                               ["data_dir must be a directory name, got 5"]),
}


def run_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m flight_md serve --port 0 ARGS`` to its end, as a process of its own; a
    server that starts serving is a failure."""
    proc = subprocess.Popen([sys.executable, "-m", "flight_md", "serve", "--port", "0", *args],
                            cwd=cwd, env=child_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30 * MS)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"flight-md serve {' '.join(args)} did not exit:\n{out}{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ``python -m flight_md`` costs seconds of imports on a loaded box, so the table below runs each
# case in a fork of one interpreter that has done those imports: the child runs the module as
# ``python -m flight_md ARGV`` does (runpy), and leaves as the interpreter would (an escaping
# exception prints its traceback and exits 1). A case that starts serving is killed by SIGALRM.
FORK_SERVER = r"""
import json, os, runpy, signal, sys, traceback
import flight_md.app, flight_md.cli, flight_md.ingest.manager
print("ready", flush=True)
for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        signal.alarm(case["timeout"])
        sys.argv = ["flight-md", *case["argv"]]
        try:
            runpy.run_module("flight_md", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class ForkRunner:
    """Runs ``flight-md ARGV`` cases in forks of one pre-imported interpreter (see above)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], env=child_env(),
                                     text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n"

    def run(self, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        out, err = cwd / "fork.out", cwd / "fork.err"
        case = {"argv": argv, "cwd": str(cwd), "out": str(out), "err": str(err),
                "timeout": int(30 * MS)}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        code = int(self.proc.stdout.readline())
        assert code != -14, f"flight-md {' '.join(argv)} did not exit (it started serving?)"
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10 * MS)


ERROR_LINE_RE = re.compile(r"flight-md( serve)?: ")
"""A command-line error line: ``flight-md: ...``, or argparse's ``flight-md serve: ...``."""


def assert_one_line_error(result: subprocess.CompletedProcess[str],
                          needles: list[str | re.Pattern[str]]) -> None:
    """Exit 2, nothing on stdout, one line on stderr holding each needle (a substring, or a
    pattern searched for)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.returncode, result.stdout) == (2, ""), result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and ERROR_LINE_RE.match(lines[0]), result.stderr
    for needle in needles:
        if isinstance(needle, str):
            assert needle in lines[0], (needle, lines[0])
        else:
            assert needle.search(lines[0]), (needle.pattern, lines[0])


@pytest.mark.parametrize("text, needles", list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS))
def test_config_error_is_one_line_and_exit_2(forks: ForkRunner, tmp_path: Path, text: str,
                                             needles: list[str]) -> None:
    (tmp_path / "server.toml").write_text(text, encoding="utf-8")
    result = forks.run("serve", "--port", "0", "--config", "server.toml", cwd=tmp_path)
    assert_one_line_error(result, needles)


@pytest.mark.parametrize("name", ["missing file", "bad toml", "buffer_size zero"])
def test_config_errors_from_a_process_of_their_own(tmp_path: Path, name: str) -> None:
    """The same as the table, for a few cases, with nothing imported beforehand."""
    if name == "missing file":
        needles = ["cannot read config 'absent.toml'", "No such file or directory"]
        result = run_serve("--config", "absent.toml", cwd=tmp_path)
    else:
        text, needles = CONFIG_ERRORS[name]
        (tmp_path / "server.toml").write_text(text, encoding="utf-8")
        result = run_serve("--config", "server.toml", cwd=tmp_path)
    assert_one_line_error(result, needles)
