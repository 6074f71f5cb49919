"""A local exchange emulator that unmodified ccxt.pro clients talk to.

It speaks the real public protocols of every venue with a dialect (Binance spot, Bybit v5,
Coinbase Advanced Trade, Kraken v2, OKX v5: :func:`flight_md.venues.emulated`; REST market lists
and tickers, websocket subscriptions, pings, limits) on 127.0.0.1, with data from
deterministic random walks or from recorded sessions, and injects faults on demand::

    async with Emulator(exchange="binance", symbols=("BTC/USDT",), rate=1000) as emu:
        exchange = ccxt.pro.binance(url_overrides("binance", emu.url))
        ...
        await emu.inject(Fault.RESET)
        assert emu.sent("bookTicker", "BTC/USDT") > 0

Modules: ``server`` (the emulator), ``dialects/<venue>`` (one per venue), ``dialect``
(their contract), ``connection``, ``synthetic`` (random walks), ``recording`` (replay
input), ``market``, ``fault``, ``stats``, ``thread`` (run it on a thread),
``command`` (the ``flight-md emulator`` and ``emulator-fault`` commands).
"""

from __future__ import annotations

from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, MarketKind, StreamKey
from flight_md.emulator.recording import default_recording
from flight_md.emulator.server import EXCHANGES, Emulator
from flight_md.emulator.stats import EmulatorStats
from flight_md.emulator.thread import EmulatorThread

__all__ = [
    "EXCHANGES",
    "Emulator",
    "EmulatorStats",
    "EmulatorThread",
    "Fault",
    "Market",
    "MarketKind",
    "StreamKey",
    "default_recording",
]
