"""ccxt's functions that :mod:`flight_md.core.ccxt_parse` replicates are the ones it copied.

The fast decoders reproduce ccxt 4.5.90's parse through the replicas in ``ccxt_parse``;
``ccxt_compat`` accepts any later 4.5 patch of ccxt when its structural checks pass, and none
of those can see a change inside ``Precise`` or ``safe_ticker``. So the source of every
replicated function of the installed ccxt is hashed here against the hash 4.5.90 gave
(:data:`~flight_md.core.ccxt_parse.REPLICATED`): an upgrade that changed one fails this test,
naming the function whose replica must be checked again (then the hash is updated with it).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from typing import Any

import ccxt
import pytest

from flight_md.core import ccxt_parse
from flight_md.ingest import ccxt_compat


def _resolve(name: str) -> Any:
    module_name, class_name, attribute = name.rsplit(".", 2)
    return getattr(getattr(importlib.import_module(module_name), class_name), attribute)


def source_hash(name: str) -> str:
    """The first 16 hex digits of the SHA-256 of the installed ccxt's source of ``name``."""
    return hashlib.sha256(inspect.getsource(_resolve(name)).encode()).hexdigest()[:16]


def test_the_installed_ccxt_is_one_the_replicas_may_be_checked_against() -> None:
    # The replicas are checked only on a ccxt ccxt_compat accepts (the 4.5 line from 4.5.90).
    assert ccxt_compat.supported_version(ccxt.__version__)


@pytest.mark.parametrize("name", sorted(ccxt_parse.REPLICATED))
def test_each_replicated_ccxt_function_is_unchanged(name: str) -> None:
    assert source_hash(name) == ccxt_parse.REPLICATED[name], (
        f"ccxt {ccxt.__version__}'s {name} differs from 4.5.90's: check its replica in "
        "flight_md/core/ccxt_parse.py (or the decoder using it), then update REPLICATED")

