"""Destinations: events handed over per second, against a bare httpx client, and the
latency from the ingest acknowledgement to the receiver.

    python -m bench deliver [--events 20000] [--concurrency 8] [--postgres]

Throughput: the log holds `--events` signed-size events over 1,000 keys; a destination
(`order = "key"`, `--concurrency` in flight) hands them all to a receiver answering
204 at once (`bench.receiver`, its own process). The ceiling, measured in the same
run: a bare `httpx.AsyncClient` posting the same bodies to the same receiver with
the same concurrency. Latency: `hookledger serve` with the destination, caught up;
signed deliveries at `--rate` per second; each event's time from the 202 to its
arrival at the receiver, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import orjson

from bench.harness import REPO, SECRET_ENV, free_port, server_env, sign, stop
from destinations.spec import parse
from destinations.worker import DeliveryWorker
from ledger import migrate
from ledger.recorder import NewEvent, append_batch, make_engine, writer

KEYS = 1000
BODY_PAD = 700  # about 1 KiB a body, as a provider's event


def body(i: int) -> bytes:
    doc = {
        "type": "invoice.paid",
        "id": f"evt_{i}",
        "data": {"object": {"customer": f"cus_{i % KEYS}"}},
    }
    doc["pad"] = "x" * BODY_PAD
    return orjson.dumps(doc)


def logged(i: int) -> NewEvent:
    """Event `i` as the appender would log it."""
    b = body(i)
    return NewEvent(
        source="bench",
        received_at_us=time.time_ns() // 1000,
        event_id=f"evt_{i}",
        event_type="invoice.paid",
        query="",
        headers='[["content-type","application/json"]]',
        body=b,
        body_sha256=hashlib.sha256(b).hexdigest(),
        content_type="application/json",
        remote_addr="127.0.0.1",
        verification="verified",
    )


@contextlib.contextmanager
def receiver(workdir: Path) -> Iterator[str]:
    """`bench.receiver` in its own process; yields its URL."""
    port = free_port()
    with (workdir / f"receiver-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", "--port", str(port)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/stats", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield url
    finally:
        stop(proc)


def stats(url: str, arrivals: bool = False) -> dict:
    query = "?arrivals=1" if arrivals else ""
    return httpx.get(url + "/stats" + query, timeout=30).json()


def ceiling(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Bodies per second a bare httpx client posts with `concurrency` in flight."""

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as client:
            queue = iter(enumerate(bodies))

            async def one() -> None:
                for i, b in queue:
                    r = await client.post(
                        url + "/hooks",
                        content=b,
                        headers={"content-type": "application/json", "ledger-position": f"c{i}"},
                    )
                    assert r.status_code == 204

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(concurrency)))
            return len(bodies) / (time.perf_counter() - start)

    return asyncio.run(run())


def destination_raw(url: str, concurrency: int, start: str) -> dict:
    return {
        "url": url + "/hooks",
        "secret_env": "BENCH_SIGNING",
        "order": "key",
        "key": "/data/object/customer",
        "concurrency": concurrency,
        "start": start,
    }


SIGNING = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def throughput(db_url: str, url: str, events: int, concurrency: int) -> float:
    """Events per second a destination hands over from a full log."""
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    with writer(engine.connect()) as conn:
        for i in range(0, events, 1000):
            with conn.begin():
                append_batch(conn, [logged(j) for j in range(i, min(i + 1000, events))])
    spec = parse(
        "bench",
        destination_raw(url, concurrency, "beginning"),
        "bench",
        {"BENCH_SIGNING": SIGNING},
        None,
    )
    before = stats(url)["count"]
    worker = DeliveryWorker(engine, {"bench": spec})
    thread = threading.Thread(target=worker.run, daemon=True)
    with httpx.Client() as poll:  # one connection, polled gently: the CPU is shared
        start = time.perf_counter()
        thread.start()
        while poll.get(url + "/stats").json()["count"] - before < events:
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
    worker.stop()
    thread.join(30)
    engine.dispose()
    return events / elapsed


def latency(db_url: str, url: str, workdir: Path, count: int, rate: float) -> tuple[float, float]:
    """p50 and p99 milliseconds from a delivery's 202 to its arrival at the receiver."""
    port = free_port()
    raw = destination_raw(url, 8, "head")
    lines = [f'database_url = "{db_url}"', "", "[sources.bench]", 'verifier = "hmac-sha256"']
    lines += [
        f'secret_env = "{SECRET_ENV}"',
        'signature_header = "X-Signature"',
        "",
        "[destinations.bench]",
    ]
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in raw.items()]
    config = workdir / "latency.toml"
    config.write_text("\n".join(lines) + "\n")
    env = server_env({"BENCH_SIGNING": SIGNING})
    with (workdir / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/v1/destinations/bench", timeout=1).json()["state"] == "live":
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError((workdir / "serve.log").read_text()[-3000:])
            time.sleep(0.1)
        acked: dict[str, float] = {}
        with httpx.Client() as client:
            for i in range(count):
                b = body(10_000_000 + i)
                r = client.post(
                    base + "/hooks/bench",
                    content=b,
                    headers={"x-signature": sign(b), "content-type": "application/json"},
                )
                acked[str(r.json()["position"])] = time.time()
                time.sleep(1 / rate)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            arrivals = stats(url, arrivals=True)["arrivals"]
            if all(p in arrivals for p in acked):
                break
            time.sleep(0.1)
        waits = sorted((arrivals[p] - t) * 1000 for p, t in acked.items() if p in arrivals)
        missing = len(acked) - len(waits)
        if missing:
            raise RuntimeError(f"{missing} deliveries never reached the receiver")
        return statistics.median(waits), waits[int(len(waits) * 0.99) - 1]
    finally:
        stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench deliver", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50, help="deliveries per second (latency)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="hl-deliver-")).resolve()
    with contextlib.ExitStack() as stack:
        if args.postgres:
            from tests.pg import ThrowawayPostgres

            pg = ThrowawayPostgres().start()
            stack.callback(pg.stop)
            urls = [pg.create_database(), pg.create_database()]
        else:
            urls = [f"sqlite:///{workdir / 'throughput.db'}", f"sqlite:///{workdir / 'latency.db'}"]
        bodies = [body(i) for i in range(args.events)]
        with receiver(workdir) as url:
            bare = ceiling(url, bodies, args.concurrency)
            ours = throughput(urls[0], url, args.events, args.concurrency)
        with receiver(workdir) as url:  # its own: positions start at 1 again
            p50, p99 = latency(urls[1], url, workdir, args.latency_count, args.rate)
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(
        "| backend | events | concurrency | bare httpx (ceiling) | destination | ratio | p50 | p99 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {backend} | {args.events:,} | {args.concurrency} | {bare:,.0f}/s | {ours:,.0f}/s "
        f"| {ours / bare:.2f} | {p50:.1f} ms | {p99:.1f} ms |"
    )
    print(
        f"(cores: {os.cpu_count()}; latency at {args.rate:g} deliveries/s, {args.latency_count} of them)"
    )
    return 0
