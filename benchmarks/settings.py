"""How big and how long each measurement runs: the full run and the smoke run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "SMOKE", "Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes, durations and repetitions of one benchmark run.

    Attributes:
        smoke: Tiny sizes that only prove the harness works (figures mean nothing).
        repetitions: Repetitions of each timed measurement; medians are reported.
        micro_ticks: Ticks appended per repetition (buffer micro figures).
        micro_reads: In-process reads per repetition.
        memory_symbols: Symbol counts measured, one fresh process each.
        memory_ticks: Capacity per symbol (ticks stored at capacity).
        memory_naive_max_ticks: Largest total the naive baselines are run at (they need
            gigabytes beyond it; their per-tick cost does not depend on the symbol count).
        alt_symbols: Symbols in the alternatives data set.
        alt_ticks: Ticks per symbol in the alternatives data set.
        alt_row_inserts: Ticks inserted one statement at a time into DuckDB.
        alt_pandas_ticks: Ticks appended one at a time to a pandas DataFrame.
        alt_queries: Queries per repetition (alternatives).
        latency_requests: Round trips per repetition, by ``latest``.
        bulk_rows: Rows of the range pull.
        bulk_repetitions: Pulls per server (each is short, so more of them than elsewhere).
        ingest_rates: Emulator messages per second, total across symbols, run for flight_md
            and the naive design; flight_md's lossless-rate search starts from them.
        ingest_symbols: Symbol counts.
        ingest_seconds: Seconds of the measured window per run.
        ingest_warmup: Seconds between every symbol flowing and the measured window.
        ingest_sample_s: Seconds between samples of the sent and stored counters.
        ingest_ticker: Also run the 24h ticker channel (the first rate and symbol count).
        ingest_search_steps: Runs the lossless-rate search may add per symbol count.
        ingest_max_rate: Highest rate the search probes.
        ingest_resolution: The search stops when the lowest failed rate is within this
            fraction above the lossless rate.
        ceiling_frames: Frames fed per repetition for the parse ceiling.
        ceiling_repetitions: Repetitions of the parse ceiling; the median is used.
        venues: Emulated venues whose ticker channel the ingest section measures, each
            against its own parse ceiling; ``None``: every emulated venue.
        ingest_ccxt_decoder: Repeat the Binance bidask search with ``--decoder ccxt``,
            judged against ccxt's parse ceiling.
        ingest_binance_search: Run the ingest section's Binance bidask search (its symbol
            counts, the naive loop and the ticker run) beside the venues.
        venue_symbols: Symbols of each venue's ticker runs.
        venue_rates: Rates each venue's search starts from (the naive loop runs at them).
        venue_search_steps: Runs each venue's search may add.
        venue_max_rate: Highest rate a venue's search probes.
        venue_ceiling_frames: Frames fed per repetition for a venue's parse ceiling.
        venue_ceiling_repetitions: Repetitions of a venue's parse ceiling.
        freshness_rates: Emulator rates of the freshness runs.
        freshness_seconds: Seconds of the several-tails phase (the goal's case).
        freshness_one_tail_seconds: Seconds of the one-tail phase.
        freshness_symbols: Symbols the emulator streams in the freshness runs.
        freshness_follow: Live tails at once in the several-tails phase, one symbol each.
        load_rate: Ingest rate while measuring latency and concurrency under load.
        load_symbols: Symbols ingested meanwhile.
        concurrency_clients: Concurrent client counts.
        concurrency_seconds: Seconds per concurrency measurement.
        client_processes: At most this many client processes share the clients.
        ingest_process_modes: Where flight_md ingests in the latency, concurrency and
            freshness sections: ``False`` on a thread of the server process (the
            default), ``True`` in a child process (``--ingest-process``).
        persist_symbols: Symbols of the persistence section's ticker ingest and kill -9 runs.
        persist_rates: Rates the --memory-only search starts from.
        persist_search_steps: Runs each of the two searches may add.
        persist_max_rate: Highest rate the searches probe.
        persist_kill_rate: Emulator rate of the kill -9 run (the goal's: 5,000 msg/s).
        persist_kill_seconds: Seconds the live tails record before the kill.
        persist_kill_tails: Symbols followed by a live tail in the kill -9 run (the first
            ones; every symbol is ingested).
        persist_recovery_rows: Journalled rows of the recovery measurement (the goal's: 10 M).
        persist_recovery_symbols: Symbols interleaved in every group commit of that journal.
        persist_commit_rows: Rows per group commit of that journal.
        persist_recovery_repetitions: Timed reads of the journal alone.
        persist_pull_rows: History rows of the one symbol of the range pull (the goal's: 10 M).
        persist_pull_chunk: Rows per history file of the range pull.
        persist_pull_repetitions: Timed pulls on each side.
        persist_ring: Ring capacity of the server serving the range pull.
        persist_seal_run: Also run the persisting server at the lossless rate with a seal
            every second.
        peer_channels: Channels of the side by side with cryptofeed (``bidask``, ``trades``).
        peer_symbols: Symbol counts of the side by side.
        peer_rates: Rates each design's first search starts from.
        peer_repetitions: Searches per design, channel and symbol count (medians reported).
        peer_seconds: Seconds of each run's measured window.
        peer_warmup: Seconds between every symbol flowing and the window.
        peer_resolution: A search stops when the lowest failed rate is within this fraction
            above the lossless rate.
        peer_max_rate: Highest rate a search probes.
        peer_max_runs: Runs the first repetition's search may make.
        peer_repeat_runs: Runs a later repetition's search may make (it starts from the
            previous bracket: two runs re-probe it).
        decoder_symbols: Symbols of each venue's frames in the decoder section.
        decoder_frames: Frames per repetition per decoder there.
        decoder_repetitions: Repetitions per decoder (medians reported).
        workers_counts: ``--ingest-workers`` values the workers section searches.
        workers_symbols: Symbols of the workers section's Binance bid/ask runs.
        workers_rates: Rates each workers search starts from.
        workers_search_steps: Runs each workers search may add.
        workers_max_rate: Highest rate a workers search probes.
        bus_symbols: Symbols of the bus section's Binance bid/ask runs (the aggregate run
            splits them over its two ingestion nodes).
        bus_rates: Rates each design's first lossless search starts from.
        bus_max_rate: Highest rate a bus-section search probes.
        bus_resolution: A search stops when the lowest failed rate is within this fraction
            above the lossless rate.
        bus_repetitions: Searches per design (alternating which goes first; medians).
        bus_max_runs: Runs the first repetition's search may make.
        bus_repeat_runs: Runs a later repetition's search may make (it starts from the
            previous bracket).
        bus_seconds: Seconds of each lossless run's measured window.
        bus_warmup: Seconds between every symbol flowing and that window.
        bus_fresh_rates: Emulator rates of the bus freshness runs.
        bus_fresh_seconds: Seconds of each freshness window.
        bus_fresh_tails: Live tails at once in a freshness run, one symbol each.
        bus_aggregate_runs: Runs of the search with two ingestion nodes.
    """

    smoke: bool
    repetitions: int
    micro_ticks: int
    micro_reads: int
    memory_symbols: tuple[int, ...]
    memory_ticks: int
    memory_naive_max_ticks: int
    alt_symbols: int
    alt_ticks: int
    alt_row_inserts: int
    alt_pandas_ticks: int
    alt_queries: int
    latency_requests: dict[int, int]
    bulk_rows: int
    bulk_repetitions: int
    ingest_rates: tuple[int, ...]
    ingest_symbols: tuple[int, ...]
    ingest_seconds: float
    ingest_warmup: float
    ingest_sample_s: float
    ingest_ticker: bool
    ingest_search_steps: int
    ingest_max_rate: int
    ingest_resolution: float
    ceiling_frames: int
    ceiling_repetitions: int
    venues: tuple[str, ...] | None
    ingest_binance_search: bool
    ingest_ccxt_decoder: bool
    venue_symbols: int
    venue_rates: tuple[int, ...]
    venue_search_steps: int
    venue_max_rate: int
    venue_ceiling_frames: int
    venue_ceiling_repetitions: int
    freshness_rates: tuple[int, ...]
    freshness_seconds: float
    freshness_one_tail_seconds: float
    freshness_symbols: int
    freshness_follow: int
    load_rate: int
    load_symbols: int
    concurrency_clients: tuple[int, ...]
    concurrency_seconds: float
    client_processes: int
    ingest_process_modes: tuple[bool, ...]
    persist_symbols: int
    persist_rates: tuple[int, ...]
    persist_search_steps: int
    persist_max_rate: int
    persist_kill_rate: int
    persist_kill_seconds: float
    persist_kill_tails: int
    persist_recovery_rows: int
    persist_recovery_symbols: int
    persist_commit_rows: int
    persist_recovery_repetitions: int
    persist_pull_rows: int
    persist_pull_chunk: int
    persist_pull_repetitions: int
    persist_ring: int
    persist_seal_run: bool
    peer_channels: tuple[str, ...]
    peer_symbols: tuple[int, ...]
    peer_rates: tuple[int, ...]
    peer_repetitions: int
    peer_seconds: float
    peer_warmup: float
    peer_resolution: float
    peer_max_rate: int
    peer_max_runs: int
    peer_repeat_runs: int
    decoder_symbols: int
    decoder_frames: int
    decoder_repetitions: int
    workers_counts: tuple[int, ...]
    workers_symbols: int
    workers_rates: tuple[int, ...]
    workers_search_steps: int
    workers_max_rate: int
    bus_symbols: int
    bus_rates: tuple[int, ...]
    bus_max_rate: int
    bus_resolution: float
    bus_repetitions: int
    bus_max_runs: int
    bus_repeat_runs: int
    bus_seconds: float
    bus_warmup: float
    bus_fresh_rates: tuple[int, ...]
    bus_fresh_seconds: float
    bus_fresh_tails: int
    bus_aggregate_runs: int


