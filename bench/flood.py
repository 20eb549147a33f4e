"""Real ingest latency while a client floods bad signatures (issue 13, item 5).

`python -m bench flood [--code DIR]` starts `hookledger serve` (SQLite, one
worker, from the checkout DIR, default this one), then runs twice for
`--seconds`: 4 clients posting signed 0.5 KiB deliveries one after another
(5 ms apart), alone and then beside `--flooders` clients posting 64 KiB bodies
with 60 KiB of headers and a wrong signature (about 125 KiB to store each).
It prints one JSON line: deliveries, p50 and p95 in ms, flood requests, and the
database's size on disk (the file and its WAL) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"bench-flood"
CONFIG = """database_url = "sqlite:///{db}"
[server]
access_log = false
[sources.app]
verifier = "hmac-sha256"
secret_env = "BENCH_FLOOD_SECRET"
signature_header = "X-Signature"
"""


def _serve(code: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (workdir / "hookledger.toml").write_text(CONFIG.format(db=workdir / "ledger.db"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKLEDGER_")}
    env |= {"PYTHONPATH": str(code), "BENCH_FLOOD_SECRET": SECRET.decode()}
    argv = [sys.executable, "-m", "api.cli", "serve", "--config", "hookledger.toml"]
    with open(workdir / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port), "--no-projector"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        time.sleep(0.1)
    raise RuntimeError((workdir / "serve.log").read_text()[-2000:])


def _deliver(url: str, seconds: float, latencies: list[float]) -> None:
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 0
        while time.monotonic() < end:
            body = b'{"n":%d,"pad":"%s"}' % (n, b"x" * 500)
            n += 1
            signature = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            started = time.perf_counter()
            r = client.post("/hooks/app", content=body, headers={"X-Signature": signature})
            latencies.append(time.perf_counter() - started)
            if r.status_code != 202:
                raise RuntimeError(f"a real delivery got {r.status_code}: {r.text}")
            time.sleep(0.005)


def _flood(url: str, stop: threading.Event, sent: list[int]) -> None:
    body = b"b" * (64 * 1024)
    headers = {f"X-Flood-{i}": "h" * 1000 for i in range(60)} | {"X-Signature": "00"}
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            client.post("/hooks/app", content=body, headers=headers)
            sent.append(1)


def _round(url: str, seconds: float, flooders: int) -> dict:
    latencies: list[float] = []
    sent: list[int] = []
    stop = threading.Event()
    real = [threading.Thread(target=_deliver, args=(url, seconds, latencies)) for _ in range(4)]
    flood = [threading.Thread(target=_flood, args=(url, stop, sent)) for _ in range(flooders)]
    for t in flood + real:
        t.start()
    for t in real:
        t.join()
    stop.set()
    for t in flood:
        t.join()
    latencies.sort()
    return {
        "deliveries": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
        "flood_requests": len(sent),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run both rounds against one server and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench flood", description=__doc__)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout to serve (this one)")
    parser.add_argument("--seconds", type=float, default=10, help="per round (10)")
    parser.add_argument("--flooders", type=int, default=16, help="flooding clients (16)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        workdir = Path(tmp)
        proc, url = _serve(args.code.resolve(), workdir)
        try:
            quiet = _round(url, args.seconds, 0)
            flooded = _round(url, args.seconds, args.flooders)
            size = sum(p.stat().st_size for p in workdir.glob("ledger.db*"))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    print(json.dumps({"code": str(args.code), "quiet": quiet, "flood": flooded, "db_bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
