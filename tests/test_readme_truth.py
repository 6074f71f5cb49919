"""The README's commands and snippets work as written.

Each test reads the block it checks out of README.md (so an edit of the README is what gets
tested) and runs it against real processes: the Quick start snippet with only what the Quick
start installs, the emulator replay pair, the examples' install line, the systemd unit.
"""

from __future__ import annotations

import ast
import configparser
import gzip
import json
import re
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from pyarrow import flight

from tests.support import MS, EmulatorProcess, ServerProcess, child_env, until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RECORDINGS = ROOT.parent / "shared" / "recordings"


def block_after(marker: str, language: str) -> str:
    """The first fenced ``language`` block after the line containing ``marker``."""
    start = README.index(marker)
    match = re.compile(rf"^```{language}\n(.*?)^```", re.DOTALL | re.MULTILINE).search(README, start)
    assert match is not None, f"no ```{language} block after {marker!r}"
    return match.group(1)


# -- distributions ----------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _requirement_names(dist: str, extras: tuple[str, ...] = ()) -> set[str]:
    """``dist`` and everything it requires (recursively), with the given extras of ``dist``."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    visited: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(dist, extras)]
    while todo:
        name, wanted = todo.pop()
        if (_canonical(name), wanted) in visited:
            continue
        visited.add((_canonical(name), wanted))
        seen.add(_canonical(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e})
                                                  for e in (wanted or ("",))):
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    return seen


def _declared(pyproject: Path, extra: str | None = None) -> set[str]:
    """What a pyproject in this checkout declares (its dependencies, or one extra), closed over
    what those distributions require in turn (their installed metadata)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    texts = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    names = {_canonical(project["name"])}
    for text in texts:
        req = Requirement(text)
        names |= _requirement_names(req.name, tuple(sorted(req.extras)))
    return names


def _modules_of(dists: set[str]) -> set[str]:
    """Top-level import names the given distributions provide."""
    names = set()
    for module, owners in metadata.packages_distributions().items():
        if any(_canonical(o) in dists for o in owners):
            names.add(module)
    return names


def _third_party_modules() -> set[str]:
    return set(metadata.packages_distributions())


# -- Quick start --------------------------------------------------------------------------------


def test_the_quick_start_snippet_runs_with_only_what_the_first_command_installs():
    """The first command is ``pip install .``: the snippet may import only flight-md's runtime
    dependencies (recursively). Every other installed package is hidden from it."""
    snippet = block_after("Pull data from another terminal", "python")
    runtime = _modules_of(_declared(ROOT / "pyproject.toml"))
    hidden = sorted(_third_party_modules() - runtime - {"flight_md", "_distutils_hack"})
    assert "pandas" in hidden and "pyarrow" not in hidden  # the point of the test
    with ServerProcess("--demo") as server:
        until(lambda: _has_ticks(server.location, "BTC/USDT"), 60, "demo ticks")
        code = snippet.replace("grpc://127.0.0.1:8815", server.location)
        guard = textwrap.dedent(f"""
            import importlib.abc, sys
            HIDDEN = set({hidden!r})
            class Hide(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.partition(".")[0] in HIDDEN:
                        raise ModuleNotFoundError(f"No module named {{name!r}}")
                    return None
            sys.meta_path.insert(0, Hide())
        """)
        result = subprocess.run([sys.executable, "-c", guard + code], capture_output=True,
                                text=True, env=child_env(), timeout=60 * MS, check=False)
    assert result.returncode == 0, result.stderr
    assert "ticks; newest price" in result.stdout


def _has_ticks(location: str, symbol: str) -> bool:
    with flight.connect(location) as client:
        try:
            return client.do_get(flight.Ticket(f"{symbol}?latest=1".encode())).read_all().num_rows > 0
        except (flight.FlightError, KeyError, OSError):
            return False


