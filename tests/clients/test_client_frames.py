"""pandas and polars helpers: tz-aware UTC times, zero-copy casts, helpful ImportErrors."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from client_support import ROWS, STEP_MS
from flight_md_client import MarketDataClient, to_pandas, to_polars, with_datetimes

from flight_md.service import FlightMarketDataServer


def test_with_datetimes_reinterprets_without_copying(md: MarketDataClient) -> None:
    table = md.latest("BTC/USDT", 5)
    typed = with_datetimes(table)
    for name in ("timestamp", "receive_timestamp"):
        assert typed.schema.field(name).type == pa.timestamp("ms", tz="UTC")
        before = table.column(name).chunk(0).buffers()[1]
        after = typed.column(name).chunk(0).buffers()[1]
        assert after.address == before.address  # same memory: a cast, not a copy
    assert typed.schema.field("timestamp").nullable is False
    assert with_datetimes(typed).equals(typed)  # idempotent
    prices = md.latest("BTC/USDT", 5, columns=["price"])
    assert with_datetimes(prices) is prices


def test_latest_pandas_is_indexed_by_utc_datetimes(md: MarketDataClient,
                                                   server: FlightMarketDataServer) -> None:
    df = md.latest_pandas("BTC/USDT", 3)
    assert isinstance(df.index, pd.DatetimeIndex)
    assert df.index.name == "timestamp" and str(df.index.tz) == "UTC"
    start = server.test_start  # type: ignore[attr-defined]
    expected = pd.to_datetime([start + (ROWS - 3 + i) * STEP_MS for i in range(3)], unit="ms",
                              utc=True)
    assert list(df.index) == list(expected)
    assert str(df["receive_timestamp"].dtype) == "datetime64[ms, UTC]"
    assert (df["receive_timestamp"] - df.index == pd.Timedelta(milliseconds=7)).all()
    assert df["price"].tolist() == [100.0 + ROWS - 3, 100.0 + ROWS - 2, 100.0 + ROWS - 1]
    assert list(df.columns[:2]) == ["symbol", "price"]


def test_range_pandas_and_polars_agree(md: MarketDataClient,
                                      server: FlightMarketDataServer) -> None:
    # An absolute start, so both calls ask for the same rows however long apart they run
    # ("before now" is tested in test_client_api.py).
    start = datetime.fromtimestamp((server.test_start + 300 * STEP_MS) / 1000,  # type: ignore[attr-defined]
                                   tz=UTC)
    pdf = md.range_pandas("ETH/USDT", start=start, columns=["timestamp", "price"])
    plf = md.range_polars("ETH/USDT", start=start, columns=["timestamp", "price"])
    assert len(pdf) == ROWS - 300
    assert plf.schema == pl.Schema({"timestamp": pl.Datetime("ms", "UTC"), "price": pl.Float64})
    assert plf["price"].to_list() == pdf["price"].tolist()
    assert plf["timestamp"].to_list() == [t.to_pydatetime() for t in pdf.index]


def test_latest_polars(md: MarketDataClient) -> None:
    frame = md.latest_polars("BTC/USDT", 4)
    assert isinstance(frame, pl.DataFrame) and frame.height == 4
    assert frame.schema["timestamp"] == pl.Datetime("ms", "UTC")
    assert frame.schema["receive_timestamp"] == pl.Datetime("ms", "UTC")
    assert frame.schema["volume"] == pl.Float64 and frame.schema["symbol"] == pl.String


def test_to_pandas_handles_events_snapshots_and_no_index(md: MarketDataClient) -> None:
    events = to_pandas(md.events())
    assert str(events.index.tz) == "UTC" and events["kind"].tolist()[0] == "connect"
    assert list(events["symbols"].iloc[1]) == ["BTC/USDT", "ETH/USDT"]
    flat = to_pandas(md.snapshot(), index=None)
    assert isinstance(flat.index, pd.RangeIndex) and len(flat) == 4
    assert str(flat["timestamp"].dtype) == "datetime64[ms, UTC]"
    no_time = to_pandas(md.latest("BTC/USDT", 2, columns=["price"]))
    assert isinstance(no_time.index, pd.RangeIndex)
    assert to_polars(md.events()).schema["timestamp"] == pl.Datetime("ms", "UTC")


def test_missing_extras_name_the_extra_to_install(md: MarketDataClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(ImportError, match=r"pip install 'flight-md-client\[pandas\]'"):
        md.latest_pandas("BTC/USDT")
    with pytest.raises(ImportError, match=r"pip install 'flight-md-client\[polars\]'"):
        md.range_polars("BTC/USDT")
    assert md.latest("BTC/USDT", 1).num_rows == 1  # Arrow needs neither


def test_the_client_imports_without_pandas_or_polars() -> None:
    import subprocess

    from client_support import CLIENT_DIR

    code = ("import sys; sys.modules['pandas'] = None; sys.modules['polars'] = None; "
            "import flight_md_client; assert 'pandas' not in [m for m in sys.modules "
            "if sys.modules[m] is not None]; print(flight_md_client.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(CLIENT_DIR), "PATH": ""}, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"
