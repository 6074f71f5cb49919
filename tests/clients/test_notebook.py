"""clients/examples/quickstart.ipynb runs top to bottom in a real kernel against a real server.

Twice: against the synthetic market in this process (deterministic), and
against ``flight-md serve --demo`` (ccxt fed by the exchange emulator), as a user runs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import ipykernel  # noqa: F401 - the kernel the notebook runs in (the test extra installs it)
import matplotlib  # noqa: F401 - the notebook plots
import nbclient
import nbformat
import pytest
from client_support import CLIENT_DIR, EXAMPLES, ROOT, Feeder, scaled

from flight_md.service import FlightMarketDataServer


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
def live(server: FlightMarketDataServer) -> Iterator[str]:
    with Feeder(server.buffer, interval=0.05):
        yield f"grpc://127.0.0.1:{server.port}"


def test_quickstart_runs_against_the_synthetic_market(live: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    text = _outputs(_execute(live, monkeypatch))
    assert "SymbolInfo(exchange='binance', symbol='BTC/USDT'" in text
    assert "<image/png>" in text  # the price plot with its bid/ask band
    assert "live ticks in 3 s" in text and "ended: closed" in text
    assert "reset by peer" in text  # the event log


def test_quickstart_runs_against_the_demo(demo_location: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    text = _outputs(_execute(demo_location, monkeypatch))
    assert "symbol='BTC/USDT'" in text
    assert "<image/png>" in text
    assert "live ticks in 3 s" in text
