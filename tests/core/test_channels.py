"""The store over every channel: trades and book tops in their rings, as ticks are."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from flight_md.buffer import MEMORY_POOL, MarketDataBuffer, Store
from flight_md.core.channels import BOOK_SCHEMA, TRADE_SCHEMA, schema_for, spec_for
from flight_md.errors import UnknownSymbol
from flight_md.schema import SCHEMA


def trades(buffer: MarketDataBuffer, n: int, first: int = 0, symbol: str = "BTC/USDT") -> None:
    for i in range(first, first + n):
        buffer.append_trade("binance", symbol, 1_000 + i, str(10_000_000_000 + i), 100.0 + i,
                            0.5, ("buy", "sell", None)[i % 3], 2_000 + i)


def test_trades_round_trip_in_their_schema_across_seals_and_reads() -> None:
    buffer = MarketDataBuffer(1000, channel="trades")
    trades(buffer, 10)
    assert buffer.get_latest_sync("BTC/USDT", 3).schema == TRADE_SCHEMA  # a read seals early
    trades(buffer, 600, first=10)  # then past several seals and a merge
    table = buffer.get_range_sync("BTC/USDT")
    assert table.schema == TRADE_SCHEMA
    assert table.num_rows == 610
    assert table.column("trade_id").to_pylist() == [str(10_000_000_000 + i) for i in range(610)]
    assert table.column("side").to_pylist()[:4] == ["buy", "sell", None, "buy"]
    assert table.column("price").to_pylist()[-1] == 709.0
    ranged = buffer.get_range_sync("BTC/USDT", 1_100, 1_105, columns=["trade_id", "symbol"])
    assert ranged.to_pylist() == [{"trade_id": str(10_000_000_100 + i), "symbol": "BTC/USDT"}
                                  for i in range(5)]


def test_trades_evict_and_follow_like_ticks() -> None:
    buffer = MarketDataBuffer(100, channel="trades")
    trades(buffer, 250)
    assert buffer.count("BTC/USDT") == 100
    backlog, follower = buffer.follow("BTC/USDT", backlog=2)
    assert backlog.column("trade_id").to_pylist() == ["10000000248", "10000000249"]
    trades(buffer, 3, first=250)
    got = follower.read(1.0)
    assert got is not None and got.column("trade_id").to_pylist() == [
        "10000000250", "10000000251", "10000000252"]
    follower.close()


@pytest.mark.parametrize(("price", "amount", "side"), [
    (math.nan, 1.0, "buy"), (1.0, math.inf, "buy"), (1.0, 1.0, "BUY"), (None, 1.0, None)])
def test_bad_trades_are_refused_and_store_nothing(price: object, amount: object,
                                                  side: object) -> None:
    buffer = MarketDataBuffer(10, channel="trades")
    with pytest.raises(ValueError, match="trade"):
        buffer.append_trade("binance", "BTC/USDT", 1, "1", price, amount, side, 2)  # type: ignore[arg-type]
    with pytest.raises(UnknownSymbol):
        buffer.count("BTC/USDT")


def test_a_trade_with_a_numeric_id_takes_at_most_64_bytes() -> None:
    buffer = MarketDataBuffer(100_000, channel="trades")
    before = MEMORY_POOL.bytes_allocated()
    trades(buffer, 100_000)
    buffer.get_latest_sync("BTC/USDT", 1)
    per_trade = (MEMORY_POOL.bytes_allocated() - before) / 100_000
    assert per_trade <= 64, per_trade


def test_book_tops_keep_depth_levels_best_first() -> None:
    buffer = MarketDataBuffer(50, channel="book", book_depth=3)
    bids = [[100.0 - i, 1.0 + i] for i in range(5)]
    asks = [[101.0 + i, 2.0 + i, 7] for i in range(2)]  # extra entries per level are ignored
    for n in range(300):
        buffer.append_book("okx", "BTC/USDT", 10 + n, bids, asks, n if n % 2 else None, 20 + n)
    buffer.append_book("okx", "BTC/USDT", 999, [], [], None, 1000)
    table = buffer.get_latest_sync("BTC/USDT", 2)
    assert table.schema == BOOK_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["bids"] == [{"price": 100.0 - i, "amount": 1.0 + i} for i in range(3)]
    assert rows[0]["asks"] == [{"price": 101.0 + i, "amount": 2.0 + i} for i in range(2)]
    assert rows[0]["nonce"] == 299 and rows[0]["timestamp"] == 309
    assert rows[1]["bids"] == [] and rows[1]["asks"] == [] and rows[1]["nonce"] is None
    assert buffer.count("BTC/USDT") == 50


def test_a_top_10_book_takes_at_most_400_bytes() -> None:
    buffer = MarketDataBuffer(20_000, channel="book")
    side = [[100.0 + i, 1.0] for i in range(10)]
    before = MEMORY_POOL.bytes_allocated()
    for n in range(20_000):
        buffer.append_book("bybit", "BTC/USDT", n, side, side, n, n)
    buffer.get_latest_sync("BTC/USDT", 1)
    assert (MEMORY_POOL.bytes_allocated() - before) / 20_000 <= 400


def test_bad_book_levels_are_refused() -> None:
    buffer = MarketDataBuffer(10, channel="book")
    with pytest.raises(ValueError, match="not finite"):
        buffer.append_book("okx", "BTC/USDT", 1, [[math.nan, 1.0]], [], None, 2)
    with pytest.raises(ValueError, match="pairs"):
        buffer.append_book("okx", "BTC/USDT", 1, [[1.0]], [], None, 2)
    with pytest.raises(ValueError, match="holds book"):
        buffer.append_trade("okx", "BTC/USDT", 1, "1", 1.0, 1.0, "buy", 2)


def test_store_finds_the_ticker_like_channel_and_names_the_others() -> None:
    store = Store(10)
    trades(store.buffer("trades"), 1, symbol="ETH/USDT")
    assert store.channels() == ["trades"]
    with pytest.raises(UnknownSymbol, match="add channel= one of: trades"):
        store.ticker_like("ETH/USDT")
    assert store.channels_of("ETH/USDT") == ["trades"]
    tick_buffer = MarketDataBuffer(10)
    shared = Store.of(tick_buffer)
    assert shared.buffer("bidask") is tick_buffer  # one tick buffer serves both, as before
    assert shared.channels() == ["ticker"]


def test_schemas_by_channel() -> None:
    assert schema_for(None) == SCHEMA and schema_for("bidask") == SCHEMA
    assert schema_for("trades") == TRADE_SCHEMA and schema_for("book") == BOOK_SCHEMA
    assert spec_for("book", 5).width == 25
    with pytest.raises(ValueError, match="book depth"):
        spec_for("book", 0)
    with pytest.raises(ValueError, match="unknown channel"):
        spec_for("candles")
    assert pa.types.is_list(BOOK_SCHEMA.field("bids").type)