FULL = Settings(
    smoke=False,
    repetitions=5,
    micro_ticks=200_000,
    micro_reads=20_000,
    memory_symbols=(10, 100, 1000),
    memory_ticks=10_000,
    memory_naive_max_ticks=1_000_000,
    alt_symbols=20,
    alt_ticks=10_000,
    alt_row_inserts=1_000,
    alt_pandas_ticks=1_000,
    alt_queries=300,
    latency_requests={100: 500, 10_000: 100},
    bulk_rows=1_000_000,
    bulk_repetitions=11,
    ingest_rates=(5_000, 20_000),
    ingest_symbols=(20, 200),
    ingest_seconds=5.0,
    ingest_warmup=1.0,
    ingest_sample_s=0.25,
    ingest_ticker=True,
    ingest_search_steps=4,
    ingest_max_rate=80_000,
    ingest_resolution=0.1,
    ceiling_frames=20_000,
    ceiling_repetitions=5,
    venues=None,
    ingest_binance_search=True,
    ingest_ccxt_decoder=True,
    venue_symbols=20,
    venue_rates=(4_000,),
    venue_search_steps=3,
    venue_max_rate=32_000,
    venue_ceiling_frames=6_000,
    venue_ceiling_repetitions=3,
    freshness_rates=(1_000, 5_000),
    freshness_seconds=10.0,
    freshness_one_tail_seconds=5.0,
    freshness_symbols=20,
    freshness_follow=8,
    load_rate=5_000,
    load_symbols=20,
    concurrency_clients=(1, 8, 32),
    concurrency_seconds=2.0,
    client_processes=4,
    ingest_process_modes=(False, True),
    persist_symbols=20,
    persist_rates=(4_000,),
    persist_search_steps=3,
    persist_max_rate=32_000,
    persist_kill_rate=5_000,
    persist_kill_seconds=10.0,
    persist_kill_tails=4,
    persist_recovery_rows=10_000_000,
    persist_recovery_symbols=200,
    persist_commit_rows=33_000,
    persist_recovery_repetitions=3,
    persist_pull_rows=10_000_000,
    persist_pull_chunk=1_000_000,
    persist_pull_repetitions=3,
    persist_ring=1_000,
    persist_seal_run=True,
    peer_channels=("bidask", "trades"),
    peer_symbols=(20, 200),
    peer_rates=(20_000,),
    peer_repetitions=2,
    peer_seconds=2.0,
    peer_warmup=0.5,
    peer_resolution=0.25,
    peer_max_rate=64_000,
    peer_max_runs=5,
    peer_repeat_runs=3,
    decoder_symbols=20,
    decoder_frames=4_000,
    decoder_repetitions=5,
    workers_counts=(1, 2),
    workers_symbols=20,
    workers_rates=(10_000,),
    workers_search_steps=4,
    workers_max_rate=80_000,
    bus_symbols=20,
    bus_rates=(20_000,),
    bus_max_rate=160_000,  # above what either path keeps up with here (64,000 did not stop them)
    bus_resolution=0.15,
    bus_repetitions=2,
    bus_max_runs=6,
    bus_repeat_runs=2,
    bus_seconds=3.0,
    bus_warmup=0.5,
    bus_fresh_rates=(1_000, 5_000),
    bus_fresh_seconds=3.0,
    bus_fresh_tails=4,
    bus_aggregate_runs=2,
)

