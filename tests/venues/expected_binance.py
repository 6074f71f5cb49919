"""What Binance's recording must come out of flight_md as, read straight from the file.

The recording (``binance.jsonl.gz``) is one combined stream (``/stream?streams=...``): every
received frame is ``{"stream": "<id>@<channel>", "data": {...}}``. Only ``@bookTicker`` frames
feed a flight_md channel (``bidask``); the depth, trade and kline frames do not. Market ids are
mapped to ccxt unified symbols with the recorded ``/api/v3/exchangeInfo`` response
(``baseAsset/quoteAsset``).

A ``bookTicker`` carries no trade, so the expected ``last`` is ``None`` (the row's price is then
the mid of bid and ask). Bid and ask are the recorded ``b`` and ``a``, as ccxt parses them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

__all__ = ["expected_replay"]

_CHANNEL = "@bookTicker"


def expected_replay(path: Path) -> dict[str, list[tuple[float | None, float | None, float | None]]]:
    """``symbol -> [(last, bid, ask), ...]`` of every recorded ``bookTicker``, in recorded order."""
    symbols: dict[str, str] = {}
    frames: list[dict[str, object]] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and "/api/v3/exchangeInfo" in record["url"]:
                for entry in json.loads(record["data"])["symbols"]:
                    symbols[entry["symbol"].lower()] = f"{entry['baseAsset']}/{entry['quoteAsset']}"
            elif record["t"] == "recv":
                envelope = json.loads(record["data"])
                if envelope.get("stream", "").endswith(_CHANNEL):
                    frames.append(envelope)
    expected: dict[str, list[tuple[float | None, float | None, float | None]]] = {}
    for envelope in frames:
        market_id = str(envelope["stream"]).removesuffix(_CHANNEL)
        data = envelope["data"]
        assert isinstance(data, dict)
        expected.setdefault(symbols[market_id], []).append((None, float(data["b"]), float(data["a"])))
    return expected
