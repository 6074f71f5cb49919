"""What limits each figure that misses its goal, from profiling flight_md (by goal key).

These are **notes, not measurements of a run**: the report quotes an entry under every
missed goal with that key, under a heading that says so (:data:`PROFILED`). Entries are
written by hand after profiling the flight_md process during the measurement (py-spy 0.4
``record --threads [--gil] --nonblocking`` on the server child, pyinstrument in-process);
every figure in them comes from those sessions, not from the run that quotes them.
Re-profile when the code changes. The scripts are small: start the same children as the
measurement (``benchmarks.exchange``, ``benchmarks.servers``) and point ``py-spy record
--pid`` at the flight_md child.
"""

from __future__ import annotations

__all__ = ["FINDINGS", "PROFILED"]

PROFILED = ("profiled 2026-11-23 to 2026-12-02, each entry on the code of its day (the entries "
            "written on 2026-12-02 say so); not re-profiled since")

# How the 2026-12-02 entries were profiled (a script outside the repository, the same
# children as the measurement): start `benchmarks.exchange.exchange(symbols=N, rate=R)` and
# `benchmarks.servers.flight_md_server(exchange_url=..., ingest_symbols=N, channel=C)`
# (trades: `benchmarks.channels._server`), persisting as the measurement does, wait for every
# symbol to flow and 3 s more, then `py-spy record --pid PID -d 10 -r 200 --nonblocking -F
# --format raw` on the server child, and the child's CPU time over the same window divided by
# the rows it stored ("µs CPU a message"). The machine was shared with other work (load 4-8 on
# 2 cores): shares of samples are comparable between runs of one day, absolute µs less so.
_HOW = ("Profiled 2026-12-02 (py-spy `record --pid PID -d 10 -r 200 --nonblocking -F` on the "
        "server child, CPU time per stored row over the same window; see the comment at the "
        "top of `benchmarks/findings.py`), outside this run.")

_INGEST = """
**Limit: ccxt's own per-frame work on the one ingestion thread, plus the network path
(aiohttp's websocket reader, the event loop, kernel socket reads), on a machine whose CPU it
shares with the emulator.** Nothing is lost between ccxt and the store (see *capture after
drain*); what falls short is the rate the ingestion thread sustains while the feed keeps
coming, and the parse ceiling it is judged against already includes flight_md's own part of
the hot path (tap, `to_row`, `append_row`). py-spy (`record --threads --nonblocking`) on the
ingestion thread of a flight_md process saturated at 40,000 msg/s over 200 symbols: ccxt
`binance.handle_message` 83 % of its samples (of which `handle_bids_asks` 55 %,
`parse_ws_ticker`/`safe_*` 16 %), aiohttp's reader and ccxt's receive loop most of the rest;
flight_md's tap (`flight_md.ingest.ccxt_compat.Tap.__setitem__` -> `to_row` -> `append_row`) ~2 %. The gap between the
hot-path ceiling and the lossless rate is therefore the network path and the event loop, not
the store.

Fixed earlier (the tap was 18 % of the thread and ccxt's `Client.resolve` 20 %): watchers
re-arm their `watch_*()` call at most every 20 ms instead of on every update (each call races
one future per symbol of the group); `normalize.to_row` + `MarketDataBuffer.append_row` store
rows without a `MarketTick` round trip; pending rows are an `array('d')`.
Remaining levers: a decoder of flight_md's own for the hot channels (issue "Performance"),
and ingestion spread over processes.
"""

_LATENCY_IDLE = """
**Limit: gRPC/Flight per-call work plus ~20 µs of Python per request, on a ~0.5-1 ms round
trip.** The bare server's `do_get` is one dict lookup; flight_md's (`FlightMarketDataServer
.do_get`, timed in-process) now takes ~20 µs for latest=100 (was ~48 µs): ring snapshot and
table assembly (`get_latest_sync`, ~16 µs), the rest error mapping and the stream set-up.
Each Python step is also a GIL acquisition on a gRPC thread. Done earlier: a prebuilt
`IpcWriteOptions` for `RecordBatchStream` (pyarrow otherwise reads its IPC settings from the
environment per call), an LRU of parsed tickets (clients repeat tickets), and constant
`symbol`/`exchange` columns cached per value at the longest length served and sliced.
"""

