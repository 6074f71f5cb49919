"""What a replay of the Coinbase recording must produce, read straight from the file.

Independent of the emulator and its dialect: the recording is read with ``gzip`` and ``json``.
Unified symbols come from the recorded ``/api/v3/brokerage/market/products`` rows as ccxt's
``coinbase.parse_spot_market`` derives them: ``BASE/QUOTE`` of ``base_currency_id`` and
``quote_currency_id`` (ccxt renames ``CGLD`` to ``CELO``). Every ``ticker`` frame carries full
tickers (no deltas): each ticker of each event is one row, ``(price, best_bid, best_ask)`` as
floats, ``None`` where the field is absent, empty or zero (flight_md stores a zero quote as
missing). The recording's ``ticker`` frames are the ``snapshot`` sent on subscribing and then
one ``update`` per change.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["expected_replay"]

Row = tuple[float | None, float | None, float | None]

_COMMON_CURRENCIES = {"XBT": "BTC", "BCHSV": "BSV", "CGLD": "CELO"}


def expected_replay(path: Path) -> dict[str, list[Row]]:
    """Per unified symbol, the recorded ``(last, bid, ask)`` of every ``ticker`` update, in order."""
    symbols: dict[str, str] = {}
    out: dict[str, list[Row]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and urlsplit(record["url"]).path == "/api/v3/brokerage/market/products":
                for row in json.loads(record["data"])["products"]:
                    base = _COMMON_CURRENCIES.get(row["base_currency_id"], row["base_currency_id"])
                    quote = _COMMON_CURRENCIES.get(row["quote_currency_id"], row["quote_currency_id"])
                    symbols.setdefault(row["product_id"], f"{base}/{quote}")
            elif record["t"] == "recv":
                frame = json.loads(record["data"])
                if frame.get("channel") != "ticker":
                    continue
                for event in frame["events"]:
                    for ticker in event.get("tickers", []):
                        out.setdefault(symbols[ticker["product_id"]], []).append(
                            (_price(ticker.get("price")), _price(ticker.get("best_bid")),
                             _price(ticker.get("best_ask"))))
    return out


def _price(text: str | None) -> float | None:
    if not text:
        return None
    value = float(text)
    return value if value > 0 else None
