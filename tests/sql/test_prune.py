"""Ring pruning: a selective statement snapshots only the rings it can read, and its answer is
exactly the unpruned one.

The unit tests read :func:`~flight_md.sql.prune.ring_filters` over statement shapes that prune
and shapes that must not; the differential tests run the same statement on two engines over the
same real tables and Parquet history (:func:`tests.sql.conftest.market`), one pruning and one
reading every ring (``prune_rings=False``), and compare the answers row for row (a fixed list of
shapes, then Hypothesis composing WHERE clauses, shapes and bound parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flight_md.sql.engine import Engine
from flight_md.sql.prune import parse_tree, ring_filters
from flight_md.sql.source import KeyFilter
from tests.sql.conftest import MemorySource, market

CHANNELS = ["ticker", "trades"]
BTC = frozenset({"BTC/USDT"})


def filters(sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
            ) -> dict[str, KeyFilter]:
    return ring_filters(parse_tree(duckdb.connect(), sql), sql, CHANNELS, params)


@pytest.mark.parametrize(("sql", "params", "expected"), [
    ("SELECT * FROM ticker WHERE symbol='BTC/USDT' ORDER BY timestamp DESC LIMIT 100", None,
     KeyFilter(symbols=BTC)),
    (("SELECT * FROM ticker t WHERE t.symbol = 'BTC/USDT' AND exchange IN ('binance', 'bybit') "
     "AND price > 1"), None, KeyFilter(frozenset({"binance", "bybit"}), BTC)),
    ("SELECT * FROM ticker WHERE 'BTC/USDT' = symbol", None, KeyFilter(symbols=BTC)),
    ("SELECT * FROM ticker WHERE symbol IN ('BTC/USDT', 'ETH/USDT') AND symbol = 'BTC/USDT'", None,
     KeyFilter(symbols=BTC)),
    ("SELECT * FROM ticker WHERE symbol = 'ETH/USDT' AND symbol = 'BTC/USDT'", None,
     KeyFilter(symbols=frozenset())),
    ("SELECT * FROM ticker WHERE symbol = ? AND exchange = ?", ["BTC/USDT", "bybit"],
     KeyFilter(frozenset({"bybit"}), BTC)),
    ("SELECT * FROM ticker WHERE symbol = $s", {"s": "BTC/USDT"}, KeyFilter(symbols=BTC)),
    ("SELECT count(*) FROM (SELECT * FROM ticker WHERE exchange = 'bybit') GROUP BY ALL", None,
     KeyFilter(exchanges=frozenset({"bybit"}))),
])
def test_provably_selective_statements_prune(sql: str, params: Any, expected: KeyFilter) -> None:
    assert filters(sql, params) == {"ticker": expected}


@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT * FROM ticker WHERE symbol = 'BTC/USDT' OR exchange = 'bybit'", None),
    ("SELECT * FROM ticker WHERE lower(symbol) = 'btc/usdt'", None),
    ("SELECT * FROM ticker WHERE NOT symbol <> 'BTC/USDT'", None),
    ("SELECT * FROM ticker WHERE symbol IN ('BTC/USDT', NULL)", None),
    ("SELECT * FROM ticker WHERE symbol = 1", None),
    ("SELECT * FROM ticker WHERE symbol = ?", [1]),
    ("SELECT * FROM ticker WHERE symbol = ?", None),
    ("SELECT * FROM ticker a JOIN ticker b USING (timestamp) WHERE a.symbol = 'BTC/USDT'", None),
    ("SELECT * FROM ticker a JOIN trades b USING (symbol) WHERE a.symbol = 'BTC/USDT'", None),
    ("SELECT * FROM ticker WHERE symbol = 'BTC/USDT' UNION ALL SELECT * FROM ticker", None),
    ("SELECT * FROM ticker t WHERE x.symbol = 'BTC/USDT'", None),
    ("SELECT * FROM ticker t(a, symbol) WHERE symbol = 'BTC/USDT'", None),
    ("SELECT * FROM ticker USING SAMPLE 10 ROWS WHERE symbol = 'BTC/USDT'", None),
    ("SELECT * FROM query_table('ticker') WHERE symbol = 'BTC/USDT'", None),
    ("SELECT * FROM ticker WHERE symbol = 'BTC/USDT' AND 'ticker' <> ''", None),
    ("SELECT * FROM trades, bars_1m WHERE trades.symbol = 'BTC/USDT'", None),
    ("SELECT * FROM ticker WHERE symbol = (SELECT 'BTC/USDT')", None),
    ("SELECT * FROM ticker WHERE price > 1", None),
    ("SELECT * FROM ticker; SELECT 1", None),
    ("not sql at all", None),
])
def test_everything_else_reads_every_ring(sql: str, params: Any) -> None:
    assert filters(sql, params) == {}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Engine, MemorySource]:
    source = market(Path(tmp_path_factory.mktemp("prune")))
    return Engine(source), Engine(source, prune_rings=False), source


def answers(engines: tuple[Engine, Engine, MemorySource], sql: str,
            params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[Any]:
    """The pruned engine's answer, after checking it is the unpruned one's (as a multiset)."""
    pruned, whole, _ = engines
    got = pruned.execute(sql, params).read_all().to_pylist()
    want = whole.execute(sql, params).read_all().to_pylist()
    assert sorted(map(repr, got)) == sorted(map(repr, want)), sql
    return got


SHAPES = [
    "SELECT * FROM ticker WHERE symbol='BTC/USDT' ORDER BY timestamp DESC LIMIT 10",
    "SELECT * FROM trades WHERE symbol = 'BTC/USDT' AND exchange = 'binance'",
    "SELECT count(*), sum(price) FROM trades WHERE exchange IN ('bybit', 'kraken')",
    "SELECT * FROM trades WHERE symbol = 'ETH/USDT' AND side IS NULL",
    "SELECT exchange AS symbol, count(*) FROM trades WHERE symbol = 'binance' GROUP BY ALL",
    "SELECT symbol AS exchange, count(*) FROM trades WHERE exchange = 'binance' GROUP BY ALL",
    ("SELECT * FROM trades t WHERE t.symbol = 'BTC/USDT' AND t.timestamp > (SELECT min(timestamp) "
    "FROM ticker WHERE exchange = 'bybit')"),
    ("SELECT a.timestamp, a.symbol, b.price FROM ticker a JOIN trades b ON a.timestamp = b.timestamp "
    "WHERE a.symbol = 'BTC/USDT'"),
    "SELECT * FROM trades WHERE symbol = 'BTC/USDT' OR exchange = 'bybit'",
    ("WITH b AS (SELECT * FROM trades WHERE symbol = 'BTC/USDT') SELECT exchange, count(*) FROM b "
    "GROUP BY ALL"),
    ("WITH ticker AS (SELECT * FROM trades WHERE exchange = 'bybit') SELECT count(*) FROM ticker "
    "WHERE symbol = 'ETH/USDT'"),
    "SELECT * FROM bars_1m WHERE symbol = 'BTC/USDT' AND exchange = 'binance'",
    ("SELECT symbol, (SELECT count(*) FROM ticker k WHERE k.symbol = t.symbol) FROM trades t "
    "WHERE exchange = 'bybit' GROUP BY ALL"),
    "SELECT * FROM ticker WHERE symbol IN ('BTC/USDT') AND exchange = 'nowhere'",
    ("SELECT * FROM trades WHERE symbol = 'BTC/USDT' QUALIFY row_number() OVER "
    "(PARTITION BY exchange ORDER BY timestamp DESC) <= 3"),
    ("SELECT exchange, max(price) FROM trades WHERE symbol = 'BTC/USDT' GROUP BY exchange "
    "HAVING count(*) > 1"),
]


@pytest.mark.parametrize("sql", SHAPES)
def test_pruned_answers_are_the_unpruned_ones(engines: tuple[Engine, Engine, MemorySource],
                                              sql: str) -> None:
    answers(engines, sql)


def test_the_source_is_asked_for_the_named_rings_only(
        engines: tuple[Engine, Engine, MemorySource]) -> None:
    source = engines[2]
    source.filters.clear()
    rows = answers(engines, "SELECT * FROM ticker WHERE symbol = ? AND exchange = ? "
                            "ORDER BY timestamp DESC LIMIT 5", ["BTC/USDT", "bybit"])
    assert [(r["exchange"], r["symbol"]) for r in rows] == [("bybit", "BTC/USDT")] * 5
    assert source.filters[0] == KeyFilter(frozenset({"bybit"}), BTC)  # the pruned engine's call
    assert source.filters[1] is None  # the reference engine reads every ring


def test_planning_binds_over_empty_tables_whatever_the_filter(
        engines: tuple[Engine, Engine, MemorySource]) -> None:
    source = engines[2]
    source.filters.clear()
    schema = engines[0].schema("SELECT * FROM ticker WHERE symbol = 'XRP/USDT' AND price > 0")
    assert schema.names == engines[0].source.schema("ticker").names
    assert source.filters == []  # GetFlightInfo's plan takes no snapshot


SYMBOLS = ["'BTC/USDT'", "'ETH/USDT'", "'XRP/USDT'", "?"]
EXCHANGES = ["'binance'", "'bybit'", "?"]


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, list[Any]]:
    params: list[Any] = []

    def value(pool: list[str], strings: list[str]) -> str:
        choice = draw(st.sampled_from(pool))
        if choice == "?":
            params.append(draw(st.sampled_from(strings)))
        return choice

    def term(alias: str) -> str:
        col = draw(st.sampled_from(["symbol", "exchange"]))
        column = f"{alias}.{col}" if alias and draw(st.booleans()) else col
        pool, strings = (SYMBOLS, ["BTC/USDT", "ETH/USDT"]) if col == "symbol" \
            else (EXCHANGES, ["binance", "bybit"])
        form = draw(st.sampled_from(["eq", "flip", "in", "ne", "other", "fn"]))
        if form == "eq":
            return f"{column} = {value(pool, strings)}"
        if form == "flip":
            return f"{value(pool, strings)} = {column}"
        if form == "in":
            n = draw(st.integers(1, 3))
            return f"{column} IN ({', '.join(value(pool, strings) for _ in range(n))})"
        if form == "ne":
            return f"{column} <> {value(pool, strings)}"
        if form == "fn":
            return f"upper({column}) = upper({value(pool, strings)})"
        return draw(st.sampled_from(["price > 95", "timestamp % 2 = 0", "true"]))

    table = draw(st.sampled_from(["ticker", "trades"]))
    alias = draw(st.sampled_from(["", "t"]))
    terms = [term(alias) for _ in range(draw(st.integers(1, 3)))]
    joiner = draw(st.sampled_from([" AND ", " AND ", " OR "]))
    where = joiner.join(f"({t})" if draw(st.booleans()) else t for t in terms)
    source = f"{table} {alias}".strip()
    shape = draw(st.sampled_from(["plain", "count", "sub", "union", "top"]))
    if shape == "plain":
        sql = f"SELECT * FROM {source} WHERE {where}"
    elif shape == "count":
        sql = f"SELECT exchange, symbol, count(*) AS n FROM {source} WHERE {where} GROUP BY ALL"
    elif shape == "sub":
        sql = f"SELECT count(*) AS n FROM (SELECT * FROM {source} WHERE {where}) AS q"
    elif shape == "union":
        sql = (f"SELECT symbol, exchange FROM {source} WHERE {where} "
               f"UNION ALL SELECT symbol, exchange FROM {table}")
    else:
        sql = f"SELECT * FROM {source} WHERE {where} ORDER BY ALL DESC LIMIT 7"
    return sql, params


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statement=statements())
def test_hypothesis_pruned_equals_unpruned(engines: tuple[Engine, Engine, MemorySource],
                                           statement: tuple[str, list[Any]]) -> None:
    sql, params = statement
    answers(engines, sql, params or None)