_LATENCY_LOAD = """
**Limit: the GIL, when ingestion runs on a thread of the server process (the default).**
py-spy `--gil` on the flight_md process while it ingests 5,000 msg/s and serves latest=100
back to back: the GIL is held in ~55 % of samples, 93 % of those by the ingestion thread
(ccxt's `receive_loop` drains every buffered frame in one call, without yielding) and 7 %
by the gRPC threads. A Flight handler needs the GIL several times per request, and a thread
that waits for it only forces a switch after `sys.getswitchinterval()` (5 ms). Lowering
the switch interval made ingestion itself fall behind.

**Fixed by design earlier: `--ingest-process`** (`ServerConfig(ingest_process=True)`)
runs ingestion in a child process that forwards parsed rows (batched at most every 1 ms)
to the server, whose process then only takes the GIL to append them (~1 µs a row) and for
its own handlers: see the "ingestion process" rows. It is opt-in because it costs a
second interpreter and ~1.5 s of start-up, and callbacks cannot run in the server process.
"""

_LATENCY_PROCESS = """
**Limit: CPU, not the GIL: on 2 cores the ingestion child (~75 % of a core at 5,000 msg/s),
the emulator (~20 %), the harness's client and the server share the machine.** The bare
server slows down under the same load too (its p50 rose ~50 % over idle in that session);
flight_md does more work per request (~20 µs of Python, see the idle finding), which
stretches more when the CPU is contended. The Flight process's own ingestion work is the
reader thread: one wake-up per forwarded batch (at most 1,000 a second) and ~1 µs per row,
~2 % of its GIL at 5,000 msg/s. On a machine with a free core for the child the ratio
approaches the idle one (1.1-1.2x). Further levers: a cheaper handler (build latest=N
responses from a per-ring tail batch refreshed at seal time), and forwarding rows as raw
`array('d')` bytes instead of pickled tuples.
"""

_FRESHNESS = """
**Limit: GIL hand-over between the ingestion thread and the live-tail threads, and a
per-tick cost on the tail path that grows with the number of tails.** Splitting the path
with the tick's `receive_timestamp` (ms resolution) at 1,000 msg/s: emulator to ccxt
receive ~0.3 ms, ccxt receive to the client ~1.1-1.6 ms at p50 and 3-8 ms at p99 (one
tail: p99 ~3 ms on a quiet machine, five tails: ~9 ms). py-spy on the server with 5 tails
at 5,000 msg/s: each tail wake runs `Follower.read` -> `_Ring.snapshot` -> `_freshen` ->
`_seal` under the ring lock, converting the one or two pending rows into an Arrow batch
(~35 µs: ten `pa.array` calls), then builds a table and yields it, each step waiting for the
ingestion thread to release the GIL. With `--ingest-process` the GIL contention goes, and
the forwarding adds at most 1 ms (a row after a quiet spell is sent at once).

Suggestions: (1) coalesce wake-ups: let a tail wait a short window (e.g. 1 ms or N rows)
after the first new row and read once; (2) serve tails from the pending rows without
sealing them under the ring lock (copy the few rows under the lock, convert outside it,
and leave sealing to the writer); (3) yield one combined batch per read.
"""

_INGEST_FAST = f"""
**Limit: the Python per frame on the one ingestion thread (the fast decoder, the fan-out,
the ring append), ccxt's receive loop and aiohttp's reader, and at 200 symbols the journal's
feed, on a machine whose 2 cores the emulator shares.** {_HOW} Binance bookTicker,
persisting, 12,000 msg/s offered: at 20 symbols ~31-38 µs CPU a stored row, of which the
frame path (`FrameGuard` -> `_BookTickerDecoder.decode` -> `decode.bidask` -> `Fanout.ingest_row`
-> `MarketDataBuffer.append_row`) ~45 % of samples, ccxt's `receive_loop` and aiohttp ~15 %,
the event loop's `select` ~15 %, the journal thread ~19 %. At 200 symbols it was 47-59 µs,
and the difference was the journal's feed (49 % of samples against 19 %): every commit sealed
every ring's few new rows (`ChannelSpec.seal`, ~25 % of samples) and rebuilt each as a batch
with its sequence column (`Persistence._feed_locked`, 15-25 %), several Arrow objects per
ring per commit at ~10 µs each with pyarrow 26; `--memory-only` cost ~33 µs at both symbol
counts. Fixed 2026-12-02: the feed converts the pending rows of all rings of a channel at
once, sequence column included (`MarketDataBuffer.take_unjournalled(sequence)`): 200 symbols,
A/B alternating in the same minutes, 54.6-59.1 -> 32.0-41.1 µs a row, and in a later pair
of runs 54.2-70.9 -> 35.3-36.0 µs, the 20-symbol figure again (20 symbols unchanged: 38.6-40.8
vs 35.3-41.4 µs). Left: a ring that sealed itself since the last commit still goes the per-ring way
(~4 % of samples), and the journal's own write (`Journal._commit_locked`, `_with_keys`) ~8 %.
Levers: fewer Python calls per frame (the decoder, `Fanout.ingest_row` and
`MarketDataBuffer.append_row` are ~1-5 % each, nothing dominant), `--ingest-workers N` on a
machine with cores to spare.
"""

