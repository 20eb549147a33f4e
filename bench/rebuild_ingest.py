"""Ingest latency and errors while a big projection rebuilds (SPEC 6: zero downtime).

Builds a log of N events (`bench.rebuild.generate`), serves it with a real
`hookledger serve` (uvicorn, projector in process) whose `entities` projection
reads every event, waits until the projection is live, then delivers signed
webhooks at a steady pace from several connections: for a while before, all
through a rebuild of the projection (`POST /v1/projections/entities/rebuild`,
its batches, swap, diff and the drop of the old table), and for a while after.
Each delivery is timed from the instant it was due, so a stall counts in full
even when it delays the deliveries queued behind it. Reports p50/p99/max and
the answers other than 202 per phase.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import REPO, SECRET_ENV, SIGNATURE_HEADER, free_port, server_env, sign, stop
from bench.rebuild import KEYS, generate

CONFIG = """\
# written by bench/rebuild_ingest.py
database_url = "{url}"
[server]
access_log = false
[sources.app]
verifier = "hmac-sha256"
secret_env = "{secret_env}"
signature_header = "{header}"
[projections.entities]
source = "app"
types = ["data_updated", "data_deleted"]
key = ["/entity", "/id"]
object = "/data"
version = "/version"
delete_on = ["data_deleted"]
columns = {{ name = "/data/name", n = {{ path = "/data/n", type = "integer" }} }}
"""


class Pace:
    """Deliveries at `rate` per second from `connections` keep-alive connections."""

    def __init__(self, port: int, rate: float, connections: int) -> None:
        self.port = port
        self.rate = rate
        self.connections = connections
        self.samples: list[tuple[float, float, int]] = []  # (due, ms, status)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(connections)]
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = time.time()
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, lane: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        interval = self.connections / self.rate
        due = self.started + lane / self.rate
        n = 0
        while not self._stop.is_set():
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            key = (lane * 1_000_003 + n) % KEYS
            body = json.dumps(
                {
                    "event_type": "data_updated",
                    "entity": "customer",
                    "id": str(key),
                    "version": 10**9 + n,
                    "data": {"name": f"live {key}", "n": n},
                },
                separators=(",", ":"),
            ).encode()
            headers = {SIGNATURE_HEADER: sign(body), "Content-Type": "application/json"}
            try:
                conn.request("POST", "/hooks/app", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            with self._lock:
                self.samples.append((due, (time.time() - due) * 1000, status))
            n += 1
            due += interval
        conn.close()


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def post(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def wait_ready(port: int, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("hookledger serve exited")
        with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
            p = get(port, "/v1/projections/entities")
            if p.get("version") and p["lag"] == 0 and p["rebuild"] is None:
                return
        time.sleep(1)
    raise RuntimeError("the projection never caught up")


def summary(samples: list[tuple[float, float, int]]) -> dict:
    ms = sorted(s[1] for s in samples)
    if not ms:
        return {"deliveries": 0}
    return {
        "deliveries": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "max_ms": round(ms[-1], 1),
        "non_202": sum(1 for s in samples if s[2] != 202),
    }


def run(url: str, count: int, rate: float, connections: int, calm: float, log: Path) -> dict:
    t0 = time.perf_counter()
    generate(url, count)
    print(f"generated {count:,} events in {time.perf_counter() - t0:.0f} s", flush=True)
    config = log.with_name("rebuild-ingest.toml")
    config.write_text(CONFIG.format(url=url, secret_env=SECRET_ENV, header=SIGNATURE_HEADER))
    port = free_port()
    argv = [sys.executable, "-m", "api.cli", "serve", "--config", str(config)]
    argv += ["--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=server_env(), cwd=REPO, stdout=out, stderr=out, start_new_session=True
        )
        try:
            t0 = time.perf_counter()
            try:
                wait_ready(port, proc, timeout=3600)
            except RuntimeError:
                print(log.read_text(errors="replace")[-3000:])
                raise
            first_build = time.perf_counter() - t0
            print(f"first build of the projection: {first_build:.0f} s", flush=True)
            pace = Pace(port, rate, connections)
            pace.start()
            time.sleep(calm)
            began = time.time()
            status, started = post(port, "/v1/projections/entities/rebuild")
            assert status == 202, (status, started)
            caught_up = swapped = None
            building_seen = began
            while True:
                p = get(port, "/v1/projections/entities")
                r = p["rebuild"]
                if r is not None:
                    building_seen = time.time()  # caught up at the latest after this poll
                if r is not None and caught_up is None and r["done"] >= r["total"] - 1000:
                    caught_up = time.time()
                if p["version"] == started["version"] and r is None:
                    swapped = time.time()
                    break
                time.sleep(0.2)
            # the diff and the drop follow the swap: give them time, still under load
            time.sleep(max(calm, 10))
            ended = time.time()
            time.sleep(calm)
            pace.stop()
            final = get(port, "/v1/projections/entities")
        finally:
            stop(proc)
    samples = pace.samples
    result = {
        "events": count,
        "rate": rate,
        "before": summary([s for s in samples if s[0] < began]),
        "during": summary([s for s in samples if began <= s[0] < ended]),
        "after": summary([s for s in samples if s[0] >= ended]),
        "rebuild_seconds": round(swapped - began, 1),
        # never seen caught up: it swapped between two polls, at most this long after
        "swap_after_catch_up_seconds": round(swapped - (caught_up or building_seen), 1),
        "first_build_seconds": round(first_build, 1),
        "diff": final["last_swap"]["diff"] if final["last_swap"] else None,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rebuild-ingest", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200, help="deliveries per second")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--calm", type=float, default=10, help="seconds before and after")
    parser.add_argument(
        "--postgres", action="store_true", help="run on a throwaway local PostgreSQL"
    )
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="hl-rebuild-ingest-"))
    try:
        with contextlib.ExitStack() as stack:
            url = f"sqlite:///{scratch}/ledger.db"
            if args.postgres:
                from bench.harness import throwaway_postgres

                started = throwaway_postgres(stack)
                if started is None:
                    return 2
                url = started[0].create_database()
            result = run(
                url, args.events, args.rate, args.connections, args.calm, scratch / "serve.log"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for phase in ("before", "during", "after"):
        s = result[phase]
        print(
            f"{phase:>7}: {s['deliveries']:,} deliveries, p50 {s.get('p50_ms')} ms, "
            f"p99 {s.get('p99_ms')} ms, max {s.get('max_ms')} ms, non-202 {s.get('non_202')}"
        )
    print(
        f"rebuild of {result['events']:,} events: {result['rebuild_seconds']} s, swapped "
        f"{result['swap_after_catch_up_seconds']} s after catching up, diff {result['diff']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
