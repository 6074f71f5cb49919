"""The pure core loads without I/O libraries: no ccxt, no pyarrow.flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["flight_md.schema", "flight_md.buffer", "flight_md.tickets", "flight_md.actions",
        "flight_md.events", "flight_md.errors", "flight_md.control", "flight_md.core.bars",
        "flight_md.core.books", "flight_md.core.channels", "flight_md.persist.history", "flight_md.persist.journal",
        "flight_md.persist.recovery", "flight_md.persist.store", "flight_md.persist.query"]
IO_MODULES = ["ccxt", "ccxt.pro", "pyarrow.flight", "pyarrow._flight", "aiohttp", "grpc"]


def loaded_after(*imports: str) -> dict[str, bool]:
    """Import ``imports`` in a fresh interpreter; which I/O modules did that load?"""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(imports)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps({{m: m in sys.modules for m in {IO_MODULES!r}}}))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, bool] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_core_loads_no_io() -> None:
    """Importing the core (and the package, which exposes the server name lazily) loads no I/O.

    One interpreter for all of them: any ``flight_md.*`` import runs the package
    ``__init__`` first, so separate interpreters per module would test the same thing.
    """
    loaded = loaded_after(*CORE, "flight_md")
    assert not any(loaded.values()), sorted(m for m, v in loaded.items() if v)


def test_lazy_names_resolve() -> None:
    import flight_md
    from flight_md.service import FlightMarketDataServer

    assert flight_md.FlightMarketDataServer is FlightMarketDataServer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flight_md.nope  # noqa: B018


def test_public_api_is_declared() -> None:
    import flight_md

    assert "FlightMarketDataServer" in flight_md.__all__
    for name in flight_md.__all__:
        if name in ("MarketDataStream", "ConnectionState", "MarketDataManager"):
            continue  # ingestion: written alongside, loaded lazily with ccxt
        assert getattr(flight_md, name) is not None, name
