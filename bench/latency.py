"""Catch-up latency: from a delivery's acknowledgement to its row being readable.

Starts `hookledger serve` (SQLite, projectors in-process) with the generic
`entities` projection, sends deliveries one after another at a steady rate
and, after each 202, asks `GET /v1/projections/entities/rows/{key}` with
`min_position` set to the acknowledged position: the time until that answer
is the catch-up latency a read-your-writes client sees (HTTP round trip
included). Also measures point reads (`rows/{key}`, no wait) under the same
load. Prints percentiles; results are recorded by hand in docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CONFIG = """
database_url = "sqlite:///{dir}/ledger.db"
[server]
access_log = false
[sources.app]
verifier = "none"
event_id = "header:X-Event-Id"
[projections.entities]
source = "app"
types = ["data_updated", "data_deleted"]
key = ["/entity", "/id"]
object = "/data"
version = "/version"
delete_on = ["data_deleted"]
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--port", type=int, default=8411)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="hl-latency-"))
    config = workdir / "hookledger.toml"
    config.write_text(CONFIG.format(dir=workdir))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(args.port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(100):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            catch_up: list[float] = []
            point: list[float] = []
            for i in range(args.count):
                key = str(i % 500)
                body = (
                    b'{"event_type":"data_updated","entity":"customer","id":"%s",'
                    b'"data":{"n":%d},"version":%d}' % (key.encode(), i, i)
                )
                r = client.post("/hooks/app", content=body, headers={"X-Event-Id": str(i)})
                acked = time.perf_counter()
                position = r.json()["position"]
                seen = client.get(
                    f"/v1/projections/entities/rows/customer/{key}",
                    params={"min_position": position, "wait": 5},
                )
                catch_up.append((time.perf_counter() - acked) * 1000)
                assert seen.status_code == 200 and seen.json()["data"]["n"] == i, seen.text
                started = time.perf_counter()
                client.get(f"/v1/projections/entities/rows/customer/{key}")
                point.append((time.perf_counter() - started) * 1000)
        for name, values in (("catch-up (ack -> readable)", catch_up), ("point read", point)):
            print(
                f"{name}: n={len(values)} p50={statistics.median(values):.2f} ms "
                f"p99={percentile(values, 99):.2f} ms max={max(values):.2f} ms"
            )
    finally:
        server.terminate()
        server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
