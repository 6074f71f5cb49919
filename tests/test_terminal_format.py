"""Prices in the terminal print with the market's precision, not float noise (issue 10, item 11).

A real ``flight-md serve`` streams BTC/USDT best bid/ask (``--channel bidask``) from the
exchange emulator through real ccxt; its ``price`` is the mid ``(bid + ask) / 2``, a float
that often prints as ``64781.759999999995``. The test waits until such a tick is stored, then
runs the real ``flight-md get``, ``tail`` and ``top`` against the server: every printed bid
and ask is the exchange's quote exactly, and every printed price is the exact decimal mid of
the printed bid and ask.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pyarrow as pa
import pytest
from pyarrow import flight

from tests.support import MS, EmulatorProcess, ServerProcess, child_env, until

SYMBOL = "BTC/USDT"


def noisy(value: float) -> bool:
    """Whether ``value`` prints as float noise: more decimals than a mid of 2-decimal quotes."""
    return len(repr(value).partition(".")[2]) > 3


def quoted(bid: str, ask: str) -> tuple[Decimal, Decimal]:
    """Printed quotes as exact decimals (the exchange's quote exactly, not a rounding of it)."""
    return Decimal(bid), Decimal(ask)


def exact_mid(bid: str, ask: str) -> Decimal:
    return (Decimal(bid) + Decimal(ask)) / 2


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with EmulatorProcess("--exchange", "binance", "--symbols", SYMBOL, "--rate", "100") as emu, \
            ServerProcess("--exchange", "binance", "--symbols", SYMBOL, "--channel", "bidask",
                          "--mode", "websocket", "--exchange-url", emu.url) as srv:
        yield srv


def stored(location: str) -> pa.Table:
    client = flight.connect(location)
    try:
        return client.do_get(flight.Ticket(SYMBOL.encode())).read_all()
    finally:
        client.close()


def stored_with_noise(location: str) -> pa.Table:
    """The whole store, once it holds a tick whose mid price prints with noise."""

    def ready() -> pa.Table | None:
        try:
            table = stored(location)
        except pa.ArrowKeyError:  # no tick stored yet
            return None
        return table if any(noisy(p) for p in table.column("price").to_pylist()) else None

    table: pa.Table = until(ready, 60, "a stored mid price with float noise")
    return table


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flight_md", *args], capture_output=True,
                          text=True, env=child_env(), timeout=60 * MS, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_get_prints_mid_prices_with_the_markets_precision(server: ServerProcess) -> None:
    table = stored_with_noise(server.location)
    start, end = table.column("timestamp")[0].as_py(), table.column("timestamp")[-1].as_py() + 1
    out = cli("get", SYMBOL, "--start", str(start), "--end", str(end), "--columns",
              "price,bid,ask", "--location", server.location)
    lines = out.splitlines()
    assert lines[0].split() == ["price", "bid", "ask"]
    expected = stored(server.location).filter(
        pa.compute.less(pa.compute.field("timestamp"), end)).to_pylist()
    assert len(lines) - 1 == len(expected) >= table.num_rows
    for line, tick in zip(lines[1:], expected):
        price, bid, ask = line.split()
        assert quoted(bid, ask) == (Decimal(repr(tick["bid"])), Decimal(repr(tick["ask"])))
        assert Decimal(price) == exact_mid(bid, ask), line
        assert float(price) == pytest.approx(tick["price"], abs=1e-9)


def test_tail_prints_mid_prices_with_the_markets_precision(server: ServerProcess) -> None:
    table = stored_with_noise(server.location)
    out = cli("tail", SYMBOL, "--backlog", "10000", "--count", str(table.num_rows),
              "--location", server.location)
    lines = out.splitlines()
    assert len(lines) == table.num_rows
    for line, tick in zip(lines, table.to_pylist()):
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        assert quoted(fields["bid"], fields["ask"]) == (Decimal(repr(tick["bid"])),
                                                        Decimal(repr(tick["ask"])))
        assert Decimal(fields["price"]) == exact_mid(fields["bid"], fields["ask"]), line


def test_top_prints_mid_prices_with_the_markets_precision(server: ServerProcess) -> None:
    stored_with_noise(server.location)
    out = cli("top", "--iterations", "1", "--location", server.location)
    row = re.search(rf"^binance\s+{re.escape(SYMBOL)}\s+\S+\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s", out,
                    re.MULTILINE)
    assert row, out
    price, bid, ask = row.groups()
    assert Decimal(price) == exact_mid(bid, ask), out