SMOKE = Settings(
    smoke=True,
    repetitions=2,
    micro_ticks=5_000,
    micro_reads=500,
    memory_symbols=(10,),
    memory_ticks=1_000,
    memory_naive_max_ticks=100_000,
    alt_symbols=3,
    alt_ticks=1_000,
    alt_row_inserts=200,
    alt_pandas_ticks=200,
    alt_queries=20,
    latency_requests={100: 30, 10_000: 5},
    bulk_rows=20_000,
    bulk_repetitions=2,
    ingest_rates=(500,),
    ingest_symbols=(5,),
    ingest_seconds=0.5,
    ingest_warmup=0.2,
    ingest_sample_s=0.1,
    ingest_ticker=False,
    ingest_search_steps=1,
    ingest_max_rate=1_000,
    ingest_resolution=0.1,
    ceiling_frames=2_000,
    ceiling_repetitions=2,
    venues=("bybit",),  # the per-venue path once beside Binance's; more venues add nothing new
    ingest_binance_search=True,
    ingest_ccxt_decoder=True,
    venue_symbols=3,
    venue_rates=(300,),
    venue_search_steps=0,
    venue_max_rate=600,
    venue_ceiling_frames=600,
    venue_ceiling_repetitions=1,
    freshness_rates=(500,),
    freshness_seconds=1.0,
    freshness_one_tail_seconds=0.5,
    freshness_symbols=5,
    freshness_follow=2,
    load_rate=500,
    load_symbols=5,
    concurrency_clients=(1, 4),
    concurrency_seconds=0.5,
    client_processes=2,
    ingest_process_modes=(False,),  # the process mode is the same code with one flag
    persist_symbols=3,
    persist_rates=(300,),
    persist_search_steps=0,
    persist_max_rate=600,
    persist_kill_rate=500,
    persist_kill_seconds=1.0,
    persist_kill_tails=2,
    persist_recovery_rows=40_000,
    persist_recovery_symbols=20,
    persist_commit_rows=1_000,
    persist_recovery_repetitions=1,
    persist_pull_rows=100_000,
    persist_pull_chunk=25_000,
    persist_pull_repetitions=2,
    persist_ring=1_000,
    persist_seal_run=False,
    peer_channels=("bidask", "trades"),
    peer_symbols=(3,),
    peer_rates=(500,),
    peer_repetitions=1,
    peer_seconds=0.5,
    peer_warmup=0.2,
    peer_resolution=0.25,
    peer_max_rate=1_000,
    peer_max_runs=1,
    peer_repeat_runs=1,
    decoder_symbols=3,
    decoder_frames=300,
    decoder_repetitions=2,
    workers_counts=(1, 2),
    workers_symbols=3,
    workers_rates=(500,),
    workers_search_steps=0,
    workers_max_rate=1_000,
    bus_symbols=4,
    bus_rates=(500,),
    bus_max_rate=1_000,
    bus_resolution=0.25,
    bus_repetitions=1,
    bus_max_runs=1,
    bus_repeat_runs=1,
    bus_seconds=0.5,
    bus_warmup=0.2,
    bus_fresh_rates=(500,),
    bus_fresh_seconds=1.0,
    bus_fresh_tails=2,
    bus_aggregate_runs=1,
)
