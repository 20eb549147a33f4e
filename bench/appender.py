"""The appender's share of ingest on its own: `append_batch` and its commit, CPU per delivery.

    python -m bench appender [--url URL] [--prefill 50000] [--count 20000] [--batch 28]

Deliveries are 1 KiB with random event ids and distinct bodies, as a real sender's;
the log first holds `--prefill` of them, so the indexes are not small. Prints the
writer thread's CPU time and the wall time per delivery (docs/performance.md).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from collections.abc import Sequence

from ledger import migrate
from ledger.recorder import NewEvent, append_batch, make_engine, writer

HEADERS = '[["content-type","application/json"]]'


def deliveries(count: int, dedup_body: bool) -> list[NewEvent]:
    """`count` 1 KiB deliveries, each with its own random id and body."""
    out = []
    for _ in range(count):
        body = b'{"type":"invoice.paid","id":"%s","padding":"' % uuid.uuid4().hex.encode()
        body = body.ljust(1022, b"x") + b'"}'
        out.append(
            NewEvent(
                source="bench",
                received_at_us=time.time_ns() // 1000,
                event_id="evt_" + uuid.uuid4().hex,
                event_type="invoice.paid",
                query="",
                headers=HEADERS,
                body=body,
                body_sha256=hashlib.sha256(body).hexdigest(),
                content_type="application/json",
                remote_addr="127.0.0.1",
                verification="verified",
                dedup_body=dedup_body,
            )
        )
    return out


def measure(
    url: str, prefill: int, count: int, batch: int, dedup_body: bool
) -> tuple[float, float]:
    """CPU and wall microseconds per delivery of `count` deliveries in batches of `batch`."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    try:
        with writer(engine.connect()) as conn:
            for _ in range(0, prefill, 512):
                with conn.begin():
                    append_batch(conn, deliveries(512, dedup_body))
            batches = [deliveries(batch, dedup_body) for _ in range(count // batch)]
            cpu, wall = time.thread_time(), time.perf_counter()
            for events in batches:
                with conn.begin():
                    append_batch(conn, events)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        engine.dispose()
    done = len(batches) * batch
    return cpu / done * 1e6, wall / done * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, measure once, print one line."""
    parser = argparse.ArgumentParser(prog="python -m bench appender", description=__doc__)
    parser.add_argument("--url", help="database URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--prefill", type=int, default=50_000)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=28, help="deliveries per batch (28)")
    parser.add_argument(
        "--no-body-dedup", action="store_true", help="as a source with body_dedup = false"
    )
    args = parser.parse_args(argv)
    url = args.url or f"sqlite:///{tempfile.mkdtemp(prefix='hookledger-appender-')}/bench.db"
    cpu, wall = measure(url, args.prefill, args.count, args.batch, not args.no_body_dedup)
    print(f"append_batch + commit: {cpu:.1f} us CPU, {wall:.1f} us wall per delivery ({url})")
    return 0
