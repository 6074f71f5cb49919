"""A venue's alias market (Coinbase ``BTC-USDC`` streams ``BTC-USD``) is refused at subscribe with
the symbol to use, instead of a subscription that stores nothing and reconnects as stale."""

from __future__ import annotations

import pytest

from flight_md.emulator import Emulator, default_recording
from flight_md.errors import InvalidArgument
from flight_md.ingest.stream import MarketDataStream


@pytest.mark.asyncio
async def test_an_alias_is_refused_with_the_symbol_it_streams_as() -> None:
    async with Emulator("coinbase", replay=default_recording("coinbase"), speed=0) as emu:
        stream = MarketDataStream("coinbase", url=emu.url, mode="websocket")
        await stream.connect()
        try:
            with pytest.raises(InvalidArgument, match="'BTC/USDC' on coinbase is an alias of "
                                                      "'BTC/USD'.*subscribe 'BTC/USD' instead"):
                await stream.subscribe(["BTC/USDC"])
            assert await stream.subscribe(["BTC/USD"]) == ("BTC/USD",)
            assert stream.symbols == ("BTC/USD",)
        finally:
            await stream.disconnect()
