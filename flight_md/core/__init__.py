"""The pure core: channel specs and schemas, the store, tickets, events and the per-channel normalisers.

Nothing here does I/O: no module of this package imports asyncio, ccxt, pyarrow.flight or
touches the disk, so every part is tested with plain values (``tests/core``) and ingestion,
serving and persistence are thin layers over it.
"""
