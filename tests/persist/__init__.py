"""Tests of durable storage: the data directory, the journal, recovery and the history."""
