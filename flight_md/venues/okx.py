"""OKX v5: one public websocket (``/ws/v5/public``) and REST ``/api/v5`` for spot, swaps,
dated futures and options.

Channels: ``ticker`` is ``tickers`` (ccxt ``watch_tickers``: every push is the full ticker:
last, best bid/ask with sizes, 24 h open/high/low/volumes and the exchange timestamp ``ts``);
``bidask`` is ``bbo-tbt`` (ccxt ``watch_bids_asks``: the best bid and ask with sizes, tick by
tick, with ``ts``; ccxt has no ``un_watch_bids_asks`` for OKX, so dropping a symbol restarts
the session). Every parsed update lands in ``exchange.tickers`` (``tickers``) or
``exchange.bidsasks`` (``bbo-tbt``). ccxt has no ``fetch_bids_asks`` for OKX: the bid/ask
REST fallback polls ``fetch_tickers`` (``GET /api/v5/market/tickers``, one call per
instrument type), which carries ``bidPx``/``askPx``.

Unified symbols: spot ``BTC/USDT`` (id ``BTC-USDT``), linear swap ``BTC/USDT:USDT``
(``BTC-USDT-SWAP``), inverse swap ``UNI/USD:UNI`` (``UNI-USD-SWAP``), dated future
``BTC/USD:BTC-220527`` (``BTC-USD-220527``), option ``BTC/USD:BTC-220514-22000-C``.

URLs (``urls.api``): ``rest`` -> the base (ccxt appends ``/api/v5/<path>``; the default is
``https://{hostname}``, ``www.okx.com``); ``ws`` -> ``<ws base>/ws/v5`` (ccxt appends
``/public``, ``/business`` for candles, ``/private``; only ``/public`` carries the market
data flight_md reads). No option is needed: ``load_markets`` calls ``GET
/api/v5/public/instruments`` for ``instType`` SPOT, FUTURES, SWAP and, per underlying of
``options.defaultUnderlying`` (``BTC-USD``, ``ETH-USD``), OPTION, and the emulator serves all
of them (``fetch_currencies`` is private on OKX and skipped without keys).

Limits: a subscribe request may be at most 64 KB (some 1,500 ``tickers`` arguments); 100
symbols a message keeps far below it. OKX limits subscribe/unsubscribe/login requests to
480 an hour per connection and new connections to 3 a second per IP (not per second per
connection, so ``control_per_second`` is unset); it drops a connection silent for 30 s,
which ccxt prevents by sending the text ``ping`` every 18 s (answered ``pong``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flight_md.normalize import Channel
from flight_md.venues.base import BOOK_METHODS, TRADES_METHODS, ChannelMethods, Venue


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    return {"urls": {"api": {"rest": rest, "ws": f"{ws}/ws/v5"}}, "options": {}}


def _trade_id_span(info: Mapping[str, Any]) -> int:
    # OKX's trades channel pushes one row per taker order: tradeId is the last fill's id and
    # count the fills aggregated (docs: "the last trade ID in the trades aggregation"; not
    # verified against the live venue here: the 2022 recording and the emulator send count 1).
    count = info.get("count")
    return int(count) if isinstance(count, str) and count.isdigit() and int(count) > 0 else 1


VENUE = Venue(
    id="okx",
    title="OKX v5 (spot, swaps, futures)",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
        Channel.BIDASK: ChannelMethods("watch_bids_asks", None, "bidsasks",
                                       rest=("fetch_tickers", "fetch_ticker")),
        Channel.TRADES: TRADES_METHODS,  # trades: tradeId counts up by one per instrument
        Channel.BOOK: BOOK_METHODS,
    },
    symbols_per_message=100,
    # ccxt's channel for a limit: 1 bbo-tbt, 2..5 books5, 50 books50-l2-tbt, 400 books (its
    # default). Only books (400 levels, snapshot + deltas with seqId and checksum) carries every
    # update: books5 pushes a 5-level snapshot at most every 100 ms, bbo-tbt is the bidask
    # channel, and the two l2-tbt channels need a VIP login.
    book_depths=(400,),
    sequential_trade_ids=True,
    trade_id_span=_trade_id_span,
    url_overrides=_overrides,
    # tickers websocket data and /api/v5/market/ticker(s) rows (the same fields);
    # bbo-tbt carries its prices in lists, which ccxt parses itself.
    raw_numeric_fields=frozenset({
        "last", "lastSz", "askPx", "askSz", "bidPx", "bidSz", "open24h", "high24h", "low24h",
        "volCcy24h", "vol24h", "sodUtc0", "sodUtc8",
    }),
    dialect="flight_md.emulator.dialects.okx:OkxDialect",
    demo_symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"),
    test_symbols=("BTC/USDT", "ETH/USDT:USDT"),
    recording="okx.jsonl.gz",
    quirks=(
        ("the ticker channel carries last, best bid/ask with sizes, 24h open/high/low/volumes and "
         "the exchange timestamp; no mark or index price"),
        "swap and future tickers count baseVolume in contracts (OKX vol24h), not in the base currency",
        ("bidask is bbo-tbt (tick-by-tick best bid/ask, no last price); ccxt cannot unsubscribe it: "
         "dropping a symbol restarts the session"),
        "ccxt has no REST bids/asks for OKX: the bidask REST fallback polls fetch_tickers",
    ),
    live_hosts={"/api/v5": "https://www.okx.com", "/ws/v5": "wss://ws.okx.com:443"},
)
