"""Ingestion: asyncio + ccxt into the tick store.

``stream`` runs one exchange (:class:`MarketDataStream`), ``manager`` many
(:class:`MarketDataManager`), plus the thread bridge the Flight service uses
(:class:`ThreadedControl`, :class:`IngestionThread`), the same in a child process
(:class:`IngestionProcess`, :class:`ProcessControl`); ``endpoints`` points ccxt at another
base URL. Names are imported lazily, so ``flight_md.ingest.endpoints`` does not load ccxt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flight_md.ingest.manager import IngestionThread, MarketDataManager, ThreadedControl
    from flight_md.ingest.process import IngestionProcess, ProcessControl
    from flight_md.ingest.stream import ConnectionState, MarketDataStream, Mode

__all__ = [
    "ConnectionState",
    "IngestionProcess",
    "IngestionThread",
    "MarketDataManager",
    "MarketDataStream",
    "Mode",
    "ProcessControl",
    "ThreadedControl",
]

_LAZY = {
    "ConnectionState": "flight_md.ingest.stream",
    "MarketDataStream": "flight_md.ingest.stream",
    "Mode": "flight_md.ingest.stream",
    "IngestionThread": "flight_md.ingest.manager",
    "MarketDataManager": "flight_md.ingest.manager",
    "ThreadedControl": "flight_md.ingest.manager",
    "IngestionProcess": "flight_md.ingest.process",
    "ProcessControl": "flight_md.ingest.process",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flight_md.ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
