"""Which rings a statement can read: the ``(exchange, symbol)`` filter of each channel table.

:func:`ring_filters` reads the statement through DuckDB's own parser (``json_serialize_sql``:
the parse tree, nothing bound or run) and, per channel table, returns a
:class:`~flight_md.sql.source.KeyFilter` when it can *prove* that every row the statement reads
from that table satisfies it; the engine then snapshots and registers only those rings. A
channel gets a filter only when all of these hold, otherwise it is read whole:

* the statement has no table function (``query_table('ticker')``, ``query('...')`` name tables
  in strings) and does not name ``bars_1m`` when the channel is ``trades`` (the view reads it);
* the table's name occurs exactly once in the statement's text (so it is referenced exactly
  once: no self-join, no second subquery, no CTE reading it twice) and that reference is
  the whole ``FROM`` of its ``SELECT`` (no join), without a sample, column renames or
  ``AT (...)``;
* that ``SELECT``'s ``WHERE`` is, at its top, a conjunction (or a single term) containing at
  least one of ``symbol = 'X'``, ``symbol IN ('X', ...)``, ``exchange = 'Y'``,
  ``exchange IN (...)`` (either side of ``=``; ``symbol`` bare or qualified by the table's
  alias, or its name when it has none), where each value is a string literal or a bound
  parameter whose value is a ``str``. Other terms are ignored (dropping a conjunct only widens
  the filter).

Why this is exact: the ``WHERE`` of the only ``SELECT`` reading the table is applied to the
table's rows before anything else of that ``SELECT`` (joins aside, which are excluded), and a
bare ``symbol`` there binds to the table's column before any alias of the select list (DuckDB
prefers columns). Removing rows that the ``WHERE`` rejects cannot change the answer; the view's
history half still gets the whole ``WHERE`` by DuckDB's pushdown, so a pruned seam table is
harmless too (the rows it would have cut are rejected anyway).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import duckdb

from flight_md.sql.source import KeyFilter

__all__ = ["parse_tree", "ring_filters"]

_WORD_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_COLUMNS: Final = ("exchange", "symbol")
_BARS_TABLE: Final = "bars_1m"


def parse_tree(cursor: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any] | None:
    """DuckDB's parse tree of ``sql`` (one statement), or ``None`` when it has none to give
    (``cursor`` only parses: ``json_serialize_sql`` binds nothing). Deterministic per text, so
    callers may cache it."""
    try:
        raw = cursor.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    except duckdb.Error:
        return None
    if raw is None or not isinstance(raw[0], str):
        return None
    tree = json.loads(raw[0])
    if not isinstance(tree, dict) or tree.get("error") or len(tree.get("statements", ())) != 1:
        return None
    statement: dict[str, Any] = tree["statements"][0]
    return statement


def ring_filters(tree: dict[str, Any] | None, sql: str, channels: Sequence[str],
                 params: Sequence[Any] | Mapping[str, Any] | None = None
                 ) -> dict[str, KeyFilter]:
    """The filter of each channel in ``channels`` that ``sql`` (whose :func:`parse_tree` is
    ``tree``) provably reads only a part of, with ``params`` bound; channels absent from the
    answer are read whole."""
    if tree is None:
        return {}
    nodes = list(_dicts(tree))
    if any(n.get("type") == "TABLE_FUNCTION" for n in nodes):
        return {}
    words: dict[str, int] = {}
    for word in _WORD_RE.findall(sql):
        words[word.lower()] = words.get(word.lower(), 0) + 1
    tables = [n for n in nodes if n.get("type") == "BASE_TABLE"]
    answer: dict[str, KeyFilter] = {}
    for channel in channels:
        if words.get(channel) != 1 or (channel == "trades" and _BARS_TABLE in words):
            continue
        refs = [t for t in tables if str(t.get("table_name", "")).lower() == channel]
        if len(refs) != 1:
            continue
        ref = refs[0]
        if ref.get("sample") or ref.get("column_name_alias") or ref.get("at_clause"):
            continue
        selects = [n for n in nodes if n.get("type") == "SELECT_NODE" and n.get("from_table") is ref]
        if len(selects) != 1 or selects[0].get("sample"):
            continue
        found = _where_filter(selects[0].get("where_clause"), ref, params)
        if found is not None:
            answer[channel] = found
    return answer


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _dicts(child)
    elif isinstance(value, list):
        for child in value:
            yield from _dicts(child)


def _conjuncts(where: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(where, dict):
        return
    if where.get("type") == "CONJUNCTION_AND":
        for child in where.get("children", ()):
            yield from _conjuncts(child)
    else:
        yield where


def _where_filter(where: Any, ref: dict[str, Any],
                  params: Sequence[Any] | Mapping[str, Any] | None) -> KeyFilter | None:
    allowed: dict[str, frozenset[str]] = {}
    for term in _conjuncts(where):
        kind = term.get("type")
        if kind == "COMPARE_EQUAL":
            sides = [term.get("left"), term.get("right")]
            for column_side, value_side in (sides, sides[::-1]):
                column = _key_column(column_side, ref)
                value = _string(value_side, params)
                if column is not None and value is not None:
                    values = frozenset([value])
                    break
            else:
                continue
        elif kind == "COMPARE_IN":
            children = term.get("children") or []
            column = _key_column(children[0], ref) if children else None
            strings = [_string(c, params) for c in children[1:]]
            if column is None or not strings or any(s is None for s in strings):
                continue
            values = frozenset(s for s in strings if s is not None)
        else:
            continue
        allowed[column] = allowed[column] & values if column in allowed else values
    if not allowed:
        return None
    return KeyFilter(exchanges=allowed.get("exchange"), symbols=allowed.get("symbol"))


def _key_column(node: Any, ref: dict[str, Any]) -> str | None:
    if not isinstance(node, dict) or node.get("class") != "COLUMN_REF":
        return None
    names = [str(n).lower() for n in node.get("column_names", ())]
    if len(names) == 2:
        qualifier = str(ref.get("alias") or ref.get("table_name", "")).lower()
        if names[0] != qualifier:
            return None
        names = names[1:]
    if len(names) != 1 or names[0] not in _KEY_COLUMNS:
        return None
    return names[0]


def _string(node: Any, params: Sequence[Any] | Mapping[str, Any] | None) -> str | None:
    """The ``str`` a literal or bound parameter stands for, or ``None`` (anything else)."""
    if not isinstance(node, dict):
        return None
    if node.get("class") == "CONSTANT":
        literal = node.get("literal") or {}
        text = literal.get("text")
        return text if literal.get("kind") == "STRING" and isinstance(text, str) else None
    if node.get("class") == "PARAMETER" and params is not None:
        identifier = str(node.get("identifier", ""))
        value: Any = None
        if isinstance(params, Mapping):
            value = params.get(identifier)
        elif identifier.isdigit() and 1 <= int(identifier) <= len(params):
            value = params[int(identifier) - 1]
        return value if isinstance(value, str) else None
    return None
