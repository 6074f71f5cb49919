"""clients/examples/quickstart.ipynb runs top to bottom in a real kernel against a real server.

Twice: against the synthetic market in this process (deterministic; ticks, trades and books
fed live), and against ``flight-md serve --demo`` (ccxt fed by the exchange emulator), as a
user runs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import ipykernel  # noqa: F401 - the kernel the notebook runs in (the test extra installs it)
import matplotlib  # noqa: F401 - the notebook plots
import nbclient
import nbformat
import pytest
from client_support import CLIENT_DIR, EXAMPLES, ROOT, ChannelFeeder, Feeder, channel_market, scaled



def _execute(location: str, monkeypatch: pytest.MonkeyPatch) -> object:
    # The kernel inherits this environment: where the server is, and how to import things.
    monkeypatch.setenv("FLIGHT_MD_LOCATION", location)
    monkeypatch.delenv("FLIGHT_MD_TOKEN", raising=False)
    # The kernel's default matplotlib backend renders inline PNGs without any display.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    paths = [str(CLIENT_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=int(scaled(60)),
                                     startup_timeout=int(scaled(60)),
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    return notebook


def _outputs(notebook: object) -> str:
    texts = []
    for cell in notebook.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
            if "image/png" in output.get("data", {}):
                texts.append("<image/png>")
    return "\n".join(texts)


@pytest.fixture
def live() -> Iterator[str]:
    """The synthetic market with ticks, trades and books of BTC/USDT arriving live."""
    with channel_market() as server, Feeder(server.buffer, interval=0.05), \
            ChannelFeeder(server.test_store):  # type: ignore[attr-defined]
        yield f"grpc://127.0.0.1:{server.port}"


def test_quickstart_runs_against_the_synthetic_market(live: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute(live, monkeypatch)
    text = _outputs(notebook)
    assert "SymbolInfo(exchange='binance', symbol='BTC/USDT'" in text
    assert "live ticks in 3 s" in text and "ended: closed" in text
    # trades, bars and the book: every section ran on real data, plots included
    assert "BTC/USDT streams: ticker-like, book, trades" in text
    assert re.search(r"\d+ trades in the last 5 minutes; VWAP \d+\.\d+; taker buys \d+%", text)
    assert "one-second bars of BTC/USDT" in text
    assert "10 bids, 10 asks (nonce" in text and "bp" in text
    assert "book updates in the last 5 minutes; median spread" in text
    assert "never crossed: True" in text
    assert "no trades of" not in text and "no book of" not in text
    assert text.count("<image/png>") == 3  # price and bid/ask band, bars, depth
    assert "reset by peer" in text  # the event log


def test_quickstart_runs_against_the_demo(demo_location: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    text = _outputs(_execute(demo_location, monkeypatch))
    assert "symbol='BTC/USDT'" in text
    assert "<image/png>" in text
    assert "live ticks in 3 s" in text
    # The demo streams trades and the book too: those sections ran on its data.
    assert "BTC/USDT streams: ticker-like, book, trades" in text
    assert "one-second bars of BTC/USDT" in text and "never crossed: True" in text
    assert text.count("<image/png>") == 3
