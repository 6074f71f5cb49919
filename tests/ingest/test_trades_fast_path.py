"""The unchecked trade row path stores exactly what the checked one does."""

from __future__ import annotations

from flight_md.buffer import MarketDataBuffer
from flight_md.core.channels import trade_row


def test_append_trade_row_stores_what_append_trade_stores() -> None:
    checked = MarketDataBuffer(1000, channel="trades")
    fast = MarketDataBuffer(1000, channel="trades")
    for i in range(600):  # past several seals and a merge
        side = ("buy", "sell", None)[i % 3]
        trade_id = None if i % 7 == 0 else str(10_000_000_000 + i)
        checked.append_trade("binance", "BTC/USDT", 1_000 + i, trade_id, 100.0 + i, 0.5, side,
                             2_000 + i)
        fast.append_trade_row("binance", "BTC/USDT",
                              trade_row(1_000 + i, 100.0 + i, 0.5, side, 2_000 + i), trade_id)
    assert fast.get_range_sync("BTC/USDT").equals(checked.get_range_sync("BTC/USDT"))
    assert [s.appended for s in fast.stats()] == [600]