# -- examples -----------------------------------------------------------------------------------


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_the_examples_install_line_covers_every_example_import():
    line = block_after("## Examples", "bash").strip().splitlines()[0]
    assert line.startswith("pip install './clients/python[examples]'"), line
    examples = ROOT / "clients" / "examples"
    imported: set[str] = set()
    for path in sorted(examples.glob("*.py")):
        imported |= _imports(path.read_text(encoding="utf-8"))
    notebook = json.loads((examples / "quickstart.ipynb").read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            imported |= _imports("\n".join(l for l in source.splitlines()
                                           if not l.lstrip().startswith(("%", "!"))))
    third_party = {m for m in imported if m not in sys.stdlib_module_names}
    client = ROOT / "clients" / "python" / "pyproject.toml"
    covered = _modules_of(_declared(client) | _declared(client, "examples")) | {"flight_md_client"}
    assert third_party - covered == set(), f"not installed by the examples extra: {third_party - covered}"
    assert {"duckdb", "polars", "matplotlib"} <= third_party  # what the line is for


# -- the emulator replay pair -------------------------------------------------------------------


def test_the_readme_replay_pair_serves_the_recorded_best_bid_ask():
    commands = [shlex.split(line) for line in
                block_after("so the pair that serves it is", "bash").strip().splitlines()]
    emulator_argv, serve_argv = commands
    assert emulator_argv[:2] == ["flight-md", "emulator"] and serve_argv[:2] == ["flight-md", "serve"]
    recording = Path(emulator_argv[emulator_argv.index("--replay") + 1])
    assert (ROOT / recording).resolve() == (RECORDINGS / "binance.jsonl.gz").resolve()
    symbols = serve_argv[serve_argv.index("--symbols") + 1].split(",")
    expected = _recorded_best_bid_ask(RECORDINGS / "binance.jsonl.gz")
    assert set(symbols) == set(expected), "the README's symbols are the recording's"

    def without_port(argv: list[str]) -> list[str]:
        i = argv.index("--port")
        return argv[2:i] + argv[i + 2:]

    with EmulatorProcess(*without_port(emulator_argv)) as emulator:
        serve = serve_argv[2:]
        serve[serve.index("--exchange-url") + 1] = emulator.url
        with ServerProcess(*serve) as server:
            for symbol in expected:
                table = until(lambda s=symbol: _table(server.location, s), 60, f"{symbol} ticks")
                served = set(zip(table["bid"].to_pylist(), table["ask"].to_pylist()))
                assert served <= _recorded_pairs(RECORDINGS / "binance.jsonl.gz", symbol)


def _table(location: str, symbol: str):
    with flight.connect(location) as client:
        try:
            table = client.do_get(flight.Ticket(symbol.encode())).read_all()
        except (flight.FlightError, KeyError, OSError):
            return None
        return table if table.num_rows else None


def _bookticker_frames(path: Path) -> list[dict]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "recv":
                frame = json.loads(record["data"])
                if str(frame.get("stream", "")).endswith("@bookTicker"):
                    out.append(frame["data"])
    return out


_UNIFIED = {"NKNUSDT": "NKN/USDT", "LRCBTC": "LRC/BTC", "BLZETH": "BLZ/ETH"}


def _recorded_best_bid_ask(path: Path) -> dict[str, tuple[float, float]]:
    last = {}
    for data in _bookticker_frames(path):
        last[_UNIFIED[data["s"]]] = (float(data["b"]), float(data["a"]))
    return last


def _recorded_pairs(path: Path, symbol: str) -> set[tuple[float, float]]:
    return {(float(d["b"]), float(d["a"])) for d in _bookticker_frames(path)
            if _UNIFIED[d["s"]] == symbol}


# -- systemd ------------------------------------------------------------------------------------


def test_the_systemd_unit_runs_a_valid_serve_command_and_matches_the_exit_codes(tmp_path):
    from flight_md.cli import EXIT_FORCED, _parser, build_config

    unit_text = block_after("### Running as a service (systemd)", "ini")
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(unit_text)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    # A bad option or config (exit 2) must not restart in a loop; the forced exit (1) may.
    assert service["RestartPreventExitStatus"].split() == ["2"]
    assert EXIT_FORCED != 2
    # systemd gives the service SIGTERM and waits TimeoutStopSec: above the CLI's watchdog.
    from flight_md.cli import SHUTDOWN_TIMEOUT_S
    assert float(service["TimeoutStopSec"]) > SHUTDOWN_TIMEOUT_S

    argv = shlex.split(service["ExecStart"].replace("${CREDENTIALS_DIRECTORY}", str(tmp_path)))
    assert Path(argv[0]).name == "flight-md"
    (tmp_path / "tokens").write_text("full-access-token-0123456789\n")
    (tmp_path / "read-only-tokens").write_text("read-only-token-0123456789\n")
    config = tmp_path / "flight-md.toml"
    config.write_text('[server]\nport = 8815\n\n[[exchanges]]\nid = "binance"\n'
                      'symbols = ["BTC/USDT"]\n')
    argv[argv.index("--config") + 1] = str(config)
    args = _parser().parse_args(argv[1:])
    built = build_config(args)
    assert built.auth_tokens and built.read_only_tokens
    assert [s.exchange for s in built.streams] == ["binance"]
    # Tokens come from files: none appears on the command line.
    assert "token-0123456789" not in service["ExecStart"]


@pytest.mark.parametrize("directive", ["LoadCredential", "StateDirectory", "ExecStart"])
def test_the_systemd_unit_has(directive):
    assert re.search(rf"^{directive}=", block_after("### Running as a service (systemd)", "ini"),
                     re.MULTILINE)


# -- the options table ---------------------------------------------------------------------------


def test_the_readme_options_table_is_the_one_the_parser_makes():
    from flight_md.cli import options_markdown

    begin = README.index("<!-- options table: generated by flight_md.cli.options_markdown()")
    begin = README.index("\n", begin) + 1
    end = README.index("<!-- end of options table -->", begin)
    assert README[begin:end].strip() == options_markdown(), (
        "README's options table is stale; regenerate it with "
        "python -c 'from flight_md.cli import options_markdown; print(options_markdown())'")


def test_the_readme_ingest_options_table_is_the_one_the_parser_makes():
    from flight_md.cli import options_markdown

    begin = README.index('<!-- ingest options table: generated by flight_md.cli.options_markdown("ingest")')
    begin = README.index("\n", begin) + 1
    end = README.index("<!-- end of ingest options table -->", begin)
    assert README[begin:end].strip() == options_markdown("ingest"), (
        "README's ingest options table is stale; regenerate it with python -c 'from "
        "flight_md.cli import options_markdown; print(options_markdown(\"ingest\"))'")


def test_the_readme_venues_table_is_the_registry():
    from flight_md.venues import VENUES, venues_markdown

    begin = README.index("<!-- venues table: generated by flight_md.venues.venues_markdown()")
    begin = README.index("\n", begin) + 1
    end = README.index("<!-- end of venues table -->", begin)
    assert README[begin:end].strip() == venues_markdown(), (
        "README's venues table is stale; regenerate it with "
        "python -c 'from flight_md.venues import venues_markdown; print(venues_markdown())'")
    for venue_id in VENUES:  # every registered venue has its own section
        assert f"`{venue_id}`" in README[begin:end]
        assert f"### {VENUES[venue_id].title.split(' (')[0].split(' spot')[0]}" in README, venue_id


def test_the_readme_channels_table_is_the_registry():
    from flight_md.venues import channels_markdown

    begin = README.index("<!-- channels table: generated by flight_md.venues.channels_markdown()")
    begin = README.index("\n", begin) + 1
    end = README.index("<!-- end of channels table -->", begin)
    assert README[begin:end].strip() == channels_markdown(), (
        "README's channels table is stale; regenerate it with "
        "python -c 'from flight_md.venues import channels_markdown; print(channels_markdown())'")


def test_the_readme_config_example_loads_and_names_the_url_key(tmp_path, monkeypatch):
    from flight_md.config import load_config

    example = block_after("A config file for several exchanges:", "toml")
    assert re.search(r'^url = "http://127\.0\.0\.1:\d+"', example, re.MULTILINE), example
    (tmp_path / "tokens.txt").write_text("a-token-of-sixteen-chars\n")
    (tmp_path / "server.toml").write_text(example)
    monkeypatch.setenv("BYBIT_API_KEY", "key-from-the-environment")
    config = load_config(tmp_path / "server.toml")
    assert [s.exchange for s in config.streams] == ["binance", "bybit"]
    assert config.streams[0].url is not None


# -- running on several machines (the bus) ---------------------------------------------------------


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def _bash_commands(block: str) -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_bus_options_the_readme_names_are_the_parsers():
    from flight_md.cli import _parser
    from flight_md.config import BUS_KEYS

    text = _section("Running on several machines")
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    known = {flag for name in ("serve", "ingest") for action in commands[name]._actions
             for flag in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--(?:bus[\w-]*|node-name|advertise|shutdown-timeout)", text))
    assert named and named <= known, named - known
    keys = re.search(r"a `\[bus\]` table of the config file \(([^)]*)\)", text.replace("\n", " "))
    assert keys is not None
    assert set(re.findall(r"`(\w+)`", keys.group(1))) == set(BUS_KEYS)


def test_the_three_node_example_serves_and_routes_the_shard(tmp_path):
    """The README's four commands, run as written (ports, store and data dirs made free and
    temporary), then its routing snippet against them: asked of the Binance shard, the Coinbase
    ring is served by the other node."""
    from tests.bus.nats_support import NATS_SERVER, free_port
    from tests.support import ChildProcess

    if not NATS_SERVER.exists():
        pytest.skip("nats-server is not installed (pip install .[test])")
    nats_argv, ingest_argv, s1_argv, s2_argv = _bash_commands(
        block_after("### A three-node example", "bash"))
    assert nats_argv[0] == "nats-server" and "-js" in nats_argv
    assert ingest_argv[:2] == ["flight-md", "ingest"]
    assert s1_argv[:2] == s2_argv[:2] == ["flight-md", "serve"]
    port = free_port()
    url = f"nats://127.0.0.1:{port}"

    def replaced(argv: list[str], **values: str) -> list[str]:
        out = list(argv)
        for flag, value in values.items():
            out[out.index(flag) + 1] = value
        return out

    nats = subprocess.Popen(
        [str(NATS_SERVER), *replaced(nats_argv, **{"-p": str(port), "-sd": str(tmp_path / "js")})[1:]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: nats.poll() is None and _answers(port), 10, "nats-server")
        ingest = ChildProcess(["-m", "flight_md", *replaced(ingest_argv, **{"--bus": url})[1:]])
        ingest.start()
        try:
            served = []
            for name, argv in (("s1", s1_argv), ("s2", s2_argv)):
                args = replaced(argv, **{"--bus": url, "--data-dir": str(tmp_path / name)})[2:]
                i = args.index("--port")
                served.append(ServerProcess(*args[:i], *args[i + 2:]).start())
            s1, s2 = served
            try:
                snippet = block_after("as pyarrow's does here:", "python").replace(
                    "grpc://127.0.0.1:8816", s2.location)
                until(lambda: _rows(s1.location, "BTC/USD?exchange=coinbase&latest=1")
                      and _rows(s2.location, "BTC/USDT?exchange=binance&latest=1"), 60,
                      "both nodes' rings")

                def routed() -> str:
                    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True,
                                            text=True, env=child_env(), timeout=60 * MS,
                                            check=False)
                    ok = result.returncode == 0 and s1.location in result.stdout
                    return result.stdout if ok else ""

                # s2 learns where s1 is from the registry (every node puts its record every 2 s).
                out = until(routed, 30, "routing to s1", interval=0.5)
                assert re.search(rf"^{re.escape(s1.location)} [1-9]\d* rows$", out, re.MULTILINE), out
            finally:
                for server in served:
                    server.stop()
        finally:
            ingest.stop()
    finally:
        nats.kill()
        nats.wait(10)


def _rows(location: str, ticket: str) -> int:
    with flight.connect(location) as client:
        try:
            return client.do_get(flight.Ticket(ticket.encode())).read_all().num_rows
        except (flight.FlightError, OSError):
            return 0


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False
