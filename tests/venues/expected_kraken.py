"""What Kraken's recording must come out of flight_md as, read straight from the file.

The recording (``kraken.jsonl.gz``) is websocket **v1**: one connection per channel, data
frames ``[channelID, payload, channelName, "XBT/CHF"]``. Only ``ticker`` frames feed a
flight_md channel (``ticker``; the recorded ``trade`` and ``book-1000`` frames do not). A v1
ticker is a full ticker, never a delta: ``c[0]`` is the last trade price, ``b[0]`` and ``a[0]``
the best bid and ask. ``XBT/CHF`` (the ``wsname``) is the pair whose ``/0/public/AssetPairs``
entry has that ``wsname``; its ccxt unified symbol comes from the entry's ``base`` and ``quote``
ids through ccxt's own Kraken currency codes (``XXBT`` -> ``BTC``, ``ZUSD`` -> ``USD``), as
ccxt's ``fetch_markets`` builds it.

A price of ``0`` (or absent) is ``None``, as in a flight_md row.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import ccxt

__all__ = ["expected_replay"]


def _price(values: Any) -> float | None:
    value = values[0] if isinstance(values, list) and values else None
    number = float(value) if value not in (None, "") else 0.0
    return number if number != 0.0 else None


def expected_replay(path: Path) -> dict[str, list[tuple[float | None, float | None, float | None]]]:
    """``symbol -> [(last, bid, ask), ...]`` of every recorded v1 ticker, in recorded order."""
    codes = ccxt.kraken()  # only its currency-code table, no I/O
    symbols: dict[str, str] = {}
    tickers: list[tuple[str, dict[str, Any]]] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and "/0/public/AssetPairs" in record["url"]:
                for entry in json.loads(record["data"])["result"].values():
                    if "wsname" in entry:
                        symbols[entry["wsname"]] = (f"{codes.safe_currency_code(entry['base'])}/"
                                                    f"{codes.safe_currency_code(entry['quote'])}")
            elif record["t"] == "recv" and record["data"].startswith("["):
                frame = json.loads(record["data"])
                if len(frame) == 4 and frame[2] == "ticker":
                    tickers.append((frame[3], frame[1]))
    expected: dict[str, list[tuple[float | None, float | None, float | None]]] = {}
    for wsname, data in tickers:
        expected.setdefault(symbols[wsname], []).append((_price(data.get("c")), _price(data.get("b")),
                                                         _price(data.get("a"))))
    return expected
