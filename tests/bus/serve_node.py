"""A serving node's bus side in a process of its own, for the kill tests of
``tests/bus/test_serve_bus.py``: Persistence over a data dir (or none) and a ServeBus.

    python -m tests.bus.serve_node URL NODE (DATA_DIR | -) [SUBJECT_FILTER ...]

Prints ``ready`` once the consumers read, then every 50 ms a line
``rings {"<channel> <exchange> <symbol>": appended, ...} stored N duplicates M`` (the rings'
row counts, which continue across restarts). SIGTERM stops cleanly (the bus, then the
persistence: everything into the history); SIGKILL is the crash under test.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from flight_md.buffer import Store
from flight_md.bus.options import BusOptions
from flight_md.bus.serve import ServeBus
from flight_md.events import EventLog
from flight_md.persist.store import PersistConfig, Persistence

BUFFER_ROWS = 200_000


def main(argv: list[str]) -> int:
    url, node, data_dir, *subjects = argv
    store = Store(BUFFER_ROWS)
    events = EventLog()
    persistence = None
    if data_dir != "-":
        persistence = Persistence(PersistConfig(Path(data_dir), commit_interval=0.05,
                                                seal_interval=3600.0), store, events).open()
        persistence.start()
    options = BusOptions(url=url, reconnect_wait_s=0.1, connect_timeout_s=1.0)
    bus = ServeBus(options, node=node, store=store, events=events, persistence=persistence,
                   subjects=tuple(subjects) or ("md.>",)).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.wait(0.05):
        rings = {f"{b.channel} {s.exchange} {s.symbol}": s.appended
                 for b in store.buffers() for s in b.stats()}
        status = bus.status()
        print(f"rings {json.dumps(rings)} stored {status['stored']} duplicates "
              f"{status['duplicates']}", flush=True)
    bus.stop()
    if persistence is not None:
        persistence.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