_INGEST_CCXT = """
**Limit: ccxt's own parse on the one ingestion thread (this is the `--decoder ccxt` path,
which is what the 2026-11-23 profile below measured, before the fast decoders existed).**
""" + _INGEST

_PEER_TRADES = f"""
**Limit: the Python per trade on the one ingestion thread, the event loop and the journal;
cryptofeed does less per trade (no de-duplication by id, no store, no persistence).** {_HOW}
Binance `@trade`, 20 symbols, 6,000 trades/s offered, persisting: ~55 µs CPU a stored trade
at that rate (a process woken per few frames), of which `_TradeDecoder.decode` 61 % of
samples inclusive: its own body ~11 %, `_event` (orjson) ~6 %, `_clean` (the decimal-string
check of price and amount) ~6 %, `ccxt_string_n`/`ccxt_int_n` ~6 %, then `decode.trade` ->
`TradeFanout.ingest_fields` -> `_store` (de-duplication by id, `SkewWindow.add`, the row)
-> `MarketDataBuffer.append_trade_row` ~30 %; the event loop's `select` ~12 %, ccxt's
`receive_loop` and aiohttp ~10 %, the journal thread ~11 %. At 200 symbols (15 trades a
second a symbol at 3,000/s) nearly every frame is a wake-up of its own: ~108 µs CPU a trade,
`EpollSelector.select` 51 % of samples, ccxt's `receive_loop` 18 %, the decoder 17 %, the
journal thread 14 % (before the 2026-12-02 journal-feed fix, which sealed every ring's few
trades at every commit: ~215 µs a trade, A/B alternating; at 4,000/s offered on a busier
machine, where frames queued and shared wake-ups, ~61 µs). Levers: fewer calls per trade in `TradeFanout._store` (counters, clock and
skew per trade), the decoder's `_clean` folded into the float conversion.
"""

_WORKERS = """
**Not profiled: the goal needs N + 2 free cores (N workers, the Flight process, the
emulator), which the 2-core machine these notes come from does not have, so it gives no
verdict here.** What to look at where it misses: the Flight process's reader/appender thread
(one per worker, `flight_md.ingest.process`), which takes the GIL for every hand-off message
(~120 µs of CPU per message beyond its rows, measured 2026-12-01 over a real pipe) and for
`append_batch`/`run_appender` (~1 µs a row): with N workers the parent's share grows with
N, and past one core it caps R(N). Profile: `py-spy record --pid <server> --threads --gil`
during the workers section's run at the rate that missed.
"""

_VENUE_COINBASE = f"""
**Limit: a wake-up of the event loop per frame, and the decoder's per-frame work, on the
one ingestion thread; the ceiling is a tight loop without either.** {_HOW} Coinbase
`ticker`, 20 symbols, 2,500 msg/s offered, persisting: ~127 µs CPU a stored row (Binance's
bookTicker ~35 µs at 12,000 msg/s, where a wake-up carries several frames). The event loop
(`_run_once`) ~88 % of samples, of which `EpollSelector.select` 33 % (one `epoll_wait` per
frame at this rate) and the frames 52 %: `CoinbaseTickerDecoder.decode` 39 % inclusive
(`_ticker` 16 %, the derived open `open_from_percentage` 7 %, the ISO time `parse8601` 4 %,
orjson `_loads` 3 %), the fan-out and ring ~12 %; ccxt's `receive_loop` ~8 % more; the
journal thread ~10 %. The lossless search itself was not profiled at its failing rate.
"""

