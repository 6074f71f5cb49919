"""What a replay of the OKX recording must produce, read straight from the file.

Independent of the emulator and its dialect: the recording is read with ``gzip`` and
``json``; unified symbols are derived from the recorded ``/api/v5/public/instruments``
rows as ccxt's ``okx.parse_market`` derives them (spot ``BASE/QUOTE`` from ``baseCcy`` and
``quoteCcy``; contracts from ``uly``, ``:SETTLE``, and for futures ``-YYMMDD`` of
``expTime`` in UTC). Every OKX ``tickers`` push is a full ticker (no deltas), so each data
frame is one row: ``(last, bidPx, askPx)`` as floats, ``None`` where the field is empty
(OKX sends ``""`` for a missing side) or zero (flight_md stores a zero quote as missing).
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

__all__ = ["expected_replay"]

Row = tuple[float | None, float | None, float | None]


def expected_replay(path: Path) -> dict[str, list[Row]]:
    """Per unified symbol, the recorded ``(last, bid, ask)`` of every ``tickers`` frame, in order."""
    symbols: dict[str, str] = {}
    out: dict[str, list[Row]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and urlsplit(record["url"]).path == "/api/v5/public/instruments":
                query = dict(parse_qsl(urlsplit(record["url"]).query))
                for row in json.loads(record["data"])["data"]:
                    if row.get("instId") and row.get("instType") == query.get("instType"):
                        symbols.setdefault(row["instId"], _symbol(row))
            elif record["t"] == "recv":
                try:
                    frame = json.loads(record["data"])
                except ValueError:
                    continue  # "pong"
                arg = frame.get("arg") or {}
                if "event" in frame or arg.get("channel") != "tickers":
                    continue
                symbol = symbols[arg["instId"]]
                for data in frame["data"]:
                    out.setdefault(symbol, []).append(
                        (_price(data.get("last")), _price(data.get("bidPx")), _price(data.get("askPx"))))
    return out


def _symbol(row: dict[str, str]) -> str:
    if row["instType"] == "SPOT":
        return f"{row['baseCcy']}/{row['quoteCcy']}"
    base, quote = row["uly"].split("-")
    symbol = f"{base}/{quote}:{row['settleCcy']}"
    if row["instType"] in ("FUTURES", "OPTION"):
        symbol += "-" + datetime.fromtimestamp(int(row["expTime"]) / 1000, UTC).strftime("%y%m%d")
    if row["instType"] == "OPTION":
        symbol += f"-{row['stk']}-{row['optType']}"
    return symbol


def _price(text: str | None) -> float | None:
    if not text:
        return None
    value = float(text)
    return value if value > 0 else None
