"""Flight SQL: any SQL client (ADBC, JDBC, DBeaver, Grafana, polars, pandas) reads the live rings
and the Parquet history through the standard protocol, on the native server's port.

* :mod:`flight_md.sql.protocol`: the wire (type URLs, ``Any``, catalogue schemas, ``SqlInfo``);
* :mod:`flight_md.sql.engine`: DuckDB over the tables, read-only, bounded, cancellable;
* :mod:`flight_md.sql.source`: :class:`TableSource`, what the server gives the engine;
* :mod:`flight_md.sql.frontend`: :class:`SqlFrontend`, the Flight RPCs the server delegates.

Importing this package loads DuckDB and protobuf, not the server.
"""

from __future__ import annotations

from flight_md.sql.engine import SqlLimits
from flight_md.sql.source import SEAMS_SCHEMA, RingSnapshot, TableSource

__all__ = ["SEAMS_SCHEMA", "RingSnapshot", "SqlLimits", "TableSource"]
