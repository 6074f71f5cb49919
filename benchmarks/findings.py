"""What limits each figure that misses its goal, from profiling flight_md (by goal key).

The report quotes an entry under every missed goal with that key. Entries are written by
hand after profiling the flight_md process during the measurement (py-spy 0.4 ``record
--threads [--gil] --nonblocking`` on the server child, pyinstrument in-process); they
describe the code as profiled on 2026-11-23 (bulk: after the segment merge cap), so
re-profile when the code changes. The
scripts are small: start the same children as the measurement (``benchmarks.exchange``,
``benchmarks.servers``) and point ``py-spy record --pid`` at the flight_md child.
"""

from __future__ import annotations

__all__ = ["FINDINGS"]

_INGEST = """
**Limit: the one ingestion thread's CPU, shared with the emulator and with anything else
running on the 2 cores. Saturated (20,000-40,000 msg/s offered), flight_md spent 35-50 µs of
process CPU per tick and stored 13,000-28,000 ticks/s across runs on this shared machine;
ccxt's bare parse takes ~26 µs per frame (~38,000 frames/s).** Capture itself is 100 % at
every rate: nothing is lost between ccxt and the store; what falls short is the rate
sustained, and a faster feed queues in socket buffers and ccxt's reader (drained after the
emulator stops). py-spy on the ingestion thread of a process saturated at 20,000 msg/s (20
symbols): ccxt `binance.handle_message` 87 % of its samples, which includes flight_md's tap
called from inside it, 18 % (`to_tick` 6 %, `MarketDataBuffer.append` 8 % with `_seal`
5.5 %, the `MarketTick` dataclass `__init__` 2.5 %, `_on_ws_update`/`_ingest` bookkeeping
the rest); JSON decode, ccxt's `Client.receive_loop` and aiohttp's websocket reader ~10 %.
The process also burns CPU outside that thread (100-150 % of a core in total: kernel socket
reads, gRPC and Arrow threads). In-process, ccxt parse + `to_tick` + `append` runs at
~0.6-0.9x of ccxt's parse-only rate, so the store is not the main cost; the network path,
the per-message event-loop overhead (ccxt batches frames only once a backlog builds:
CPU per tick falls from ~47 µs at 20,000 msg/s to ~36 µs with a backlog) and the shared
CPU are. The verdict swings with machine load from run to run.

Suggestions, cheapest first:
1. Skip the dataclass round trip on the hot path: `to_tick` builds a frozen `MarketTick`,
   `append` re-validates it (`_check`) and turns it back into a tuple (`to_row()`); an
   internal `buffer.append_row(exchange, symbol, row)` fed directly by normalize saves
   ~3-4 µs of the ~10 µs flight_md spends per tick (`to_tick` alone measures 7-11 µs).
2. A fast path in `normalize` for the bid/ask channel: ccxt has already parsed the
   numbers into floats; the generic `_number`/`_quote` checks and the `info` re-check of
   raw strings can shrink to one `math.isfinite` per value.
3. Pending rows as columns (`array('d')` per field) instead of tuples: `_seal` becomes
   `np.frombuffer` (zero copy) instead of `np.array(list_of_tuples)` (0.8 µs per row).
4. Structural: run ingestion in its own process (one per exchange) publishing sealed Arrow
   segments to the Flight process through shared memory, so ingestion has a core and a GIL
   of its own; this also addresses the latency-under-ingest, concurrency and freshness
   figures. Beyond that, the remaining lever is ccxt itself (its generic `safe_*` parsing
   is ~70 % of the thread).
"""

_LATENCY_IDLE = """
**Limit: ~50 µs of Python per request in the DoGet handler, on a ~550 µs round trip.**
The bare server's `do_get` is one dict lookup; flight_md's (`FlightMarketDataServer.do_get`,
timed in-process) takes ~48 µs for latest=100 and ~100 µs for latest=10,000. pyinstrument
splits the latest=100 handler into `get_latest_sync` 37 % (ring snapshot + table assembly),
`parse_ticket` 31 % (of which `Query.__post_init__` re-validating what the parser just
built ~13 %), and pyarrow's `RecordBatchStream(table)` 19 %, almost all of it
`pyarrow.ipc._get_legacy_format_default` reading `os.environ` on every call. Each Python
step is also a GIL acquisition on a gRPC thread. The figure sits near the 1.3x line, so
machine noise decides the verdict from run to run.

Suggestions: pass a module-level `pa.ipc.IpcWriteOptions()` to `RecordBatchStream` (saves
the environment lookup, ~4 µs); skip `Query.__post_init__` validation when `parse_ticket`
constructs the query (it is already valid by construction); cache parsed tickets (an LRU
keyed by the ticket bytes: clients repeat the same tickets); for latest=N reads, cache the
constant `symbol`/`exchange` columns for n > 1,024 too (they are rebuilt per request).
"""

_LATENCY_LOAD = """
**Limit: the GIL. The ingestion thread holds it most of the time and request threads wait
for it in 5 ms switch intervals.** py-spy `--gil` on the flight_md process while it ingests
5,000 msg/s and serves latest=100 back to back: the GIL is held in ~55 % of samples, 93 % of
those by the ingestion thread (ccxt's `receive_loop` drains every buffered frame in one
call, without yielding) and 7 % by the gRPC threads. A Flight handler needs the GIL several
times per request (handler, ticket parse, table assembly, stream set-up), and a thread that
waits for it only forces a switch after `sys.getswitchinterval()` (5 ms): p50 rises from
~0.6 ms to ~1-3 ms and p99 up to tens of ms. The bare server shares the machine but not a GIL.
Lowering the switch interval to 0.5 ms made ingestion itself fall behind (see freshness).

Suggestions: (1) run ingestion in a separate process that publishes sealed Arrow segments
through shared memory (or Arrow IPC over a pipe) to the Flight process; the Flight
process then only takes the GIL for its own short handlers. (2) Short of that, make the
handler need the GIL less: the idle-latency suggestions, plus building latest=N responses
from a pre-built per-ring "tail" batch refreshed by the writer at seal time.
"""