_VENUE_KRAKEN = f"""
**Limit: a wake-up of the event loop per frame on the one ingestion thread; the ceiling is a
tight loop without it.** {_HOW} Kraken `ticker`, 20 symbols, 2,500 msg/s offered,
persisting: ~137 µs CPU a stored row. `EpollSelector.select` 57 % of samples (a wake-up per
frame), `KrakenTickerDecoder.decode` 17 % inclusive (`_data` 4 %, `precise_text` 3 %), ccxt's
`receive_loop` 16 %, the journal thread ~9 %. The decoder is not the limit; the per-frame
wake-up is. The lossless search itself was not profiled at its failing rate.
"""

_PERSIST_INGEST = f"""
**Limit: the journal's feed took CPU from the ingestion thread's process per commit and per
ring.** {_HOW} Binance bookTicker, persisting vs `--memory-only`, the same rate: at 20
symbols (this section's count, on the ticker channel) the journal thread (take the rings'
new rows, build the batches, `_with_keys`, IPC write) was ~19 % of the server's samples and
cost up to ~7 µs more CPU a row (35-38 vs 31-35 µs, two runs each); at 200 symbols 49 % and ~15-25 µs a row, because every commit sealed and rebuilt every
ring's few new rows (several Arrow objects per ring per commit, ~10 µs each with pyarrow
26). Fixed 2026-12-02 (one conversion per channel per commit,
`MarketDataBuffer.take_unjournalled(sequence)`): 200 symbols 54.6-59.1 -> 32.0-41.1 µs a row,
A/B alternating; the ratio persisting / memory-only should rise accordingly (not re-measured
by this section yet). What is left of the feed: `Journal._commit_locked`/`_with_keys` ~8 %.
"""

_BUS = """
**Limit on this machine: two cores shared by five busy processes (the emulator, the ingestion
node, the serving node, nats-server, the harness), not one of the path's processes; the
verdict flips between runs.** Two runs on issue 16's final code on a quiet machine (load < 1 at
the start), 2026-12-02: at 07:35 (`--only bus`, the search's ceiling then 64,000 msg/s) both
paths kept up at 64,000 msg/s in both repetitions (1.00x, met, at the ceiling); at 08:02 (the
run of record, ceiling 160,000) the single process kept up at 80,000 (failing at 95,000 with
its server at a full core, 101 %), the bus path at 40,000 in one repetition and 20,000 in the
other (failing at 40,000-80,000). Every failure of the bus path in that run was the emulator
delivering short (36,279 of 40,000/s, 39,379 of 43,500/s, 72,492 of 80,000/s) while none of the
bus path's processes was at a full core (ingestion node 50-78 %, serving node 26-27 %,
nats-server 10-11 % of a core) and the four together took 132-180 % of the two cores: the
emulator's pacing loop skips what it falls behind by when it waits for a core, or under TCP
back-pressure from the ingestion node's socket; which of the two was not measured. Not
profiled on the quiet machine; what to measure next: the emulator pinned to a core of its own
(or another machine) and the ingestion node's time between socket reads.
Development runs of 2026-12-02 (`--only bus` twice, on a machine other work kept at load 6-12;
not the run of record): in the first (load ~6) the bus path kept up at 40,000 msg/s in one
repetition and at none of 40,000 and 64,000 in the next, the single-process path at
16,500-20,000; in the second (load ~10) the bus path at 6,000 in both, the single-process path
at 2,500 and then at nothing (its emulator delivered 933 of 1,000 msg/s). Every miss of either
was the emulator delivering short (its own loop starved of CPU, which makes it skip what it
falls behind by, or TCP back-pressure while the cores were taken), and no process of either
path was at a full core in its window (ingestion node 18-57 %, serving node 11-26 %,
nats-server 4-10 % of a core; the single-process server with its ingestion child 21-45 %). The bus path's CPU per row falls with the rows a message carries: 64 µs a row at
10,000 msg/s (10.8 rows and 2.4 kB a message, 913 messages/s) against 33 µs single-process,
21 µs at 40,000 msg/s (45 rows, 5.2 kB a message): a bus message costs each process a fixed
amount (publish and ack, fetch, decode, ledger, journal) whatever its rows.

py-spy 0.4.2 (`record -r 100 -d 8 --nonblocking -F --format raw`) on both nodes at a 30,000
msg/s target (the emulator delivered 19,760/s; load 11.7): the ingestion node's samples were
58 % the websocket receive loop and the fast decoder (`decode` 40 %), ~26 % the bus side (the
flush that seals each ring's rows into an Arrow batch 10 %, `Publisher.publish` 9 %, nats-py's
writer/flusher 7 %); the serving node's 29 % the consumer's message handling (`decode` 10 %,
`append_batch` 8 %, fetch 4 %) and 39 % the journal (`_commit_locked` 25 %, its feed 14 %). So
on a machine with a core per process the bus path should reach the ingestion node's parse rate,
which is the single-process ingestion child's; what to measure there: this section with the
emulator and each node on cores of their own.
"""

