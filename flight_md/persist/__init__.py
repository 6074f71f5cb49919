"""Durable storage: the write-ahead journal, the Parquet history and recovery.

Nothing here imports asyncio or ccxt: the modules are plain synchronous code over files, called
from ingestion and serving through the seams each module's docstring names.
"""
