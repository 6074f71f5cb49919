"""Arrow tables to pandas and polars data frames, with real UTC datetimes.

The server sends times as Unix milliseconds (``int64``). These helpers reinterpret the
``timestamp``, ``receive_timestamp`` and (bars) ``bar_start`` columns as
``timestamp[ms, tz=UTC]`` first (a cast that keeps the same buffer: no copy), so both
libraries see tz-aware datetimes.

pandas and polars are optional: they are imported on first use, and a missing one raises an
``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

if TYPE_CHECKING:
    import pandas
    import polars

__all__ = ["TIME_COLUMNS", "to_pandas", "to_polars", "with_datetimes"]

TIME_COLUMNS: Final = ("timestamp", "receive_timestamp", "bar_start")
"""Columns holding Unix milliseconds in tick, trade, book, bar, snapshot and event tables."""
UTC_MS: Final = pa.timestamp("ms", tz="UTC")


def _require(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {module}, which is not installed; install it with: "
                          f"pip install 'flight-md-client[{extra}]'") from exc


def with_datetimes(table: pa.Table) -> pa.Table:
    """The table with its Unix-ms time columns typed ``timestamp[ms, tz=UTC]`` (no copy).

    Columns that are already timestamps, and tables without time columns, pass unchanged.
    """
    for name in TIME_COLUMNS:
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        field = table.schema.field(index)
        if not pa.types.is_integer(field.type):
            continue
        column = table.column(index).cast(pa.int64()).cast(UTC_MS)
        table = table.set_column(index, field.with_type(UTC_MS), column)
    return table


def to_pandas(table: pa.Table, *, index: str | None = "timestamp") -> pandas.DataFrame:
    """A pandas DataFrame with tz-aware UTC times.

    Args:
        table: A tick, snapshot or event table from the client.
        index: Column to use as the index (a tz-aware UTC ``DatetimeIndex`` for
            ``"timestamp"``); ``None`` keeps a ``RangeIndex``. A table without the column
            keeps a ``RangeIndex`` too.

    Raises:
        ImportError: pandas is not installed (``pip install 'flight-md-client[pandas]'``).
    """
    _require("pandas", "pandas", "to_pandas()")
    frame = with_datetimes(table).to_pandas()
    if index is not None and index in frame.columns:
        frame = frame.set_index(index)
    return frame


def to_polars(table: pa.Table) -> polars.DataFrame:
    """A polars DataFrame via ``pl.from_arrow`` (numeric columns are not copied).

    ``timestamp``, ``receive_timestamp`` and ``bar_start`` become ``Datetime("ms", "UTC")``.

    Raises:
        ImportError: polars is not installed (``pip install 'flight-md-client[polars]'``).
    """
    pl = _require("polars", "polars", "to_polars()")
    frame: polars.DataFrame = pl.from_arrow(with_datetimes(table), rechunk=False)
    return frame
