"""Tests of the pure core (flight_md/core)."""
