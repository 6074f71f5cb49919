"""What Bybit's recording must come out of flight_md as, read straight from the file.

The recording (``bybit.jsonl.gz``) holds one websocket per category (``/v5/public/linear``,
``/v5/public/spot``). Only ``tickers.<id>`` frames feed a flight_md channel (``ticker``; the
recorded ``orderbook.200`` is not the ``orderbook.1`` the bidask channel uses). A linear ticker
is a ``snapshot`` and then ``delta`` frames carrying only the fields that changed, which ccxt
merges into the last state, so each row shows the merged state; spot tickers are snapshots and
carry no best bid/ask. Market ids map to ccxt unified symbols through the recorded
``instruments-info`` responses: ``BASE/QUOTE`` (spot), ``BASE/QUOTE:SETTLE`` (linear).

A price of ``0`` (or absent) is ``None``, as in a flight_md row.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

__all__ = ["expected_replay"]

_CATEGORIES = ("linear", "spot")


def _price(value: Any) -> float | None:
    number = float(value) if value not in (None, "") else 0.0
    return number if number != 0.0 else None


def _category(url: str) -> str | None:
    for category in _CATEGORIES:
        if f"category={category}" in url or url.rstrip("/").endswith(f"/v5/public/{category}"):
            return category
    return None


def expected_replay(path: Path) -> dict[str, list[tuple[float | None, float | None, float | None]]]:
    """``symbol -> [(last, bid, ask), ...]`` of every recorded ticker update, in recorded order."""
    symbols: dict[tuple[str, str], str] = {}
    categories: dict[str, str] = {}  # websocket connection -> category
    frames: list[tuple[str, dict[str, Any]]] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            kind = record["t"]
            if kind == "http" and "/v5/market/instruments-info" in record["url"]:
                category = _category(record["url"])
                assert category is not None, record["url"]
                for entry in json.loads(record["data"])["result"]["list"]:
                    pair = f"{entry['baseCoin']}/{entry['quoteCoin']}"
                    symbols[(category, entry["symbol"])] = (
                        pair if category == "spot" else f"{pair}:{entry['settleCoin']}")
            elif kind == "connect":
                category = _category(record["addr"])
                if category is not None:
                    categories[record["conn"]] = category
            elif kind == "recv" and record["conn"] in categories:
                frame = json.loads(record["data"])
                if str(frame.get("topic", "")).startswith("tickers."):
                    frames.append((categories[record["conn"]], frame))
    state: dict[tuple[str, str], dict[str, Any]] = {}
    expected: dict[str, list[tuple[float | None, float | None, float | None]]] = {}
    for category, frame in frames:
        key = (category, frame["topic"].removeprefix("tickers."))
        if frame["type"] == "snapshot":
            state[key] = dict(frame["data"])
        else:
            state[key].update(frame["data"])
        merged = state[key]
        expected.setdefault(symbols[key], []).append(
            (_price(merged.get("lastPrice")), _price(merged.get("bid1Price")),
             _price(merged.get("ask1Price"))))
    return expected