FINDINGS: dict[str, str] = {
    "ingest.capture.20": _INGEST,
    "ingest.capture.200": _INGEST,
    "latency.idle.100": _LATENCY_IDLE,
    "latency.idle.10000": _LATENCY_IDLE,
    "latency.load.100": _LATENCY_LOAD,
    "latency.load.10000": _LATENCY_LOAD,
    "bulk.ratio": """
**Limit: assembling the table per request (~8 ms of Python and allocation per 1,000,000-row
pull since the segment merge cap, ~25 ms before it); the bare server built it once.**
pyinstrument on `get_range_sync` over the 1,000,000-row ring (124 segments with
`MERGE_ROWS = 8192`): `_constant_columns` ~80 % (two 1,000,000-row string columns rebuilt
per request from `value * length` Python bytes, ~15 MB written and page-faulted each time;
only columns of at most 1,024 rows are cached) and `segments_between` ~20 % (a
`np.searchsorted` pair per segment). Before the cap the ring held ~490 segments and
`segments_between` was ~40 % of a ~26 ms call. The ratio moves with the machine's transfer
speed: the fixed assembly cost is a larger share of a fast transfer.

Suggestions: (1) cache the constant columns per ring at the largest length served and
slice them (zero-copy), or keep one module-wide cache keyed by (value, length) with a byte
budget; (2) in `segments_between`, skip `searchsorted` for a segment entirely inside the
range (`lo <= min_ts` and `max_ts < hi`).
""",
    "freshness.p99": """
**Limit: GIL hand-over between the ingestion thread and the live-tail threads, and a
per-tick cost on the tail path that grows with the number of tails.** Splitting the path
with the tick's `receive_timestamp` (ms resolution) at 1,000 msg/s: emulator to ccxt
receive ~0.3 ms, ccxt receive to the client ~1.1-1.6 ms at p50 and 3-8 ms at p99 (one
tail: p99 ~3 ms on a quiet machine, five tails: ~9 ms). py-spy on the server with 5 tails
at 5,000 msg/s: each tail wake runs `Follower.read` -> `_Ring.snapshot` -> `_freshen` ->
`_seal` under the ring lock, converting the one or two pending rows into an Arrow batch
(~42 µs for one row: `np.array` + ten `pa.array` calls), then builds a table and yields
it: ~56 µs of GIL time per tick per tail, each step waiting for the ingestion thread to
release the GIL (forced only every 5 ms). At 5,000 msg/s the tails and ingestion starve
each other: ingestion itself lags (emulator -> ccxt receive p50 ~4 ms) and the p99 reaches
tens to hundreds of ms. A 0.5 ms switch interval made that worse (p50 0.1-1 s at 5,000
msg/s): more hand-overs, slower ingestion.

Suggestions: (1) coalesce wake-ups: let a tail wait a short window (e.g. 1 ms or N rows)
after the first new row and read once, instead of one seal + table + gRPC message per
tick; (2) serve tails from the pending tuples without sealing them under the ring lock
(copy the few tuples under the lock, convert outside it, and leave sealing to the
writer); (3) yield one combined batch per read; (4) structurally, as for latency: move
ingestion out of the Flight process.
""",
    "memory.per_tick": """
**Limit: allocator and bookkeeping overhead above the 82 bytes of Arrow data per tick.**
At 100 symbols the Arrow pool holds 81.9 B per stored tick (ten 8-byte columns; segments
that straddle the eviction point keep some evicted rows) while RSS grows by ~123 B. Measured contributions: pyarrow's default **mimalloc** pool adds ~16 B
per tick over jemalloc or the system allocator (RSS 107 / 106 B per tick with
`ARROW_DEFAULT_MEMORY_POOL=jemalloc` / `system`, same data; `release_unused()` does not
return it); rows still *pending* as Python tuples (up to `SEAL_ROWS = 256` per ring, ~390 B
each as a tuple of float and int objects) add ~5-10 B per stored tick at 10,000-tick
capacity; segments that straddle the eviction point keep up to `capacity // 8` dead rows.

Suggestions: (1) allocate the buffer's batches from `pa.jemalloc_memory_pool()` or
`pa.system_memory_pool()` (pass `memory_pool=` to `pa.array`/`concat_batches`) (-16 B);
(2) keep pending rows columnar (`array('d')` per field, 8 B per value instead of ~40) or
seal at 64 rows (-5..8 B); (3) merge segments at `capacity // 32` so eviction frees memory
in smaller steps (-3..5 B). Together they bring it to ~90 B per tick.
""",
    "buffer.append": """
**Limit: Python work per append, ~1.6-2 µs on a quiet run of this machine, so the goal is
met or missed by machine noise (it was measured under load from other processes when
missed).** pyinstrument over 200,000 appends: `_Ring.append_row` 48 % (its own list and
sequence bookkeeping 23 %, `_seal` 20 % = 0.8 µs per row amortised, of which `np.array` on
the list of tuples is three quarters), `append`'s own body 21 %, `_check` (price and
timestamp validation) 12 %, `MarketTick.to_row` 7 %, `_ring_for` 6 %, `finish_append` 4 %.

Suggestions: pending rows as per-column `array('d')` so sealing is `np.frombuffer` (saves
most of the 0.8 µs); drop `_check` from the ingestion path (normalize has already checked
the same values) or fold it into the row conversion; cache the last `(exchange, symbol)`
-> ring lookup.
""",
}
