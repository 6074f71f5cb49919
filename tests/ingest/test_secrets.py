"""API keys go to ccxt and nowhere else: not logs, repr, status, events or errors."""

from __future__ import annotations

import logging

import ccxt
import pytest

from flight_md.emulator import Fault
from flight_md.errors import Unavailable
from flight_md.ingest.manager import MarketDataManager
from flight_md.ingest.stream import MarketDataStream

from .support import FAST, MS, SYMBOLS, kinds, stored, wait_until

pytestmark = pytest.mark.timeout(60 * MS)

KEY = "FAKE-API-KEY-7f3a9c1e"
SECRET = "FAKE-API-SECRET-5b8d2e4f0a"


def _leaks(text: str) -> list[str]:
    return [s for s in (KEY, SECRET) if s in text]


@pytest.mark.asyncio
async def test_secrets_never_leak(make_emulator, caplog):
    emu = await make_emulator("binance", rate=200.0)
    caplog.set_level(logging.DEBUG)  # every logger, ccxt's request logging included
    async with MarketDataManager() as manager:
        stream = await manager.add_stream("binance", symbols=SYMBOLS, url=emu.url,
                                          api_key=KEY, api_secret=SECRET, **FAST)
        assert stream.exchange.apiKey == KEY and stream.exchange.secret == SECRET  # ccxt has them
        await wait_until(lambda: all(stored(stream, s) > 2 for s in SYMBOLS), 5, "ticks")
        await emu.inject(Fault.MALFORMED)
        await emu.inject(Fault.RESET)
        await wait_until(lambda: kinds(stream)[-1] == "reconnect", 10, "a reconnect")
        await stream.exchange.fetch_tickers(list(SYMBOLS))  # a REST call, logged by ccxt at DEBUG
        with pytest.raises(ccxt.BaseError):  # a signed call: ccxt logs its X-MBX-APIKEY header
            await stream.exchange.fetch_balance()
        await stream.unsubscribe(["ETH/USDT"])
        texts = [repr(stream), str(stream.status()), str(manager.status()), repr(manager),
                 str(vars(stream)), str([vars(e) if hasattr(e, "__dict__") else e
                                         for e in stream.events.events()])]
    failing = MarketDataStream("binance", url="http://127.0.0.1:9", api_key=KEY, api_secret=SECRET)
    with pytest.raises(Unavailable) as raised:
        await failing.connect()
    texts.append(str(raised.value))
    texts.append(caplog.text)
    assert any("'X-MBX-APIKEY': '***'" in r.getMessage() for r in caplog.records)  # redacted
    for text in texts:
        assert not _leaks(text), text[:2000]


def test_errors_are_redacted():
    stream = MarketDataStream("binance", api_key=KEY, api_secret=SECRET)
    described = stream._describe(RuntimeError(f"signature over {SECRET} with key {KEY} failed"))
    assert described == "RuntimeError: signature over *** with key *** failed"
