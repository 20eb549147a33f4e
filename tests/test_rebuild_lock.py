"""A rebuild of a big projection never holds the write lock long: appends keep going through
every phase (batches, swap, diff, drop), and the swap happens while they do (SPEC 6)."""

from __future__ import annotations

import threading
import time

import orjson

from ledger import migrate
from ledger.recorder import make_engine
from projections import leases, versions
from projections.worker import Worker, WorkerThread, wait_until
from tests.helpers import append, new_event
from tests.projection_support import drain, projectors_for

ROWS = 200_000
BOUND_S = 0.25
MARGIN = 3  # a loaded two-core test machine: the bound, three times over, still fails today


def body(i: int) -> bytes:
    return orjson.dumps({"id": f"k{i}", "data": {"name": f"n{i}", "n": i}})


def test_a_rebuild_with_a_big_old_table_lets_appends_through_and_swaps_meanwhile(db_url):
    setup = make_engine(db_url)
    migrate.upgrade(setup)
    for start in range(0, ROWS, 50_000):
        append(setup, [new_event(body(i), event_type="put") for i in range(start, start + 50_000)])
    projectors = projectors_for(
        things={"key": "/id", "object": "/data", "columns": {"n": "/data/n"}}
    )
    drain(Worker(setup, projectors, owner="first"))
    leases.release_lease(setup, "things", "first")
    row, _ = versions.request_rebuild(setup, projectors["things"])

    engine = make_engine(db_url)  # the worker's own engine, apart from the appends'
    worker = Worker(engine, projectors, owner="second", idle_poll=0.05)
    waits: list[tuple[float, float]] = []  # (when, seconds the append took)
    stop = threading.Event()

    def appender() -> None:
        n = ROWS
        while not stop.is_set():
            started = time.perf_counter()
            append(setup, [new_event(body(n % 1000), event_type="put")])
            waits.append((time.time(), time.perf_counter() - started))
            n += 1
            time.sleep(0.01)

    feeder = threading.Thread(target=appender)
    feeder.start()
    thread = WorkerThread(worker)
    thread.start()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with setup.connect() as conn:
                rows = versions.of(conn, "things")
            live, _ = versions.active_of(rows)
            if live.version == row.version and live.diff and not versions.undropped(rows):
                break
            time.sleep(0.2)
        dropped_at = time.time()
        # appends after the drop, too: wait for one to finish rather than for a fixed time
        assert wait_until(lambda: any(at > dropped_at for at, _ in waits), 30), "no append after"
    finally:
        stop.set()
        feeder.join()
        thread.stop()

    assert live.version == row.version, "the rebuild never swapped in"
    assert orjson.loads(live.diff) == {"added": 0, "removed": 0, "changed": 0}
    swapped_at = live.swapped_at_us / 1e6
    assert any(at < swapped_at for at, _ in waits) and any(at > swapped_at for at, _ in waits)
    longest = max(w for _, w in waits)
    assert worker.longest_hold_s < BOUND_S * MARGIN, worker.longest_hold_s
    assert longest < BOUND_S * MARGIN, f"an append waited {longest:.3f} s"
    print(
        f"longest append {longest:.3f} s, longest engine transaction {worker.longest_hold_s:.3f} s"
    )
    engine.dispose()
    setup.dispose()