FINDINGS: dict[str, str] = {
    "ingest.lossless.20": _INGEST_FAST,
    "ingest.lossless.200": _INGEST_FAST,
    "ingest.ccxt.20": _INGEST_CCXT,
    "ingest.ccxt.200": _INGEST_CCXT,
    "peer.bidask.20": _INGEST_FAST,
    "peer.bidask.200": _INGEST_FAST,
    "peer.trades.20": _PEER_TRADES,
    "peer.trades.200": _PEER_TRADES,
    **{f"workers.scaling.{n}": _WORKERS for n in (2, 3, 4, 6, 8, 12, 16)},
    "persist.ingest": _PERSIST_INGEST,
    "bus.lossless": _BUS,
    "ingest.venue.binance": _INGEST_FAST,
    "ingest.venue.coinbase": _VENUE_COINBASE,
    "ingest.venue.kraken": _VENUE_KRAKEN,
    "latency.idle.100": _LATENCY_IDLE,
    "latency.idle.10000": _LATENCY_IDLE,
    "latency.load.100": _LATENCY_LOAD,
    "latency.load.10000": _LATENCY_LOAD,
    "latency.process.100": _LATENCY_PROCESS,
    "latency.process.10000": _LATENCY_PROCESS,
    "bulk.ratio": """
**Limit: assembling the table per request; the bare server built it once.** Since the
segment merge cap (`MERGE_ROWS = 8192`: a 1,000,000-row ring holds ~124 segments, not
~490) and the constant-column cache (the 1,000,000-row `symbol` and `exchange` columns are
built once per value and sliced, within a 32 MiB LRU budget, instead of ~15 MB written per
request), what remains is `segments_between` (a `np.searchsorted` pair per segment) and
`pa.Table.from_batches` over the slices. The ratio moves with the machine's transfer
speed: the fixed assembly cost is a larger share of a fast transfer.

Suggestion: in `segments_between`, skip `searchsorted` for a segment entirely inside the
range (`lo <= min_ts` and `max_ts < hi`).
""",
    "freshness.p99": _FRESHNESS,
    "freshness.p99.process": _FRESHNESS,
    "memory.per_tick": """
**Limit: Arrow's per-batch overhead and the allocator, above the 80 bytes of data per
tick.** At 100 symbols x 10,000 ticks the store's batches hold exactly 80.0 B per stored
tick (ten 8-byte columns; no dead rows), malloc holds ~8 B more in use and ~5-7 B free.
Measured contributions: each sealed segment's ten Arrow arrays cost ~5-6 KB of C++ and
Python objects whatever their length (~5 B per tick at 1,280-row segments, which is where
that overhead and the rows a straddling segment keeps balance); rows not yet sealed ~2 B.

Fixed earlier (before: 104 / 124 / 125 B at 10 / 100 / 1,000 symbols): segments are
allocated from the system allocator (`pa.system_memory_pool()`; pyarrow's default mimalloc
pool kept ~16 B per tick of slack as segments were merged and evicted); pending rows are
one `array('d')` (80 B a row instead of ~390 as tuples of floats); and the merged segment
the eviction point cuts through is trimmed (its live rows copied) once 256 of its rows are
dead, instead of keeping on average half a segment (~7 % of the data) of evicted rows.
""",
    "channels.trades.lossless": """
**Limit: ccxt's trade parsing and its per-frame receive path on the one ingestion thread,
which gets well under a core on this 2-core machine while the emulator shares it.** Profiled
2026-12-01 (py-spy and per-thread CPU of the server child, Binance, 20 symbols, 2,000
trades/s, `--memory-only`, loaded machine): all of the server's CPU is on `flight-md-ingest`;
frame handling (ccxt's parse plus flight_md's) 250-270 µs a trade, of which flight_md's tap,
`to_trade`, de-duplication and store ~14 µs in isolation; the socket read, websocket framing
and ccxt's receive loop (one asyncio task per frame, which the ceiling skips) 20-57 µs; a full
garbage collection of 75-150 ms every 4-8 s (now gone: `gc.freeze()` after start-up). The
ceiling is a tight loop timed by wall clock, the server's figure a process woken per frame:
measured CPU to CPU in the same minute the server costs ~1.6x the ceiling per trade. Nothing
is lost at any rate (every id sent was stored once after the drain); what falls short is the
rate sustained while the feed keeps coming. Levers: a decoder of flight_md's own for the hot
channels and ingestion spread over processes (issue "Performance").
""",
    "channels.freshness": _FRESHNESS,
    "sql.latest": """
**Limit: DuckDB's fixed cost per statement.** Profiled 2026-12-01 (py-spy on the server
child while ADBC repeated the query; cProfile of `Engine.execute` in-process): GetFlightInfo
is about one native round trip (the result schema is cached); DoGet is the rest. Since ring
pruning (`flight_md.sql.prune`: a `WHERE symbol = ...` snapshots and registers only that
ring) and the engine's empty stand-in tables, the query scans one 10,000-row ring and
registers one table; what remains is ~1-3 ms each for registering the ring, binding and
running in this DuckDB build (a 10,000-row top-100 ~6 ms in-process, against ~1 ms for the
native ticket's zero-copy slice). Use the native tickets where latency matters; SQL is for
what they cannot say (joins, aggregates, BI tools).
""",
    "sql.bulk": """
**Limit: DuckDB's Arrow -> DuckDB -> Arrow conversion of every row; the native pull is zero
copy into `RecordBatchStream`.** Profiled 2026-12-01: 76 % of the server's samples are DuckDB
materialising each 65,536-row Arrow batch of its streaming result, 10 % registering, 9 %
planning; in-process DuckDB alone does ~300 MB/s on this machine, and the two constant string
columns (`symbol`, `exchange`) cost about as much as the eight numeric ones. Lever: hand a
plain projection/filter of one ring to Flight without DuckDB.
""",
    "sql.bars": """
**Limit: half the gap is `bars_1m`'s own semantics, the rest the history read through a
pyarrow dataset rather than DuckDB's Parquet reader.** The view orders open and close by
(timestamp, receive_timestamp), `flight_md.core.bars`' tie-break, which doubles DuckDB's
aggregate (the unjudged baseline row of the run uses the same tie-break). With external
access off the engine cannot use `read_parquet`; the registered dataset scan costs ~1.5x
DuckDB's own reader on the same files (2 M trades in-process: 0.57 s `read_parquet`, 0.90 s
pyarrow dataset, 1.85 s with the tie-break). An int128 key of the same order was only ~13 %
faster than the struct key.
""",
    "buffer.append": """
**Limit: Python work per append, ~1.8-2.4 µs depending on the machine's load (this shared
machine ran the same code 20-30 % slower in the evening runs than in the earlier ones).**
Old and new code measured back to back: the current `append` is 10-15 % faster than the
one this issue started with. Per append: `_row` (check the tick, replace missing values
by NaN) ~0.3 µs, the ring lookup and lock ~0.2 µs, `_Ring.append_row` (extend the pending
`array('d')`, counters, eviction bookkeeping) ~0.5 µs, sealing amortised ~0.35 µs (ten
`pa.array` calls and the segment's timestamp index per 256 rows), plus merging and
trimming. Ingestion does not use this path: it appends rows that `normalize` already
checked (`append_row`), which skips `_row`.

Suggestion: sealing is the largest piece left; a segment's timestamp index (`np.diff`,
min, max) could be computed lazily by the first range read instead of at every seal.
""",
}
