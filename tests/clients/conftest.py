"""Fixtures for the client package, its examples and the notebook.

The client is importable without installing it: ``clients/python`` goes on ``sys.path`` here
(CI also installs it with ``pip install ./clients/python``).

``server`` is the synthetic market without ingestion; ``ingesting`` is a server with real
ccxt ingestion from the exchange emulator; ``demo_location`` is ``flight-md serve --demo``
as a user starts it. Each is fresh per test, and a server that fails to start fails the test:
none of them skips.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_CLIENT = str(Path(__file__).resolve().parents[2] / "clients" / "python")
if _CLIENT not in sys.path:
    sys.path.insert(0, _CLIENT)

from client_support import IngestingMarket, demo_server, market
from flight_md_client import MarketDataClient

from flight_md.service import FlightMarketDataServer


@pytest.fixture
def server() -> Iterator[FlightMarketDataServer]:
    """A real server over the synthetic market (see ``client_support.fill``)."""
    with market() as srv:
        yield srv


@pytest.fixture
def location(server: FlightMarketDataServer) -> str:
    return f"grpc://127.0.0.1:{server.port}"


@pytest.fixture
def md(location: str) -> Iterator[MarketDataClient]:
    with MarketDataClient(location, timeout=10.0) as client:
        yield client


@pytest.fixture
def ingesting() -> Iterator[IngestingMarket]:
    """A server streaming BTC/USDT and ETH/USDT from an emulated binance through real ccxt."""
    with IngestingMarket() as rig:
        yield rig


@pytest.fixture
def demo_location() -> Iterator[str]:
    """``flight-md serve --demo`` in a child process, one per test."""
    with demo_server() as location:
        yield location
