"""flight_md: live crypto market data over Apache Arrow Flight.

The public API: the tick model and store (:class:`MarketTick`, :class:`MarketDataBuffer`), the
Flight service (:class:`FlightMarketDataServer`) and ingestion from exchanges through ccxt
(:class:`MarketDataStream`, :class:`MarketDataManager`, :class:`ConnectionState`). Ingestion
names are imported lazily so that the pure core loads without ccxt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flight_md.buffer import MarketDataBuffer
from flight_md.errors import FlightMdError
from flight_md.events import Event, EventKind, EventLog
from flight_md.schema import EVENT_SCHEMA, SCHEMA, MarketTick
from flight_md.tickets import Query, format_ticket, parse_ticket

if TYPE_CHECKING:
    from flight_md.ingest.manager import MarketDataManager
    from flight_md.ingest.stream import ConnectionState, MarketDataStream
    from flight_md.service import FlightMarketDataServer

__all__ = [
    "EVENT_SCHEMA",
    "SCHEMA",
    "ConnectionState",
    "Event",
    "EventKind",
    "EventLog",
    "FlightMarketDataServer",
    "FlightMdError",
    "MarketDataBuffer",
    "MarketDataManager",
    "MarketDataStream",
    "MarketTick",
    "Query",
    "format_ticket",
    "parse_ticket",
]

__version__ = "0.1.0"

_LAZY = {
    "FlightMarketDataServer": "flight_md.service",
    "MarketDataStream": "flight_md.ingest.stream",
    "ConnectionState": "flight_md.ingest.stream",
    "MarketDataManager": "flight_md.ingest.manager",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flight_md' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
